"""The plain REST API: POST /api/chat and /api/speak answer with reply text and an MP4's URL.

For clients that cannot stream: each call runs one whole turn on the service, remuxes the
turn's fragmented-MP4 segments (no re-encoding) into one ordinary MP4, publishes it in the
bounded video store, tells open WebSocket pages (video_ready) and then answers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc.aio
from aiohttp import web
from avatar.v1 import avatar_pb2
from avatar_client.mp4 import RemuxError, remux_fragments
from avatar_contract import rules

from avatar_web.keys import HUB, SETTINGS, UPSTREAM
from avatar_web.rest_errors import ApiError, error_from_status
from avatar_web.rest_turn import TurnOutput, TurnRequest, run_chat_turn, run_speak_turn
from avatar_web.settings import WebSettings
from avatar_web.upstream import Upstream, explain_credential_refusal
from avatar_web.video_store import StoreLimits, VideoStore

log = logging.getLogger(__name__)

_VIDEO_NAME = re.compile(r"([0-9a-f]{32})\.mp4")
_SERVER_INFO_TTL_S = 30.0
_HEALTH_TIMEOUT_S = 3.0


@dataclass
class RestState:
    """What the REST routes keep between calls."""

    store: VideoStore | None = None
    busy_sessions: set[str] = field(default_factory=set)
    server_info: avatar_pb2.ServerInfo | None = None
    server_info_at: float = 0.0


REST_STATE = web.AppKey("rest_state", RestState)


def setup_rest(app: web.Application) -> None:
    """Adds the /api routes to the bridge app; the video store opens when the app starts."""
    app[REST_STATE] = RestState()
    app.on_startup.append(_open_store)
    app.router.add_post("/api/chat", _chat)
    app.router.add_post("/api/speak", _speak)
    app.router.add_get("/api/videos/{name}", _video)
    app.router.add_get("/api/health", _health)


async def _open_store(app: web.Application) -> None:
    settings = app[SETTINGS]
    limits = StoreLimits(
        max_bytes=settings.videos_max_bytes,
        max_age_s=settings.videos_max_age_s,
        max_count=settings.videos_max_count,
    )
    app[REST_STATE].store = await asyncio.to_thread(VideoStore, settings.videos_dir, limits)


# --- handlers ------------------------------------------------------------------


async def _chat(request: web.Request) -> web.Response:
    return await _answer(request, "message", run_chat_turn)


async def _speak(request: web.Request) -> web.Response:
    return await _answer(request, "text", run_speak_turn)


async def _answer(
    request: web.Request,
    text_field: str,
    run_turn: Callable[[Upstream, TurnRequest], Awaitable[TurnOutput]],
) -> web.Response:
    """Validates, runs the turn (one at a time per session), publishes the video, answers.

    The access token was checked before this runs (security.access_guard).
    """
    started = time.perf_counter()
    app = request.app
    try:
        turn_request = _parse_body(await _read_body(request, app[SETTINGS]), text_field)
        upstream = app[UPSTREAM]
        await _check_names(app, upstream, turn_request)
        async with _session_turn(app[REST_STATE], turn_request.session):
            async with asyncio.timeout(app[SETTINGS].rest_turn_timeout_s):
                output = await run_turn(upstream, turn_request)
        turn_ms = (time.perf_counter() - started) * 1000
        body = await _publish(app, output)
    except ApiError as exc:
        return exc.to_response()
    except TimeoutError:
        return ApiError(504, "the turn did not finish within rest_turn_timeout_s").to_response()
    body["timings"]["bridge_turn_ms"] = round(turn_ms, 3)
    body["timings"]["bridge_total_ms"] = round((time.perf_counter() - started) * 1000, 3)
    return web.json_response(body)


async def _video(request: web.Request) -> web.StreamResponse:
    """The finished MP4; Range requests get 206 (aiohttp's FileResponse)."""
    name = request.match_info["name"]
    match = _VIDEO_NAME.fullmatch(name)
    store = request.app[REST_STATE].store
    video = store.get(match.group(1)) if match and store is not None else None
    if video is None:
        return ApiError(
            404, f"no video {name!r} (unknown, malformed or expired)", field="id"
        ).to_response()
    return web.FileResponse(
        video.path,
        headers={
            "Content-Type": "video/mp4",
            "Cache-Control": "private, max-age=3600, immutable",
            "Content-Disposition": f'inline; filename="{video.video_id}.mp4"',
        },
    )


async def _health(request: web.Request) -> web.Response:
    """The bridge's view: is the service reachable (with the bridge's key), and what the video
    store holds. Open without a token, for probes."""
    state = request.app[REST_STATE]
    count, size = state.store.usage() if state.store is not None else (0, 0)
    body: dict[str, Any] = {"videos": {"count": count, "bytes": size}}
    try:
        info = await request.app[UPSTREAM].server_info(_HEALTH_TIMEOUT_S)
    except grpc.aio.AioRpcError as exc:
        code, details = exc.code(), exc.details() or ""
        message = explain_credential_refusal(code, details) or details
        body.update(status="unavailable", service={"error": code.name, "message": message})
        return web.json_response(body, status=503)
    body.update(
        status="draining" if info.capacity.draining else "ok",
        service={
            "version": info.version,
            "instance_id": info.instance_id,
            "renderer": info.renderer,
            "llm": info.llm,
            "tts": info.tts,
            "active_sessions": info.capacity.active_sessions,
            "active_turns": info.capacity.active_turns,
        },
    )
    return web.json_response(body, status=503 if info.capacity.draining else 200)


# --- input ---------------------------------------------------------------------


async def _read_body(request: web.Request, settings: WebSettings) -> bytes:
    """The request body, refusing more than rest_max_body_bytes without reading it all."""
    limit = settings.rest_max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, f"request body over {limit} bytes", field="body")
    chunks, size = [], 0
    async for chunk in request.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"request body over {limit} bytes", field="body")
        chunks.append(chunk)
    return b"".join(chunks)


