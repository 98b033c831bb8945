"""Load test on loopback: N concurrent Converse sessions, turns back to back, bounded in time.

  python bench/loadtest.py --sessions 8 --seconds 60        (`make loadtest`)

Starts a real `avatar-server` subprocess on embedded defaults (echo LLM, espeak-ng,
CPU lip-sync; auth off, loopback only) with its Prometheus endpoint on, then runs
--sessions sessions that each send a turn as soon as the previous one ends, until
--seconds pass (turns running then are allowed to finish). Prints turns/s, p50/p95
time to first video segment (measured by the client from sending the message, and as
the server reports it), errors by status, and the server's CPU use and RSS. Finally it
drops a few sessions mid-turn and reads from /metrics how fast their turns stopped
(the issue's target: within 200 ms, renderer slot freed).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import grpc

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / "tests"), str(Path(__file__).resolve().parents[1])]

from avatar.v1 import avatar_pb2 as pb
from avatar.v1 import avatar_pb2_grpc as pb_grpc
from conftest import free_port, start_service_process, stop_process
from service_helpers import Conversation

from bench.proc_stats import cpu_seconds

PROMPTS = [
    "Hello! Could you tell me what the weather is like today?",
    "What is your favourite book, and why do you like it?",
    "Please describe a quiet morning by the sea.",
    "How do trains stay on their tracks?",
]
CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def scrape(port: int) -> dict[str, float]:
    """The /metrics samples as {'name{labels}': value}."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))] if ordered else float("nan")


class Tally:
    """What every session saw."""

    def __init__(self) -> None:
        self.completed = 0
        self.first_video_client_ms: list[float] = []
        self.first_video_server_ms: list[float] = []
        self.media_seconds = 0.0
        self.errors: collections.Counter[str] = collections.Counter()


async def one_session(stub: pb_grpc.AvatarServiceStub, index: int, stop_at: float, tally: Tally) -> None:
    try:
        talk = Conversation(stub, pb.SessionConfig(language="en-US"))
        await talk.until("video_init")
    except grpc.aio.AioRpcError as error:
        tally.errors[f"open:{error.code().name}"] += 1
        return
    turn = 0
    try:
        while time.monotonic() < stop_at:
            sent = time.perf_counter()
            talk.say(PROMPTS[(index + turn) % len(PROMPTS)])
            turn += 1
            first_video = None
            while True:
                event = await talk.next(timeout=300)
                kind = event.WhichOneof("event")
                if kind == "video_segment" and first_video is None:
                    first_video = (time.perf_counter() - sent) * 1000.0
                elif kind == "error":
                    tally.errors[f"{event.error.stage}:{CODE_NAMES.get(event.error.code, event.error.code)}"] += 1
                    break
                elif kind == "turn_completed":
                    tally.completed += 1
                    tally.media_seconds += event.turn_completed.media_seconds
                    tally.first_video_server_ms.append(event.turn_completed.timings.first_segment_ms)
                    if first_video is not None:
                        tally.first_video_client_ms.append(first_video)
                    break
    except grpc.aio.AioRpcError as error:
        tally.errors[f"stream:{error.code().name}"] += 1
    except TimeoutError:
        tally.errors["client:TIMEOUT"] += 1
    finally:
        await talk.close()


async def disconnects(stub: pb_grpc.AvatarServiceStub, count: int) -> list[float]:
    """Drops `count` sessions mid-turn; returns ms until the server's session count went down."""
    freed = []
    for _ in range(count):
        talk = Conversation(stub, pb.SessionConfig())
        await talk.until("video_init")
        talk.say("Tell me a long story about the sea and the ships that sail on it. " * 3)
        await talk.until("video_segment")
        before = (await stub.GetServerInfo(pb.GetServerInfoRequest())).capacity.active_sessions
        began = time.perf_counter()
        talk.call.cancel()
        while (await stub.GetServerInfo(pb.GetServerInfoRequest())).capacity.active_sessions >= before:
            if time.perf_counter() - began > 5:
                break
            await asyncio.sleep(0.005)
        freed.append((time.perf_counter() - began) * 1000.0)
    return freed


