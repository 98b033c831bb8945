"""Ditto frames in the encoder's format (I420 converted on the device) and engines on several devices.

On CPU with tiny stand-ins: the device conversion against the media package's CPU conversion, a
yuv420p session through the real SegmentEncoder and PyAV, and a pool of two CPU engines ("cpu,cpu")
standing in for two GPUs (placement, admission across the pool, freeing a place).
"""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest

torch = pytest.importorskip("torch")
av = pytest.importorskip("av")

import test_ditto_pipeline_engine as engine_tests  # its fixtures and helpers, shared
from avatar_server.core.errors import CapacityExhausted, RenderError
from avatar_server.core.frames import Frame
from avatar_server.media import SegmentEncoder
from avatar_server.media.video_frames import FrameConverter
from avatar_server.renderers.ditto.models import CheckpointsError, engine_devices
from avatar_server.renderers.ditto.putback import to_i420_async
from avatar_server.renderers.ditto.renderer import DittoRenderer
from media_helpers import encode_segment

# the engine tests' module fixtures, under their names so tests ask for them as usual
standin_dir, astronaut_avatars, one_cpu_thread = (
    engine_tests.standin_dir, engine_tests.astronaut_avatars, engine_tests.one_cpu_thread)
_render, _settings, _speech = engine_tests._render, engine_tests._settings, engine_tests._speech


def _cpu_i420(rgb: np.ndarray) -> np.ndarray:
    """The encoder's own conversion (swscale) of one rgb24 frame, as an (H * 3 // 2, W) array."""
    return FrameConverter(rgb.shape[1], rgb.shape[0]).to_yuv420p(Frame(rgb)).to_ndarray()


