"""Turns a turn's fragmented MP4 (init + media segments) into an ordinary, seekable MP4.

Shared by the CLI client and the web bridge's REST API (both are clients of the contract).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

_AAC_FRAME = 1024  # samples per AAC-LC frame


class RemuxError(Exception):
    """The fragmented MP4 could not be read or written as an ordinary MP4."""


@dataclass(frozen=True)
class RemuxResult:
    """What the finished file holds, in seconds of media time."""

    duration_s: float
    video_s: float
    audio_s: float
    size_bytes: int


def remux_fragments(init: bytes, segments: list[bytes], out_path: Path) -> RemuxResult:
    """Writes `init + segments` to `out_path` as an MP4 with the moov first, without re-encoding.

    Segments of a later turn carry timestamps that continue the session's media clock, so
    every packet is shifted by one common offset that makes the file start at zero while
    audio and video keep their relative position. The service's AAC encoder holds back the
    last 0.1-0.2 s of a turn's audio (silence: turns end in silence), so the audio track is
    completed with encoded AAC silence up to the video's end; nothing else is encoded.
    Blocking: call it in a thread.
    """
    if not init or not segments:
        raise RemuxError(
            "nothing to remux: an init segment and at least one media segment are needed"
        )
    fragmented = io.BytesIO(b"".join([init, *segments]))
    try:
        with av.open(fragmented, mode="r", format="mp4") as source:
            packets, streams = _read_packets(source)
            with av.open(
                str(out_path), mode="w", format="mp4", options={"movflags": "+faststart"}
            ) as sink:
                spans = _write_packets(sink, streams, packets)
    except (av.error.FFmpegError, ValueError) as exc:
        raise RemuxError(f"remux failed: {exc}") from exc
    video_s = spans.get("video", 0.0)
    audio_s = spans.get("audio", 0.0)
    return RemuxResult(
        duration_s=max(video_s, audio_s),
        video_s=video_s,
        audio_s=audio_s,
        size_bytes=out_path.stat().st_size,
    )


def _read_packets(
    source: av.container.InputContainer,
) -> tuple[list[av.Packet], list[av.stream.Stream]]:
    """All timed audio/video packets of the source, in demux order."""
    streams = [s for s in source.streams if s.type in ("video", "audio")]
    if not any(s.type == "video" for s in streams):
        raise RemuxError("the fragmented MP4 has no video stream")
    packets = [p for p in source.demux(*streams) if p.dts is not None and p.size > 0]
    if not packets:
        raise RemuxError("the fragmented MP4 has no media packets")
    return packets, streams


def _write_packets(
    sink: av.container.OutputContainer,
    streams: list[av.stream.Stream],
    packets: list[av.Packet],
) -> dict[str, float]:
    """Muxes the packets into `sink`, shifted to start at zero; returns seconds per stream type."""
    outputs = {s.index: sink.add_stream_from_template(s) for s in streams}
    start = min(_seconds(p.pts if p.pts is not None else p.dts, p.time_base) for p in packets)
    ends: dict[str, float] = {}
    for packet in packets:
        kind = packet.stream.type
        shift = round(start / packet.time_base)
        packet.dts -= shift
        if packet.pts is not None:
            packet.pts -= shift
        end = _seconds(
            (packet.pts if packet.pts is not None else packet.dts) + packet.duration,
            packet.time_base,
        )
        ends[kind] = max(ends.get(kind, 0.0), end)
        packet.stream = outputs[packet.stream.index]
        sink.mux(packet)
    audio = next((s for s in streams if s.type == "audio"), None)
    if audio is not None and audio.codec_context.name == "aac" and "audio" in ends:
        ends["audio"] = _pad_with_silence(sink, outputs[audio.index], audio, ends)
    return ends


def _pad_with_silence(
    sink: av.container.OutputContainer,
    output: av.stream.Stream,
    source: av.audio.stream.AudioStream,
    ends: dict[str, float],
) -> float:
    """Appends AAC silence until the audio ends within half a frame of the video; new audio end."""
    rate = source.codec_context.sample_rate
    gap_frames = round((ends.get("video", 0.0) - ends["audio"]) * rate / _AAC_FRAME)
    if gap_frames <= 0:
        return ends["audio"]
    time_base = source.time_base
    position = round(ends["audio"] / time_base)
    step = round(Fraction(_AAC_FRAME, rate) / time_base)
    for payload in _silent_aac_frames(source.codec_context, gap_frames):
        packet = av.Packet(payload)
        packet.pts = packet.dts = position
        packet.duration = step
        packet.time_base = time_base
        packet.stream = output
        sink.mux(packet)
        position += step
    return _seconds(position, time_base)


def _silent_aac_frames(codec: av.audio.codec.AudioCodecContext, count: int) -> list[bytes]:
    """`count` AAC frames of silence with the stream's rate and channel layout."""
    encoder = av.CodecContext.create("aac", "w")
    encoder.sample_rate = codec.sample_rate
    encoder.layout = codec.layout.name
    encoder.format = "fltp"
    encoder.open()
    zeros = np.zeros((codec.layout.nb_channels, _AAC_FRAME), np.float32)
    payloads: list[bytes] = []
    for index in range(count):
        frame = av.AudioFrame.from_ndarray(zeros, format="fltp", layout=codec.layout.name)
        frame.sample_rate = codec.sample_rate
        frame.pts = index * _AAC_FRAME
        payloads += [bytes(packet) for packet in encoder.encode(frame)]
    payloads += [bytes(packet) for packet in encoder.encode(None)]
    return payloads[:count]


def _seconds(ticks: int, time_base: Fraction) -> float:
    return float(ticks * time_base)
