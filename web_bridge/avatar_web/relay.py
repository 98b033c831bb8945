"""One browser WebSocket relayed to one gRPC Converse stream."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc
import grpc.aio
from aiohttp import WSCloseCode, WSMsgType, web
from avatar.v1 import avatar_pb2, avatar_pb2_grpc

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

log = logging.getLogger(__name__)

CLOSE_SLOW_CONSUMER = WSCloseCode.TRY_AGAIN_LATER  # 1013: the page reconnects and resumes
CLOSE_UPSTREAM_ENDED = 4000  # the service ended the stream; the page reconnects
CLOSE_NO_HELLO = 4008


class BrowserSession:
    """Relays one page: its messages to the service, the service's events (bounded) to it."""

    def __init__(
        self, request: web.Request, ws: web.WebSocketResponse, settings: WebSettings,
        channel: grpc.aio.Channel, hub: Hub, media_url: str,
    ) -> None:
        self._request = request
        self._ws = ws
        self._settings = settings
        self._stub = avatar_pb2_grpc.AvatarServiceStub(channel)
        self._hub = hub
        self._outbox = Outbox(settings.send_buffer_bytes)
        self._translator = EventTranslator(media_url)
        self._call: grpc.aio.StreamStreamCall | None = None
        self._write_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task] = []
        self._closing = False
        self._sender: asyncio.Task | None = None

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
        closing = asyncio.ensure_future(self._ws.close(code=code, message=message.encode()[:120]))
        done, _ = await asyncio.wait({closing}, timeout=2.0)
        if not done:  # a browser that reads nothing cannot take a close frame either
            self._abort()

    def _abort(self) -> None:
        if self._request.transport is not None:
            self._request.transport.abort()

    async def run(self) -> None:
        """Serves the connection until either side closes it."""
        self._hub.join(self)
        sender = self._sender = asyncio.create_task(self._send_loop(), name="ws-send")
        self._tasks.append(sender)
        self.offer(encode_json({
            "type": "welcome", "v": PROTOCOL_VERSION, "heartbeat_s": self._settings.heartbeat_s,
            "max_message_bytes": self._settings.max_message_bytes,
        }))
        hello_deadline = asyncio.get_running_loop().call_later(
            self._settings.hello_timeout_s, self._hello_overdue
        )
        try:
            async for msg in self._ws:
                if msg.type == WSMsgType.TEXT:
                    try:
                        await self._on_text(msg.data)
                    except Exception:  # a bug here must not end the page's session
                        log.exception("could not handle a page message")
                        self.offer(encode_json(error_message(
                            "internal", "the bridge could not handle this message",
                            grpc.StatusCode.INTERNAL)))
                    if self._call is not None:
                        hello_deadline.cancel()
                elif msg.type == WSMsgType.BINARY:
                    self._refuse(ProtocolError(
                        "binary_not_accepted", "the page sends JSON text messages only"))
                elif msg.type == WSMsgType.ERROR:
                    log.info("websocket error: %s", self._ws.exception())
                    break
        finally:
            hello_deadline.cancel()
            self._hub.leave(self)
            self._closing = True
            self._outbox.close()
            if self._call is not None:
                self._call.cancel()
            for task in self._tasks:
                if task is not sender:
                    task.cancel()
            sender.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _hello_overdue(self) -> None:
        if self._call is None and not self._closing:
            asyncio.ensure_future(self.close(CLOSE_NO_HELLO, "no hello in time"))

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
        self._call = self._stub.Converse()
        self._tasks.append(asyncio.create_task(self._pump(), name="grpc-pump"))
        self._tasks.append(asyncio.create_task(self._keep_alive(), name="grpc-keepalive"))
        await self._write(to_request(hello))

    async def _write(self, request: avatar_pb2.ConverseRequest) -> None:
        """Sends one request upstream; a closed stream is reported by the pump, not here."""
        assert self._call is not None
        async with self._write_lock:
            with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
                await self._call.write(request)

    async def _keep_alive(self) -> None:
        """Pings the service while the page is connected, so idle sessions stay open."""
        while True:
            await asyncio.sleep(self._settings.heartbeat_s)
            await self._write(avatar_pb2.ConverseRequest(keep_alive=avatar_pb2.KeepAlive()))

    async def _pump(self) -> None:
        """Moves the service's events to the outbox, waiting when the browser is slow."""
        assert self._call is not None
        timeout = self._settings.send_stall_timeout_s
        try:
            async for event in self._call:
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
            status, detail = exc.code(), exc.details() or exc.code().name
        if self._closing:
            return
        stage = "session" if status == grpc.StatusCode.OK else "upstream"
        self.offer(encode_json(error_message(stage, detail, status, source="service", stage=stage)))
        self._outbox.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(self._sender), 5.0)  # flush the explanation
        self._sender = None
        await self.close(CLOSE_UPSTREAM_ENDED, "upstream ended")

    async def _send_loop(self) -> None:
        while (frame := await self._outbox.get()) is not None:
            if isinstance(frame, bytes):
                await self._ws.send_bytes(frame)
            else:
                await self._ws.send_str(frame)
