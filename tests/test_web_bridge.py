"""Bridge tests: the WebSocket protocol, bad input, access checks, the service key, bounded buffers.

These run the real bridge app against FakeAvatarService, a TEST DOUBLE of the gRPC service
(a real grpc.aio server on loopback that emits a valid, hand-made event sequence with fake media
bytes). The end-to-end tests against the real avatar-server are in test_web_player.py.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
import subprocess
import sys

import aiohttp
import grpc
import grpc.aio
import pytest
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient, TestServer
from avatar.v1 import avatar_pb2, avatar_pb2_grpc
from avatar_web.app import create_app
from avatar_web.keys import HUB, SETTINGS, UPSTREAM
from avatar_web.outbox import Outbox, SlowConsumer
from avatar_web.protocol import (
    MediaKind,
    Ping,
    ProtocolError,
    pack_media,
    parse_client_message,
    to_request,
    unpack_media,
)
from avatar_web.security import ACCESS_COOKIE, UnsafeExposure, cookie_value, refuse_unsafe_exposure
from avatar_web.settings import WebSettings
from avatar_web.upstream import Upstream
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

CLOCK_RATE = 16000
TOKEN = "page-token-0123456789"
SERVICE_KEY = "service-key-0123456789"


class FakeAvatarService(avatar_pb2_grpc.AvatarServiceServicer):
    """TEST DOUBLE of the avatar service: a fixed event sequence per turn, fake media bytes."""

    def __init__(self, segment_bytes: int = 2000, segments_per_turn: int = 3) -> None:
        self.segment_bytes = segment_bytes
        self.segments_per_turn = segments_per_turn
        self.positions: dict[str, int] = {}
        self.finished_streams = 0
        self.segments_sent = 0
        self.configs: list[avatar_pb2.SessionConfig] = []
        self.keep_alives = 0
        self.two_keep_alives = asyncio.Event()
        self.first_segment_sent = asyncio.Event()
        self.stream_finished = asyncio.Event()
        self.authorization: list[tuple[str, str]] = []  # (method, metadata value) per call

    def _note_key(self, method: str, context) -> None:
        metadata = dict(context.invocation_metadata())
        self.authorization.append((method, metadata.get("authorization", "")))

    async def Converse(self, request_iterator, context):  # noqa: N802 (gRPC name)
        self._note_key("Converse", context)
        queue: asyncio.Queue = asyncio.Queue()

        async def read() -> None:
            async for request in request_iterator:
                await queue.put(request)
            await queue.put(None)

        reader = asyncio.create_task(read())
        try:
            first = await queue.get()
            if first is None or first.WhichOneof("request") != "config":
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "config must come first")
            config = first.config
            self.configs.append(config)
            resumed = config.session_id in self.positions
            session_id = config.session_id if resumed else f"s{len(self.positions) + 1}"
            self.positions.setdefault(session_id, 0)
            yield avatar_pb2.ConverseResponse(
                session_id=session_id,
                session_started=avatar_pb2.SessionStarted(
                    avatar=avatar_pb2.Avatar(id="fake", display_name="Fake"), voice="v1",
                    language=config.language or "en-US", clock_rate=CLOCK_RATE, fps=25,
                    width=64, height=64, renderer="fake", llm="fake-llm", tts="fake-tts",
                    resumed=resumed, media_position=self.positions[session_id],
                ),
            )
            sent_init = False
            while (request := await queue.get()) is not None:
                kind = request.WhichOneof("request")
                if kind == "keep_alive":
                    self.keep_alives += 1
                    if self.keep_alives >= 2:
                        self.two_keep_alives.set()
                    yield avatar_pb2.ConverseResponse(
                        session_id=session_id, keep_alive=avatar_pb2.KeepAlive())
                elif kind == "interrupt":
                    yield avatar_pb2.ConverseResponse(
                        session_id=session_id, turn_id=request.interrupt.turn_id,
                        turn_cancelled=avatar_pb2.TurnCancelled(reason="interrupted"))
                elif kind == "message":
                    turn = request.message.turn_id or "turn"
                    for event in self._turn(session_id, turn, request.message.text, not sent_init):
                        yield event
                    sent_init = True
        finally:
            reader.cancel()
            self.finished_streams += 1
            self.stream_finished.set()

    def _turn(self, session_id: str, turn: str, text: str, with_init: bool):
        start = self.positions[session_id]
        seg = CLOCK_RATE  # one second per segment
        end = start + seg * self.segments_per_turn
        def ev(**kw):
            return avatar_pb2.ConverseResponse(session_id=session_id, turn_id=turn, **kw)
        yield ev(span=avatar_pb2.MediaSpan(start=start, end=start),
                 turn_started=avatar_pb2.TurnStarted(user_text=text, from_llm=True))
        yield ev(span=avatar_pb2.MediaSpan(start=start, end=start),
                 text_delta=avatar_pb2.TextDelta(text=text))
        yield ev(span=avatar_pb2.MediaSpan(start=start, end=end),
                 caption=avatar_pb2.Caption(text=text, sentence=True))
        if with_init:
            yield ev(video_init=avatar_pb2.VideoInit(
                data=b"INIT", mime_type='video/mp4; codecs="avc1.42c01f, mp4a.40.2"',
                width=64, height=64, fps=25))
        for i in range(self.segments_per_turn):
            self.segments_sent += 1
            self.first_segment_sent.set()
            yield ev(span=avatar_pb2.MediaSpan(start=start + i * seg, end=start + (i + 1) * seg),
                     video_segment=avatar_pb2.VideoSegment(
                         data=bytes([i % 256]) * self.segment_bytes, sequence=i, frames=25,
                         first_frame=i * 25, last_in_turn=i == self.segments_per_turn - 1))
        self.positions[session_id] = end
        yield ev(span=avatar_pb2.MediaSpan(start=start, end=end),
                 turn_completed=avatar_pb2.TurnCompleted(
                     text=text, frames=25 * self.segments_per_turn,
                     media_seconds=float(self.segments_per_turn),
                     timings=avatar_pb2.TurnTimings(first_text_ms=12.5)))

    async def GetServerInfo(self, request, context):  # noqa: N802
        self._note_key("GetServerInfo", context)
        return avatar_pb2.ServerInfo(version="0-fake", instance_id="fake-1")

    async def GetAvatarPreview(self, request, context):  # noqa: N802
        self._note_key("GetAvatarPreview", context)
        if request.id not in ("", "fake"):
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no avatar {request.id!r}")
        return avatar_pb2.AvatarPreview(
            avatar=avatar_pb2.Avatar(id="fake"), idle_mp4=bytes(range(256)) * 4,
            poster_jpeg=b"\xff\xd8fake\xff\xd9")


@pytest.fixture
async def fake_service():
    service = FakeAvatarService()
    server = grpc.aio.server()
    avatar_pb2_grpc.add_AvatarServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    service.target = f"127.0.0.1:{port}"
    yield service
    await server.stop(0)


async def _eventually(condition, timeout: float = 10.0) -> None:
    """Waits until `condition()` holds (state another task changes), failing after `timeout`."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


