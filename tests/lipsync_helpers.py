"""Shared pieces of the avatar and lip-sync tests: speech audio, the default avatar, the lip-sync measure."""

from __future__ import annotations

import asyncio
import wave
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
from avatar_server.avatars.landmarks import FaceLandmarker, inner_lip_gap
from avatar_server.avatars.model import AvatarAssets
from avatar_server.avatars.registry import AvatarRegistry
from avatar_server.core.frames import Frame
from avatar_server.media.resample import resample
from avatar_server.providers.tts.espeak import EspeakSynthesizer
from avatar_server.renderers.base import RenderSession
from avatar_server.settings import EspeakSettings

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SPEECH_FIXTURE = SHARED / "fixtures" / "ditto_example_speech_24k.wav"
RATE = 16000
HOP = RATE // 25


def whole_frames(pcm: np.ndarray) -> np.ndarray:
    """`pcm` cut to a whole number of 25 fps frames."""
    return pcm[: len(pcm) // HOP * HOP]


def fixture_speech(seconds: float) -> np.ndarray:
    """The first `seconds` of the shared real speech clip, float32 at 16 kHz."""
    with wave.open(str(SPEECH_FIXTURE)) as clip:
        pcm = np.frombuffer(clip.readframes(clip.getnframes()), np.int16)
        rate = clip.getframerate()
    return whole_frames(resample(pcm.astype(np.float32) / 32768, rate, RATE)[: int(seconds * RATE)])


async def espeak_speech(text: str, voice: str) -> np.ndarray:
    """espeak-ng's speech for `text` (through the project's provider), float32 at 16 kHz."""
    synthesizer = EspeakSynthesizer(EspeakSettings())
    pieces = [piece async for piece in synthesizer.synthesize(text, voice=voice, language="")]
    pcm = np.concatenate(
        [resample(p.pcm.astype(np.float32) / 32768, p.sample_rate, RATE) for p in pieces]
    )
    return whole_frames(pcm)


def load_default_avatar(data_dir: Path) -> AvatarAssets:
    """The built-in astronaut (analysed once per test run in the shared data folder)."""

    async def load() -> AvatarAssets:
        registry = AvatarRegistry(data_dir, max_upload_bytes=50 * 1024 * 1024)
        await registry.start()
        return await registry.load(registry.default_id)

    return asyncio.run(load())


async def chunked(pcm: np.ndarray, size: int) -> AsyncIterator[np.ndarray]:
    """`pcm` as an async stream of `size`-sample chunks."""
    for start in range(0, len(pcm), size):
        yield pcm[start : start + size]


async def render_turn(session: RenderSession, pcm: np.ndarray, chunk: int = 3200) -> list[Frame]:
    """All frames of one turn."""
    return [frame async for frame in session.render(chunked(pcm, chunk))]


def loudness_envelope(pcm: np.ndarray) -> np.ndarray:
    """RMS loudness per 25 fps frame."""
    return np.sqrt((whole_frames(pcm).reshape(-1, HOP).astype(np.float64) ** 2).mean(axis=1))


def lip_sync_correlation(
    frames: list[Frame], pcm: np.ndarray, landmarker: FaceLandmarker, step: int = 2
) -> float:
    """Pearson r between the mouth opening re-detected on the frames and the audio's loudness.

    Every `step`-th frame is measured: the inner-lip gap of the landmarks found
    on the rendered picture, against that frame's RMS.
    """
    indices = np.arange(0, len(frames), step)
    gaps = []
    for index in indices:
        faces = landmarker.detect(np.ascontiguousarray(frames[index].data))
        assert faces, f"no face found on rendered frame {index}"
        gaps.append(inner_lip_gap(faces[0].landmarks))
    return float(np.corrcoef(np.array(gaps), loudness_envelope(pcm)[indices])[0, 1])