@pytest.mark.parametrize("kind", ["photo", "noise"])
def test_device_i420_is_within_one_level_of_the_encoders_conversion(kind: str) -> None:
    from skimage import data

    # 402 rows: the chroma planes are not a whole number of rows of the (H * 3 // 2, W) array
    rgb = data.astronaut()[:402, 10:310] if kind == "photo" else \
        np.random.default_rng(3).integers(0, 256, (66, 98, 3), dtype=np.uint8)
    images = torch.from_numpy(rgb).permute(2, 0, 1)[None].float()  # whole levels 0..255
    device = to_i420_async(torch.cat([images, images.flip(-1)]))
    assert device.shape == (2, rgb.shape[0] * 3 // 2, rgb.shape[1]) and device.dtype == torch.uint8
    for got, picture in zip(device.numpy(), (rgb, np.ascontiguousarray(rgb[:, ::-1]))):
        difference = np.abs(got.astype(int) - _cpu_i420(picture).astype(int))
        assert difference.max() <= 1, difference.max()


def test_device_i420_refuses_odd_sizes() -> None:
    with pytest.raises(RenderError):
        to_i420_async(torch.zeros(1, 3, 7, 8))


def _encode_and_decode(frames: list[Frame], width: int, height: int) -> np.ndarray:
    """Frames -> fMP4 through SegmentEncoder (lossless, so only the colour conversion differs) ->
    decoded yuv420p pictures."""
    encoder = SegmentEncoder(width=width, height=height, fps=25, clock_rate=16000, crf=0)
    segment = encode_segment(encoder, frames, np.zeros(len(frames) * 640, np.int16))
    assert segment.frames == len(frames)
    stream = encoder.init_segment() + segment.data
    encoder.close()
    with av.open(io.BytesIO(stream)) as container:
        return np.stack([frame.to_ndarray(format="yuv420p") for frame in container.decode(video=0)])


async def test_yuv420p_session_encodes_to_the_picture_of_the_rgb24_path(standin_dir, astronaut_avatars) -> None:
    avatar = astronaut_avatars[1]  # 400x400
    audio = _speech(8, 40)
    outputs = {}
    for frame_format in ("rgb24", "yuv420p"):
        renderer = DittoRenderer(_settings(standin_dir, ditto_frame_format=frame_format))
        session = await renderer.open_session(avatar, fps=25, seed=9)
        try:
            assert session.frame_format == frame_format
            frames = [frame async for frame in session.render(_chunks_of(audio))]
            frames += await session.idle_frames(2)
        finally:
            await session.aclose()
            await renderer.aclose()
        assert len(frames) == 10 and {frame.format for frame in frames} == {frame_format}
        outputs[frame_format] = frames
    height, width = avatar.frames.shape[1:3]
    assert outputs["yuv420p"][0].data.shape == (height * 3 // 2, width)
    rgb_decoded = _encode_and_decode(outputs["rgb24"], width, height)
    yuv_decoded = _encode_and_decode(outputs["yuv420p"], width, height)
    assert rgb_decoded.shape == yuv_decoded.shape == (10, height * 3 // 2, width)  # 8 spoken, 2 idle
    # the decoded yuv420p stream is the device's I420 as given, the rgb24 one swscale's conversion
    np.testing.assert_array_equal(yuv_decoded, np.stack([frame.data for frame in outputs["yuv420p"]]))
    difference = np.abs(rgb_decoded.astype(int) - yuv_decoded.astype(int))
    assert difference.max() <= 1, difference.max()


async def _chunks_of(audio: np.ndarray, size: int = 1600):
    for start in range(0, audio.size, size):
        yield audio[start : start + size]


def test_device_lists() -> None:
    assert engine_devices("cpu,cpu") == ["cpu", "cpu"]
    assert engine_devices(" cuda:0, cuda:1 ") == ["cuda:0", "cuda:1"]
    expected = [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else ["cpu"]
    assert engine_devices("auto") == expected
    with pytest.raises(CheckpointsError):
        engine_devices("cuda:0,,cuda:1")


async def test_sessions_spread_over_engines_and_refusal_comes_only_when_all_are_full(
    standin_dir, astronaut_avatars
) -> None:
    # 60 frames/s per engine, 85% of it handed out: two 25 fps sessions per engine
    pool = DittoRenderer(_settings(standin_dir, ditto_device="cpu,cpu", ditto_capacity_fps=60.0))
    sessions = []
    try:
        assert len(pool.engines) == 2 and pool.engines[0].networks is not pool.engines[1].networks
        assert pool.capacity_fps() == 120.0 and len(pool.models()) == 2 * len(pool.engines[0].networks.describe())
        for index in range(4):
            sessions.append(await pool.open_session(astronaut_avatars[index % 2], fps=25, seed=5))
        assert [pool.engines.index(s.engine) for s in sessions] == [0, 1, 0, 1]
        assert [(e.sessions, e.load_fps) for e in pool.engine_loads()] == [(2, 50.0), (2, 50.0)]
        assert pool.load_fps() == 100.0
        with pytest.raises(CapacityExhausted, match="all 2 Ditto engines are full"):
            await pool.open_session(astronaut_avatars[0], fps=25)

        await sessions.pop(1).aclose()  # frees a place on engine 1
        again = await pool.open_session(astronaut_avatars[0], fps=25, seed=5)
        sessions.append(again)
        assert again.engine is pool.engines[1]

        # both engines render, with the same weights: the same seed and audio give the same frames
        audio = _speech(6, 41)
        first, second = await asyncio.gather(_render(sessions[1], audio), _render(again, audio))
        assert sessions[1].engine is pool.engines[0] and first.shape == second.shape == (6, 512, 512, 3)
        assert np.abs(first.astype(int) - second.astype(int)).max() <= 1
    finally:
        for session in sessions:
            await session.aclose()
        await pool.aclose()
    assert pool.load_fps() == 0.0


async def test_a_full_engine_is_skipped_even_when_least_loaded(standin_dir, astronaut_avatars) -> None:
    pool = DittoRenderer(_settings(standin_dir, ditto_device="cpu,cpu", ditto_capacity_fps=120.0))
    pool.engines[0]._capacity = 30.0  # as a slower card's measured capacity would be: room for one session
    sessions = []
    try:
        for _ in range(3):
            sessions.append(await pool.open_session(astronaut_avatars[0], fps=25, seed=1))
        # the third found engine 0 least loaded (25 vs 25) but full, so it went to engine 1
        assert [pool.engines.index(s.engine) for s in sessions] == [0, 1, 1]
        assert pool.capacity_fps() == 150.0
    finally:
        for session in sessions:
            await session.aclose()
        await pool.aclose()