async def _client(settings: WebSettings) -> TestClient:
    client = TestClient(TestServer(create_app(settings)))
    await client.start_server()
    return client


@pytest.fixture
async def bridge(fake_service):
    client = await _client(WebSettings(grpc_target=fake_service.target, heartbeat_s=30))
    yield client
    await client.close()


async def _receive_json(ws, skip=("welcome",)) -> dict:
    while True:
        msg = await asyncio.wait_for(ws.receive(), 5)
        assert msg.type == WSMsgType.TEXT, msg
        data = json.loads(msg.data)
        if data["type"] not in skip:
            return data


async def _open_session(client: TestClient, **hello) -> tuple[object, dict]:
    ws = await client.ws_connect("/ws")
    welcome = await _receive_json(ws, skip=())
    assert welcome["type"] == "welcome" and welcome["v"] == 1
    await ws.send_json({"type": "hello", "v": 1, **hello})
    session = await _receive_json(ws)
    assert session["type"] == "session", session
    return ws, session


async def _collect_turn(ws) -> list:
    """Frames until turn_completed (JSON as dicts, media as (kind, header, payload))."""
    frames = []
    while True:
        msg = await asyncio.wait_for(ws.receive(), 5)
        if msg.type == WSMsgType.BINARY:
            frames.append(unpack_media(msg.data))
            continue
        data = json.loads(msg.data)
        frames.append(data)
        if data["type"] in ("turn_completed", "turn_cancelled"):
            return frames