def _parse_body(raw: bytes, text_field: str) -> TurnRequest:
    """Checks the JSON body field by field; every error names its field."""
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, f"the body is not valid JSON: {exc}", field="body") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the body must be a JSON object", field="body")
    text = data.get(text_field)
    if not isinstance(text, str):
        raise ApiError(400, f"'{text_field}' is required and must be a string", field=text_field)
    if not text.strip():
        raise ApiError(400, f"'{text_field}' must not be empty", field=text_field)
    return TurnRequest(
        text=text,
        text_field=text_field,
        session=_optional(data, "session", rules.valid_session_id),
        avatar=_optional(data, "avatar", rules.valid_name),
        voice=_optional(data, "voice", rules.valid_name),
        language=_optional(data, "language", rules.valid_language),
    )


def _optional(data: dict, key: str, valid: Callable[[str], bool]) -> str:
    """An optional string field checked with a contract rule; absent or empty is ""."""
    value = data.get(key)
    if value is None or value == "":
        return ""
    if not isinstance(value, str):
        raise ApiError(400, f"'{key}' must be a string", field=key)
    if not valid(value):
        raise ApiError(400, f"'{key}' has an invalid format", field=key)
    return value


async def _check_names(app: web.Application, upstream: Upstream, request: TurnRequest) -> None:
    """Refuses oversized text (413) and voices the service does not offer (404) before any turn.

    Unknown avatars are refused by the service when the session opens (NOT_FOUND, mapped to 404).
    """
    info = await _server_info(app, upstream, request)
    limit = info.limits.max_text_chars
    if limit and len(request.text) > limit:
        raise ApiError(
            413,
            f"'{request.text_field}' has {len(request.text)} characters; the limit is {limit}",
            field=request.text_field,
        )
    voices = {voice.name for voice in info.voices}
    if request.voice and voices and request.voice not in voices:
        raise ApiError(404, f"unknown voice {request.voice!r}", field="voice")


async def _server_info(
    app: web.Application, upstream: Upstream, request: TurnRequest
) -> avatar_pb2.ServerInfo:
    """The service's limits and voices, asked at most every few seconds."""
    state = app[REST_STATE]
    now = time.monotonic()
    if state.server_info is None or now - state.server_info_at > _SERVER_INFO_TTL_S:
        try:
            state.server_info = await upstream.server_info(10.0)
        except grpc.aio.AioRpcError as exc:
            raise _rpc_error(exc, request) from None
        state.server_info_at = now
    return state.server_info


def _rpc_error(exc: grpc.aio.AioRpcError, request: TurnRequest) -> ApiError:
    return error_from_status(
        exc.code(),
        exc.details() or "",
        turn_started=False,
        text_field=request.text_field,
        named_fields=request.named_fields(),
    )


@asynccontextmanager
async def _session_turn(state: RestState, session_id: str) -> AsyncIterator[None]:
    """One REST turn per session at a time: a call while one runs gets 409, never interleaves."""
    if not session_id:
        yield
        return
    if session_id in state.busy_sessions:
        raise ApiError(409, f"session {session_id!r} already has a turn running", field="session")
    state.busy_sessions.add(session_id)
    try:
        yield
    finally:
        state.busy_sessions.discard(session_id)


# --- output --------------------------------------------------------------------


async def _publish(app: web.Application, output: TurnOutput) -> dict[str, Any]:
    """Remuxes the turn into the store (only complete files are published) and tells the pages."""
    state = app[REST_STATE]
    completed = output.completed
    timings = {
        f.name: round(getattr(completed.timings, f.name), 3)
        for f in completed.timings.DESCRIPTOR.fields
    }
    body: dict[str, Any] = {
        "session": output.session_id,
        "turn": output.turn_id,
        "reply": output.reply,
        "video_url": None,
        "duration_s": 0.0,
        "resumed": output.resumed,
        "media_seconds": round(completed.media_seconds, 6),
        "frames": completed.frames,
        "timings": timings,
    }
    if not output.segments:
        return body
    if not output.init:
        raise ApiError(502, "the service sent video segments without an init segment")
    store = state.store
    partial = store.partial_path()
    remux_started = time.perf_counter()
    try:
        result = await asyncio.to_thread(remux_fragments, output.init, output.segments, partial)
        video = store.publish(partial)
    except RemuxError as exc:
        store.discard(partial)
        raise ApiError(502, f"the turn's video could not be assembled: {exc}") from None
    except BaseException:
        store.discard(partial)
        raise
    timings["bridge_remux_ms"] = round((time.perf_counter() - remux_started) * 1000, 3)
    body["video_url"] = f"/api/videos/{video.video_id}.mp4"
    body["duration_s"] = round(result.duration_s, 6)
    body["size_bytes"] = video.size_bytes
    _notify_pages(app, body, video.video_id)
    return body


def _notify_pages(app: web.Application, body: dict[str, Any], video_id: str) -> None:
    hub = app.get(HUB)
    if hub is None:
        return
    hub.broadcast(
        {
            "type": "video_ready",
            "source": "rest",
            "session_id": body["session"],
            "turn_id": body["turn"],
            "id": video_id,
            "url": body["video_url"],
            "duration_s": body["duration_s"],
            "reply": body["reply"],
        }
    )
