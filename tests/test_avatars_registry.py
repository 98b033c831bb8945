"""The avatar registry: the built-in example, uploads, the on-disk cache and precise refusals."""

from __future__ import annotations

import hashlib
import io
import shutil
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import skimage.data
from avatar_server.avatars.analysis import analyse_faces, face_region_size, load_analysis, resized
from avatar_server.avatars.landmarks import FaceDetection, MediaPipeFaceLandmarker
from avatar_server.avatars.media_input import decode_media
from avatar_server.avatars.registry import (
    EXAMPLE_ANALYSIS,
    EXAMPLE_DIR,
    AvatarRegistry,
    example_source,
)
from avatar_server.core.errors import AvatarError, InvalidInput, NotFound, StatusCode
from avatar_server.core.frames import Frame
from avatar_server.media.clip import encode_clip

LIMIT = 5 * 1024 * 1024


class CountingLandmarker:
    """The real MediaPipe landmarker, counting its calls (to prove the cache is used)."""

    def __init__(self, inner: MediaPipeFaceLandmarker) -> None:
        self.inner = inner
        self.layout = inner.layout
        self.calls = 0

    def detect(self, rgb: np.ndarray) -> list[FaceDetection]:
        self.calls += 1
        return self.inner.detect(rgb)


class RefusingLandmarker:
    """A stand-in landmarker (no detector) that fails the test if anything asks it for faces."""

    layout = "mediapipe478"

    def detect(self, rgb: np.ndarray) -> list[FaceDetection]:
        raise AssertionError("the face landmarker was used")


@pytest.fixture(scope="module")
def mediapipe():
    return MediaPipeFaceLandmarker()


def png(rgb: np.ndarray) -> bytes:
    return cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes()


def astronaut_png() -> bytes:
    return png(skimage.data.astronaut())


async def started(data_dir: Path, landmarker=None, **kwargs) -> AvatarRegistry:
    registry = AvatarRegistry(data_dir, max_upload_bytes=LIMIT, landmarker=landmarker, **kwargs)
    await registry.start()
    return registry


async def test_the_builtin_astronaut_is_registered_once_and_cached(data_dir, mediapipe):
    registry = await started(data_dir, CountingLandmarker(mediapipe))
    info = await registry.get("astronaut")
    assert registry.default_id == "astronaut"
    assert info.builtin and info.source_type == "video" and (info.width, info.height) == (512, 512)
    assets = await registry.load("astronaut")
    assert assets.frames.shape == (info.frames, 512, 512, 3)
    assert (
        assets.landmarks.shape == (info.frames, 478, 2) and assets.landmark_layout == "mediapipe478"
    )
    assert assets.face_boxes.shape == (info.frames, 4)
    x0, y0, x1, y1 = assets.crop_box
    assert x1 - x0 == pytest.approx(y1 - y0) and 0 <= x0 < x1 <= 512

    restarted = CountingLandmarker(mediapipe)
    again = await started(data_dir, restarted)
    assert restarted.calls == 0, "a restart analysed the example again"
    assert await again.get("astronaut") == info
    assert [a.id for a in await again.list()][0] == "astronaut"


def test_the_shipped_example_analysis_is_what_the_analyser_gives(mediapipe):
    """example/analysis.npz (make example-analysis) still describes the example's bytes."""
    data = example_source(EXAMPLE_DIR).read_bytes()
    shipped = load_analysis(
        EXAMPLE_DIR / EXAMPLE_ANALYSIS, source_sha256=hashlib.sha256(data).hexdigest()
    )
    assert shipped is not None, "example/analysis.npz is missing or was made from other bytes"
    fresh = analyse_faces(decode_media(data, "").frames, mediapipe)
    assert shipped.layout == fresh.layout
    for name in ("landmarks", "boxes", "crop_box"):
        np.testing.assert_allclose(getattr(shipped, name), getattr(fresh, name), atol=0.05, rtol=0)


async def test_the_builtin_avatar_needs_no_landmarker_when_its_analysis_is_shipped(tmp_path):
    registry = await started(tmp_path, RefusingLandmarker())
    assets = await registry.load("astronaut")
    data = example_source(EXAMPLE_DIR).read_bytes()
    shipped = load_analysis(
        EXAMPLE_DIR / EXAMPLE_ANALYSIS, source_sha256=hashlib.sha256(data).hexdigest()
    )
    frames = decode_media(data, "").frames
    _, expected = resized(frames, shipped, face_region_size(frames.shape[2], frames.shape[1], shipped))
    np.testing.assert_allclose(assets.landmarks, expected.landmarks, rtol=0, atol=1e-4)
    np.testing.assert_allclose(assets.crop_box, expected.crop_box, rtol=0, atol=1e-4)
    assert assets.landmark_layout == shipped.layout


async def test_an_example_changed_since_its_shipped_analysis_is_analysed_again(
    tmp_path, mediapipe
):
    """The shipped file names the bytes it describes: another example is analysed afresh."""
    example = tmp_path / "example"
    example.mkdir()
    shutil.copy(EXAMPLE_DIR / "astronaut.png", example)  # the portrait, not the video it describes
    shutil.copy(EXAMPLE_DIR / EXAMPLE_ANALYSIS, example)
    counting = CountingLandmarker(mediapipe)
    registry = await started(tmp_path / "data", counting, example_dir=example)
    info = await registry.get("astronaut")
    assert counting.calls == 1 and info.source_type == "image" and info.frames == 1


