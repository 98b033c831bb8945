"""The aiohttp application: player page, WebSocket relay, avatar previews and a health check."""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import grpc.aio
from aiohttp import WSCloseCode, web
from avatar.v1 import avatar_pb2

from avatar_web.hub import Hub
from avatar_web.keys import GRPC_CHANNEL, HUB, PREVIEWS, SETTINGS
from avatar_web.previews import PreviewCache
from avatar_web.relay import BrowserSession
from avatar_web.security import require_access
from avatar_web.settings import WebSettings

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
MEDIA_URL = "/avatar"
_AVATAR_ID = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
_HTTP_STATUS = {
    grpc.StatusCode.NOT_FOUND: web.HTTPNotFound,
    grpc.StatusCode.INVALID_ARGUMENT: web.HTTPBadRequest,
    grpc.StatusCode.UNAVAILABLE: web.HTTPServiceUnavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: web.HTTPGatewayTimeout,
}
_PAGE_POLICY = (
    "default-src 'self'; media-src 'self' blob:; img-src 'self' data: blob:; "
    "connect-src 'self' ws: wss:; style-src 'self'; script-src 'self'; frame-ancestors 'none'"
)


def create_app(settings: WebSettings | None = None) -> web.Application:
    """Builds the bridge; the gRPC channel opens on startup and closes on cleanup."""
    settings = settings or WebSettings()
    app = web.Application()
    app[SETTINGS] = settings
    app[HUB] = Hub()
    app.cleanup_ctx.append(_grpc_channel)
    app.on_shutdown.append(_close_websockets)
    app.router.add_get("/", _index)
    app.router.add_get("/ws", _websocket)
    app.router.add_get("/healthz", _health)
    app.router.add_get(MEDIA_URL + "/{avatar_id}/idle.mp4", _idle_loop)
    app.router.add_get(MEDIA_URL + "/{avatar_id}/poster.jpg", _poster)
    app.router.add_static("/static/", STATIC_DIR, append_version=False)
    if importlib.util.find_spec("avatar_web.rest") is not None:
        importlib.import_module("avatar_web.rest").setup_rest(app)
    return app


async def _grpc_channel(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    limit = settings.grpc_max_message_bytes
    channel = grpc.aio.insecure_channel(
        settings.grpc_target,
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
        ],
    )
    app[GRPC_CHANNEL] = channel
    app[PREVIEWS] = PreviewCache(channel, settings.preview_cache_entries)
    warming = asyncio.create_task(app[PREVIEWS].warm())
    yield
    warming.cancel()
    await channel.close()


async def _close_websockets(app: web.Application) -> None:
    await app[HUB].close_all(WSCloseCode.GOING_AWAY, "bridge shutting down")


async def _index(request: web.Request) -> web.StreamResponse:
    response = web.FileResponse(STATIC_DIR / "index.html")
    response.headers["Content-Security-Policy"] = _PAGE_POLICY
    response.headers["Cache-Control"] = "no-cache"
    return response


async def _health(request: web.Request) -> web.Response:
    state = request.app[GRPC_CHANNEL].get_state(try_to_connect=True)
    return web.json_response(
        {"status": "ok", "grpc_target": request.app[SETTINGS].grpc_target,
         "grpc_state": state.name, "connections": len(request.app[HUB])}
    )


async def _websocket(request: web.Request) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    require_access(request, settings, check_origin=True)
    ws = web.WebSocketResponse(
        heartbeat=settings.heartbeat_s, max_msg_size=settings.max_frame_bytes, compress=False
    )
    await ws.prepare(request)
    session = BrowserSession(
        request, ws, settings, request.app[GRPC_CHANNEL], request.app[HUB], MEDIA_URL
    )
    await session.run()
    return ws


async def _preview(request: web.Request) -> avatar_pb2.AvatarPreview:
    settings = request.app[SETTINGS]
    require_access(request, settings, check_origin=False)
    avatar_id = request.match_info["avatar_id"]
    if not _AVATAR_ID.match(avatar_id):
        raise web.HTTPBadRequest(text="bad avatar id")
    try:
        return await request.app[PREVIEWS].get("" if avatar_id == "default" else avatar_id)
    except grpc.aio.AioRpcError as exc:
        log.info("preview of %r failed: %s", avatar_id, exc.code().name)
        raise _HTTP_STATUS.get(exc.code(), web.HTTPBadGateway)(text=exc.details() or "") from None


async def _idle_loop(request: web.Request) -> web.Response:
    preview = await _preview(request)
    if not preview.idle_mp4:
        raise web.HTTPNotFound(text="this avatar has no idle loop")
    return _ranged(request, preview.idle_mp4, "video/mp4")


async def _poster(request: web.Request) -> web.Response:
    preview = await _preview(request)
    if not preview.poster_jpeg:
        raise web.HTTPNotFound(text="this avatar has no poster")
    return _ranged(request, preview.poster_jpeg, "image/jpeg")


_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def _ranged(request: web.Request, body: bytes, content_type: str) -> web.Response:
    """Serves bytes whole or one `Range: bytes=a-b` of them (media elements seek with ranges)."""
    headers = {"Accept-Ranges": "bytes", "Cache-Control": "private, max-age=300"}
    match = _RANGE.match(request.headers.get("Range", ""))
    if not match or match.groups() == ("", ""):
        return web.Response(body=body, content_type=content_type, headers=headers)
    first, last = match.groups()
    size = len(body)
    if first:
        start, end = int(first), min(int(last) if last else size - 1, size - 1)
    else:
        start, end = max(0, size - int(last)), size - 1
    if start > end or start >= size:
        raise web.HTTPRequestRangeNotSatisfiable(headers={"Content-Range": f"bytes */{size}"})
    headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    return web.Response(
        status=206, body=body[start : end + 1], content_type=content_type, headers=headers
    )
