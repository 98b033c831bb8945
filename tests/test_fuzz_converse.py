"""Fuzzes the Converse request stream (hypothesis): random, malformed and raw-garbage streams.

Every stream must end with a gRPC status (never a hang), bad requests inside a session
must get Error events, nothing may surface as INTERNAL/UNKNOWN, and afterwards the
`avatar-server` process is still alive, SERVING and able to run a normal turn.
Bounded for CI: a few dozen examples per property, each a short stream.
"""

from __future__ import annotations

import math
import string
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from avatar.v1 import avatar_pb2 as pb
from avatar.v1 import avatar_pb2_grpc as pb_grpc
from conftest import ServiceProcess, start_service_process, stop_process
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

MAX_TEXT_CHARS = 300
MAX_MESSAGE_BYTES = 1 << 20
CALL_TIMEOUT_S = 15.0
CONVERSE = "/avatar.v1.AvatarService/Converse"
FUZZ = settings(max_examples=40, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                        HealthCheck.function_scoped_fixture])
# Statuses a stream may end with: each names a client mistake or a limit, never a server fault.
EXPECTED_STATUSES = {
    grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.RESOURCE_EXHAUSTED,
}
SERVER_FAULTS = {grpc.StatusCode.INTERNAL.value[0], grpc.StatusCode.UNKNOWN.value[0]}


@pytest.fixture(scope="module")
def fuzzed_server(data_dir: Path) -> Iterator[ServiceProcess]:
    service = start_service_process(data_dir, env={
        "AVATAR_MAX_TEXT_CHARS": str(MAX_TEXT_CHARS),
        "AVATAR_MAX_MESSAGE_BYTES": str(MAX_MESSAGE_BYTES),
        "AVATAR_MAX_SESSIONS": "4",
    })
    yield service
    alive = service.process.poll() is None
    stop_process(service.process)
    assert alive, f"avatar-server died during fuzzing (exit {service.process.returncode})"


