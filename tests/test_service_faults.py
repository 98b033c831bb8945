"""Faults in one turn or one session never reach another; the next turn works.

LLM and TTS faults come from the local stand-in servers that speak the real
OpenAI and Google TTS protocols (tests/provider_servers.py). Renderer and
encoder faults come from a clearly labelled fault-injecting wrapper around the
real renderer, since a healthy renderer does not fail on demand.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import grpc
import numpy as np
import pytest
from avatar.v1 import avatar_pb2 as pb
from avatar.v1 import avatar_pb2_grpc as pb_grpc
from avatar_server.core.frames import Frame
from conftest import running_service, start_service_process, stop_process
from grpc_health.v1 import health_pb2, health_pb2_grpc
from provider_servers import fake_google_tts_server, fake_openai_server  # noqa: F401 (fixtures)
from service_helpers import Conversation, slow_reader_channel


class FaultInjectingRenderer:
    """FAKE for tests: the real renderer, but a turn whose user text says so fails on purpose.

    `mode` "raise" raises inside the renderer after a few frames; "bad-frame"
    hands the encoder a frame of the wrong size (an encoder-stage failure).
    """

    def __init__(self, inner, mode: str) -> None:  # type: ignore[no-untyped-def]
        self.inner, self.mode = inner, mode
        self.name, self.sample_rate = inner.name, inner.sample_rate
        self.armed = False

    async def open_session(self, avatar, *, fps):  # type: ignore[no-untyped-def]
        session = await self.inner.open_session(avatar, fps=fps)
        outer = self

        class Session:
            width, height = session.width, session.height

            async def render(self, audio):  # type: ignore[no-untyped-def]
                count = 0
                async for frame in session.render(audio):
                    count += 1
                    if outer.armed and count == 5:
                        if outer.mode == "raise":
                            raise RuntimeError("injected renderer fault")
                        frame = Frame(np.zeros((10, 10, 3), np.uint8))
                    yield frame

            async def idle_frames(self, count):  # type: ignore[no-untyped-def]
                return await session.idle_frames(count)

            async def aclose(self) -> None:
                await session.aclose()

        return Session()

    def models(self):  # type: ignore[no-untyped-def]
        return self.inner.models()

    def capacity_fps(self) -> float:
        return self.inner.capacity_fps()

    def setup(self):  # type: ignore[no-untyped-def]
        return self.inner.setup()

    async def aclose(self) -> None:
        await self.inner.aclose()


async def _open(stub) -> Conversation:  # type: ignore[no-untyped-def]
    talk = Conversation(stub, pb.SessionConfig())
    await talk.until("video_init")
    return talk


@pytest.mark.parametrize(("mode", "stage"), [("raise", "render"), ("bad-frame", "encode")])
async def test_render_and_encode_faults_end_only_that_turn(data_dir, mode, stage) -> None:
    async with running_service(data_dir) as service:
        faulty = FaultInjectingRenderer(service.deps.renderer, mode)
        service.deps.renderer = faulty
        victim, bystander = await _open(service.stub), await _open(service.stub)
        faulty.armed = True
        victim.say("This turn will fail in the renderer.")
        events = await victim.until("error", "turn_completed")
        assert events[-1].HasField("error"), events[-1]
        assert events[-1].error.stage == stage and events[-1].turn_id
        faulty.armed = False
        bystander.say("I am fine.")
        assert (await bystander.until("turn_completed", "error"))[-1].HasField("turn_completed")
        victim.say("And now it works again.")
        assert (await victim.until("turn_completed", "error"))[-1].HasField("turn_completed")
        await victim.close()
        await bystander.close()


@pytest.mark.parametrize(
    ("keyword", "code"),
    [
        ("[[fake:error-mid-stream]]", grpc.StatusCode.UNAVAILABLE),
        ("[[fake:malformed-json]]", grpc.StatusCode.INTERNAL),
        ("[[fake:status-429]]", grpc.StatusCode.RESOURCE_EXHAUSTED),
    ],
)
async def test_llm_faults_become_llm_error_events(data_dir, fake_openai_server, keyword, code) -> None:
    async with running_service(data_dir, llm="openai", openai_base_url=fake_openai_server.url,
                               openai_api_key="test-key", openai_max_retries=0, openai_timeout_s=3) as service:
        talk = await _open(service.stub)
        talk.say(f"Hello {keyword}")
        events = await talk.until("error", "turn_completed")
        error = events[-1].error
        assert error.stage == "llm" and error.code == code.value[0], error
        assert "test-key" not in error.message
        talk.say("Hello again, properly this time.")
        assert (await talk.until("turn_completed", "error"))[-1].HasField("turn_completed")
        await talk.close()


async def test_llm_provider_down_is_unavailable_and_retriable(data_dir) -> None:
    from conftest import free_port

    async with running_service(data_dir, llm="openai", openai_base_url=f"http://127.0.0.1:{free_port()}/v1",
                               openai_api_key="k", openai_max_retries=0, openai_timeout_s=3) as service:
        talk = await _open(service.stub)
        talk.say("Anyone there?")
        error = (await talk.until("error", "turn_completed"))[-1].error
        assert error.stage == "llm" and error.code == grpc.StatusCode.UNAVAILABLE.value[0] and error.retriable
        await talk.close()


async def test_tts_fault_becomes_tts_error_event(data_dir, fake_google_tts_server) -> None:
    async with running_service(data_dir, tts="google", google_tts_endpoint=fake_google_tts_server.endpoint,
                               google_tts_max_retries=0) as service:
        talk = await _open(service.stub)
        talk.say("Speak this [[fake:status-UNAVAILABLE]] please.")
        events = await talk.until("error", "turn_completed")
        assert events[-1].error.stage == "tts", events[-1]
        talk.say("Now speak normally.")
        assert (await talk.until("turn_completed", "error"))[-1].HasField("turn_completed")
        await talk.close()


async def test_slow_reader_is_ended_without_hurting_others(data_dir) -> None:
    async with running_service(data_dir, max_send_lag_s=1.0, send_queue_events=4) as service:
        slow_channel = slow_reader_channel(service.target)
        slow = await _open(pb_grpc.AvatarServiceStub(slow_channel))
        slow.say("Please give me a long answer so that many events pile up. " * 12)
        fast = await _open(service.stub)
        fast.say("Quick question.")
        assert (await fast.until("turn_completed", "error"))[-1].HasField("turn_completed")
        for _ in range(200):  # the slow session is evicted: its renderer slot and turn are freed
            if len(service.deps.sessions) == 1:
                break
            await asyncio.sleep(0.05)
        assert len(service.deps.sessions) == 1
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await slow.until("turn_completed", timeout=30)
        assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        await fast.close()
        await slow_channel.close()


def test_sigterm_drains_finishes_the_turn_and_asks_clients_to_reconnect(data_dir) -> None:
    service = start_service_process(data_dir, env={"AVATAR_SHUTDOWN_GRACE_S": "20",
                                                   "AVATAR_ECHO_TOKEN_DELAY_S": "0.03"})

    async def scenario() -> None:
        async with grpc.aio.insecure_channel(service.target) as channel:
            stub = pb_grpc.AvatarServiceStub(channel)
            talk = await _open(stub)
            talk.say("A reply that is still being spoken when the server is asked to stop. " * 2)
            await talk.until("video_segment")
            os.kill(service.process.pid, signal.SIGTERM)
            await asyncio.sleep(0.3)
            # Not serving: the listener is closed (what balancers and probes act on) and
            # health reports NOT_SERVING where it can still be asked.
            try:
                health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
                assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING
            except grpc.aio.AioRpcError as refused_health:
                assert refused_health.code() == grpc.StatusCode.UNAVAILABLE
            async with grpc.aio.insecure_channel(service.target) as fresh:
                with pytest.raises(grpc.aio.AioRpcError) as refused_connection:
                    await pb_grpc.AvatarServiceStub(fresh).GetServerInfo(pb.GetServerInfoRequest(), timeout=3)
                assert refused_connection.value.code() in (grpc.StatusCode.UNAVAILABLE,
                                                          grpc.StatusCode.DEADLINE_EXCEEDED)
            talk.say("A new turn while draining is refused as retriable.")
            refused_turn = (await talk.until("error"))[-1].error
            assert refused_turn.code == grpc.StatusCode.UNAVAILABLE.value[0] and refused_turn.retriable
            newcomer = Conversation(stub, pb.SessionConfig())
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await newcomer.next()
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            events = await talk.until("turn_completed", "turn_cancelled")
            assert events[-1].HasField("turn_completed")
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                await talk.next()
            assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "reconnect" in ended.value.details()

    try:
        asyncio.run(scenario())
        began = time.monotonic()
        service.process.wait(30)
        assert time.monotonic() - began < 30
        assert service.process.returncode == 0
    finally:
        stop_process(service.process)
