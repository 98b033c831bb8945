"""The whole service with N sessions speaking at once: does every session's video keep real time?

    python bench/service_realtime.py --renderer ditto --checkpoints DIR --sessions 16 \\
        --json out.json --markdown out.md

Starts one real `avatar-server` (`python -m avatar_server`: echo LLM, espeak-ng, the chosen
renderer, /metrics on), opens --sessions Converse sessions over gRPC, lets one of them speak
once to warm up (not measured), then, --rounds times, has every session send a message of
--words words at the same moment and reads all their events. Per session it reports:

- frames/s: video frames received per wall second between the session's first and last
  segment of the turn, i.e. media made per wall second once video flows; at least the
  frame rate (25) means the session keeps real time;
- first segment after sending, as the client sees it, and first segment after first audio,
  from the server's own turn timings (first_segment_ms - tts_first_audio_ms);
- errors (error events, cancelled turns, failed streams).

From the server process, over the measured rounds: encode CPU-seconds per media second
(`avatar_encode_cpu_seconds` over rendered frames / fps, from /metrics: colour conversion,
x264 and AAC in the encoding threads), the whole process's CPU per media second, and its
busiest threads (/proc). With Ditto, admission is given room for every session
(AVATAR_DITTO_CAPACITY_FPS = 2 x sessions x fps, unless --set says otherwise), so the
figure is the rate the engine reaches, not a refusal. Exits non-zero when a session saw an
error or fell below the frame rate.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Self

import grpc

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(REPO / "gen" / "python")]

from avatar.v1 import avatar_pb2 as pb
from avatar.v1 import avatar_pb2_grpc as pb_grpc
from service_helpers import Conversation

from bench.local_cluster import ServerInstance, free_port
from bench.proc_stats import cpu_seconds, thread_cpu_seconds

FILLER = (  # noqa: SIM905 (one sentence reads better than a list of words)
    "the quick brown fox jumps over the lazy dog while seven bright stars watch the quiet "
    "river carry small boats past the old mill and the wind moves softly through tall grass"
).split()


@dataclass
class SessionResult:
    """What one session saw in one round."""

    session: int
    frames: int = 0
    segments: int = 0
    frames_per_second: float = 0.0  # between the first and the last segment's arrival
    first_segment_after_send_ms: float = 0.0
    first_segment_after_first_audio_ms: float = 0.0  # server timings
    media_seconds: float = 0.0
    error: str = ""


def message(index: int, words: int) -> str:
    return (
        f"Session {index}: "
        + " ".join(FILLER[(index + k) % len(FILLER)] for k in range(words))
        + "."
    )


async def speak(talk: Conversation, index: int, text: str, timeout_s: float) -> SessionResult:
    """Sends one message and reads the turn to its end, timing every video segment."""
    result = SessionResult(index)
    sent = time.monotonic()
    talk.say(text)
    first = last = 0.0
    first_frames = 0
    try:
        while True:
            event = await talk.next(timeout=timeout_s)
            kind = event.WhichOneof("event")
            if kind == "video_segment":
                last = time.monotonic()
                if not result.segments:
                    first, first_frames = last, event.video_segment.frames
                result.segments += 1
                result.frames += event.video_segment.frames
            elif kind in ("error", "turn_cancelled"):
                result.error = f"{kind}: {getattr(event, kind)}".strip()
                return result
            elif kind == "turn_completed":
                timings = event.turn_completed.timings
                result.media_seconds = event.turn_completed.media_seconds
                result.first_segment_after_first_audio_ms = round(
                    timings.first_segment_ms - timings.tts_first_audio_ms, 1
                )
                break
    except grpc.aio.AioRpcError as error:
        result.error = f"stream: {error.code().name}: {error.details()}"
        return result
    except TimeoutError:
        result.error = f"no event for {timeout_s:g} s"
        return result
    result.first_segment_after_send_ms = round(1000 * (first - sent), 1) if result.segments else 0.0
    if result.segments > 1 and last > first:
        result.frames_per_second = round((result.frames - first_frames) / (last - first), 1)
    return result


def scrape(port: int) -> dict[str, float]:
    """Unlabelled samples of the server's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.labels
    }


def server_env(args: argparse.Namespace, workdir: Path, metrics_port: int) -> dict[str, str]:
    env = {
        "AVATAR_AUTH_DISABLED": "true",
        "AVATAR_HOST": "127.0.0.1",
        "AVATAR_DATA_DIR": str(workdir / "data"),
        "AVATAR_LLM": "echo",
        "AVATAR_TTS": "espeak",
        "AVATAR_RENDERER": args.renderer,
        "AVATAR_METRICS_PORT": str(metrics_port),
        "AVATAR_MAX_SESSIONS": str(args.sessions + 2),
        "AVATAR_LOG_LEVEL": "INFO",
        # No turn deadline: a renderer slower than real time shows as a low rate, not as errors.
        "AVATAR_TURN_DEADLINE_S": "0",
    }
    if args.renderer == "ditto":
        env |= {
            "AVATAR_CHECKPOINTS": str(args.checkpoints),
            "AVATAR_DITTO_CAPACITY_FPS": str(2 * args.sessions * args.fps),
            "AVATAR_DITTO_COMPILE": "true" if args.compile else "false",
        }
    for setting in args.set:
        name, _, value = setting.partition("=")
        env[f"AVATAR_{name.strip().upper()}"] = value
    return env