@pytest.fixture(scope="module")
def channel(fuzzed_server: ServiceProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(fuzzed_server.target, options=[
        ("grpc.max_send_message_length", 4 * MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", 64 << 20),
    ]) as opened:
        yield opened


# ---------------------------------------------------------------- strategies
valid_turn_ids = st.from_regex(r"\A[A-Za-z0-9_-]{1,64}\Z")
any_text = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", " ", "\n\t", "\u200b", "\0", "Hello there.", "안녕하세요.", "\ud7ff" * 3]),
    st.text(min_size=MAX_TEXT_CHARS + 1, max_size=MAX_TEXT_CHARS + 30),
    # Huge, yet within max_message_bytes: refused by max_text_chars, not by the transport.
    st.integers(10_000, MAX_MESSAGE_BYTES // 4).map(lambda n: "\u00e9" * n),
)
floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                   st.sampled_from([0.0, 0.2, 1.0, 10.0, -1.0]))


@st.composite
def output_options(draw: st.DrawFn) -> pb.OutputOptions:
    options = pb.OutputOptions(
        fps=draw(st.one_of(st.sampled_from([0, 1, 25, 30, 60, 61]), st.integers(0, 2**32 - 1))),
        segment_seconds=draw(floats),
    )
    for field in ("pcm_audio", "video"):
        choice = draw(st.sampled_from([None, True, False]))
        if choice is not None:
            setattr(options, field, choice)
    return options


@st.composite
def plausible_configs(draw: st.DrawFn) -> pb.SessionConfig:
    """Configs that mostly open a session, so the requests after them reach a live session."""
    output = pb.OutputOptions(fps=draw(st.sampled_from([0, 25, 10])),
                              segment_seconds=draw(st.sampled_from([0.0, 0.5, 1.0])))
    output.video = draw(st.booleans())
    return pb.SessionConfig(language=draw(st.sampled_from(["", "en-US", "ko-KR"])), output=output,
                            system_prompt=draw(st.text(max_size=30)))


@st.composite
def random_configs(draw: st.DrawFn) -> pb.SessionConfig:
    return pb.SessionConfig(
        avatar=draw(st.one_of(st.sampled_from(["", "", "astronaut", "av_" + "0" * 20, "../../etc"]),
                              st.text(max_size=30))),
        voice=draw(st.one_of(st.just(""), st.text(max_size=20))),
        language=draw(st.one_of(st.sampled_from(["", "en-US", "ko-KR", "x", "en_US"]),
                                st.text(max_size=12))),
        output=draw(output_options()),
        session_id=draw(st.one_of(st.just(""), st.text(alphabet=string.hexdigits, max_size=40),
                                  st.text(max_size=20))),
        system_prompt=draw(st.one_of(st.just(""), st.text(max_size=50),
                                     st.text(min_size=MAX_TEXT_CHARS + 1, max_size=MAX_TEXT_CHARS + 2))),
    )


session_configs = st.one_of(plausible_configs(), random_configs())
requests_in_session = st.one_of(
    st.builds(lambda text, turn: pb.ConverseRequest(message=pb.UserMessage(text=text, turn_id=turn)),
              any_text, st.one_of(st.just(""), valid_turn_ids, st.text(max_size=70))),
    st.builds(lambda turn: pb.ConverseRequest(interrupt=pb.Interrupt(turn_id=turn)),
              st.one_of(st.just(""), st.text(max_size=70))),
    st.just(pb.ConverseRequest(keep_alive=pb.KeepAlive())),
    st.just(pb.ConverseRequest()),  # no oneof set at all
    st.builds(lambda config: pb.ConverseRequest(config=config), session_configs),  # config again
)


def _known_bad(request: pb.ConverseRequest) -> bool:
    """Requests the session must answer with an Error event whatever the timing."""
    kind = request.WhichOneof("request")
    if kind in (None, "config"):
        return True
    if kind == "message":
        text, turn = request.message.text, request.message.turn_id
        return (not text.strip() or len(text) > MAX_TEXT_CHARS
                or bool(turn) and not (len(turn) <= 64 and all(c in string.ascii_letters + string.digits + "_-" for c in turn)))
    return False


# ------------------------------------------------------------------- helpers
def _converse(channel: grpc.Channel, requests: list[pb.ConverseRequest]) -> tuple[list[pb.ConverseResponse], grpc.StatusCode, str]:
    call = pb_grpc.AvatarServiceStub(channel).Converse(iter(requests), timeout=CALL_TIMEOUT_S)
    events: list[pb.ConverseResponse] = []
    try:
        for event in call:
            events.append(event)
    except grpc.RpcError as error:
        return events, error.code(), error.details() or ""
    return events, grpc.StatusCode.OK, ""


def _check_answered(code: grpc.StatusCode, details: str, events: list[pb.ConverseResponse]) -> None:
    assert code != grpc.StatusCode.DEADLINE_EXCEEDED, "the server did not end the stream (hang)"
    assert code in EXPECTED_STATUSES, (code, details)
    faults = [e.error for e in events if e.HasField("error") and e.error.code in SERVER_FAULTS]
    assert not faults, faults


def _assert_healthy(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    stub = pb_grpc.AvatarServiceStub(channel)
    events, code, details = _converse(channel, [
        pb.ConverseRequest(config=pb.SessionConfig(output=pb.OutputOptions(video=True))),
        pb.ConverseRequest(message=pb.UserMessage(text="Still fine?")),
    ])
    assert code == grpc.StatusCode.OK, details
    kinds = [e.WhichOneof("event") for e in events]
    assert "turn_completed" in kinds and "video_segment" in kinds, kinds
    deadline = time.monotonic() + 10
    while stub.GetServerInfo(pb.GetServerInfoRequest()).capacity.active_sessions and time.monotonic() < deadline:
        time.sleep(0.1)
    assert stub.GetServerInfo(pb.GetServerInfoRequest()).capacity.active_sessions == 0, "a session leaked"


# --------------------------------------------------------------------- tests
@FUZZ
@given(config=session_configs, body=st.lists(requests_in_session, max_size=6), stop=st.booleans())
def test_random_request_streams_are_answered(channel, config, body, stop) -> None:
    requests = [pb.ConverseRequest(config=config), *body]
    if stop or any(r.HasField("message") for r in body):
        requests.append(pb.ConverseRequest(interrupt=pb.Interrupt()))  # ends any turn quickly
    events, code, details = _converse(channel, requests)
    _check_answered(code, details, events)
    if code == grpc.StatusCode.OK:
        assert events and events[0].HasField("session_started"), events[:1]
        errors = [e for e in events if e.HasField("error")]
        assert len(errors) >= sum(map(_known_bad, body)), (body, errors)
        assert all(e.error.stage and e.error.message for e in errors)
    else:
        assert not any(e.HasField("session_started") for e in events) or code == grpc.StatusCode.RESOURCE_EXHAUSTED


@FUZZ
@given(first=requests_in_session.filter(lambda r: not r.HasField("config")),
       rest=st.lists(requests_in_session, max_size=3))
def test_streams_not_starting_with_config_are_invalid_argument(channel, first, rest) -> None:
    events, code, details = _converse(channel, [first, *rest])
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
    assert not events


def _parses(frame: bytes) -> bool:
    try:
        pb.ConverseRequest.FromString(frame)
    except Exception:  # noqa: BLE001 - protobuf raises DecodeError or RuntimeWarning-like errors
        return False
    return True


def _raw_converse(channel: grpc.Channel, frames: list[bytes]) -> tuple[list[pb.ConverseResponse], grpc.StatusCode, str]:
    converse = channel.stream_stream(CONVERSE, request_serializer=None,
                                     response_deserializer=pb.ConverseResponse.FromString)
    call = converse(iter(frames), timeout=CALL_TIMEOUT_S)
    events: list[pb.ConverseResponse] = []
    try:
        events.extend(call)
    except grpc.RpcError as error:
        return events, error.code(), error.details() or ""
    return events, grpc.StatusCode.OK, ""


@FUZZ
@given(frames=st.lists(st.binary(max_size=2048), min_size=1, max_size=4))
def test_raw_garbage_bytes_get_a_status(channel, frames) -> None:
    events, code, details = _raw_converse(channel, frames)
    _check_answered(code, details, events)
    if not _parses(frames[0]):
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)


def test_garbage_after_a_valid_config_ends_the_stream_with_invalid_argument(channel) -> None:
    config = pb.ConverseRequest(config=pb.SessionConfig(output=pb.OutputOptions(video=False)))
    events, code, details = _raw_converse(channel, [config.SerializeToString(), b"\x00garbage"])
    assert code != grpc.StatusCode.DEADLINE_EXCEEDED, "the session hung after an unparsable request"
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
    assert events and events[0].HasField("session_started")


def test_message_over_max_message_bytes_is_resource_exhausted(channel) -> None:
    big = pb.ConverseRequest(message=pb.UserMessage(text="x" * (MAX_MESSAGE_BYTES + 10)))
    events, code, _ = _converse(channel, [pb.ConverseRequest(config=pb.SessionConfig()), big])
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_server_is_healthy_after_fuzzing(channel, fuzzed_server) -> None:
    assert fuzzed_server.process.poll() is None
    _assert_healthy(channel)


def test_nan_and_infinite_segment_lengths_are_refused(channel) -> None:
    for value in (math.nan, math.inf, -math.inf):
        config = pb.SessionConfig(output=pb.OutputOptions(segment_seconds=value))
        _, code, details = _converse(channel, [pb.ConverseRequest(config=config)])
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "segment_seconds" in details


@pytest.mark.parametrize(("method", "shape"), [
    ("GetAvatar", "unary"), ("DeleteAvatar", "unary"), ("GetServerInfo", "unary"),
    ("GetAvatarPreview", "unary"), ("Speak", "server-stream"), ("RegisterAvatar", "client-stream"),
])
def test_unparsable_requests_to_every_method_are_invalid_argument(channel, method, shape) -> None:
    path, garbage = f"/avatar.v1.AvatarService/{method}", b"\x00not protobuf"
    try:
        if shape == "unary":
            channel.unary_unary(path)(garbage, timeout=CALL_TIMEOUT_S)
        elif shape == "server-stream":
            list(channel.unary_stream(path)(garbage, timeout=CALL_TIMEOUT_S))
        else:
            channel.stream_unary(path)(iter([garbage]), timeout=CALL_TIMEOUT_S)
        code = grpc.StatusCode.OK
    except grpc.RpcError as error:
        code = error.code()
    assert code == grpc.StatusCode.INVALID_ARGUMENT, code
