"""The aiohttp application: player page, WebSocket relay, avatar previews and a health check."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import grpc.aio
from aiohttp import WSCloseCode, web
from avatar.v1 import avatar_pb2
from avatar_contract import rules

from avatar_web.hub import Hub
from avatar_web.keys import HUB, PREVIEWS, SETTINGS, UPSTREAM
from avatar_web.previews import PreviewCache
from avatar_web.relay import BrowserSession
from avatar_web.rest import setup_rest
from avatar_web.security import access_guard, origin_allowed
from avatar_web.settings import WebSettings
from avatar_web.upstream import Upstream, explain_credential_refusal

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
MEDIA_URL = "/avatar"
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
    app = web.Application(middlewares=[access_guard])
    app[SETTINGS] = settings
    app[HUB] = Hub()
    app.cleanup_ctx.append(_upstream)
    app.on_shutdown.append(_close_websockets)
    app.router.add_get("/", _index)
    app.router.add_get("/ws", _websocket)
    app.router.add_get("/healthz", _health)
    app.router.add_get(MEDIA_URL + "/{avatar_id}/idle.mp4", _idle_loop)
    app.router.add_get(MEDIA_URL + "/{avatar_id}/poster.jpg", _poster)
    app.router.add_static("/static/", STATIC_DIR, append_version=False)
    setup_rest(app)
    return app


async def _upstream(app: web.Application) -> AsyncIterator[None]:
    """Opens the channel to the service (and warms the default preview); closes it at the end."""
    settings = app[SETTINGS]
    upstream = app[UPSTREAM] = Upstream(settings)
    app[PREVIEWS] = PreviewCache(upstream, settings.preview_cache_entries)
    warming = asyncio.create_task(app[PREVIEWS].warm(), name="preview-warm")
    try:
        yield
    finally:
        warming.cancel()
        try:
            await warming
        except asyncio.CancelledError:
            pass  # stopped before it finished: nothing was fetched, nothing to report
        await upstream.close()


async def _close_websockets(app: web.Application) -> None:
    await app[HUB].close_all(WSCloseCode.GOING_AWAY, "bridge shutting down")


async def _index(request: web.Request) -> web.StreamResponse:
    response = web.FileResponse(STATIC_DIR / "index.html")
    response.headers["Content-Security-Policy"] = _PAGE_POLICY
    response.headers["Cache-Control"] = "no-cache"
    return response


async def _health(request: web.Request) -> web.Response:
    """The bridge's own state, for probes (open without a token; says nothing about users)."""
    upstream = request.app[UPSTREAM]
    return web.json_response(
        {"status": "ok", "grpc_target": upstream.target, "grpc_tls": upstream.tls,
         "grpc_key": upstream.has_key, "grpc_state": upstream.state().name,
         "connections": len(request.app[HUB])}
    )


async def _websocket(request: web.Request) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    if not origin_allowed(request, settings):
        raise web.HTTPForbidden(text="origin not allowed")
    ws = web.WebSocketResponse(
        heartbeat=settings.heartbeat_s, max_msg_size=settings.max_frame_bytes, compress=False
    )
    await ws.prepare(request)
    session = BrowserSession(
        request, ws, settings, request.app[UPSTREAM], request.app[HUB], MEDIA_URL
    )
    await session.run()
    return ws


async def _preview(request: web.Request) -> avatar_pb2.AvatarPreview:
    avatar_id = request.match_info["avatar_id"]
    if not rules.valid_name(avatar_id):
        raise web.HTTPBadRequest(text="bad avatar id")
    try:
        return await request.app[PREVIEWS].get("" if avatar_id == "default" else avatar_id)
    except grpc.aio.AioRpcError as exc:
        code, details = exc.code(), exc.details() or ""
        log.info("preview of %r failed: %s %s", avatar_id, code.name, details)
        text = explain_credential_refusal(code, details) or details or code.name
        raise _HTTP_STATUS.get(code, web.HTTPBadGateway)(text=text) from None


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
