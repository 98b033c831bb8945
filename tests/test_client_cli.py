"""`avatar-client say` and `chat` against a real `avatar-server`: the issue's acceptance, checked."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest

from conftest import VENV_BIN
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
    media = decode_fmp4(output.read_bytes(), keep_frames=True)
    frames = np.stack(media.frames).astype(np.float32)
    # The mouth region (lower middle of the face) changes while speaking; the hair does not.
    height, width = frames.shape[1:3]
    mouth = frames[:, int(height * 0.5):int(height * 0.75), int(width * 0.3):int(width * 0.7)]
    top = frames[:, : int(height * 0.1)]
    assert mouth.std(axis=0).mean() > 3 * max(top.std(axis=0).mean(), 0.1)


@pytest.mark.slow
def test_chat_one_turn_prints_the_reply_and_writes_the_video(service_process, tmp_path) -> None:
    output = tmp_path / "reply.mp4"
    result = _client(service_process, "chat", "How are you?", "-o", str(output))
    assert result.returncode == 0, result.stderr
    assert "How are you?" in result.stdout
    assert decode_fmp4(output.read_bytes()).video_frames > 0
