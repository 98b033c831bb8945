"""A conversation session: its state, its one running turn, and its outgoing events.

A session lives as long as its Converse stream (or one Speak call). Requests
come in through `handle`, events go out through `responses()`, which the
servicer yields to gRPC. At most one turn runs at a time; a new message or an
interrupt cancels it through the turn's task (the one cancel path).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from avatar.v1 import avatar_pb2 as pb

from avatar_server.avatars.model import AvatarInfo
from avatar_server.core.errors import (
    AvatarError,
    CapacityExhausted,
    InvalidInput,
    NotFound,
    StatusCode,
)
from avatar_server.media.encoder import SegmentEncoder
from avatar_server.pipeline.events import SegmentOut, TurnEvent, TurnReport
from avatar_server.pipeline.turn import SessionMedia, run_turn
from avatar_server.providers.llm.base import ChatMessage
from avatar_server.service import convert
from avatar_server.service.deps import ServiceDeps
from avatar_server.session_store.base import SessionState

log = logging.getLogger(__name__)

_LANGUAGE = re.compile(r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8}){0,3}$")
_TURN_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_FIRST_SEGMENT_FRAMES = 8


@dataclass(frozen=True)
class EndStream:
    """Ends the response stream, with a status if `code` is not OK."""

    code: StatusCode = StatusCode.OK
    message: str = ""


class Session:
    """One conversation (see module docstring)."""

    def __init__(self, deps: ServiceDeps, state: SessionState, media: SessionMedia,
                 avatar: AvatarInfo, *, resumed: bool, width: int, height: int) -> None:
        self.deps = deps
        self.state = state
        self.media = media
        self.avatar = avatar
        self.resumed = resumed
        self.width, self.height = width, height
        self.id = state.session_id
        self._out: asyncio.Queue[pb.ConverseResponse | EndStream] = asyncio.Queue(
            deps.settings.limits.send_queue_events)
        self._turn_task: asyncio.Task[None] | None = None
        self._turn_id = ""
        self._cancel_reason = ""
        self._cancel_requested_at = 0.0
        self._closed = False
        self._ending = False  # no more turns; end the stream when the running one is done
        self._last_activity = time.monotonic()
        self._watchdog: asyncio.Task[None] | None = None
        self._eviction: asyncio.Task[None] | None = None
        self._refuse_turns = ""  # set while draining: why new turns are refused
        self._state_final = False  # saved for the last time here (drain): never overwrite later

    # ------------------------------------------------------------------ opening
    @classmethod
    async def open(cls, deps: ServiceDeps, config: pb.SessionConfig) -> Session:
        """Validates the config, resumes or creates the state, and starts render + encode."""
        settings = deps.settings
        if deps.draining:
            raise AvatarError("server is draining; reconnect to another instance",
                              code=StatusCode.UNAVAILABLE, stage="session", retriable=True)
        if len(deps.sessions) >= settings.limits.max_sessions:
            raise CapacityExhausted(
                f"server is at its limit of {settings.limits.max_sessions} sessions; retry in a few seconds"
            )
        language = config.language or settings.session.default_language
        if not _LANGUAGE.match(language):
            raise InvalidInput(f"config.language {language!r} is not a BCP-47 tag like 'en-US'")
        output = config.output
        fps = output.fps or settings.media.fps
        if not 1 <= fps <= 60 or settings.media.clock_rate % fps:
            raise InvalidInput(f"config.output.fps {fps} must be 1..60 and divide {settings.media.clock_rate}")
        segment_seconds = output.segment_seconds or settings.media.segment_seconds
        if not 0.2 <= segment_seconds <= 10.0:
            raise InvalidInput(f"config.output.segment_seconds {segment_seconds} must be 0.2..10")
        if len(config.system_prompt) > settings.limits.max_text_chars:
            raise InvalidInput(f"config.system_prompt is longer than {settings.limits.max_text_chars} characters")
        video = output.video if output.HasField("video") else True
        pcm_out = output.pcm_audio if output.HasField("pcm_audio") else True

        state = await deps.store.load(config.session_id) if config.session_id else None
        resumed = state is not None
        if state is None:
            state = SessionState(
                session_id=secrets.token_hex(16), avatar_id="", voice="", language=language,
                system_prompt="", clock_rate=settings.media.clock_rate, fps=fps,
            )
        avatar_id = config.avatar or state.avatar_id or deps.avatars.default_id
        avatar = await deps.avatars.get(avatar_id)
        if config.language or not resumed:
            state.language = language
        voice = config.voice or state.voice or deps.tts.default_voice(state.language)
        if voice not in {v.name for v in deps.tts.voices()}:
            raise NotFound(f"config.voice {voice!r} is not offered by the {deps.tts.name} speech provider")
        state.avatar_id, state.voice = avatar.id, voice
        if config.system_prompt:
            state.system_prompt = config.system_prompt

        render = None
        encoder = None
        width = height = 0
        if video:
            assets = await deps.avatars.load(avatar.id)
            render = await deps.renderer.open_session(assets, fps=state.fps)
            width, height = render.width, render.height
            try:
                encoder = SegmentEncoder(
                    width=width, height=height, fps=state.fps, clock_rate=state.clock_rate,
                    crf=settings.media.video_crf, preset=settings.media.x264_preset,
                    threads=settings.media.encoder_threads, start_frame=state.next_frame,
                    start_sequence=state.next_sequence, cpu_meter=deps.metrics.encode_cpu.inc,
                )
            except BaseException:
                await render.aclose()
                raise
        media = SessionMedia(
            clock_rate=state.clock_rate, fps=state.fps,
            segment_frames=max(1, round(segment_seconds * state.fps)),
            first_segment_frames=min(_FIRST_SEGMENT_FRAMES, max(1, round(segment_seconds * state.fps))),
            render=render, encoder=encoder, renderer_rate=deps.renderer.sample_rate,
            pcm_out=pcm_out, position=state.media_position, next_frame=state.next_frame,
            next_sequence=state.next_sequence,
        )
        session = cls(deps, state, media, avatar, resumed=resumed, width=width, height=height)
        deps.sessions.add(session)
        deps.metrics.active_sessions.set(len(deps.sessions))
        await session._send_opening()
        session._watchdog = asyncio.create_task(session._idle_watchdog())
        log.info("session opened", extra={"session_id": session.id, "resumed": resumed,
                                          "avatar": avatar.id, "voice": voice})
        return session

    async def _send_opening(self) -> None:
        deps, state = self.deps, self.state
        started = pb.SessionStarted(
            avatar=convert.avatar_pb(self.avatar), voice=state.voice, language=state.language,
            clock_rate=state.clock_rate, fps=state.fps, width=self.width, height=self.height,
            renderer=deps.renderer.name, llm=deps.llm.name, tts=deps.tts.name, resumed=self.resumed,
            media_position=self.media.position, instance_id=deps.instance_id,
        )
        await self._put(pb.ConverseResponse(session_id=self.id, session_started=started))
        if self.media.encoder is not None:
            encoder = self.media.encoder
            init = await asyncio.to_thread(encoder.init_segment)
            await self._put(pb.ConverseResponse(
                session_id=self.id,
                video_init=pb.VideoInit(data=init, mime_type=encoder.mime_type, width=self.width,
                                        height=self.height, fps=state.fps),
            ))

    # ----------------------------------------------------------------- requests
    async def handle(self, request: pb.ConverseRequest) -> None:
        """Acts on one client request; bad ones get an Error event, the session goes on."""
        self._last_activity = time.monotonic()
        kind = request.WhichOneof("request")
        try:
            if kind == "message":
                await self.start_turn(request.message.text, request.message.turn_id, from_llm=True)
            elif kind == "interrupt":
                await self.interrupt(request.interrupt.turn_id)
            elif kind == "keep_alive":
                await self._put(pb.ConverseResponse(session_id=self.id, keep_alive=pb.KeepAlive()))
            elif kind == "config":
                raise AvatarError("config was already sent; a session takes one config",
                                  code=StatusCode.FAILED_PRECONDITION, stage="input")
            else:
                raise InvalidInput("empty request: set one of config, message, interrupt, keep_alive")
        except AvatarError as error:
            await self.send_error(error)

    async def start_turn(self, text: str, turn_id: str, *, from_llm: bool) -> str:
        """Validates a turn, cancels the running one (barge-in) and starts the new one."""
        limit = self.deps.settings.limits.max_text_chars
        if not text.strip():
            raise InvalidInput("message.text is empty")
        if len(text) > limit:
            raise InvalidInput(f"message.text has {len(text)} characters; the limit is {limit}")
        if turn_id and not _TURN_ID.match(turn_id):
            raise InvalidInput("message.turn_id must be 1-64 characters of A-Z a-z 0-9 _ -")
        if self._refuse_turns:
            raise AvatarError(self._refuse_turns, code=StatusCode.UNAVAILABLE, stage="session",
                              retriable=True)
        if self._ending:
            raise AvatarError("session is ending; no new turns", code=StatusCode.FAILED_PRECONDITION,
                              stage="session")
        await self.cancel_turn("superseded")
        turn_id = turn_id or secrets.token_hex(8)
        self._turn_id = turn_id
        self._turn_task = asyncio.create_task(self._run_turn(turn_id, text, from_llm))
        return turn_id

    async def interrupt(self, turn_id: str) -> None:
        if turn_id and turn_id != self._turn_id:
            raise NotFound(f"interrupt.turn_id {turn_id!r} is not the running turn")
        await self.cancel_turn("interrupted")

    async def cancel_turn(self, reason: str) -> None:
        """Stops the running turn (every stage) and waits until it has stopped."""
        task = self._turn_task
        if task is None or task.done():
            return
        self._cancel_reason = reason
        self._cancel_requested_at = time.perf_counter()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    @property
    def queued_events(self) -> int:
        """Events waiting for the client (for the send-queue gauge)."""
        return self._out.qsize()

    @property
    def turn_running(self) -> bool:
        return self._turn_task is not None and not self._turn_task.done()

    async def wait_turn(self) -> None:
        if self._turn_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(self._turn_task)

    # -------------------------------------------------------------------- turns
    def _conversation(self, user_text: str) -> list[ChatMessage]:
        prompt = self.state.system_prompt or self.deps.settings.session.system_prompt
        messages = [ChatMessage("system", prompt)]
        messages += [ChatMessage(role, content) for role, content in self.state.history]  # type: ignore[arg-type]
        messages.append(ChatMessage("user", user_text))
        return messages

    async def _run_turn(self, turn_id: str, text: str, from_llm: bool) -> None:
        deps, metrics = self.deps, self.deps.metrics
        started = time.perf_counter()
        report = TurnReport()
        metrics.active_turns.inc()
        log.info("turn started", extra={"session_id": self.id, "turn_id": turn_id})
        outcome = "completed"
        try:
            await self._put(pb.ConverseResponse(
                session_id=self.id, turn_id=turn_id,
                span=pb.MediaSpan(start=self.media.position, end=self.media.position),
                turn_started=pb.TurnStarted(user_text=text if from_llm else "", from_llm=from_llm),
            ))
            reply = (deps.llm.stream_reply(self._conversation(text), language=self.state.language)
                     if from_llm else _single(text))

            async def emit(event: TurnEvent) -> None:
                if isinstance(event, SegmentOut):  # counted as sent, so rate() is render frames/s
                    deps.metrics.frames.inc(event.frames)
                await self._put(convert.event_pb(event, self.id, turn_id, self.media.clock_rate))

            deadline = deps.settings.limits.turn_deadline_s or None
            try:
                async with asyncio.timeout(deadline):
                    await run_turn(reply, media=self.media, tts=deps.tts, voice=self.state.voice,
                                   language=self.state.language, emit=emit, report=report,
                                   started=started, from_llm=from_llm)
            except TimeoutError:
                raise AvatarError(f"turn exceeded its deadline of {deadline:g} s",
                                  code=StatusCode.DEADLINE_EXCEEDED, stage="session") from None
            report.timings.total_ms = (time.perf_counter() - started) * 1000.0
            self._observe(report)
            await self._put(convert.completed_pb(report, self.id, turn_id, self.media.clock_rate))
        except asyncio.CancelledError:
            outcome = "cancelled"
            stop_s = time.perf_counter() - self._cancel_requested_at if self._cancel_requested_at else 0.0
            metrics.cancel_stop.observe(stop_s)
            if not self._closed:
                await self._put(pb.ConverseResponse(
                    session_id=self.id, turn_id=turn_id,
                    span=pb.MediaSpan(start=report.span.start, end=self.media.position),
                    turn_cancelled=pb.TurnCancelled(reason=self._cancel_reason or "cancelled",
                                                    stop_ms=stop_s * 1000.0),
                ))
            raise
        except BaseException as raised:  # noqa: BLE001 - every failure becomes an Error event
            error = _as_avatar_error(raised)
            if error is None:
                raise
            outcome = "failed"
            if error.code == StatusCode.INTERNAL:
                log.error("turn failed", exc_info=raised, extra={"session_id": self.id, "turn_id": turn_id})
            await self.send_error(error, turn_id)
        finally:
            metrics.active_turns.dec()
            metrics.turns.labels(outcome).inc()
            self._remember(text if from_llm else "", report.text)
            with contextlib.suppress(Exception):
                await self.save()
            log.info("turn %s", outcome, extra={"session_id": self.id, "turn_id": turn_id})
            if self._ending and not self._closed:
                self._put_nowait_end(EndStream())

    def _observe(self, report: TurnReport) -> None:
        metrics, timings = self.deps.metrics, report.timings
        if timings.first_text_ms:
            metrics.first_text.observe(timings.first_text_ms / 1000.0)
        if timings.first_audio_ms:
            metrics.first_audio.observe(timings.first_audio_ms / 1000.0)
        if timings.first_segment_ms:
            metrics.first_video.observe(timings.first_segment_ms / 1000.0)
        if report.media_samples:
            metrics.realtime_factor.observe(report.work_seconds / (report.media_samples / self.media.clock_rate))

    def _remember(self, user_text: str, reply_text: str) -> None:
        """Adds the exchange to the bounded conversation memory."""
        state = self.state
        if user_text:
            state.history.append(("user", user_text))
            state.history.append(("assistant", reply_text))
            state.completed_turns += 1
        keep = 2 * self.deps.settings.limits.max_history_turns
        del state.history[:-keep]
        state.media_position = self.media.position
        state.next_frame = self.media.next_frame
        state.next_sequence = self.media.next_sequence

    async def save(self) -> None:
        if not self._state_final:
            await self.deps.store.save(self.state)

    async def save_final(self) -> None:
        """Saves once more and never again from this instance (the client resumes elsewhere)."""
        await self.save()
        self._state_final = True

    def stop_taking_turns(self, reason: str) -> None:
        """Draining: the running turn may finish; new ones are refused as retriable."""
        self._refuse_turns = reason

    # ------------------------------------------------------------------ output
    async def send_error(self, error: AvatarError, turn_id: str = "") -> None:
        self.deps.metrics.errors.labels(error.stage, error.code.name).inc()
        await self._put(convert.error_pb(error, self.id, turn_id))

    async def _put(self, item: pb.ConverseResponse | EndStream) -> None:
        """Queues an event; a client too slow to take events for long is ended."""
        if self._closed:
            return
        lag = self.deps.settings.limits.max_send_lag_s
        try:
            async with asyncio.timeout(lag or None):
                await self._out.put(item)
        except TimeoutError:
            log.warning("client too slow; ending session", extra={"session_id": self.id})
            self._drain_queue()
            self._out.put_nowait(EndStream(StatusCode.RESOURCE_EXHAUSTED,
                                           f"client read too slowly (more than {lag:g} s behind)"))
            self._closed = True
            # Free the renderer and stop the turn now; the stream itself ends when
            # the client reads again or its connection goes.
            self._eviction = asyncio.create_task(self.close("client too slow"))
            raise asyncio.CancelledError from None

    def _drain_queue(self) -> None:
        while not self._out.empty():
            self._out.get_nowait()

    def _put_nowait_end(self, end: EndStream) -> None:
        with contextlib.suppress(asyncio.QueueFull):
            self._out.put_nowait(end)
            return
        self._drain_queue()  # the client is gone or stuck; the end must get through
        self._out.put_nowait(end)

    async def responses(self) -> AsyncIterator[pb.ConverseResponse | EndStream]:
        """Events for the client, ending with an EndStream."""
        while True:
            item = await self._out.get()
            yield item
            if isinstance(item, EndStream):
                return

    async def finish(self) -> None:
        """The client will send nothing more: end the stream once the running turn is done."""
        self._ending = True
        if not self.turn_running:
            self._put_nowait_end(EndStream())

    async def end(self, code: StatusCode, message: str) -> None:
        """Ends the stream now with a status (e.g. draining: UNAVAILABLE, reconnect)."""
        self._ending = True
        self._put_nowait_end(EndStream(code, message))

    async def _idle_watchdog(self) -> None:
        timeout = self.deps.settings.limits.session_idle_timeout_s
        if not timeout:
            return
        while True:
            await asyncio.sleep(min(timeout, 5.0))
            if not self.turn_running and time.monotonic() - self._last_activity > timeout:
                await self.send_error(AvatarError(
                    f"session idle for more than {timeout:g} s; closed",
                    code=StatusCode.DEADLINE_EXCEEDED, stage="session"))
                await self.end(StatusCode.OK, "")
                return

    async def close(self, reason: str = "disconnected") -> None:
        """Stops everything and frees the render slot; safe to call twice."""
        if self._closed and self._turn_task is None:
            return
        if self._watchdog is not None:
            self._watchdog.cancel()
        self._closed = True  # nobody reads any more: the stopping turn's events are dropped, not awaited
        await self.cancel_turn(reason)
        self._turn_task = None
        with contextlib.suppress(Exception):
            await self.save()
        if self.media.render is not None:
            with contextlib.suppress(Exception):
                await self.media.render.aclose()
        if self.media.encoder is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.media.encoder.close)
        self.deps.sessions.discard(self)
        self.deps.metrics.active_sessions.set(len(self.deps.sessions))
        log.info("session closed (%s)", reason, extra={"session_id": self.id})


async def _single(text: str) -> AsyncIterator[str]:
    yield text


def _as_avatar_error(raised: BaseException) -> AvatarError | None:
    """The AvatarError behind a failure (unwrapping task groups); unexpected ones become INTERNAL."""
    if isinstance(raised, AvatarError):
        return raised
    if isinstance(raised, BaseExceptionGroup):
        inner = [_as_avatar_error(e) for e in raised.exceptions]
        found = [e for e in inner if e is not None]
        return found[0] if found else None
    if isinstance(raised, Exception):
        return AvatarError(f"internal error: {type(raised).__name__}: {raised}", code=StatusCode.INTERNAL)
    return None
