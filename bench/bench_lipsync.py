"""Benchmarks the CPU lip-sync renderer plus H.264 encoding on the default 512x512 avatar at 25 fps.

Usage: `.venv/bin/python bench/bench_lipsync.py [--turns 8] [--preset veryfast]`.
Each turn is one espeak-ng sentence, rendered and encoded into 1 s fMP4 segments
one after the other on this process (no overlap between the two stages, so the
figure is conservative). Prints each turn's realtime factor (processing time /
audio time), then the median, and frames per second.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from avatar_server.media.encoder import SegmentEncoder  # noqa: E402
from avatar_server.renderers.lipsync import LipSyncRenderer  # noqa: E402
from avatar_server.settings import Settings  # noqa: E402
from lipsync_helpers import espeak_speech, load_default_avatar, render_turn  # noqa: E402

SENTENCES = [
    ("espeak-en-us", "Hello! I am the default avatar, and I talk on any computer."),
    ("espeak-en-us", "The weather today is sunny, with a gentle breeze from the west."),
    ("espeak-ko", "안녕하세요. 오늘 무엇을 도와드릴까요?"),
    ("espeak-en-us", "Lip sync runs on the CPU, frame by frame, as the audio arrives."),
]
FPS = 25
RATE = 16000


async def run(turns: int, preset: str, crf: int) -> None:
    settings = Settings()
    with tempfile.TemporaryDirectory() as data_dir:
        avatar = await asyncio.to_thread(load_default_avatar, Path(data_dir))
    renderer = LipSyncRenderer(settings)
    session = await renderer.open_session(avatar, fps=FPS)
    encoder = SegmentEncoder(
        width=session.width,
        height=session.height,
        fps=FPS,
        clock_rate=RATE,
        crf=crf,
        preset=preset,
        threads=1,
    )
    speech = [await espeak_speech(text, voice) for voice, text in SENTENCES]
    await render_turn(session, speech[0])  # warm up
    factors, cpu_factors, render_s, encode_s, frames_done = [], [], 0.0, 0.0, 0
    for turn in range(turns):
        pcm = speech[turn % len(speech)]
        started, cpu_started = time.perf_counter(), time.process_time()
        frames = await render_turn(session, pcm)
        rendered = time.perf_counter()
        pcm16 = (np.clip(pcm, -1, 1) * 32767).astype(np.int16)
        for start in range(0, len(frames), FPS):
            part = frames[start : start + FPS]
            encoder.encode(part, pcm16[start * 640 : (start + len(part)) * 640])
        finished = time.perf_counter()
        audio_s = len(pcm) / RATE
        factors.append((finished - started) / audio_s)
        cpu_factors.append((time.process_time() - cpu_started) / audio_s)
        render_s += rendered - started
        encode_s += finished - rendered
        frames_done += len(frames)
        print(
            f"turn {turn}: {audio_s:.2f} s audio, {len(frames)} frames, realtime factor {factors[-1]:.3f}, "
            f"CPU {cpu_factors[-1]:.3f}"
        )
    print(
        f"\ncores: {os.cpu_count()}, load average: {os.getloadavg()[0]:.2f}, x264 preset {preset}, crf {crf}"
    )
    print(f"median realtime factor (render + encode): {statistics.median(factors):.3f}")
    print(
        f"median CPU seconds per audio second (load-independent): {statistics.median(cpu_factors):.3f}"
    )
    print(
        f"render + encode: {frames_done / (render_s + encode_s):.1f} frames/s "
        f"(render alone {frames_done / render_s:.1f}, encode alone {frames_done / encode_s:.1f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=8)
    parser.add_argument("--preset", default=Settings().media.x264_preset)
    parser.add_argument("--crf", type=int, default=Settings().media.video_crf)
    args = parser.parse_args()
    asyncio.run(run(args.turns, args.preset, args.crf))


if __name__ == "__main__":
    main()