async def test_a_turn_is_relayed_as_json_and_typed_binary_frames(bridge, fake_service):
    ws, session = await _open_session(bridge, language="ko-KR")
    assert session["renderer"] == "fake" and session["llm"] == "fake-llm"
    assert session["clock_rate"] == CLOCK_RATE and session["resumed"] is False
    assert session["idle_url"] == "/avatar/fake/idle.mp4"
    assert fake_service.configs[-1].language == "ko-KR"
    assert fake_service.configs[-1].output.pcm_audio is False  # the page plays muxed audio

    await ws.send_json({"type": "message", "text": "안녕하세요 hello", "turn_id": "t1"})
    frames = await _collect_turn(ws)
    kinds = [f["type"] if isinstance(f, dict) else f[0] for f in frames]
    assert kinds == ["turn_started", "text", "caption", MediaKind.VIDEO_INIT,
                     MediaKind.VIDEO_SEGMENT, MediaKind.VIDEO_SEGMENT, MediaKind.VIDEO_SEGMENT,
                     "turn_completed"]
    assert frames[1]["text"] == "안녕하세요 hello" and frames[1]["turn_id"] == "t1"
    assert frames[2] == {"type": "caption", "turn_id": "t1", "text": "안녕하세요 hello",
                         "sentence": True, "start": 0.0, "end": 3.0}
    _, init_header, init_payload = frames[3]
    assert init_payload == b"INIT" and init_header["mime_type"].startswith("video/mp4")
    _, seg_header, seg_payload = frames[5]
    assert seg_payload == b"\x01" * 2000
    assert seg_header["sequence"] == 1 and seg_header["start"] == 1.0 and seg_header["end"] == 2.0
    assert frames[6][1]["last_in_turn"] is True
    assert frames[7]["timings"]["first_text_ms"] == 12.5
    await ws.close()


async def test_second_turn_continues_the_media_clock_and_skips_init(bridge):
    ws, _ = await _open_session(bridge)
    await ws.send_json({"type": "message", "text": "one"})
    await _collect_turn(ws)
    await ws.send_json({"type": "message", "text": "two"})
    frames = await _collect_turn(ws)
    media = [f for f in frames if isinstance(f, tuple)]
    assert [kind for kind, _, _ in media] == [MediaKind.VIDEO_SEGMENT] * 3
    assert media[0][1]["start"] == 3.0
    await ws.close()


async def test_interrupt_and_ping_are_relayed(bridge):
    ws, _ = await _open_session(bridge)
    await ws.send_json({"type": "interrupt", "turn_id": "t9"})
    cancelled = await _receive_json(ws)
    assert cancelled == {"type": "turn_cancelled", "turn_id": "t9", "reason": "interrupted",
                         "stop_ms": 0.0, "start": 0.0, "end": 0.0}
    await ws.send_json({"type": "ping", "t": 42})
    assert await _receive_json(ws) == {"type": "pong", "t": 42}
    await ws.close()


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ("{not json", "bad_json"),
        ("[1, 2]", "bad_json"),
        ('{"type": "launch"}', "unknown_type"),
        ('{"type": "message", "text": ""}', "invalid_field"),
        ('{"type": "message", "text": 5}', "invalid_field"),
        ('{"type": "message", "text": "hi", "turn_id": "bad id!"}', "invalid_field"),
        ('{"type": "hello", "v": 1}', "already_started"),
        ('{"type": "ping", "t": {"a": 1}}', "invalid_field"),
        ('{"type": "message", "text": "lone \\ud800 surrogate"}', "invalid_field"),
    ],
)
async def test_bad_messages_get_an_error_and_the_connection_survives(bridge, payload, reason):
    ws, _ = await _open_session(bridge)
    await ws.send_str(payload)
    error = await _receive_json(ws)
    assert error["type"] == "error" and error["source"] == "bridge"
    assert error["reason"] == reason, error
    await ws.send_json({"type": "message", "text": "still here"})
    frames = await _collect_turn(ws)
    assert frames[-1]["type"] == "turn_completed" and frames[-1]["text"] == "still here"
    await ws.close()


