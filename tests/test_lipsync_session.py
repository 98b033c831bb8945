"""The lip-sync renderer's contract: exact frame counts, streaming, rest in silence, smooth hand-overs."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import numpy as np
import pytest
import skimage.data
from avatar_server.avatars.landmarks import MediaPipeFaceLandmarker
from avatar_server.avatars.model import AvatarAssets, AvatarInfo
from avatar_server.renderers.lipsync import LipSyncRenderer
from avatar_server.renderers.lipsync.mouth_track import LoudnessScale, MouthTrack
from avatar_server.renderers.lipsync.renderer import PreparedAvatar
from avatar_server.settings import Settings
from lipsync_helpers import chunked, espeak_speech, load_default_avatar, render_turn


@pytest.fixture(scope="module")
def default_avatar(data_dir):
    return load_default_avatar(data_dir)


@pytest.fixture(scope="module")
def speech():
    return asyncio.run(espeak_speech("Good morning, how are you today?", "espeak-en-us"))


@pytest.fixture(scope="module")
def portrait_avatar(tmp_path_factory):
    """The astronaut still, analysed directly (an image avatar: one frame)."""
    image = skimage.data.astronaut()
    face = MediaPipeFaceLandmarker().detect(image)[0]
    info = AvatarInfo("portrait", "portrait", "image", 512, 512, 1, "0" * 64, datetime.now(UTC))
    return AvatarAssets(
        info,
        image[None],
        0.0,
        face.landmarks[None],
        "mediapipe478",
        face.box[None],
        tmp_path_factory.mktemp("portrait"),
    )


async def open_session(avatar):
    return await LipSyncRenderer(Settings()).open_session(avatar, fps=25)


@pytest.mark.parametrize("chunk", [1, 333, 640, 4000, 100_000])
async def test_one_frame_per_frame_of_audio_whatever_the_chunking(default_avatar, speech, chunk):
    session = await open_session(default_avatar)
    pcm = speech[: 640 * 37] if chunk == 1 else speech
    frames = await render_turn(session, pcm, chunk)
    assert len(frames) == len(pcm) // 640
    assert all(f.format == "rgb24" and f.data.shape == (512, 512, 3) for f in frames)
    assert (session.width, session.height) == (512, 512)


async def test_first_frames_leave_before_the_sentence_is_complete(default_avatar, speech):
    session = await open_session(default_avatar)
    received = 0

    async def audio():
        nonlocal received
        async for chunk in chunked(speech, 640):
            received += len(chunk)
            yield chunk

    async for _ in session.render(audio()):
        # The look-ahead is a few frames (120 ms), not the sentence.
        assert received <= 640 * 5
        break


async def test_silence_leaves_the_idle_frames_untouched(default_avatar):
    session = await open_session(default_avatar)
    silence = np.zeros(640 * 30, np.float32)
    frames = await render_turn(session, silence)
    prepared = PreparedAvatar(default_avatar, 25)
    for index, frame in enumerate(frames):
        assert np.array_equal(frame.data, default_avatar.frames[prepared.source_index(index)])


async def test_speech_moves_only_the_lower_face_and_pastes_back_without_seams(
    default_avatar, speech
):
    session = await open_session(default_avatar)
    frames = await render_turn(session, speech)
    prepared = PreparedAvatar(default_avatar, 25)
    region = prepared.rig.region
    changed = 0
    for index, frame in enumerate(frames):
        base = default_avatar.frames[prepared.source_index(index)].astype(np.int16)
        difference = np.abs(frame.data.astype(np.int16) - base).max(axis=2)
        changed += difference.max() > 40
        rows, cols = np.nonzero(difference > 2)
        if len(rows):  # changes stay inside the (shifted) mouth region, away from its edges
            assert rows.min() > region.y0 - 8 and rows.max() < region.y1 + 8
            assert cols.min() > region.x0 - 8 and cols.max() < region.x1 + 8
    assert changed > len(frames) // 3, "the mouth barely moved during speech"


async def test_mouth_closes_after_a_turn_and_idle_follows_smoothly(default_avatar, speech):
    session = await open_session(default_avatar)
    loud_end = speech[: 640 * 20]  # cut mid-sentence: the mouth is open at the end
    frames = await render_turn(session, loud_end)
    idle = await session.idle_frames(10)
    prepared = PreparedAvatar(default_avatar, 25)

    def distance_from_rest(frame, index):
        base = default_avatar.frames[prepared.source_index(index)].astype(np.int16)
        return np.abs(frame.data.astype(np.int16) - base).mean()

    offsets = [distance_from_rest(frame, len(frames) + i) for i, frame in enumerate(idle)]
    assert offsets[-1] == 0.0, "the face did not return to rest"
    assert all(
        later <= earlier + 1e-9 for earlier, later in zip(offsets[:-1], offsets[1:], strict=True)
    )


async def test_an_interrupted_turn_leaves_the_session_usable(default_avatar, speech):
    session = await open_session(default_avatar)
    generator = session.render(chunked(speech, 640))
    async for _ in generator:
        break
    await generator.aclose()
    frames = await render_turn(session, speech[: 640 * 10])
    assert len(frames) == 10
    await session.aclose()


async def test_a_portrait_blinks_while_idle(portrait_avatar):
    session = await open_session(portrait_avatar)
    frames = await session.idle_frames(200)  # one 8 s idle period
    prepared = PreparedAvatar(portrait_avatar, 25)
    eyes = prepared._idle.eyes.region
    rows, cols = eyes.slices()
    closures = [prepared._idle.closure(i) for i in range(200)]
    shut, open_ = int(np.argmax(closures)), int(np.argmin(closures))
    assert max(closures) == 1.0
    # Sway moves the whole frame a little; a blink changes the eyes far more.
    eyes_shut = np.abs(
        frames[shut].data[rows, cols].astype(int) - frames[open_].data[rows, cols]
    ).mean()
    assert eyes_shut > 6


def vowel_shapes(pcm: np.ndarray) -> tuple[float, float]:
    track = MouthTrack(16000, 25, LoudnessScale())
    poses = track.push(pcm) + track.finish()
    voiced = [p for p in poses if p.open > 0.3]
    return float(np.mean([p.wide for p in voiced])), float(np.mean([p.round for p in voiced]))


async def test_vowels_shape_the_lips_from_the_sound_alone():
    wide_i, round_i = vowel_shapes(await espeak_speech("이이이이", "espeak-ko"))
    wide_u, round_u = vowel_shapes(await espeak_speech("우우우우", "espeak-ko"))
    assert wide_i > round_i + 0.3, (wide_i, round_i)
    assert round_u > wide_u + 0.3, (wide_u, round_u)


async def test_mouth_moves_smoothly_and_rests_in_pauses(speech):
    track = MouthTrack(16000, 25, LoudnessScale())
    pause = np.zeros(640 * 15, np.float32)
    poses = track.push(np.concatenate([speech, pause, speech])) + track.finish()
    opening = np.array([p.open for p in poses])
    assert opening.max() > 0.6 and opening.std() > 0.15, "the mouth hardly moves"
    assert np.abs(np.diff(opening)).max() < 0.45, "the mouth jumps between frames"
    middle = len(speech) // 640 + 7  # mid-pause, clear of the smoothing window
    assert opening[middle] == 0.0
