"""REST routes over real HTTP against a scripted stand-in service: input checks and fault mapping.

The stand-in (FakeAvatarService, a labelled fake) is a real grpc.aio server speaking the real
contract; it exists to produce on demand the faults the real service cannot be made to show
(a turn failing midway, a stream cut short, a turn held open). The happy path against the
real service is in test_rest_acceptance.py.
"""

from __future__ import annotations

import asyncio
import socket

import grpc
import grpc.aio
import pytest
from aiohttp.test_utils import TestClient, TestServer
from avatar.v1 import avatar_pb2, avatar_pb2_grpc
from avatar_web.app import create_app
from avatar_web.settings import WebSettings
from test_rest_remux import make_fragmented_mp4, split_fragments

MAX_TEXT = 100
INIT, SEGMENTS = split_fragments(make_fragmented_mp4(2.0))


class FakeAvatarService(avatar_pb2_grpc.AvatarServiceServicer):
    """Fake service: its reply to a message is chosen by the message text."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.holding = asyncio.Event()
        self.authorization: dict[str, set[str]] = {}  # method -> metadata values seen

    def _note_key(self, method: str, context) -> None:
        value = dict(context.invocation_metadata()).get("authorization", "")
        self.authorization.setdefault(method, set()).add(value)

    async def GetServerInfo(self, request, context):
        self._note_key("GetServerInfo", context)
        return avatar_pb2.ServerInfo(
            version="0-fake",
            limits=avatar_pb2.Limits(max_text_chars=MAX_TEXT),
            voices=[avatar_pb2.Voice(name="en-fake", language="en-US")],
        )

    @staticmethod
    async def _open(config, context):
        if config.avatar not in ("", "known"):
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"avatar {config.avatar!r} is not registered"
            )

    async def Converse(self, request_iterator, context):
        self._note_key("Converse", context)
        config = (await anext(request_iterator)).config
        await self._open(config, context)
        session = config.session_id or "s-new"
        yield avatar_pb2.ConverseResponse(
            session_id=session, session_started=avatar_pb2.SessionStarted(clock_rate=16000)
        )
        text = (await anext(request_iterator)).message.text
        for event in await self._turn(session, text):
            yield event
            if event.WhichOneof("event") == "error" and text == "fail midway":
                return
        if text == "hold":
            self.holding.set()
            await self.release.wait()
            for event in self._finish(session, "held"):
                yield event

    async def Speak(self, request, context):
        self._note_key("Speak", context)
        await self._open(request.config, context)
        if request.text == "unavailable":
            await context.abort(grpc.StatusCode.UNAVAILABLE, "tts provider down")
        for event in await self._turn(request.config.session_id or "s-speak", request.text):
            yield event

    async def _turn(self, session: str, text: str) -> list[avatar_pb2.ConverseResponse]:
        def event(**kwargs):
            return avatar_pb2.ConverseResponse(session_id=session, turn_id="t1", **kwargs)

        started = [event(turn_started=avatar_pb2.TurnStarted(user_text=text, from_llm=True))]
        if text == "input error":
            return [
                event(
                    error=avatar_pb2.Error(code=3, stage="input", message="text must not be empty")
                )
            ]
        if text == "fail midway":
            return started + [
                event(text_delta=avatar_pb2.TextDelta(text="Hel")),
                event(video_init=avatar_pb2.VideoInit(data=INIT)),
                event(video_segment=avatar_pb2.VideoSegment(data=SEGMENTS[0])),
                event(error=avatar_pb2.Error(code=13, stage="render", message="renderer crashed")),
            ]
        if text == "end early":
            return started + [event(text_delta=avatar_pb2.TextDelta(text="Hel"))]
        if text == "hold":
            return started
        return started + self._finish(session, text)

    def _finish(self, session: str, text: str) -> list[avatar_pb2.ConverseResponse]:
        def event(**kwargs):
            return avatar_pb2.ConverseResponse(session_id=session, turn_id="t1", **kwargs)

        return [
            event(text_delta=avatar_pb2.TextDelta(text=text)),
            event(video_init=avatar_pb2.VideoInit(data=INIT)),
            *[
                event(video_segment=avatar_pb2.VideoSegment(data=s, sequence=i))
                for i, s in enumerate(SEGMENTS)
            ],
            event(turn_completed=avatar_pb2.TurnCompleted(text=text, media_seconds=2.0)),
        ]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
async def fake_service():
    server = grpc.aio.server()
    service = FakeAvatarService()
    avatar_pb2_grpc.add_AvatarServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield service, f"127.0.0.1:{port}"
    service.release.set()
    await server.stop(0)


async def bridge_client(grpc_target: str, tmp_path, **settings) -> TestClient:
    app = create_app(
        WebSettings(grpc_target=grpc_target, videos_dir=tmp_path / "videos", **settings)
    )
    client = TestClient(TestServer(app))
    await client.start_server()
    return client


@pytest.fixture
async def client(fake_service, tmp_path):
    service, target = fake_service
    client = await bridge_client(target, tmp_path)
    yield client
    await client.close()


async def error_of(response, status: int) -> dict:
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    return (await response.json())["error"]


async def test_chat_returns_reply_and_a_playable_url(client):
    response = await client.post("/api/chat", json={"message": "hello there"})
    assert response.status == 200, await response.text()
    body = await response.json()
    assert body["reply"] == "hello there" and body["session"] == "s-new" and body["turn"] == "t1"
    assert body["duration_s"] == pytest.approx(2.0, abs=0.1)
    video = await client.get(body["video_url"])
    assert video.status == 200 and video.content_type == "video/mp4"
    assert (await video.read())[4:8] == b"ftyp"


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        (b"not json", 400, "body"),
        (b"[1, 2]", 400, "body"),
        (b"{}", 400, "message"),
        (b'{"message": 5}', 400, "message"),
        (b'{"message": "   "}', 400, "message"),
        (b'{"message": "hi", "session": 7}', 400, "session"),
        (b'{"message": "hi", "session": "../x"}', 400, "session"),
        (b'{"message": "hi", "avatar": ["a"]}', 400, "avatar"),
        (b'{"message": "hi", "language": "english!"}', 400, "language"),
        (b'{"message": "' + b"x" * (MAX_TEXT + 1) + b'"}', 413, "message"),
        (b'{"message": "' + b"x" * 300_000 + b'"}', 413, "body"),
        (b'{"message": "hi", "avatar": "ghost"}', 404, "avatar"),
        (b'{"message": "hi", "voice": "nobody"}', 404, "voice"),
        (b'{"message": "input error"}', 400, "message"),
    ],
)
async def test_bad_input_gets_status_and_names_the_field(client, body, status, field):
    response = await client.post(
        "/api/chat", data=body, headers={"Content-Type": "application/json"}
    )
    error = await error_of(response, status)
    assert error["field"] == field and error["message"]


async def test_speak_checks_its_text_field(client):
    error = await error_of(await client.post("/api/speak", json={"message": "wrong field"}), 400)
    assert error["field"] == "text"
    response = await client.post("/api/speak", json={"text": "said", "avatar": "known"})
    assert response.status == 200 and (await response.json())["reply"] == "said"


async def test_turn_failing_midway_is_502_with_the_service_error_and_publishes_nothing(
    client, tmp_path
):
    error = await error_of(await client.post("/api/chat", json={"message": "fail midway"}), 502)
    assert error["service"]["code"] == 13 and error["service"]["stage"] == "render"
    assert "renderer crashed" in error["service"]["message"]
    assert list((tmp_path / "videos").glob("*.mp4")) == []
    assert list((tmp_path / "videos" / ".partial").iterdir()) == []


async def test_stream_ending_before_completion_is_502(client):
    await error_of(await client.post("/api/chat", json={"message": "end early"}), 502)


async def test_service_status_unavailable_is_503(client):
    error = await error_of(await client.post("/api/speak", json={"text": "unavailable"}), 503)
    assert error["service"]["code_name"] == "UNAVAILABLE"


async def test_unreachable_service_is_503(tmp_path):
    client = await bridge_client(f"127.0.0.1:{free_port()}", tmp_path)
    try:
        error = await error_of(await client.post("/api/chat", json={"message": "hi"}), 503)
        assert error["service"]["code_name"] == "UNAVAILABLE" and error["service"]["retriable"]
        health = await client.get("/api/health")
        assert health.status == 503 and (await health.json())["status"] == "unavailable"
    finally:
        await client.close()


async def test_concurrent_call_on_a_busy_session_is_409_and_the_first_completes(
    client, fake_service
):
    service, _ = fake_service
    first = asyncio.create_task(client.post("/api/chat", json={"message": "hold", "session": "s1"}))
    await asyncio.wait_for(service.holding.wait(), 10)
    error = await error_of(
        await client.post("/api/chat", json={"message": "hi", "session": "s1"}), 409
    )
    assert error["field"] == "session"
    other = await client.post("/api/chat", json={"message": "hi", "session": "s2"})
    assert other.status == 200
    service.release.set()
    response = await asyncio.wait_for(first, 10)
    assert response.status == 200 and (await response.json())["reply"] == "held"
    again = await client.post("/api/chat", json={"message": "hi", "session": "s1"})
    assert again.status == 200


async def test_unknown_and_malformed_video_ids_are_json_404(client):
    for name in ["0" * 32 + ".mp4", "..%2F..%2Fetc%2Fpasswd", "abc.mp4", "0" * 32]:
        error = await error_of(await client.get(f"/api/videos/{name}"), 404)
        assert error["field"] == "id"


async def test_access_token_guards_the_api(fake_service, tmp_path):
    _, target = fake_service
    token = "rest-token-0123456789"
    client = await bridge_client(target, tmp_path, access_token=token)
    try:
        await error_of(await client.post("/api/chat", json={"message": "hi"}), 401)
        response = await client.post(
            "/api/chat", json={"message": "hi"}, headers={"Authorization": f"Bearer {token}"}
        )
        assert response.status == 200
        url = (await response.json())["video_url"]
        await error_of(await client.get(url), 401)
        await error_of(await client.get(url + "?token=wrong"), 401)
        assert (await client.get(url + f"?token={token}")).status == 200
    finally:
        await client.close()


async def test_open_pages_hear_video_ready(client):
    async with client.ws_connect("/ws") as ws:
        response = await client.post("/api/chat", json={"message": "for the page"})
        body = await response.json()
        notice = await asyncio.wait_for(ws.receive_json(), 10)
        while notice["type"] != "video_ready":  # the page's own messages (welcome) come first
            notice = await asyncio.wait_for(ws.receive_json(), 10)
    assert notice == {
        "type": "video_ready",
        "source": "rest",
        "session_id": body["session"],
        "turn_id": "t1",
        "url": body["video_url"],
        "id": body["video_url"].removeprefix("/api/videos/").removesuffix(".mp4"),
        "duration_s": body["duration_s"],
        "reply": "for the page",
    }


async def test_range_requests_get_206_with_the_right_bytes(client):
    url = (await (await client.post("/api/chat", json={"message": "ranged"})).json())["video_url"]
    whole = await (await client.get(url)).read()
    part = await client.get(url, headers={"Range": "bytes=100-299"})
    assert part.status == 206
    assert part.headers["Content-Range"] == f"bytes 100-299/{len(whole)}"
    assert await part.read() == whole[100:300]
    tail = await client.get(url, headers={"Range": "bytes=-50"})
    assert tail.status == 206 and await tail.read() == whole[-50:]
    beyond = await client.get(url, headers={"Range": f"bytes={len(whole) + 10}-"})
    assert beyond.status == 416


async def test_turn_past_the_bridge_timeout_is_504_and_frees_the_session(fake_service, tmp_path):
    _, target = fake_service
    client = await bridge_client(target, tmp_path, rest_turn_timeout_s=0.5)
    try:
        payload = {"message": "hold", "session": "slow"}
        error = await error_of(await client.post("/api/chat", json=payload), 504)
        assert "rest_turn_timeout_s" in error["message"]
        response = await client.post("/api/chat", json={"message": "hi", "session": "slow"})
        assert response.status == 200
    finally:
        await client.close()


async def test_rest_turns_present_the_bridge_key_on_every_call(fake_service, tmp_path):
    service, target = fake_service
    client = await bridge_client(target, tmp_path, grpc_api_key="rest-key-0123456789")
    try:
        assert (await client.post("/api/chat", json={"message": "keyed"})).status == 200
        assert (await client.post("/api/speak", json={"text": "keyed"})).status == 200
        assert (await client.get("/api/health")).status == 200
    finally:
        await client.close()
    assert service.authorization == {
        method: {"Bearer rest-key-0123456789"} for method in ("GetServerInfo", "Converse", "Speak")
    }
