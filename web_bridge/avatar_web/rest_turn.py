"""Runs one whole turn over gRPC (a short Converse stream or a Speak call) and collects it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import grpc
import grpc.aio
from avatar.v1 import avatar_pb2

from avatar_web.rest_errors import (
    ApiError,
    error_before_turn,
    error_from_status,
    error_midway,
    status_from_number,
)
from avatar_web.upstream import Upstream

log = logging.getLogger(__name__)

_DRAIN_TIMEOUT_S = 5.0


@dataclass
class TurnRequest:
    """What a REST call asks for; `text_field` is the JSON field the text came from."""

    text: str
    text_field: str
    session: str = ""
    avatar: str = ""
    voice: str = ""
    language: str = ""

    def session_config(self) -> avatar_pb2.SessionConfig:
        """Video only: the MP4 carries the speech, so raw PCM events would be wasted traffic."""
        return avatar_pb2.SessionConfig(
            session_id=self.session,
            avatar=self.avatar,
            voice=self.voice,
            language=self.language,
            output=avatar_pb2.OutputOptions(pcm_audio=False),
        )

    def named_fields(self) -> dict[str, str]:
        return {"avatar": self.avatar, "voice": self.voice, "language": self.language}


@dataclass
class TurnOutput:
    """Everything a finished turn produced."""

    session_id: str = ""
    resumed: bool = False
    turn_id: str = ""
    reply_parts: list[str] = field(default_factory=list)
    init: bytes = b""
    segments: list[bytes] = field(default_factory=list)
    completed: avatar_pb2.TurnCompleted | None = None

    @property
    def reply(self) -> str:
        if self.completed is not None and self.completed.text:
            return self.completed.text
        return "".join(self.reply_parts)


class _Collector:
    """Folds a stream's events into a TurnOutput; raises ApiError for errors and cancellations."""

    def __init__(self, request: TurnRequest) -> None:
        self.request = request
        self.output = TurnOutput()
        self.turn_started = False

    def feed(self, event: avatar_pb2.ConverseResponse) -> bool:
        """Takes one event; True once the turn is over."""
        kind = event.WhichOneof("event")
        out = self.output
        if event.session_id and not out.session_id:
            out.session_id = event.session_id
        if kind == "session_started":
            out.resumed = event.session_started.resumed
        elif kind == "turn_started":
            self.turn_started = True
            out.turn_id = event.turn_id
        elif kind == "text_delta":
            out.reply_parts.append(event.text_delta.text)
        elif kind == "video_init":
            out.init = event.video_init.data
        elif kind == "video_segment":
            out.segments.append(event.video_segment.data)
        elif kind == "turn_completed":
            out.turn_id = out.turn_id or event.turn_id
            out.completed = event.turn_completed
            return True
        elif kind == "turn_cancelled":
            reason = event.turn_cancelled.reason
            raise ApiError(
                504 if reason == "deadline" else 502,
                f"the turn was cancelled by the service ({reason})",
                service_error={"reason": reason, "stage": "turn"},
            )
        elif kind == "error":
            raise self._error(event.error)
        return False

    def _error(self, error: avatar_pb2.Error) -> ApiError:
        mapper = error_midway if self.turn_started else error_before_turn
        return mapper(
            status_from_number(error.code),
            error.message,
            stage=error.stage,
            retriable=error.retriable,
            text_field=self.request.text_field,
            named_fields=self.request.named_fields(),
        )

    def rpc_error(self, code: grpc.StatusCode, details: str) -> ApiError:
        return error_from_status(
            code,
            details,
            turn_started=self.turn_started,
            text_field=self.request.text_field,
            named_fields=self.request.named_fields(),
        )

    def ended_early(self) -> ApiError:
        return ApiError(502, "the service ended the stream before the turn completed")


async def run_chat_turn(upstream: Upstream, request: TurnRequest) -> TurnOutput:
    """One user message on a Converse stream that lives just for this turn.

    The writing side stays open until the turn is over (a half-close would tell the service
    the client left), then closes so the service can end the stream and keep the session.
    """
    call = upstream.converse()

    async def send_turn() -> None:
        await call.write(avatar_pb2.ConverseRequest(config=request.session_config()))
        await call.write(
            avatar_pb2.ConverseRequest(message=avatar_pb2.UserMessage(text=request.text))
        )

    return await _collect(
        call, _Collector(request), upstream, before=send_turn, half_close=True
    )


async def run_speak_turn(upstream: Upstream, request: TurnRequest) -> TurnOutput:
    """The Speak rpc: the avatar says `request.text` as one turn, no language model."""
    call = upstream.speak(
        avatar_pb2.SpeakRequest(config=request.session_config(), text=request.text)
    )
    return await _collect(call, _Collector(request), upstream)


async def _collect(
    call: grpc.aio.Call,
    collector: _Collector,
    upstream: Upstream,
    *,
    before: Callable[[], Awaitable[None]] | None = None,
    half_close: bool = False,
) -> TurnOutput:
    """Feeds the call's events to `collector` until the turn is over, then lets the stream end."""
    finished = False
    try:
        if before is not None:
            await before()
        while not finished:
            event = await call.read()
            if event is grpc.aio.EOF:
                raise collector.ended_early()
            finished = collector.feed(event)
        if half_close:
            await call.done_writing()
        await _drain(call)
    except grpc.aio.AioRpcError as exc:
        if finished:
            return collector.output
        code, details = exc.code(), exc.details() or ""
        if not collector.output.session_id:  # nothing came back: see what hid the refusal
            code, details = await upstream.refusal_behind(code, details)
        raise collector.rpc_error(code, details) from exc
    finally:
        if not call.done():
            call.cancel()
    return collector.output


async def _drain(call: grpc.aio.Call) -> None:
    """Reads until the service closes the stream, so the session is saved before the next call."""
    try:
        async with asyncio.timeout(_DRAIN_TIMEOUT_S):
            while await call.read() is not grpc.aio.EOF:
                pass
    except TimeoutError:
        log.debug("service kept the stream open after the turn; cancelling it")
