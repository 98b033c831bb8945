"""Shared fixtures: a real avatar service in-process or as a subprocess, on loopback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data folder for the whole run, so the example avatar is analysed once."""
    return tmp_path_factory.mktemp("avatar-data")


@dataclass
class InProcessService:
    """A running AvatarServer in this event loop, with a channel and stub to it."""

    settings: object
    deps: object
    server: object
    port: int
    channel: grpc.aio.Channel
    stub: object

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


@asynccontextmanager
async def running_service(data_dir: Path, **overrides: object) -> AsyncIterator[InProcessService]:
    """Starts the real service on a free loopback port (auth off unless overridden)."""
    from avatar.v1 import avatar_pb2_grpc
    from avatar_server.server import AvatarServer, build_deps
    from avatar_server.settings import load_settings

    values: dict[str, object] = dict(host="127.0.0.1", port=0, auth_disabled=True,
                                     data_dir=data_dir, echo_token_delay_s=0.005)
    values.update(overrides)
    settings = load_settings(**values)
    deps = await build_deps(settings)
    server = AvatarServer(settings, deps)
    port = await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}",
                                        options=[("grpc.max_receive_message_length", 64 << 20)])
    try:
        yield InProcessService(settings, deps, server, port, channel, avatar_pb2_grpc.AvatarServiceStub(channel))
    finally:
        await channel.close()
        await server.drain_and_stop()


@dataclass
class ServiceProcess:
    """An `avatar-server` subprocess."""

    process: subprocess.Popen
    port: int

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


def wait_for_health(target: str, timeout: float = 90.0) -> None:
    """Blocks until the server's health service says SERVING."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with grpc.insecure_channel(target) as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
        except grpc.RpcError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"avatar-server at {target} not SERVING after {timeout} s")


def start_service_process(data_dir: Path, *, env: dict[str, str] | None = None,
                          args: list[str] | None = None) -> ServiceProcess:
    """Starts `avatar-server` on a free port with embedded defaults and waits for health."""
    port = free_port()
    environment = dict(os.environ)
    environment.update({"AVATAR_AUTH_DISABLED": "true", "AVATAR_DATA_DIR": str(data_dir),
                        "AVATAR_HOST": "127.0.0.1", "AVATAR_ECHO_TOKEN_DELAY_S": "0.005"})
    environment.update(env or {})
    process = subprocess.Popen([str(VENV_BIN / "avatar-server"), "--port", str(port), *(args or [])],
                               env=environment, cwd=REPO)
    try:
        wait_for_health(f"127.0.0.1:{port}")
    except BaseException:
        process.kill()
        raise
    return ServiceProcess(process, port)


def stop_process(process: subprocess.Popen, timeout: float = 20.0) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def service_process(data_dir: Path) -> Iterator[ServiceProcess]:
    """One real `avatar-server` subprocess (embedded defaults) shared by the e2e tests."""
    service = start_service_process(data_dir)
    yield service
    stop_process(service.process)