async def test_messages_before_hello_and_binary_messages_are_refused(bridge):
    ws = await bridge.ws_connect("/ws")
    await _receive_json(ws, skip=())
    await ws.send_json({"type": "message", "text": "too early"})
    assert (await _receive_json(ws))["reason"] == "not_started"
    await ws.send_bytes(b"\x00\x01")
    error = await _receive_json(ws)
    assert error["reason"] == "binary_not_accepted" and error["code_name"] == "INVALID_ARGUMENT"
    await ws.send_json({"type": "hello", "v": 2})
    assert (await _receive_json(ws))["reason"] == "unsupported_version"
    await ws.send_json({"type": "hello", "v": 1, "fps": 1000})
    assert (await _receive_json(ws))["reason"] == "invalid_field"
    await ws.send_json({"type": "hello", "v": 1})
    assert (await _receive_json(ws))["type"] == "session"
    await ws.close()


async def test_oversized_messages_get_an_error_and_huge_frames_close_1009(fake_service):
    client = await _client(WebSettings(
        grpc_target=fake_service.target, max_message_bytes=1024, max_frame_bytes=8192))
    try:
        ws, _ = await _open_session(client)
        await ws.send_json({"type": "message", "text": "x" * 2000})
        error = await _receive_json(ws)
        assert error["reason"] == "too_large" and error["code_name"] == "RESOURCE_EXHAUSTED"
        await ws.send_json({"type": "ping", "t": "alive"})
        assert (await _receive_json(ws))["t"] == "alive"
        await ws.send_json({"type": "message", "text": "y" * 20000})
        msg = await asyncio.wait_for(ws.receive(), 5)
        while msg.type == WSMsgType.TEXT:
            msg = await asyncio.wait_for(ws.receive(), 5)
        assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING)
        assert ws.close_code == 1009
    finally:
        await client.close()


