"""REST path benchmark: seconds from POST /api/chat to its answer, video seconds per wall second.

Starts `avatar-server` (embedded defaults) and `avatar-web` as subprocesses on free loopback
ports and sends sequential chat turns over real HTTP, each answered once its MP4 is published:
  python bench/bench_rest.py --turns 8
Prints medians (and worst) and, with --json, a machine-readable line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from conftest import free_port, start_service_process, stop_process  # noqa: E402

PROMPTS = [
    "Hello! Could you tell me what the weather is like today?",
    "What is your favourite book, and why do you like it?",
    "Please describe a quiet morning by the sea.",
    "How do trains stay on their tracks?",
]


async def wait_healthy(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            try:
                async with http.get(f"{url}/api/health") as reply:
                    if reply.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise TimeoutError(f"bridge at {url} not healthy after {timeout} s")


async def drive(url: str, turns: int, path: str) -> dict[str, list[float]]:
    """One warm-up turn, then `turns` timed ones on one session; every MP4 is fetched once."""
    results: dict[str, list[float]] = {
        "wall_s": [],
        "video_s": [],
        "video_per_wall": [],
        "remux_ms": [],
        "service_total_ms": [],
        "bytes": [],
    }
    session = ""
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(url, timeout=timeout) as http:
        for index in range(turns + 1):
            field = "message" if path == "/api/chat" else "text"
            payload = {field: PROMPTS[index % len(PROMPTS)], "session": session or None}
            sent = time.perf_counter()
            async with http.post(path, json=payload) as reply:
                body = await reply.json()
            wall = time.perf_counter() - sent
            if reply.status != 200:
                raise RuntimeError(f"{path} answered {reply.status}: {body}")
            session = body["session"]
            async with http.get(body["video_url"]) as video:
                size = len(await video.read())
            if index == 0:  # warms caches, threads and the session
                continue
            results["wall_s"].append(wall)
            results["video_s"].append(body["duration_s"])
            results["video_per_wall"].append(body["duration_s"] / wall)
            results["remux_ms"].append(body["timings"].get("bridge_remux_ms", 0.0))
            results["service_total_ms"].append(body["timings"]["total_ms"])
            results["bytes"].append(size)
    return results


async def run(turns: int, path: str, work: Path) -> dict[str, list[float]]:
    service = await asyncio.to_thread(start_service_process, work / "service")
    port = free_port()
    env = dict(os.environ, AVATAR_WEB_HOST="127.0.0.1", AVATAR_WEB_VIDEOS_DIR=str(work / "videos"))
    bridge = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "avatar-web"),
            "--port",
            str(port),
            "--grpc",
            service.target,
            "--log-level",
            "WARNING",
        ],
        env=env,
        cwd=REPO,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_healthy(url)
        return await drive(url, turns, path)
    finally:
        stop_process(bridge)
        stop_process(service.process)


def _line(name: str, values: list[float], unit: str, digits: int = 2) -> str:
    return (
        f"  {name:<34} median {statistics.median(values):.{digits}f} {unit} "
        f"(min {min(values):.{digits}f}, max {max(values):.{digits}f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=8, help="timed turns (after one warm-up)")
    parser.add_argument("--path", choices=["/api/chat", "/api/speak"], default="/api/chat")
    parser.add_argument("--json", action="store_true", help="also print one JSON line")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-rest-") as work:
        results = asyncio.run(run(args.turns, args.path, Path(work)))
    print(
        f"REST {args.path}: {args.turns} sequential turns on one session, "
        f"{platform.node()} ({os.cpu_count()} CPUs), embedded defaults"
    )
    print(_line("POST -> response", results["wall_s"], "s"))
    print(_line("video seconds per wall second", results["video_per_wall"], "x"))
    print(_line("video length", results["video_s"], "s"))
    print(_line("bridge remux", results["remux_ms"], "ms", 1))
    print(_line("service turn total (TurnCompleted)", results["service_total_ms"], "ms", 0))
    total_video, total_wall = sum(results["video_s"]), sum(results["wall_s"])
    print(
        f"  overall: {total_video:.1f} s of video in {total_wall:.1f} s of wall time "
        f"({total_video / total_wall:.2f}x)"
    )
    if args.json:
        summary = {key: statistics.median(values) for key, values in results.items()}
        print(
            json.dumps(
                {
                    "bench": "rest",
                    "path": args.path,
                    "turns": args.turns,
                    "median": summary,
                    "raw": results,
                }
            )
        )


if __name__ == "__main__":
    main()
