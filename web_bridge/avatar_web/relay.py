"""One browser WebSocket relayed to one gRPC Converse stream."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

import grpc
import grpc.aio
from aiohttp import WSCloseCode, WSMsgType, web
from avatar.v1 import avatar_pb2

from avatar_web.hub import Hub
from avatar_web.outbox import Outbox, SlowConsumer
from avatar_web.protocol import (
    PROTOCOL_VERSION,
    EventTranslator,
    Hello,
    Ping,
    ProtocolError,
    encode_json,
    error_message,
    parse_client_message,
    to_request,
)
from avatar_web.settings import WebSettings
from avatar_web.upstream import Upstream, explain_credential_refusal

log = logging.getLogger(__name__)

CLOSE_SLOW_CONSUMER = WSCloseCode.TRY_AGAIN_LATER  # 1013: the page reconnects and resumes
CLOSE_UPSTREAM_ENDED = 4000  # the service ended the stream; the page reconnects
CLOSE_NO_HELLO = 4008
_CLOSE_TIMEOUT_S = 2.0
_FLUSH_TIMEOUT_S = 5.0


class BrowserSession:
    """Relays one page: its messages to the service, the service's events (bounded) to it.

    Its tasks (sender, gRPC pump, keep-alive, hello watch) are owned here: `run` cancels and
    awaits every one of them and logs what any of them raised.
    """

    def __init__(
        self, request: web.Request, ws: web.WebSocketResponse, settings: WebSettings,
        upstream: Upstream, hub: Hub, media_url: str,
    ) -> None:
        self._request = request
        self._ws = ws
        self._settings = settings
        self._upstream = upstream
        self._hub = hub
        self._outbox = Outbox(settings.send_buffer_bytes)
        self._translator = EventTranslator(media_url)
        self._call: grpc.aio.StreamStreamCall | None = None
        self._write_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task] = []
        self._closing = False
        self._sender: asyncio.Task | None = None
        self._hello_watch: asyncio.Task | None = None

    def offer(self, frame: str | bytes) -> bool:
        """Queues a side message (pong, error, broadcast) without waiting; dropped if full."""
        return self._outbox.offer(frame)

    async def close(self, code: int, message: str) -> None:
        """Ends the relay and closes the WebSocket with the given code."""
        if self._closing:
            return
        self._closing = True
        self._outbox.close()
        if self._call is not None:
            self._call.cancel()
        if self._sender is not None and asyncio.current_task() is not self._sender:
            self._sender.cancel()
        try:
            async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                await self._ws.close(code=code, message=message.encode()[:120])
        except TimeoutError:  # a browser that reads nothing cannot take a close frame either
            log.info("browser took no close frame in %g s; dropping its connection",
                     _CLOSE_TIMEOUT_S)
            self._abort()

    def _abort(self) -> None:
        if self._request.transport is not None:
            self._request.transport.abort()

    async def run(self) -> None:
        """Serves the connection until either side closes it."""
        self._hub.join(self)
        self._sender = self._spawn(self._send_loop(), "ws-send")
        self._hello_watch = self._spawn(self._expect_hello(), "ws-hello-watch")
        self.offer(encode_json({
            "type": "welcome", "v": PROTOCOL_VERSION, "heartbeat_s": self._settings.heartbeat_s,
            "max_message_bytes": self._settings.max_message_bytes,
        }))
        try:
            await self._receive_loop()
        finally:
            self._hub.leave(self)
            self._closing = True
            self._outbox.close()
            if self._call is not None:
                self._call.cancel()
            await self._stop_tasks()

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> asyncio.Task:
        task = asyncio.create_task(work, name=name)
        self._tasks.append(task)
        return task

    async def _stop_tasks(self) -> None:
        """Cancels and awaits every task of this page; reports what any of them raised."""
        for task in self._tasks:
            task.cancel()
        results = await asyncio.gather(*self._tasks, return_exceptions=True)
        for task, result in zip(self._tasks, results, strict=True):
            if isinstance(result, ConnectionError):  # the browser left while we were sending
                log.info("%s ended: the browser connection is gone (%s)", task.get_name(), result)
            elif isinstance(result, Exception):
                log.error("%s failed", task.get_name(), exc_info=result)

    async def _receive_loop(self) -> None:
        async for msg in self._ws:
            if msg.type == WSMsgType.TEXT:
                try:
                    await self._on_text(msg.data)
                except Exception:  # a bug here must not end the page's session
                    log.exception("could not handle a page message")
                    self.offer(encode_json(error_message(
                        "internal", "the bridge could not handle this message",
                        grpc.StatusCode.INTERNAL)))
            elif msg.type == WSMsgType.BINARY:
                self._refuse(ProtocolError(
                    "binary_not_accepted", "the page sends JSON text messages only"))
            elif msg.type == WSMsgType.ERROR:
                log.info("websocket error: %s", self._ws.exception())
                break

    async def _expect_hello(self) -> None:
        """Closes a socket that sends no hello within hello_timeout_s (cancelled by the hello)."""
        await asyncio.sleep(self._settings.hello_timeout_s)
        if self._call is None:
            await self.close(CLOSE_NO_HELLO, "no hello in time")

    def _refuse(self, error: ProtocolError) -> None:
        self.offer(encode_json(error_message(error.reason, error.message, error.code)))

    async def _on_text(self, raw: str) -> None:
        try:
            message = parse_client_message(raw, self._settings.max_message_bytes)
        except ProtocolError as error:
            self._refuse(error)
            return
        if isinstance(message, Ping):
            self.offer(encode_json({"type": "pong", "t": message.t}))
            return
        if isinstance(message, Hello):
            if self._call is not None:
                self._refuse(ProtocolError("already_started", "the session is already open",
                                           grpc.StatusCode.FAILED_PRECONDITION))
                return
            await self._open(message)
            return
        if self._call is None:
            self._refuse(ProtocolError("not_started", "send a hello first",
                                       grpc.StatusCode.FAILED_PRECONDITION))
            return
        await self._write(to_request(message))

    async def _open(self, hello: Hello) -> None:
        if self._hello_watch is not None:
            self._hello_watch.cancel()
        self._call = self._upstream.converse()
        self._spawn(self._pump(), "grpc-pump")
        self._spawn(self._keep_alive(), "grpc-keepalive")
        await self._write(to_request(hello))

    async def _write(self, request: avatar_pb2.ConverseRequest) -> None:
        """Sends one request upstream. A stream that has ended refuses it; the pump reports
        that stream's final status to the page, so here it is only noted."""
        assert self._call is not None
        async with self._write_lock:
            try:
                await self._call.write(request)
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as exc:
                log.debug("request not sent, the stream has ended: %s", exc)

    async def _keep_alive(self) -> None:
        """Pings the service while the page is connected, so idle sessions stay open."""
        while True:
            await asyncio.sleep(self._settings.heartbeat_s)
            await self._write(avatar_pb2.ConverseRequest(keep_alive=avatar_pb2.KeepAlive()))

    async def _pump(self) -> None:
        """Moves the service's events to the outbox, waiting when the browser is slow."""
        assert self._call is not None
        timeout = self._settings.send_stall_timeout_s
        events = 0
        try:
            async for event in self._call:
                events += 1
                frame = self._translator.translate(event)
                if frame is not None:
                    await self._outbox.put(frame, timeout)
            status = grpc.StatusCode.OK
            detail = "the service ended the session"
        except SlowConsumer as exc:
            log.warning("dropping a slow browser connection: %s", exc)
            self._abort()
            await self.close(CLOSE_SLOW_CONSUMER, "send buffer full")
            return
        except grpc.aio.AioRpcError as exc:
            status, details = exc.code(), exc.details() or ""
            if not events:
                status, details = await self._upstream.refusal_behind(status, details)
            detail = explain_credential_refusal(status, details) or details or status.name
        if self._closing:
            return
        stage = "session" if status == grpc.StatusCode.OK else "upstream"
        self.offer(encode_json(error_message(stage, detail, status, source="service", stage=stage)))
        self._outbox.close()
        await self._flush()
        await self.close(CLOSE_UPSTREAM_ENDED, "upstream ended")

    async def _flush(self) -> None:
        """Lets the sender deliver what is queued (the explanation) before the socket closes."""
        assert self._sender is not None
        # asyncio.wait neither raises the sender's failure (run() reports it) nor cancels it.
        done, _ = await asyncio.wait({self._sender}, timeout=_FLUSH_TIMEOUT_S)
        if not done:
            log.info("browser took no queued frames in %g s; closing anyway", _FLUSH_TIMEOUT_S)

    async def _send_loop(self) -> None:
        while (frame := await self._outbox.get()) is not None:
            if isinstance(frame, bytes):
                await self._ws.send_bytes(frame)
            else:
                await self._ws.send_str(frame)
