"""`avatar-client say` and `chat` against a real `avatar-server`: the issue's acceptance, checked."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest
from avatar_server.avatars.landmarks import MediaPipeFaceLandmarker
from avatar_server.core.frames import Frame
from conftest import VENV_BIN
from lipsync_helpers import lip_sync_correlation
from service_helpers import decode_fmp4


def _client(service, *args: str) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def]
    return subprocess.run([str(VENV_BIN / "avatar-client"), "--server", service.target, *args],
                          capture_output=True, text=True, timeout=180)


def _ffprobe_durations(path) -> dict[str, float]:  # type: ignore[no-untyped-def]
    if not shutil.which("ffprobe"):
        pytest.skip("ffprobe not installed (apt-get install ffmpeg)")
    result = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "stream=codec_type,codec_name,duration",
         "-of", "json", str(path)], capture_output=True, text=True, check=True)
    return {s["codec_type"]: float(s["duration"]) for s in json.loads(result.stdout)["streams"]}


@pytest.mark.slow
def test_say_writes_a_playable_lip_synced_mp4(service_process, tmp_path) -> None:
    output = tmp_path / "hello.mp4"
    result = _client(service_process, "say", "Hello, nice to meet you.", "-o", str(output))
    assert result.returncode == 0, result.stderr
    assert "first segment" in result.stderr  # timings are printed
    durations = _ffprobe_durations(output)
    # About 1.5-2.5 s of espeak speech plus 0.24 s of lead-in and tail silence.
    assert 1.0 < durations["video"] < 4.0
    assert abs(durations["audio"] - durations["video"]) < 0.25
    # The mouth moves with the speech: lips re-detected on the decoded video follow the decoded audio.
    media = decode_fmp4(output.read_bytes(), keep_frames=True)
    audio = np.concatenate(media.audio)[: media.video_frames * 640]
    pcm = (np.clip(audio, -1, 1) * 32767).astype(np.int16)
    frames = [Frame(frame) for frame in media.frames[: len(pcm) // 640]]
    r = lip_sync_correlation(frames, pcm, MediaPipeFaceLandmarker(), step=1)
    assert r >= 0.5, f"mouth opening vs loudness r={r:.2f}"


@pytest.mark.slow
def test_chat_one_turn_prints_the_reply_and_writes_the_video(service_process, tmp_path) -> None:
    output = tmp_path / "reply.mp4"
    result = _client(service_process, "chat", "How are you?", "-o", str(output))
    assert result.returncode == 0, result.stderr
    assert "How are you?" in result.stdout
    assert decode_fmp4(output.read_bytes()).video_frames > 0
