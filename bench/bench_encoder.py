"""Benchmark: SegmentEncoder speed (median ms per frame) at 512x512, 25 fps, 1 s segments.

Frames are a moving, textured picture (the shared portrait when present, else a synthetic
pattern) with small per-frame motion, like a talking head; audio is a speech-like tone.
Run: .venv/bin/python bench/bench_encoder.py [--seconds 20] [--preset veryfast] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import av
import numpy as np
from avatar_server.core.frames import Frame
from avatar_server.media import SegmentEncoder

PORTRAIT = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "ditto_example_portrait.jpg"


def base_picture(size: int) -> np.ndarray:
    """The shared portrait scaled to size x size, or a textured synthetic picture."""
    if PORTRAIT.exists():
        with av.open(str(PORTRAIT)) as container:
            frame = next(container.decode(video=0))
        return frame.reformat(width=size, height=size, format="rgb24").to_ndarray()
    y, x = np.mgrid[0:size, 0:size]
    rng = np.random.default_rng(0)
    picture = np.stack([(x * 255 // size), (y * 255 // size), ((x ^ y) & 0xFF)], axis=-1)
    return np.clip(picture + rng.integers(-12, 12, picture.shape), 0, 255).astype(np.uint8)


def moving_frames(picture: np.ndarray, count: int, start: int) -> list[Frame]:
    """Frames of `picture` with a little sway and a changing 'mouth' patch."""
    size = picture.shape[0]
    frames = []
    for index in range(start, start + count):
        shifted = np.roll(picture, (int(3 * np.sin(index / 9)), int(2 * np.cos(index / 13))), axis=(0, 1))
        mouth = shifted.copy()
        opening = 8 + int(8 * abs(np.sin(index / 2)))
        mouth[size * 2 // 3 : size * 2 // 3 + opening, size * 2 // 5 : size * 3 // 5] //= 3
        frames.append(Frame(mouth))
    return frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--preset", default="veryfast")
    parser.add_argument("--crf", type=int, default=23)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    clock_rate = 16000
    encoder = SegmentEncoder(
        width=args.size, height=args.size, fps=args.fps, clock_rate=clock_rate,
        crf=args.crf, preset=args.preset, threads=args.threads,
    )
    picture = base_picture(args.size)
    spf = encoder.samples_per_frame
    t = np.arange(args.fps * spf) / clock_rate
    speech = (6000 * np.sin(2 * np.pi * 180 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.int16)
    per_frame_ms, total_bytes = [], 0
    for second in range(args.seconds):
        frames = moving_frames(picture, args.fps, second * args.fps)
        started = time.perf_counter()
        segment = encoder.encode(frames, speech)
        per_frame_ms.append((time.perf_counter() - started) * 1000 / args.fps)
        total_bytes += len(segment.data)
    encoder.close()
    print(
        f"SegmentEncoder {args.size}x{args.size} @ {args.fps} fps, preset={args.preset} crf={args.crf} "
        f"threads={args.threads}: median {statistics.median(per_frame_ms):.2f} ms/frame "
        f"(min {min(per_frame_ms):.2f}, max {max(per_frame_ms):.2f}) over {args.seconds} segments; "
        f"{total_bytes * 8 / args.seconds / 1000:.0f} kbit/s; "
        f"real-time factor {1000 / args.fps / statistics.median(per_frame_ms):.1f}x per core"
    )


if __name__ == "__main__":
    main()
