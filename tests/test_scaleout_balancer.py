"""The nginx balancer config moves new streams off a draining or dead instance, keeps open ones.

The upstreams here are stand-ins, not avatar-server: tiny real gRPC servers
(grpcio, run as separate processes) whose one bidirectional method answers
with the instance's name and then echoes. On SIGTERM they do what a
draining avatar-server must do for nginx to keep new streams away: call
`server.stop(grace)` at once, which closes the listening socket while open
streams go on; each open stream then finishes its running exchange and ends
with UNAVAILABLE (reconnect), which nginx passes on or, when the connection
closes right behind it, turns into a reset. The full run against avatar-server
is bench/scaleout.py.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.local_cluster import NginxBalancer, free_port, missing_programs, wait_for_port  # noqa: E402

METHOD = "/standin.Echo/Chat"


async def _serve_stand_in(name: str, port: int) -> None:
    """A stand-in upstream: names itself, echoes; on SIGTERM stops listening, finishes streams."""

    draining = asyncio.Event()

    async def chat(requests, context):  # type: ignore[no-untyped-def]
        greeted = False
        async for request in requests:
            move_after_this_one = draining.is_set()  # taken when the message arrives
            yield request if greeted else name.encode()
            greeted = True
            if move_after_this_one:  # the running exchange is done: tell the client to move
                await context.abort(
                    grpc.StatusCode.UNAVAILABLE, "draining: reconnect with your session id"
                )

    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        "standin.Echo", {"Chat": grpc.stream_stream_rpc_method_handler(chat)}
    )
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, draining.set)
    await draining.wait()
    await server.stop(grace=20)  # returns once every open stream has ended
    # Let the last statuses leave the socket: exiting at once can turn them into a reset
    # that nginx reports to the client as INTERNAL instead of UNAVAILABLE.
    await asyncio.sleep(0.5)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[NginxBalancer, dict[str, subprocess.Popen]]]:
    if missing := missing_programs():
        pytest.skip(
            f"not installed: {', '.join(missing)} (apt-get install -y redis-server nginx-light)"
        )
    ports = {name: free_port() for name in ("a", "b", "c")}
    processes = {
        name: subprocess.Popen([sys.executable, __file__, name, str(port)])
        for name, port in ports.items()
    }
    for name, port in ports.items():
        wait_for_port(port, timeout_s=20, process=processes[name])
    balancer = NginxBalancer(tmp_path / "nginx", list(ports.values())).start()
    yield balancer, processes
    balancer.stop()
    for process in processes.values():
        process.kill()
        process.wait()


class Stream:
    """One open bidirectional stream through the balancer, and the instance it landed on."""

    def __init__(self, target: str) -> None:
        self.channel = grpc.aio.insecure_channel(target)
        self.call = self.channel.stream_stream(METHOD)()
        self.instance = ""

    async def open(self) -> Stream:
        await self.call.write(b"hello")
        self.instance = (await self.call.read()).decode()
        return self

    async def echo(self, payload: bytes) -> bytes:
        if self.call.done():
            raise AssertionError(
                f"stream on {self.instance} ended: "
                f"{await self.call.code()} {await self.call.details()}"
            )
        await self.call.write(payload)
        return await self.call.read()

    async def close(self) -> None:
        await self.call.done_writing()
        await self.channel.close()


async def test_streams_spread_over_every_instance(cluster) -> None:
    balancer, _ = cluster
    streams = [await Stream(balancer.target).open() for _ in range(9)]
    assert Counter(stream.instance for stream in streams) == {"a": 3, "b": 3, "c": 3}
    for stream in streams:
        await stream.close()


async def test_draining_instance_gets_no_new_stream_and_keeps_its_open_ones(cluster) -> None:
    balancer, processes = cluster
    # Idle keep-alive connections to every instance exist before the drain starts.
    for stream in [await Stream(balancer.target).open() for _ in range(6)]:
        await stream.close()
    held = [await Stream(balancer.target).open() for _ in range(6)]
    on_a = [stream for stream in held if stream.instance == "a"]
    assert on_a

    processes["a"].send_signal(signal.SIGTERM)
    await asyncio.sleep(0.3)
    fresh = [await Stream(balancer.target).open() for _ in range(12)]  # no error reaches a client

    assert "a" not in {stream.instance for stream in fresh}
    assert {stream.instance for stream in fresh} == {"b", "c"}
    for stream in on_a:
        assert await stream.echo(b"still here") == b"still here"
        # The stream then ends with the draining instance's UNAVAILABLE, or with the reset that
        # nginx reports (INTERNAL "Stream removed") when grpc, draining, closed the stream's
        # connection right behind the status before nginx had read it (seen under load).
        # Clients reconnect on both (docs/deploy.md).
        code, details = await stream.call.code(), await stream.call.details()
        assert (code == grpc.StatusCode.UNAVAILABLE and "reconnect" in details) or (
            code == grpc.StatusCode.INTERNAL and "Stream removed" in details), (code, details)
    for stream in held + fresh:
        if stream not in on_a:
            await stream.close()
    assert processes["a"].wait(20) == 0  # the drained instance exits once its streams ended


async def test_killed_instance_gets_no_new_stream(cluster) -> None:
    balancer, processes = cluster
    held = [await Stream(balancer.target).open() for _ in range(3)]
    processes["b"].kill()
    processes["b"].wait()
    fresh = [await Stream(balancer.target).open() for _ in range(8)]
    assert {stream.instance for stream in fresh} == {"a", "c"}

    # nginx resets the streams of a dead instance (RST_STREAM INTERNAL_ERROR): a client
    # sees INTERNAL "Stream removed", not UNAVAILABLE, and must reconnect on that too.
    on_b = next(stream for stream in held if stream.instance == "b")
    assert await on_b.call.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL)
    for stream in held + fresh:
        if stream is not on_b:
            await stream.close()


if __name__ == "__main__":
    asyncio.run(_serve_stand_in(sys.argv[1], int(sys.argv[2])))