async def test_a_portrait_upload_is_analysed_stored_and_deduplicated(tmp_path, mediapipe):
    registry = await started(tmp_path, mediapipe, example_dir=tmp_path / "none")
    info = await registry.register(astronaut_png(), display_name="Eileen", mime_type="image/png")
    assert info.id.startswith("av_") and info.source_type == "image" and info.frames == 1
    assert info.display_name == "Eileen" and not info.builtin
    assert (
        await registry.register(astronaut_png(), display_name="again", mime_type="image/png")
    ) == info
    assets = await registry.load(info.id)
    assert assets.frames.shape == (1, 512, 512, 3)
    mouth = assets.landmarks[0, [13, 14]]
    assert 100 < mouth[:, 1].mean() < 200, "the mouth is not where the astronaut's is"

    fresh = await started(tmp_path, mediapipe, example_dir=tmp_path / "none")
    assert [a.id for a in await fresh.list()] == [info.id]


async def test_a_video_upload_becomes_a_video_avatar(tmp_path, mediapipe):
    still = skimage.data.astronaut()
    frames = [Frame(np.roll(still, shift, axis=1)) for shift in range(0, 12, 2)]
    registry = await started(tmp_path, mediapipe, example_dir=tmp_path / "none")
    info = await registry.register(
        encode_clip(frames, 25), display_name="clip", mime_type="video/mp4"
    )
    assert info.source_type == "video" and info.frames == len(frames)
    assets = await registry.load(info.id)
    # The face moves right by 2 px a frame; so do its landmarks.
    shift = assets.landmarks[-1, :, 0].mean() - assets.landmarks[0, :, 0].mean()
    assert shift == pytest.approx(10, abs=2)


async def test_a_fast_video_keeps_at_most_25_frames_a_second(tmp_path, mediapipe):
    """Frames held in memory and analysed are bounded whatever the upload's frame rate."""
    still = skimage.data.astronaut()
    frames = [Frame(np.roll(still, shift, axis=1)) for shift in range(12)]
    registry = await started(tmp_path, mediapipe, example_dir=tmp_path / "none")
    info = await registry.register(encode_clip(frames, 100), display_name="fast", mime_type="video/mp4")
    assets = await registry.load(info.id)
    assert info.frames == 3 and assets.fps == pytest.approx(25)


def two_faces() -> bytes:
    face = skimage.data.astronaut()[20:260, 100:340]
    return png(np.concatenate([face, face], axis=1))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"hello, I am not a picture", "neither an image nor a video"),
        (astronaut_png()[:3000], "could not be decoded"),
        (png(np.full((300, 300, 3), 128, np.uint8)), "no face found"),
        (two_faces(), "found 2 faces"),
        (png(cv2.resize(skimage.data.astronaut(), (192, 192))), "pixels wide"),
        (png(np.zeros((40, 40, 3), np.uint8)), "at least 64"),
        (b"", "empty"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * (LIMIT + 1), "the limit is"),
    ],
    ids=[
        "not-media",
        "truncated",
        "no-face",
        "two-faces",
        "face-too-small",
        "tiny",
        "empty",
        "too-big",
    ],
)
async def test_bad_uploads_are_refused_precisely_and_leave_nothing(
    tmp_path, mediapipe, data, message
):
    registry = await started(tmp_path, mediapipe, example_dir=tmp_path / "none")
    with pytest.raises(InvalidInput, match=message) as caught:
        await registry.register(data, display_name="bad", mime_type="image/png")
    assert caught.value.code == StatusCode.INVALID_ARGUMENT
    assert list((tmp_path / "avatars").iterdir()) == []
    assert await registry.list() == []


@pytest.mark.parametrize(
    "avatar_id", ["", "../astronaut", "astronaut/..", "av_zz", "AV_" + "0" * 20, "x" * 500]
)
async def test_unknown_or_malformed_ids_are_not_found(tmp_path, avatar_id):
    registry = await started(tmp_path, example_dir=tmp_path / "none")
    for call in (registry.get, registry.load, registry.delete, registry.preview):
        with pytest.raises(NotFound):
            await call(avatar_id)


async def test_uploads_can_be_deleted_but_the_builtin_cannot(data_dir, tmp_path, mediapipe):
    registry = await started(data_dir, mediapipe)
    with pytest.raises(AvatarError) as caught:
        await registry.delete("astronaut")
    assert caught.value.code == StatusCode.FAILED_PRECONDITION

    uploads = await started(tmp_path, mediapipe, example_dir=tmp_path / "none")
    info = await uploads.register(astronaut_png(), display_name="temp", mime_type="image/png")
    await uploads.delete(info.id)
    with pytest.raises(NotFound):
        await uploads.get(info.id)
    assert not (tmp_path / "avatars" / info.id).exists()


async def test_preview_is_a_playable_idle_loop_and_a_poster(data_dir, mediapipe):
    registry = await started(data_dir, mediapipe)
    clip, poster = await registry.preview("astronaut")
    with av.open(io.BytesIO(clip)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
    assert frames == (await registry.get("astronaut")).frames
    picture = cv2.imdecode(np.frombuffer(poster, np.uint8), cv2.IMREAD_COLOR)
    assert picture.shape == (512, 512, 3)
    assert (await registry.preview("astronaut")) == (clip, poster)
