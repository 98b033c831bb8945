"""Measured lip-sync: the mouth re-detected on rendered frames opens with the speech's loudness (r >= 0.6)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from avatar_server.avatars.landmarks import MediaPipeFaceLandmarker
from avatar_server.renderers.lipsync import LipSyncRenderer
from avatar_server.settings import Settings
from lipsync_helpers import (
    SPEECH_FIXTURE,
    espeak_speech,
    fixture_speech,
    lip_sync_correlation,
    load_default_avatar,
    render_turn,
)

MIN_R = 0.6


@pytest.fixture(scope="module")
def default_avatar(data_dir):
    return load_default_avatar(data_dir)


@pytest.fixture(scope="module")
def landmarker():
    return MediaPipeFaceLandmarker()


def measure(default_avatar, landmarker, pcm: np.ndarray) -> float:
    async def render():
        renderer = LipSyncRenderer(Settings())
        session = await renderer.open_session(default_avatar, fps=25)
        return await render_turn(session, pcm)

    frames = asyncio.run(render())
    assert len(frames) == len(pcm) // 640
    return lip_sync_correlation(frames, pcm, landmarker)


@pytest.mark.skipif(
    not SPEECH_FIXTURE.exists(), reason="needs ../shared/fixtures (the project's sibling folder)"
)
def test_real_speech_moves_the_mouth_with_its_loudness(default_avatar, landmarker):
    r = measure(default_avatar, landmarker, fixture_speech(seconds=8.0))
    print(f"lip-sync r (fixture speech) = {r:.3f}")
    assert r >= MIN_R


@pytest.mark.parametrize(
    ("voice", "text"),
    [
        (
            "espeak-en-us",
            "Hello there! I am a talking avatar, and I can speak with you about anything you like.",
        ),
        ("espeak-ko", "안녕하세요! 저는 말하는 아바타입니다. 무엇이든 물어보세요."),
    ],
    ids=["english", "korean"],
)
def test_espeak_speech_moves_the_mouth_with_its_loudness(default_avatar, landmarker, voice, text):
    pcm = asyncio.run(espeak_speech(text, voice))
    r = measure(default_avatar, landmarker, pcm)
    print(f"lip-sync r ({voice}) = {r:.3f}")
    assert r >= MIN_R