async def drive(args: argparse.Namespace, target: str, measure: Any) -> list[list[SessionResult]]:
    """Opens the sessions, warms up with one turn, then runs the measured rounds inside `measure`."""
    options = [("grpc.max_receive_message_length", 64 << 20)]
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        stub = pb_grpc.AvatarServiceStub(channel)
        talks = [
            Conversation(stub, pb.SessionConfig(output=pb.OutputOptions(pcm_audio=False)))
            for _ in range(args.sessions)
        ]
        await asyncio.gather(
            *(talk.until("video_init", timeout=args.turn_timeout) for talk in talks)
        )
        warm = await speak(talks[0], 0, message(0, min(args.words, 8)), args.turn_timeout)
        if warm.error:
            raise RuntimeError(f"the warm-up turn failed: {warm.error}")
        rounds = []
        async with measure:
            for round_index in range(args.rounds):
                rounds.append(
                    list(
                        await asyncio.gather(
                            *(
                                speak(
                                    talk,
                                    index,
                                    message(index + round_index, args.words),
                                    args.turn_timeout,
                                )
                                for index, talk in enumerate(talks)
                            )
                        )
                    )
                )
        await asyncio.gather(*(talk.close() for talk in talks), return_exceptions=True)
        return rounds


class ServerUsage:
    """Server CPU (process, threads) and /metrics counters across the measured rounds."""

    def __init__(self, pid: int, metrics_port: int) -> None:
        self.pid, self.metrics_port = pid, metrics_port
        self.result: dict[str, Any] = {}

    async def __aenter__(self) -> Self:
        self._began = time.monotonic()
        self._cpu, self._threads = cpu_seconds(self.pid), thread_cpu_seconds(self.pid)
        self._metrics = await asyncio.to_thread(scrape, self.metrics_port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        wall = time.monotonic() - self._began
        metrics = await asyncio.to_thread(scrape, self.metrics_port)
        threads = thread_cpu_seconds(self.pid)
        spent = {name: cpu - self._threads.get(name, 0.0) for name, cpu in threads.items()}
        busiest = sorted(spent.items(), key=lambda item: -item[1])[:12]

        def delta(name: str) -> float:
            return metrics.get(name, 0.0) - self._metrics.get(name, 0.0)

        self.result = {
            "wall_seconds": round(wall, 1),
            "process_cpu_seconds": round(cpu_seconds(self.pid) - self._cpu, 1),
            "encode_cpu_seconds": round(delta("avatar_encode_cpu_seconds_total"), 2),
            "rendered_frames": int(delta("avatar_rendered_frames_total")),
            "busiest_threads_cpu_seconds": {name: round(cpu, 1) for name, cpu in busiest},
            "threads": len(threads),
        }


def summarise(
    args: argparse.Namespace, rounds: list[list[SessionResult]], usage: dict[str, Any]
) -> dict[str, Any]:
    results = [result for round_results in rounds for result in round_results]
    good = [r for r in results if not r.error]
    rates = [r.frames_per_second for r in good]
    media_seconds = usage["rendered_frames"] / args.fps
    failures = [f"session {r.session}: {r.error}" for r in results if r.error]
    failures += [
        f"session {r.session}: {r.frames_per_second} frames/s, below {args.fps}"
        for r in good
        if r.frames_per_second < args.fps
    ]

    def spread(values: list[float]) -> dict[str, float]:
        return (
            {
                "median": round(statistics.median(values), 1),
                "min": round(min(values), 1),
                "max": round(max(values), 1),
            }
            if values
            else {}
        )

    return {
        "sessions": args.sessions,
        "rounds": args.rounds,
        "words": args.words,
        "frames_per_second_per_session": spread(rates),
        "every_session_real_time": bool(good)
        and len(good) == len(results)
        and min(rates) >= args.fps,
        "aggregate_frames_per_second": round(usage["rendered_frames"] / usage["wall_seconds"], 1),
        "first_segment_after_send_ms": spread([r.first_segment_after_send_ms for r in good]),
        "first_segment_after_first_audio_ms": spread(
            [r.first_segment_after_first_audio_ms for r in good]
        ),
        "encode_cpu_seconds_per_media_second": round(usage["encode_cpu_seconds"] / media_seconds, 3)
        if media_seconds
        else None,
        "process_cpu_seconds_per_media_second": round(
            usage["process_cpu_seconds"] / media_seconds, 3
        )
        if media_seconds
        else None,
        "server": usage,
        "per_session": [asdict(r) for r in results],
        "failures": failures,
    }


def gpu_description() -> str:
    if shutil.which("nvidia-smi") is None:
        return "none"
    done = subprocess.run(  # a description only: its failure is printed as the description
        ["nvidia-smi", "--query-gpu=name,memory.used,memory.total", "--format=csv,noheader"],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip() or done.stderr.strip()


def markdown(report: dict[str, Any]) -> str:
    rates, audio = (
        report["frames_per_second_per_session"],
        report["first_segment_after_first_audio_ms"],
    )
    sent = report["first_segment_after_send_ms"]
    header = (
        "| sessions | frames/s per session, median (min) | every session >= 25 | aggregate frames/s "
        "| first segment after first audio, median (max) | after sending, median (max) "
        "| encode CPU-s per media s | server CPU-s per media s |"
    )
    row = (
        f"| {report['sessions']} | {rates.get('median')} ({rates.get('min')}) | "
        f"{'yes' if report['every_session_real_time'] else 'NO'} | {report['aggregate_frames_per_second']} | "
        f"{audio.get('median')} ms ({audio.get('max')}) | {sent.get('median')} ms ({sent.get('max')}) | "
        f"{report['encode_cpu_seconds_per_media_second']} | {report['process_cpu_seconds_per_media_second']} |"
    )
    run_line = (
        f"- {report['rounds']} round(s), {report['words']}-word messages, echo LLM, espeak-ng; "
        f"start-up {report['startup_seconds']} s"
    )
    lines = [
        f"# Whole service, {report['sessions']} sessions speaking at once ({report['renderer']})",
        "",
        f"- machine: {report['machine']}; GPU: {report['gpu']}",
        f"- server: {report['server_info']}",
        run_line,
        "",
        header,
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        row,
        "",
        "| session | frames/s | frames | first segment after first audio (ms) | after sending (ms) | error |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {r['session']} | {r['frames_per_second']} | {r['frames']} | {r['first_segment_after_first_audio_ms']} "
        f"| {r['first_segment_after_send_ms']} | {r['error']} |"
        for r in report["per_session"]
    ]
    lines += [
        "",
        f"Server threads, CPU seconds in the measured rounds: `{report['server']['busiest_threads_cpu_seconds']}`",
    ]
    lines += ["", *(f"- FAILED: {failure}" for failure in report["failures"])]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--renderer", choices=("lipsync", "ditto"), default="ditto")
    parser.add_argument(
        "--checkpoints", type=Path, help="Ditto checkpoints folder (avatar-checkpoints standin)"
    )
    parser.add_argument("--sessions", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=1, help="measured turns per session")
    parser.add_argument(
        "--words", type=int, default=60, help="words per message (~22 s of speech at 60)"
    )
    parser.add_argument("--fps", type=int, default=25, help="the frame rate each session must keep")
    parser.add_argument("--compile", action="store_true", help="AVATAR_DITTO_COMPILE=true (GPU)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="any server setting by its flat name, e.g. ditto_sampling_steps=2",
    )
    parser.add_argument("--start-timeout", type=float, default=300.0)
    parser.add_argument(
        "--turn-timeout", type=float, default=300.0, help="longest wait for one event"
    )
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--server-log", type=Path, help="copy the server's log here")
    args = parser.parse_args(argv)
    if args.renderer == "ditto" and args.checkpoints is None:
        parser.error("--checkpoints is needed with --renderer ditto")
    return run(args)


def run(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="avatar-realtime-"))
    metrics_port = free_port()
    server = ServerInstance("realtime", workdir, server_env(args, workdir, metrics_port))
    began = time.monotonic()
    server.start_process()
    try:
        server.wait_ready(timeout_s=args.start_timeout)
        startup = round(time.monotonic() - began, 1)
        usage = ServerUsage(server.process.pid, metrics_port)  # type: ignore[union-attr]
        info, rounds = asyncio.run(measure(args, server.target, usage))
    finally:
        server.stop()
        if args.server_log:
            args.server_log.write_text(server.log())
    report = {
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "gpu": gpu_description(),
        "renderer": args.renderer,
        "server_info": info,
        "startup_seconds": startup,
        **summarise(args, rounds, usage.result),
    }
    text = json.dumps(report, indent=2)
    print(text)
    print(markdown(report))
    if args.json:
        args.json.write_text(text + "\n")
    if args.markdown:
        args.markdown.write_text(markdown(report))
    return 1 if report["failures"] else 0


async def measure(
    args: argparse.Namespace, target: str, usage: ServerUsage
) -> tuple[str, list[list[SessionResult]]]:
    """The server's description (renderer, models) and the measured rounds, on one event loop."""
    async with grpc.aio.insecure_channel(target) as channel:
        info = await pb_grpc.AvatarServiceStub(channel).GetServerInfo(pb.GetServerInfoRequest())
    models = ", ".join(f"{m.name} {m.runtime}/{m.device}/{m.precision}" for m in info.models)
    return f"renderer {info.renderer}; {models or 'no models'}", await drive(args, target, usage)


if __name__ == "__main__":
    sys.exit(main())