async def drive(target: str, sessions: int, seconds: float, drops: int) -> tuple[Tally, float, list[float]]:
    async with grpc.aio.insecure_channel(target, options=[("grpc.max_receive_message_length", 64 << 20)]) as channel:
        stub = pb_grpc.AvatarServiceStub(channel)
        # Warm-up: one turn, so caches and threads are up before the clock starts.
        await one_session(stub, 0, time.monotonic() + 0.001, Tally())
        tally = Tally()
        began = time.monotonic()
        await asyncio.gather(*(one_session(stub, i, began + seconds, tally) for i in range(sessions)))
        elapsed = time.monotonic() - began
        freed = await disconnects(stub, drops)
        return tally, elapsed, freed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--disconnects", type=int, default=5, help="mid-turn drops measured at the end")
    parser.add_argument("--json", action="store_true", help="also print one JSON line")
    args = parser.parse_args()

    metrics_port = free_port()
    with tempfile.TemporaryDirectory() as data_dir:
        service = start_service_process(Path(data_dir), env={
            "AVATAR_METRICS_PORT": str(metrics_port), "AVATAR_ECHO_TOKEN_DELAY_S": "0.02",
            "AVATAR_MAX_SESSIONS": str(max(32, args.sessions + 2)), "AVATAR_LOG_LEVEL": "WARNING",
        })
        pid = service.process.pid
        try:
            cpu_before, wall_before = cpu_seconds(pid), time.monotonic()
            tally, elapsed, freed = asyncio.run(drive(service.target, args.sessions, args.seconds, args.disconnects))
            cpu_used = cpu_seconds(pid) - cpu_before
            wall = time.monotonic() - wall_before
            rss = rss_mib(pid)
            metrics = scrape(metrics_port)
        finally:
            stop_process(service.process)

    stop_count = metrics.get("avatar_cancel_stop_seconds_count{}", 0)
    stop_fast = metrics.get("avatar_cancel_stop_seconds_bucket{le=0.2}", 0)
    stop_mean = metrics.get("avatar_cancel_stop_seconds_sum{}", 0) / stop_count * 1000 if stop_count else float("nan")
    server_errors = {k.split("{", 1)[1].rstrip("}"): v for k, v in metrics.items()
                     if k.startswith("avatar_errors_total") and v}
    result = {
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores",
        "sessions": args.sessions, "seconds": round(elapsed, 1), "turns": tally.completed,
        "turns_per_s": round(tally.completed / elapsed, 3),
        "media_s_per_wall_s": round(tally.media_seconds / elapsed, 2),
        "first_video_client_ms_p50": round(percentile(tally.first_video_client_ms, 0.5)),
        "first_video_client_ms_p95": round(percentile(tally.first_video_client_ms, 0.95)),
        "first_video_server_ms_p50": round(percentile(tally.first_video_server_ms, 0.5)),
        "first_video_server_ms_p95": round(percentile(tally.first_video_server_ms, 0.95)),
        "errors": dict(tally.errors), "server_errors_metric": server_errors,
        "server_cpu_cores": round(cpu_used / wall, 2), "server_rss_mib": round(rss),
        "disconnect_free_ms_median": round(statistics.median(freed)) if freed else None,
        "disconnect_free_ms_max": round(max(freed)) if freed else None,
        "cancel_stop_within_200ms": f"{int(stop_fast)}/{int(stop_count)}",
        "cancel_stop_mean_ms": round(stop_mean, 1),
    }
    print(f"machine            {result['machine']}, Python {platform.python_version()}")
    print(f"load               {args.sessions} sessions for {result['seconds']} s on loopback")
    print(f"turns              {tally.completed} completed, {result['turns_per_s']} turns/s, "
          f"{result['media_s_per_wall_s']} media s per wall s")
    print(f"first video (client) p50 {result['first_video_client_ms_p50']} ms, p95 {result['first_video_client_ms_p95']} ms")
    print(f"first video (server) p50 {result['first_video_server_ms_p50']} ms, p95 {result['first_video_server_ms_p95']} ms")
    print(f"errors by status   {dict(tally.errors) or 'none'} (server metric: {server_errors or 'none'})")
    print(f"server             {result['server_cpu_cores']} cores busy on average, RSS {result['server_rss_mib']} MiB")
    print(f"disconnect mid-turn: session freed in median {result['disconnect_free_ms_median']} ms "
          f"(max {result['disconnect_free_ms_max']}); turn stopped within 200 ms: "
          f"{result['cancel_stop_within_200ms']} (mean {result['cancel_stop_mean_ms']} ms)")
    if args.json:
        print(json.dumps(result))
    sys.exit(1 if tally.completed == 0 else 0)


if __name__ == "__main__":
    main()