async def test_foreign_origins_are_refused_and_listed_ones_allowed(fake_service):
    client = await _client(WebSettings(
        grpc_target=fake_service.target, allowed_origins="https://app.example"))
    try:
        own = f"http://{client.server.host}:{client.server.port}"
        for origin, status in (("https://evil.example", 403), (own, 101),
                               ("https://app.example", 101)):
            response = await client.get("/ws", headers={
                "Origin": origin, "Connection": "Upgrade", "Upgrade": "websocket",
                "Sec-WebSocket-Version": "13",
                "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode()})
            assert response.status == status, origin
            response.close()
    finally:
        await client.close()


GUARDED_ROUTES = ("/", "/static/player.js", "/avatar/default/idle.mp4",
                  "/avatar/fake/poster.jpg", "/api/videos/" + "0" * 32 + ".mp4")


@pytest.fixture
async def guarded(fake_service, tmp_path):
    """The bridge with an access token, against the fake service."""
    client = await _client(WebSettings(
        grpc_target=fake_service.target, access_token=TOKEN, videos_dir=tmp_path / "videos"))
    yield client
    await client.close()


async def test_without_the_token_every_route_but_health_is_401(guarded):
    wrong = (
        ({}, ""), ({"Authorization": "Bearer wrong-token-0123456789"}, ""), ({}, "?token=wrong"),
        ({"Cookie": f"{ACCESS_COOKIE}={cookie_value(WebSettings(access_token='x' * 16))}"}, ""),
    )
    for path in GUARDED_ROUTES:
        for headers, query in wrong:
            response = await guarded.get(path + query, headers=headers, allow_redirects=False)
            assert response.status == 401, (path, headers, query)
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
    api = await guarded.post("/api/chat", json={"message": "hi"})
    assert api.status == 401 and (await api.json())["error"]["field"] == "token"
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await guarded.ws_connect("/ws")
    assert refused.value.status == 401
    assert (await guarded.get("/healthz")).status == 200  # probes need no token
    health = await guarded.get("/api/health")
    assert health.status == 200 and (await health.json())["status"] == "ok"


async def test_the_page_signs_in_once_with_the_token_then_rides_on_a_cookie(guarded):
    form = await guarded.get("/")
    assert form.status == 401 and form.content_type == "text/html"
    assert 'name="token"' in await form.text()
    assert "That token is not" in await (await guarded.get("/?token=nope")).text()

    visit = await guarded.get(f"/?avatar=fake&token={TOKEN}&lang=ko-KR", allow_redirects=False)
    assert visit.status == 303 and visit.headers["Location"] == "/?avatar=fake&lang=ko-KR"
    cookie = visit.cookies[ACCESS_COOKIE]
    assert cookie["httponly"] and cookie["samesite"] == "Lax" and cookie["path"] == "/"
    assert int(cookie["max-age"]) == 30 * 86400 and TOKEN not in cookie.value
    # The client keeps the cookie, as a browser does: everything opens without the token.
    page = await guarded.get("/?avatar=fake")
    assert page.status == 200 and ACCESS_COOKIE in page.cookies  # kept fresh on each visit
    for path in GUARDED_ROUTES[1:4]:
        assert (await guarded.get(path)).status == 200, path
    unknown_video = await guarded.get(GUARDED_ROUTES[4])
    assert unknown_video.status == 404  # past the guard: the store has no such video
    ws, session = await _open_session(guarded)
    assert session["session_id"]
    await ws.close()
    # A cookie is sent by the browser on its own: another site's page may not use it to post.
    foreign = await guarded.post("/api/chat", data=b"{}", headers={"Origin": "https://evil.example"})
    assert foreign.status == 403 and (await foreign.json())["error"]["field"] == "origin"
    own = await guarded.post("/api/chat", data=b"{}")
    assert own.status == 400 and (await own.json())["error"]["field"] == "message"


async def test_api_clients_use_the_bearer_header_or_the_query(guarded):
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    ws = await guarded.ws_connect("/ws", headers=bearer)
    await _receive_json(ws, skip=())
    await ws.close()
    ws = await guarded.ws_connect(f"/ws?token={TOKEN}")
    await _receive_json(ws, skip=())
    await ws.close()
    assert (await guarded.get("/avatar/default/idle.mp4", headers=bearer)).status == 200
    media = await guarded.get(f"/avatar/default/idle.mp4?token={TOKEN}")
    assert media.status == 200 and ACCESS_COOKIE not in media.cookies  # only the page sets it
    page = await guarded.get("/", headers=bearer)
    assert page.status == 200 and "Content-Security-Policy" in page.headers


async def test_every_call_presents_the_bridge_key_to_the_service(fake_service, tmp_path):
    client = await _client(WebSettings(grpc_target=fake_service.target, grpc_api_key=SERVICE_KEY,
                                       videos_dir=tmp_path / "videos"))
    try:
        ws, _ = await _open_session(client)
        await ws.send_json({"type": "message", "text": "keyed"})
        await _collect_turn(ws)
        await ws.close()
        assert (await client.get("/avatar/fake/poster.jpg")).status == 200
        assert (await client.get("/api/health")).status == 200
        health = await (await client.get("/healthz")).json()
        assert health["grpc_key"] is True and health["grpc_tls"] is False
    finally:
        await client.close()
    methods = {method for method, _ in fake_service.authorization}
    assert {"Converse", "GetAvatarPreview", "GetServerInfo"} <= methods
    assert {value for _, value in fake_service.authorization} == {f"Bearer {SERVICE_KEY}"}


async def test_without_a_key_the_bridge_sends_no_authorization(bridge, fake_service):
    ws, _ = await _open_session(bridge)
    await ws.close()
    assert fake_service.authorization and all(not v for _, v in fake_service.authorization)


# ------------------------------------------------------------------ settings and exposure
async def test_the_service_key_comes_from_a_file_without_its_newline(tmp_path):
    key_file = tmp_path / "web-key"
    key_file.write_text(SERVICE_KEY + "\n")
    settings = WebSettings(grpc_api_key_file=key_file)
    assert settings.grpc_api_key.get_secret_value() == SERVICE_KEY
    upstream = Upstream(settings)
    try:
        assert SERVICE_KEY not in repr(upstream) + repr(settings) + str(settings)
    finally:
        await upstream.close()
    with pytest.raises(ValidationError, match="not both"):
        WebSettings(grpc_api_key=SERVICE_KEY, grpc_api_key_file=key_file)
    (tmp_path / "blank").write_text("\n")
    with pytest.raises(ValidationError, match="is empty"):
        WebSettings(grpc_api_key_file=tmp_path / "blank")
    with pytest.raises(ValidationError):
        WebSettings(grpc_api_key_file=tmp_path / "missing")


def test_a_short_access_token_is_refused_without_echoing_it():
    with pytest.raises(ValidationError) as refused:
        WebSettings(access_token="tiny-secret")
    assert "tiny-secret" not in str(refused.value) and "16" in str(refused.value)


@pytest.mark.parametrize(
    ("host", "token", "public", "allowed"),
    [
        ("127.0.0.1", None, False, True),
        ("::1", None, False, True),
        ("localhost", None, False, True),
        ("0.0.0.0", None, False, False),
        ("::", None, False, False),
        ("", None, False, False),
        ("0.0.0.0", TOKEN, False, True),
        ("0.0.0.0", None, True, True),
    ],
)
def test_a_bridge_open_to_the_network_needs_a_token_or_public(host, token, public, allowed):
    settings = WebSettings(host=host, access_token=token, public=public)
    if allowed:
        refuse_unsafe_exposure(settings)
    else:
        with pytest.raises(UnsafeExposure, match="AVATAR_WEB_ACCESS_TOKEN"):
            refuse_unsafe_exposure(settings)


def test_the_default_host_is_loopback():
    assert WebSettings().host == "127.0.0.1"


def test_the_cli_refuses_to_serve_everyone_without_a_token(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AVATAR_WEB_")}
    result = subprocess.run(
        [sys.executable, "-m", "avatar_web.cli", "--host", "0.0.0.0", "--port", "0"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode != 0
    assert "without an access token" in result.stderr and "--public" in result.stderr


async def test_idle_loop_and_poster_are_served_with_ranges(bridge):
    whole = await bridge.get("/avatar/default/idle.mp4")
    body = await whole.read()
    assert whole.status == 200 and whole.content_type == "video/mp4"
    assert body == bytes(range(256)) * 4
    part = await bridge.get("/avatar/fake/idle.mp4", headers={"Range": "bytes=10-19"})
    assert part.status == 206 and await part.read() == bytes(range(10, 20))
    assert part.headers["Content-Range"] == "bytes 10-19/1024"
    tail = await bridge.get("/avatar/fake/idle.mp4", headers={"Range": "bytes=-4"})
    assert await tail.read() == bytes(range(252, 256))
    beyond = await bridge.get("/avatar/fake/idle.mp4", headers={"Range": "bytes=5000-"})
    assert beyond.status == 416
    poster = await bridge.get("/avatar/fake/poster.jpg")
    assert poster.content_type == "image/jpeg"
    assert (await bridge.get("/avatar/nobody/idle.mp4")).status == 404
    assert (await bridge.get("/avatar/bad%20id/idle.mp4")).status == 400


async def test_hub_broadcast_reaches_every_open_page(bridge):
    ws1, _ = await _open_session(bridge)
    ws2 = await bridge.ws_connect("/ws")
    await _receive_json(ws2, skip=())
    hub = bridge.server.app[HUB]
    assert len(hub) == 2
    notice = {"type": "video_ready", "id": "v1", "url": "/api/videos/v1"}
    assert hub.broadcast(notice) == 2
    for ws in (ws1, ws2):
        assert await _receive_json(ws) == notice
    with pytest.raises(ValueError):
        hub.broadcast({"no": "type"})
    await ws1.close()
    await ws2.close()
    await _eventually(lambda: len(hub) == 0)


async def test_app_exposes_settings_and_upstream_keys(bridge):
    app = bridge.server.app
    assert isinstance(app[SETTINGS], WebSettings)
    assert isinstance(app[UPSTREAM], Upstream)
    assert isinstance(app[UPSTREAM].channel, grpc.aio.Channel)


async def test_resume_sends_the_session_id_and_reports_resumed(bridge, fake_service):
    ws, session = await _open_session(bridge)
    await ws.send_json({"type": "message", "text": "one"})
    await _collect_turn(ws)
    await ws.close()
    ws, again = await _open_session(bridge, session_id=session["session_id"])
    assert again["resumed"] is True and again["session_id"] == session["session_id"]
    assert again["media_position"] == 3.0
    assert fake_service.configs[-1].session_id == session["session_id"]
    await ws.close()


async def test_unreachable_service_reports_unavailable_and_closes(unused_tcp_port):
    client = await _client(WebSettings(grpc_target=f"127.0.0.1:{unused_tcp_port}"))
    try:
        ws = await client.ws_connect("/ws")
        await _receive_json(ws, skip=())
        await ws.send_json({"type": "hello", "v": 1})
        error = await _receive_json(ws)
        assert error["type"] == "error" and error["code_name"] == "UNAVAILABLE"
        msg = await asyncio.wait_for(ws.receive(), 5)
        assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED)
        assert ws.close_code == 4000
    finally:
        await client.close()


async def test_keep_alives_flow_upstream_on_the_heartbeat(fake_service):
    client = await _client(WebSettings(grpc_target=fake_service.target, heartbeat_s=0.2))
    try:
        ws, _ = await _open_session(client)
        relayed = []

        async def read() -> None:  # the client answers WebSocket pings only while it reads
            while True:
                relayed.append(await ws.receive())

        reader = asyncio.create_task(read())
        await asyncio.wait_for(fake_service.two_keep_alives.wait(), 10)
        reader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reader
        assert relayed == []  # the service's keep-alive answers are not relayed to the page
        await ws.send_json({"type": "ping", "t": 7})
        assert await _receive_json(ws) == {"type": "pong", "t": 7}
        await ws.close()
    finally:
        await client.close()


async def test_the_hello_must_come_in_time():
    settings = WebSettings(grpc_target="127.0.0.1:1", hello_timeout_s=0.3)
    client = await _client(settings)
    try:
        ws = await client.ws_connect("/ws")
        await _receive_json(ws, skip=())
        msg = await asyncio.wait_for(ws.receive(), 5)
        assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED) and ws.close_code == 4008
    finally:
        await client.close()


# ------------------------------------------------------------------ parser properties
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                               max_size=4),
    max_leaves=12,
)
_client_like = st.fixed_dictionaries(
    {"type": st.sampled_from(["hello", "message", "interrupt", "ping", "other"])},
    optional={k: _json_values for k in ("text", "turn_id", "session_id", "fps", "v", "t",
                                        "language", "pcm_audio", "segment_seconds")},
)


@given(st.one_of(st.text(max_size=200), _client_like.map(json.dumps)))
def test_the_parser_only_ever_refuses_with_a_protocol_error(raw):
    try:
        message = parse_client_message(raw, max_bytes=64 * 1024)
    except ProtocolError as error:
        assert error.reason and error.message
        return
    if not isinstance(message, Ping):
        to_request(message).SerializeToString()  # what was accepted also maps to the contract


@given(st.dictionaries(st.text(max_size=8), st.integers() | st.text(max_size=8), max_size=5),
       st.binary(max_size=300), st.sampled_from([1, 2, 3]))
def test_media_frames_round_trip(header, payload, kind):
    assert unpack_media(pack_media(kind, header, payload)) == (kind, header, payload)


# ------------------------------------------------------------------ bounded buffers
async def test_outbox_blocks_then_gives_up_and_offers_drop_when_full():
    box = Outbox(limit_bytes=100)
    assert box.offer(b"x" * 60) and not box.offer(b"y" * 60)
    with pytest.raises(SlowConsumer):
        await box.put(b"z" * 60, timeout=0.05)
    waiter = asyncio.create_task(box.put(b"z" * 60, timeout=1))
    for _ in range(5):  # let it run up to where it waits for room
        await asyncio.sleep(0)
    assert not waiter.done()
    assert await box.get() == b"x" * 60
    await asyncio.wait_for(waiter, 1)
    assert box.queued_bytes == 60
    big = Outbox(limit_bytes=10)
    assert big.offer(b"q" * 50)  # one oversized frame passes when the queue is empty
    big.close()
    assert await big.get() == b"q" * 50 and await big.get() is None


def _raw_websocket(host: str, port: int) -> socket.socket:
    """A WebSocket client that never reads after the handshake: the slowest browser there is."""
    sock = socket.create_connection((host, port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        .encode())
    response = b""
    while b"\r\n\r\n" not in response:
        response += sock.recv(1)
    assert b" 101 " in response
    for text in ('{"type":"hello","v":1}', '{"type":"message","text":"flood"}'):
        payload = text.encode()
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        sock.sendall(struct.pack("!BB", 0x81, 0x80 | len(payload)) + mask + masked)
    return sock


async def test_a_stalled_browser_is_dropped_without_hurting_other_sessions(fake_service):
    fake_service.segment_bytes = 256 * 1024
    fake_service.segments_per_turn = 64  # 16 MiB per turn, far more than socket buffers hold
    client = await _client(WebSettings(
        grpc_target=fake_service.target, send_buffer_bytes=64 * 1024, send_stall_timeout_s=2.0))
    try:
        stalled = await asyncio.to_thread(_raw_websocket, client.server.host, client.server.port)
        hub = client.server.app[HUB]
        await asyncio.wait_for(fake_service.first_segment_sent.wait(), 10)
        # While that page is stuck, another page gets its whole (smaller) turn promptly.
        fake_service.segments_per_turn = 4
        ws, _ = await _open_session(client)
        await ws.send_json({"type": "message", "text": "fine"})
        frames = await _collect_turn(ws)
        assert frames[-1]["type"] == "turn_completed"
        assert sum(isinstance(f, tuple) for f in frames) == 5  # init + 4 segments
        assert fake_service.finished_streams == 0, "the stalled page is still waited for"
        # Then the stalled page is dropped: its stream cancelled early, its socket closed.
        await asyncio.wait_for(fake_service.stream_finished.wait(), 30)
        assert fake_service.finished_streams == 1, "the stalled stream should be cancelled"
        assert fake_service.segments_sent < 64 + 4  # it ended early, not by running out
        await _eventually(lambda: len(hub) == 1)  # only the healthy page is left
        await ws.close()
        stalled.close()
    finally:
        await client.close()


async def test_health_reports_the_channel_and_open_connections(bridge):
    ws, _ = await _open_session(bridge)
    health = await (await bridge.get("/healthz")).json()
    assert health["status"] == "ok" and health["connections"] == 1
    assert health["grpc_state"] in ("READY", "IDLE", "CONNECTING")
    await ws.close()


def test_the_bridge_imports_only_the_contract_never_server_code():
    import subprocess
    import sys

    code = ("import sys, avatar_web.app, avatar_web.cli; "
            "print(sorted(m for m in sys.modules if m.startswith('avatar_server')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
