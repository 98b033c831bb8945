"""The Prometheus /metrics endpoint: every series the operations guide names exists and moves."""

from __future__ import annotations

import asyncio
import urllib.request

import grpc
import pytest
from avatar.v1 import avatar_pb2 as pb
from avatar.v1 import avatar_pb2_grpc as pb_grpc
from conftest import free_port, running_service
from prometheus_client.parser import text_string_to_metric_families
from service_helpers import Conversation, slow_reader_channel


async def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} from the live endpoint, read off the event loop."""

    def fetch() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            assert reply.status == 200
            return reply.read().decode()

    text = await asyncio.to_thread(fetch)
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_endpoint_counts_sessions_turns_latencies_frames_and_errors(data_dir) -> None:
    port = free_port()
    async with running_service(data_dir, metrics_port=port, echo_token_delay_s=0.02) as service:
        before = await _scrape(port)
        assert _value(before, "avatar_active_sessions") == 0
        for name in ("avatar_active_turns", "avatar_send_queue_depth"):
            assert (name, ()) in before, f"{name} is not exported"

        talk = Conversation(service.stub, pb.SessionConfig())
        await talk.until("video_init")
        assert _value(await _scrape(port), "avatar_active_sessions") == 1

        talk.say("Hello there. How are you today?")
        completed = (await talk.until("turn_completed", "error"))[-1]
        assert completed.HasField("turn_completed"), completed
        talk.say("   ")  # refused at the input stage: an Error event, the session goes on
        refused = (await talk.until("error"))[-1].error
        assert (refused.stage, refused.code) == ("input", grpc.StatusCode.INVALID_ARGUMENT.value[0])
        talk.say("Tell me a long story about the sea and the ships on it. " * 4)
        await talk.until("video_segment")
        talk.send(interrupt=pb.Interrupt())
        await talk.until("turn_cancelled")

        during = await _scrape(port)
        await talk.close()
        loop = asyncio.get_running_loop()
        began = loop.time()
        while service.deps.sessions and loop.time() - began < 5:
            await asyncio.sleep(0.02)
        after = await _scrape(port)

    assert _value(during, "avatar_turns_total", outcome="completed") == 1
    assert _value(during, "avatar_turns_total", outcome="cancelled") == 1
    for histogram in ("avatar_time_to_first_text_seconds", "avatar_time_to_first_audio_seconds",
                      "avatar_time_to_first_video_seconds", "avatar_render_realtime_factor"):
        assert _value(during, histogram + "_count") == 1, histogram
        assert _value(during, histogram + "_sum") > 0, histogram
    first_video = completed.turn_completed.timings.first_segment_ms / 1000.0
    assert _value(during, "avatar_time_to_first_video_seconds_sum") == pytest.approx(first_video, rel=1e-6)
    assert _value(during, "avatar_cancel_stop_seconds_count") == 1
    assert _value(during, "avatar_errors_total", stage="input", code="INVALID_ARGUMENT") == 1
    assert _value(during, "avatar_rendered_frames_total") >= completed.turn_completed.frames > 0
    assert _value(during, "avatar_encode_cpu_seconds_total") > 0
    assert _value(during, "avatar_active_sessions") == 1
    assert _value(after, "avatar_active_sessions") == 0
    assert _value(after, "avatar_active_turns") == 0


async def test_refused_session_opens_count_as_errors_by_stage_and_code(data_dir) -> None:
    """A Converse that ends with a status before any turn (unknown avatar, full server) is an error too."""
    port = free_port()
    async with running_service(data_dir, metrics_port=port) as service:
        talk = Conversation(service.stub, pb.SessionConfig(avatar="av_00000000000000000000"))
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await talk.next()
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND
        samples = await _scrape(port)
    assert _value(samples, "avatar_errors_total", stage="input", code="NOT_FOUND") == 1


async def _stalled_reader(service):  # type: ignore[no-untyped-def]
    """A session whose client stops reading mid-turn, once its send queue is full (or 30 s)."""
    slow_channel = slow_reader_channel(service.target)
    talk = Conversation(pb_grpc.AvatarServiceStub(slow_channel), pb.SessionConfig())
    await talk.until("video_init")
    talk.say("A sentence that makes enough events to fill a small queue. " * 12)
    session = next(iter(service.deps.sessions))
    loop = asyncio.get_running_loop()
    began = loop.time()
    while not session._out.full() and loop.time() - began < 30:  # nobody reads now
        await asyncio.sleep(0.05)
    return slow_channel, talk, session


async def test_send_queue_depth_follows_a_client_that_does_not_read(data_dir) -> None:
    """The queue-depth gauge is kept current: a client that stops reading shows a full queue."""
    port = free_port()
    async with running_service(data_dir, metrics_port=port, send_queue_events=8,
                               max_send_lag_s=30.0) as service:
        slow_channel, talk, session = await _stalled_reader(service)
        assert session._out.full()
        samples = await _scrape(port)
        await talk.close()
        await slow_channel.close()
    assert _value(samples, "avatar_send_queue_depth") >= 4  # the sender may have taken one or two since


async def test_disconnect_of_a_client_that_stopped_reading_frees_the_session_promptly(data_dir) -> None:
    """A client gone mid-turn with its send queue full must not hold its renderer slot for max_send_lag_s."""
    port = free_port()
    async with running_service(data_dir, metrics_port=port, send_queue_events=4,
                               max_send_lag_s=30.0) as service:
        slow_channel, talk, session = await _stalled_reader(service)
        loop = asyncio.get_running_loop()
        assert session._out.full() and session.turn_running
        talk.call.cancel()
        began = loop.time()
        while service.deps.sessions and loop.time() - began < 10:
            await asyncio.sleep(0.02)
        freed_after = loop.time() - began
        samples = await _scrape(port)
        await slow_channel.close()
    assert freed_after < 5.0, f"the session held its renderer slot {freed_after:.1f} s after the disconnect"
    assert _value(samples, "avatar_active_sessions") == 0
    assert _value(samples, "avatar_turns_total", outcome="cancelled") == 1
