"""Service benchmark on embedded defaults: time to first text/audio/video, realtime factor, barge-in.

Runs an in-process server on loopback and drives real Converse streams:
  python bench/bench_service.py --turns 12
Prints medians (and worst) and, with --json, a machine-readable line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from avatar.v1 import avatar_pb2 as pb  # noqa: E402
from conftest import running_service  # noqa: E402
from service_helpers import Conversation  # noqa: E402

PROMPTS = [
    "Hello! Could you tell me what the weather is like today?",
    "What is your favourite book, and why do you like it?",
    "Please describe a quiet morning by the sea.",
    "How do trains stay on their tracks?",
]


def _median(values: list[float]) -> str:
    return f"{statistics.median(values):7.0f} ms (worst {max(values):.0f})" if values else "n/a"


async def run(turns: int, interrupts: int, data_dir: Path) -> dict[str, object]:
    async with running_service(data_dir, echo_token_delay_s=0.02) as service:
        talk = Conversation(service.stub, pb.SessionConfig(language="en-US"))
        await talk.until("video_init")
        completed: list[pb.TurnCompleted] = []
        for index in range(turns + 1):
            talk.say(PROMPTS[index % len(PROMPTS)])
            events = await talk.until("turn_completed", "error")
            if events[-1].HasField("error"):
                raise RuntimeError(events[-1].error.message)
            if index:  # the first turn warms caches and threads
                completed.append(events[-1].turn_completed)
        stops, walls = [], []
        for _ in range(interrupts):
            talk.say("Tell me a long story about the mountains and the rivers. " * 4)
            await talk.until("video_segment")
            sent = time.perf_counter()
            talk.send(interrupt=pb.Interrupt())
            events = await talk.until("turn_cancelled", "turn_completed")
            walls.append((time.perf_counter() - sent) * 1000.0)
            if events[-1].HasField("turn_cancelled"):
                stops.append(events[-1].turn_cancelled.stop_ms)
        await talk.close()
    t = [c.timings for c in completed]
    return {
        "turns": len(completed),
        "first_text_ms": [x.first_text_ms for x in t],
        "first_audio_ms": [x.first_audio_ms for x in t],
        "first_frame_ms": [x.first_frame_ms for x in t],
        "first_segment_ms": [x.first_segment_ms for x in t],
        "first_segment_after_first_token_ms": [x.first_segment_after_first_token_ms for x in t],
        "realtime_factor": [c.realtime_factor for c in completed],
        "media_seconds": [c.media_seconds for c in completed],
        "interrupt_stop_ms": stops,
        "interrupt_wall_ms": walls,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=12)
    parser.add_argument("--interrupts", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = asyncio.run(run(args.turns, args.interrupts, Path(tmp)))
    print(f"# service benchmark: embedded defaults (echo LLM, espeak-ng, CPU lip-sync, x264), "
          f"{result['turns']} turns, {platform.node()} ({platform.machine()}, "
          f"{__import__('os').cpu_count()} cores)")
    print(f"time to first text           {_median(result['first_text_ms'])}")
    print(f"time to first audio          {_median(result['first_audio_ms'])}")
    print(f"time to first frame          {_median(result['first_frame_ms'])}")
    print(f"time to first video segment  {_median(result['first_segment_ms'])}")
    print(f"first segment after 1st token{_median(result['first_segment_after_first_token_ms'])}")
    rtf = result["realtime_factor"]
    print(f"render+encode realtime factor {statistics.median(rtf):.3f} (worst {max(rtf):.3f}) "
          f"over {sum(result['media_seconds']):.1f} s of speech")
    print(f"barge-in: pipeline stopped   {_median(result['interrupt_stop_ms'])}")
    print(f"barge-in: interrupt->event   {_median(result['interrupt_wall_ms'])}")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
