"""Soak test: many turns over several sessions; the server's resources must not grow.

  python bench/soak.py --sessions 8 --turns 200        (`make soak`)

The service runs in this process, on its own event loop in its own thread (so its
asyncio tasks can be counted exactly); the clients run on the main thread's loop and
reach it over loopback gRPC. After two warm-up turns per session (one interrupted), with all sessions
open, it records RSS, open file descriptors (/proc/self/fd), threads and the server
loop's asyncio tasks; then it runs --turns turns (every fifth one interrupted
mid-way, a barge-in) and records them again with the same sessions open; then it
closes every session and checks the server went back to its idle task count.

Bounds (pass/fail): RSS grows at most --rss-bound-mib (default 64 MiB), open fds at
most 8, threads at most 4, server-loop tasks not at all (same sessions open), and
after closing all sessions the tasks equal the idle count before any session.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from avatar.v1 import avatar_pb2 as pb  # noqa: E402
from avatar.v1 import avatar_pb2_grpc as pb_grpc  # noqa: E402
from conftest import running_service  # noqa: E402
from service_helpers import Conversation  # noqa: E402

PROMPTS = [
    "Hello there, how are you today?",
    "Tell me one thing about the moon.",
    "What time do trains leave in the morning?",
    "Thanks, that was helpful.",
]
LONG_PROMPT = "Tell me a long story about a lighthouse keeper and the storm that came in the night. " * 2


class ServerThread:
    """The real service on a private event loop in a thread; `call` runs coroutines on that loop."""

    def __init__(self, data_dir: Path, **settings: object) -> None:
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.stop = asyncio.Event()
        self.service = None
        self.thread = threading.Thread(target=self._run, args=(data_dir, settings), daemon=True)

    def _run(self, data_dir: Path, settings: dict) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._serve(data_dir, settings))

    async def _serve(self, data_dir: Path, settings: dict) -> None:
        async with running_service(data_dir, **settings) as service:
            self.service = service
            self.ready.set()
            await self.stop.wait()

    def start(self) -> str:
        self.thread.start()
        if not self.ready.wait(180):
            raise TimeoutError("service did not start")
        return self.service.target  # type: ignore[union-attr]

    def call(self, coroutine):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(60)

    def shutdown(self) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(60)


async def _server_tasks() -> int:
    return len(asyncio.all_tasks())


def snapshot(server: ServerThread) -> dict[str, float]:
    """RSS (MiB), open fds, threads of this process and asyncio tasks on the server's loop."""
    gc.collect()
    status = Path("/proc/self/status").read_text().splitlines()
    fields = {line.split(":")[0]: line.split(":")[1].split() for line in status}
    return {
        "rss_mib": int(fields["VmRSS"][0]) / 1024,
        "fds": len(os.listdir("/proc/self/fd")),
        "threads": int(fields["Threads"][0]),
        "tasks": server.call(_server_tasks()) - 1,  # less the counting task itself
        "sessions": len(server.service.deps.sessions),  # type: ignore[union-attr]
    }


async def one_turn(talk: Conversation, index: int, interrupt: bool) -> str:
    talk.say(LONG_PROMPT if interrupt else PROMPTS[index % len(PROMPTS)])
    if interrupt:
        await talk.until("video_segment", "error")
        talk.send(interrupt=pb.Interrupt())
    events = await talk.until("turn_completed", "turn_cancelled", "error", timeout=300)
    return events[-1].WhichOneof("event")


async def soak(target: str, server: ServerThread, sessions: int, turns: int) -> dict[str, object]:
    async with grpc.aio.insecure_channel(target, options=[("grpc.max_receive_message_length", 64 << 20)]) as channel:
        stub = pb_grpc.AvatarServiceStub(channel)
        idle = await asyncio.to_thread(snapshot, server)
        talks = [Conversation(stub, pb.SessionConfig()) for _ in range(sessions)]
        for talk in talks:
            await talk.until("video_init")
        warm = await asyncio.gather(*(one_turn(talk, i, False) for i, talk in enumerate(talks)))
        warm += await asyncio.gather(*(one_turn(talk, i, True) for i, talk in enumerate(talks)))
        start = await asyncio.to_thread(snapshot, server)
        outcomes: dict[str, int] = {}
        queue: asyncio.Queue[int] = asyncio.Queue()
        for number in range(turns):
            queue.put_nowait(number)
        began = time.monotonic()

        async def worker(talk: Conversation) -> None:
            while not queue.empty():
                number = queue.get_nowait()
                outcome = await one_turn(talk, number, interrupt=number % 5 == 4)
                outcomes[outcome] = outcomes.get(outcome, 0) + 1

        await asyncio.gather(*(worker(talk) for talk in talks))
        elapsed = time.monotonic() - began
        end = await asyncio.to_thread(snapshot, server)
        for talk in talks:
            await talk.close()
        deadline = time.monotonic() + 10
        while server.service.deps.sessions and time.monotonic() < deadline:  # type: ignore[union-attr]
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        closed = await asyncio.to_thread(snapshot, server)
        return {"idle": idle, "start": start, "end": end, "closed": closed, "outcomes": outcomes,
                "warm": warm, "elapsed": elapsed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--turns", type=int, default=200)
    parser.add_argument("--rss-bound-mib", type=float, default=64.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as data_dir:
        server = ServerThread(Path(data_dir), echo_token_delay_s=0.005, max_sessions=args.sessions + 4,
                              log_level="WARNING")
        target = server.start()
        try:
            result = asyncio.run(soak(target, server, args.sessions, args.turns))
        finally:
            server.shutdown()
    idle, start, end, closed = (result[k] for k in ("idle", "start", "end", "closed"))
    growth = {key: end[key] - start[key] for key in ("rss_mib", "fds", "threads", "tasks")}
    checks = {
        f"RSS growth {growth['rss_mib']:+.1f} MiB <= {args.rss_bound_mib:g} MiB": growth["rss_mib"] <= args.rss_bound_mib,
        f"open fds growth {growth['fds']:+d} <= 8": growth["fds"] <= 8,
        f"threads growth {growth['threads']:+d} <= 4": growth["threads"] <= 4,
        f"server tasks growth {growth['tasks']:+d} <= 0 (same sessions open)": growth["tasks"] <= 0,
        f"after closing: {closed['sessions']} sessions, {closed['tasks']} tasks == idle {idle['tasks']}":
            closed["sessions"] == 0 and closed["tasks"] == idle["tasks"],
        f"every turn answered ({sum(result['outcomes'].values())}/{args.turns})":
            sum(result["outcomes"].values()) == args.turns and "error" not in result["outcomes"],
    }
    print(f"machine  {platform.node()} {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"soak     {args.sessions} sessions, {args.turns} turns in {result['elapsed']:.0f} s "
          f"({args.turns / result['elapsed']:.2f} turns/s), outcomes {result['outcomes']}")
    print("         rss_mib   fds  threads  tasks  sessions")
    for name, snap in (("idle", idle), ("start", start), ("end", end), ("closed", closed)):
        print(f"{name:8} {snap['rss_mib']:7.1f} {snap['fds']:5d} {snap['threads']:8d} {snap['tasks']:6d} {snap['sessions']:9d}")
    for name, ok in checks.items():
        print(f"  {'PASS' if ok else 'FAIL'} {name}")
    sys.exit(0 if all(checks.values()) else 1)


if __name__ == "__main__":
    main()
