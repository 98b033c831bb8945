"""The fMP4 -> ordinary MP4 remux: stream copy, faststart, turns that start mid-session."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from pathlib import Path

import av
import numpy as np
import pytest
from avatar_client.mp4 import RemuxError, remux_fragments

FPS = 25
RATE = 16000


def make_fragmented_mp4(
    seconds: float, size: int = 64, audio_seconds: float | None = None
) -> bytes:
    """A real H.264 + AAC fragmented MP4 (a fragment per 1 s key frame interval), made by PyAV."""
    buffer = io.BytesIO()
    options = {"movflags": "frag_keyframe+empty_moov+default_base_moof"}
    with av.open(buffer, "w", format="mp4", options=options) as container:
        video = container.add_stream(
            "libx264",
            rate=FPS,
            options={
                "g": str(FPS),
                "keyint_min": str(FPS),
                "sc_threshold": "0",
                "preset": "ultrafast",
            },
        )
        video.width = video.height = size
        video.pix_fmt = "yuv420p"
        audio = container.add_stream("aac", rate=RATE)
        audio.layout = "mono"
        for index in range(int(seconds * FPS)):
            image = np.full((size, size, 3), (index * 7) % 255, np.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = index
            container.mux(video.encode(frame))
        samples = int((seconds if audio_seconds is None else audio_seconds) * RATE)
        tone = (np.sin(2 * np.pi * 440 * np.arange(samples) / RATE) * 8000).astype(np.int16)
        for start in range(0, samples, 1024):
            frame = av.AudioFrame.from_ndarray(
                tone[None, start : start + 1024], format="s16", layout="mono"
            )
            frame.sample_rate = RATE
            frame.pts = start
            container.mux(audio.encode(frame))
        container.mux(video.encode())
        container.mux(audio.encode())
    return buffer.getvalue()


def split_fragments(data: bytes) -> tuple[bytes, list[bytes]]:
    """Init (ftyp + moov) and media segments (moof + mdat pairs), as the service sends them."""
    boxes, offset = [], 0
    while offset < len(data):
        size = int.from_bytes(data[offset : offset + 4], "big")
        boxes.append((data[offset + 4 : offset + 8], data[offset : offset + size]))
        offset += size
    init = b"".join(box for kind, box in boxes if kind in (b"ftyp", b"moov"))
    media = [box for kind, box in boxes if kind in (b"moof", b"mdat")]
    return init, [media[i] + media[i + 1] for i in range(0, len(media), 2)]


def top_level_boxes(path: Path) -> list[bytes]:
    data, offset, kinds = path.read_bytes(), 0, []
    while offset < len(data):
        size = int.from_bytes(data[offset : offset + 4], "big")
        kinds.append(data[offset + 4 : offset + 8])
        offset += size if size else len(data)
    return kinds


@pytest.fixture(scope="module")
def fragments() -> tuple[bytes, list[bytes]]:
    return split_fragments(make_fragmented_mp4(3.0))


def test_whole_stream_becomes_faststart_mp4_with_same_packets(fragments, tmp_path):
    init, segments = fragments
    assert len(segments) == 3
    out = tmp_path / "reply.mp4"
    result = remux_fragments(init, segments, out)
    kinds = top_level_boxes(out)
    assert b"moof" not in kinds
    assert kinds.index(b"moov") < kinds.index(b"mdat")  # faststart
    assert result.size_bytes == out.stat().st_size
    assert result.video_s == pytest.approx(3.0, abs=0.1)
    with av.open(str(out)) as container:
        video = container.streams.video[0]
        assert video.codec_context.name == "h264"
        assert container.streams.audio[0].codec_context.name == "aac"
        decoded = sum(1 for _ in container.decode(video=0))
    assert decoded == 3 * FPS


def test_later_turn_segments_are_shifted_to_start_at_zero(fragments, tmp_path):
    init, segments = fragments
    out = tmp_path / "turn2.mp4"
    result = remux_fragments(init, segments[1:], out)
    assert result.video_s == pytest.approx(2.0, abs=0.05)
    assert result.audio_s == pytest.approx(2.0, abs=0.1)
    with av.open(str(out)) as container:
        first = next(p for p in container.demux(video=0) if p.pts is not None)
        assert first.pts == 0 and first.is_keyframe


@pytest.mark.skipif(shutil.which("ffprobe") is None, reason="ffprobe not installed")
def test_independent_decoder_sees_matching_audio_and_video(fragments, tmp_path):
    init, segments = fragments
    out = tmp_path / "turn2.mp4"
    remux_fragments(init, segments[1:], out)
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-show_streams", "-show_format", "-of", "json", str(out)],
        capture_output=True,
        text=True,
        check=True,
    )
    info = json.loads(probe.stdout)
    streams = {s["codec_type"]: s for s in info["streams"]}
    assert streams["video"]["codec_name"] == "h264" and streams["audio"]["codec_name"] == "aac"
    assert float(streams["video"]["duration"]) == pytest.approx(
        float(streams["audio"]["duration"]), abs=0.1
    )


def test_missing_parts_and_garbage_are_remux_errors(fragments, tmp_path):
    init, segments = fragments
    with pytest.raises(RemuxError):
        remux_fragments(init, [], tmp_path / "a.mp4")
    with pytest.raises(RemuxError):
        remux_fragments(b"", segments, tmp_path / "b.mp4")
    with pytest.raises(RemuxError):
        remux_fragments(b"\x00\x00\x00\x08junk", [b"not a segment"], tmp_path / "c.mp4")


def test_audio_held_back_by_the_encoder_is_completed_with_silence(tmp_path):
    init, segments = split_fragments(make_fragmented_mp4(2.0, audio_seconds=1.7))
    out = tmp_path / "short-audio.mp4"
    result = remux_fragments(init, segments, out)
    assert result.audio_s == pytest.approx(result.video_s, abs=0.033)
    with av.open(str(out)) as container:
        pcm = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio=0)])
    assert len(pcm) / RATE == pytest.approx(result.video_s, abs=0.07)
    assert np.abs(pcm[: int(1.5 * RATE)]).max() > 0.1  # the tone is still there
    assert np.abs(pcm[int(1.9 * RATE) :]).max() < 1e-3  # the added tail is silent
