"""The server runs without the packages its configuration does not use (a bare GPU machine).

Each test starts the real server process with some packages made unimportable (an import
of one of them raises ModuleNotFoundError, as on a machine that lacks it), on a fresh data
folder, and runs one spoken turn with video through it: the echo LLM, espeak-ng, and the
lip-sync or Ditto renderer must not need the cloud clients, Redis, MediaPipe (the built-in
avatar's analysis is shipped), TensorRT or, for lip-sync, torch and ONNX (Ditto's PyTorch
runtime runs its audio encoder on ONNX Runtime, which the GPU machine has).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from avatar.v1 import avatar_pb2 as pb
from avatar.v1 import avatar_pb2_grpc as pb_grpc
from conftest import REPO, free_port, stop_process, wait_for_health
from service_helpers import Conversation

# `python -c RUNNER BLOCKED ARGS...`: `python -m avatar_server ARGS` with the comma-separated
# packages in BLOCKED (and their submodules) unimportable.
RUNNER = """
import sys
blocked = tuple(sys.argv[1].split(","))

class Unimportable:
    def find_spec(self, name, path=None, target=None):
        if name in blocked or name.startswith(tuple(b + "." for b in blocked)):
            raise ModuleNotFoundError(f"{name} is not installed here (blocked by the test)")
        return None

sys.meta_path.insert(0, Unimportable())
from avatar_server.cli import main
main(sys.argv[2:])
"""

NEVER_NEEDED = (
    "openai",
    "google.cloud",
    "google.auth",
    "google.api_core",
    "redis",
    "mediapipe",
    "tensorrt",
)


def start_without(
    blocked: tuple[str, ...], data_dir: Path, env: dict[str, str]
) -> tuple[subprocess.Popen, str]:
    port = free_port()
    environment = {
        **os.environ,
        "AVATAR_AUTH_DISABLED": "true",
        "AVATAR_HOST": "127.0.0.1",
        "AVATAR_DATA_DIR": str(data_dir),
        "AVATAR_LLM": "echo",
        "AVATAR_TTS": "espeak",
        "AVATAR_SESSION_STORE": "memory",
        "AVATAR_ECHO_TOKEN_DELAY_S": "0",
        **env,
    }
    process = subprocess.Popen(
        [sys.executable, "-c", RUNNER, ",".join(blocked), "--port", str(port)],
        env=environment,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    target = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 240
    while process.poll() is None and time.monotonic() < deadline:
        try:
            wait_for_health(target, timeout=2)
            return process, target
        except TimeoutError:
            continue
    stop_process(process)
    raise AssertionError(
        f"the server did not start without {blocked}:\n{process.stdout.read()[-4000:]}"
    )


async def one_turn(target: str) -> pb.TurnCompleted:
    async with grpc.aio.insecure_channel(target) as channel:
        talk = Conversation(pb_grpc.AvatarServiceStub(channel), pb.SessionConfig())
        await talk.until("video_init")
        talk.say("Hello there.")
        events = await talk.until("turn_completed", "error", timeout=600)
        await talk.close()
    assert events[-1].HasField("turn_completed"), events[-1]
    assert any(e.HasField("video_segment") for e in events)
    return events[-1].turn_completed


@pytest.fixture
def stopped_after() -> Iterator[list[subprocess.Popen]]:
    processes: list[subprocess.Popen] = []
    yield processes
    for process in processes:
        stop_process(process)


async def test_lipsync_runs_without_cloud_clients_redis_mediapipe_or_torch(
    tmp_path, stopped_after
) -> None:
    process, target = start_without(
        NEVER_NEEDED + ("torch", "onnx", "onnxruntime"), tmp_path, {"AVATAR_RENDERER": "lipsync"}
    )
    stopped_after.append(process)
    completed = await one_turn(target)
    assert completed.frames > 0


@pytest.mark.slow
async def test_ditto_runs_without_cloud_clients_redis_or_mediapipe(tmp_path, stopped_after) -> None:
    pytest.importorskip("torch")
    from avatar_server.renderers.ditto.standin import write_standin

    checkpoints = tmp_path / "ditto-tiny"
    write_standin(checkpoints, size="tiny", onnx=False)
    process, target = start_without(
        NEVER_NEEDED,
        tmp_path / "data",
        {
            "AVATAR_RENDERER": "ditto",
            "AVATAR_CHECKPOINTS": str(checkpoints),
            "AVATAR_DITTO_RUNTIME": "pytorch",
            "AVATAR_DITTO_DEVICE": "cpu",
            "AVATAR_DITTO_SAMPLING_STEPS": "2",
            "AVATAR_DITTO_CAPACITY_FPS": "1000",
            "AVATAR_DITTO_FIRST_FRAMES": "5",
            "AVATAR_DITTO_STRIDE": "10",
            "AVATAR_DITTO_OVERLAP": "5",
        },
    )
    stopped_after.append(process)
    completed = await one_turn(target)
    assert completed.frames > 0
