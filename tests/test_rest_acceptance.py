"""REST API acceptance over real HTTP: the real avatar-server and avatar-web as subprocesses.

Both run as in production: the service with API keys (auth on), the bridge presenting its own key
and guarding everything with an access token. The service runs on embedded defaults except its
language model, which points at the FAKE OpenAI-compatible server from provider_servers.py (real
SSE protocol, no model): that fake records every conversation it is sent, so the tests can see a
session's history reach the model; `[[fake:error-mid-stream]]` makes a real turn fail midway and
`[[fake:slow-first-token]]` holds a turn open for `slow_s` seconds.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from avatar_web.app import create_app
from avatar_web.security import ACCESS_COOKIE
from avatar_web.settings import WebSettings
from conftest import free_port, running_service, start_service_process, stop_process
from provider_servers import FakeOpenAIServer

pytestmark = pytest.mark.slow

VENV_BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]
MAX_VIDEOS = 2
SERVICE_KEY = "acceptance-service-key-0001"
TOKEN = "acceptance-page-token-0001"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class Stack:
    """The running fake LLM, service (auth on) and bridge (key and token set)."""

    def __init__(
        self, llm: FakeOpenAIServer, url: str, videos_dir: Path, service_target: str, log: Path
    ) -> None:
        self.llm = llm
        self.url = url
        self.videos_dir = videos_dir
        self.service_target = service_target
        self.log = log


def wait_for_bridge(url: str, process: subprocess.Popen, timeout: float = 60.0) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"avatar-web exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/api/health", timeout=2) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.2)
    raise TimeoutError(f"avatar-web at {url} not healthy after {timeout} s")


@pytest.fixture(scope="module")
def stack(tmp_path_factory, data_dir):
    videos_dir = tmp_path_factory.mktemp("rest-videos")
    log = tmp_path_factory.mktemp("rest-bridge-log") / "avatar-web.log"
    with FakeOpenAIServer() as llm:
        service = start_service_process(
            data_dir,
            env={
                "AVATAR_AUTH_DISABLED": "false",
                "AVATAR_API_KEYS": SERVICE_KEY,
                "AVATAR_LLM": "openai",
                "AVATAR_OPENAI_BASE_URL": llm.url,
                "AVATAR_OPENAI_API_KEY": "fake-key",
                "AVATAR_OPENAI_MAX_RETRIES": "0",
            },
        )
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("AVATAR_WEB_")}
        env.update(
            {
                "AVATAR_WEB_GRPC_API_KEY": SERVICE_KEY,
                "AVATAR_WEB_ACCESS_TOKEN": TOKEN,
                "AVATAR_WEB_VIDEOS_DIR": str(videos_dir),
                "AVATAR_WEB_VIDEOS_MAX_COUNT": str(MAX_VIDEOS),
            }
        )
        with log.open("w") as log_file:
            bridge = subprocess.Popen(
                [str(VENV_BIN / "avatar-web"), "--port", str(port), "--grpc", service.target],
                env=env, cwd=REPO, stdout=log_file, stderr=subprocess.STDOUT,
            )
        url = f"http://127.0.0.1:{port}"
        try:
            wait_for_bridge(url, bridge)  # /api/health answers 200 only with the key accepted
            yield Stack(llm, url, videos_dir, service.target, log)
        finally:
            stop_process(bridge)
            stop_process(service.process)


@pytest.fixture
async def http(stack):
    """A client holding the bridge's access token."""
    async with aiohttp.ClientSession(
        stack.url, timeout=aiohttp.ClientTimeout(total=180), headers=AUTH
    ) as session:
        yield session


@pytest.fixture
async def anonymous(stack):
    """A client without the token (it keeps cookies, as a browser does)."""
    jar = aiohttp.CookieJar(unsafe=True)  # unsafe: keep cookies of an IP-address host
    async with aiohttp.ClientSession(
        stack.url, timeout=aiohttp.ClientTimeout(total=180), cookie_jar=jar
    ) as session:
        yield session


async def post(http, path: str, payload) -> tuple[int, dict]:
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    async with http.post(path, data=data, headers={"Content-Type": "application/json"}) as reply:
        assert reply.content_type == "application/json"
        return reply.status, await reply.json()


def ffprobe(path: Path) -> dict:
    result = subprocess.run(
        ["ffprobe", "-v", "error", "-show_streams", "-show_format", "-of", "json", str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout)


@pytest.mark.skipif(
    shutil.which("ffprobe") is None, reason="ffprobe (apt-get install ffmpeg) missing"
)
async def test_chat_turn_gives_text_and_an_mp4_an_independent_decoder_accepts(
    stack, http, tmp_path
):
    status, body = await post(http, "/api/chat", {"message": "Hello there, how are you today?"})
    assert status == 200, body
    assert body["reply"] == "Echo: Hello there, how are you today?"
    assert body["session"] and body["turn"] and body["resumed"] is False
    assert body["video_url"].startswith("/api/videos/") and body["video_url"].endswith(".mp4")
    assert body["timings"]["total_ms"] > 0
    async with http.get(body["video_url"]) as reply:
        assert reply.status == 200 and reply.content_type == "video/mp4"
        mp4 = tmp_path / "reply.mp4"
        mp4.write_bytes(await reply.read())
    info = ffprobe(mp4)
    streams = {s["codec_type"]: s for s in info["streams"]}
    assert streams["video"]["codec_name"] == "h264" and streams["audio"]["codec_name"] == "aac"
    video_s, audio_s = float(streams["video"]["duration"]), float(streams["audio"]["duration"])
    assert video_s > 1.0
    assert abs(video_s - audio_s) < 0.07, (video_s, audio_s)  # within one AAC frame
    assert body["duration_s"] == pytest.approx(max(video_s, audio_s), abs=0.1)
    decode = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(mp4), "-f", "null", "-"], capture_output=True, text=True
    )
    assert decode.returncode == 0 and decode.stderr == ""
    data = mp4.read_bytes()
    assert (
        data.find(b"moov") < data.find(b"mdat") and b"moof" not in data
    )  # faststart, not fragmented


async def test_second_call_on_the_session_carries_the_first_in_its_history(stack, http):
    status, first = await post(http, "/api/chat", {"message": "My name is Ada."})
    assert status == 200, first
    status, second = await post(
        http, "/api/chat", {"message": "What is my name?", "session": first["session"]}
    )
    assert status == 200, second
    assert second["session"] == first["session"] and second["resumed"] is True
    assert second["turn"] != first["turn"]
    sent = stack.llm.requests[-1]["messages"]
    contents = [(m["role"], m["content"]) for m in sent]
    assert ("user", "My name is Ada.") in contents
    assert ("assistant", first["reply"]) in contents
    assert contents[-1] == ("user", "What is my name?")


async def test_range_request_returns_206_with_the_right_bytes(http):
    status, body = await post(http, "/api/speak", {"text": "Ranges let players seek."})
    assert status == 200, body
    async with http.get(body["video_url"]) as reply:
        whole = await reply.read()
        assert reply.headers["Accept-Ranges"] == "bytes"
    async with http.get(body["video_url"], headers={"Range": "bytes=1000-1999"}) as reply:
        assert reply.status == 206
        assert reply.headers["Content-Range"] == f"bytes 1000-1999/{len(whole)}"
        assert await reply.read() == whole[1000:2000]


@pytest.mark.parametrize(
    ("path", "payload", "status", "field"),
    [
        ("/api/chat", b"{not json", 400, "body"),
        ("/api/chat", {"message": ["a list"]}, 400, "message"),
        ("/api/chat", {"message": ""}, 400, "message"),
        ("/api/chat", {"message": "x" * 2001}, 413, "message"),
        ("/api/chat", {"message": "hi", "avatar": "no-such-avatar"}, 404, "avatar"),
        ("/api/chat", {"message": "hi", "voice": "no-such-voice"}, 404, "voice"),
        ("/api/chat", {"message": "hi", "language": "klingonese"}, 400, "language"),
        ("/api/speak", {"text": 42}, 400, "text"),
    ],
)
async def test_bad_input_is_refused_naming_the_field(http, path, payload, status, field):
    got, body = await post(http, path, payload)
    assert got == status, body
    assert body["error"]["field"] == field


async def test_turn_failing_midway_is_502_with_the_service_error(stack, http):
    before = set(stack.videos_dir.glob("*.mp4"))
    status, body = await post(
        http, "/api/chat", {"message": "[[fake:error-mid-stream]] tell me more"}
    )
    assert status == 502, body
    assert body["error"]["service"]["stage"] == "llm"
    assert set(stack.videos_dir.glob("*.mp4")) <= before  # nothing new published


async def _until(condition, timeout: float = 60.0) -> None:
    """Waits until `condition()` holds (state another process changes)."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.05)


async def test_same_session_calls_never_interleave(stack, http):
    status, first = await post(http, "/api/speak", {"text": "Start."})
    assert status == 200, first
    session = first["session"]
    asked = len(stack.llm.requests)
    # A turn held open by the language model (no text for slow_s seconds)...
    held = asyncio.create_task(
        post(http, "/api/chat", {"message": "[[fake:slow-first-token]] Hold on.", "session": session})
    )
    await _until(lambda: len(stack.llm.requests) > asked)  # ...is running in the service now
    # ...so every other call on that session is refused, and calls on other sessions are not.
    refused = await asyncio.gather(
        *[post(http, "/api/chat", {"message": f"Cut in {i}.", "session": session}) for i in range(2)]
    )
    assert [status for status, _ in refused] == [409, 409], refused
    assert all(body["error"]["field"] == "session" for _, body in refused)
    status, other = await post(http, "/api/speak", {"text": "Another session."})
    assert status == 200 and other["session"] != session
    status, body = await held
    assert status == 200 and body["reply"] == "Echo: Hold on.", body
    status, after = await post(http, "/api/chat", {"message": "After.", "session": session})
    assert status == 200 and after["session"] == session, after
    # The model saw the held turn whole, then the next one; the refused calls never reached it.
    said = [m["content"] for m in stack.llm.requests[-1]["messages"] if m["role"] == "user"]
    assert said[-2:] == ["[[fake:slow-first-token]] Hold on.", "After."]
    assert not any("Cut in" in m["content"] for r in stack.llm.requests for m in r["messages"])


async def test_pages_get_video_ready_and_old_videos_are_evicted(http):
    async with http.ws_connect("/ws") as ws:
        urls = []
        for index in range(MAX_VIDEOS + 1):
            status, body = await post(http, "/api/speak", {"text": f"Video number {index}."})
            assert status == 200, body
            urls.append(body["video_url"])
        notice = await asyncio.wait_for(ws.receive_json(), 10)
        while notice.get("type") != "video_ready":
            notice = await asyncio.wait_for(ws.receive_json(), 10)
        assert notice["url"] == urls[0]
    async with http.get(urls[0]) as reply:
        assert reply.status == 404
        assert (await reply.json())["error"]["field"] == "id"
    for url in urls[1:]:
        async with http.get(url) as reply:
            assert reply.status == 200


async def test_health_reports_service_and_store(http):
    status, made = await post(http, "/api/speak", {"text": "Counted."})
    assert status == 200, made
    async with http.get("/api/health") as reply:
        body = await reply.json()
    assert reply.status == 200 and body["status"] == "ok"
    assert body["service"]["llm"] == "openai" and 0 < body["videos"]["count"] <= MAX_VIDEOS


# --------------------------------------------------------------------------- access and keys


async def test_without_the_token_page_socket_api_videos_and_previews_are_401(http, anonymous):
    status, made = await post(http, "/api/speak", {"text": "Kept behind the token."})
    assert status == 200, made
    guarded = ["/", "/static/player.js", "/avatar/default/idle.mp4", made["video_url"]]
    for headers in ({}, {"Authorization": "Bearer not-the-token-000000"}):
        for path in guarded:
            async with anonymous.get(path, headers=headers, allow_redirects=False) as reply:
                assert reply.status == 401, (path, headers)
        async with anonymous.post("/api/chat", json={"message": "hi"}, headers=headers) as reply:
            assert reply.status == 401 and (await reply.json())["error"]["field"] == "token"
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await anonymous.ws_connect("/ws", headers=headers)
        assert refused.value.status == 401
    async with anonymous.get(f"{made['video_url']}?token=wrong") as reply:
        assert reply.status == 401
    # Signing in once on the page leaves a cookie that opens the rest, as in a browser.
    async with anonymous.get(f"/?token={TOKEN}") as reply:
        assert reply.status == 200 and reply.url.query.get("token") is None
    assert ACCESS_COOKIE in {cookie.key for cookie in anonymous.cookie_jar}
    for path in guarded:
        async with anonymous.get(path) as reply:
            assert reply.status == 200, path
    async with anonymous.ws_connect("/ws") as ws:
        assert (await asyncio.wait_for(ws.receive_json(), 10))["type"] == "welcome"


@pytest.mark.skipif(shutil.which("ffprobe") is None, reason="ffprobe missing")
async def test_previews_load_through_the_bridge_key(http, tmp_path):
    async with http.get("/avatar/default/idle.mp4") as reply:
        assert reply.status == 200 and reply.content_type == "video/mp4"
        (tmp_path / "idle.mp4").write_bytes(await reply.read())
    streams = ffprobe(tmp_path / "idle.mp4")["streams"]
    assert [s["codec_name"] for s in streams if s["codec_type"] == "video"] == ["h264"]
    async with http.get("/avatar/default/poster.jpg") as reply:
        assert reply.status == 200 and reply.content_type == "image/jpeg"
        assert (await reply.read())[:2] == b"\xff\xd8"


@pytest.mark.parametrize("key", ["not-the-service-key-0000", None], ids=["wrong key", "no key"])
async def test_a_bridge_the_service_refuses_answers_502_naming_unauthenticated(
    stack, tmp_path, caplog, key
):
    settings = WebSettings(grpc_target=stack.service_target, grpc_api_key=key,
                           videos_dir=tmp_path / "videos")
    client = TestClient(TestServer(create_app(settings)))
    await client.start_server()
    try:
        for path, payload in (("/api/speak", {"text": "Hi."}), ("/api/chat", {"message": "Hi."})):
            reply = await client.post(path, json=payload)
            error = (await reply.json())["error"]
            assert reply.status == 502, error
            assert error["service"]["code_name"] == "UNAUTHENTICATED"
            assert "refused the bridge's own credentials" in error["message"]
            assert "AVATAR_WEB_GRPC_API_KEY" in error["message"]
        health = await client.get("/api/health")
        body = await health.json()
        assert health.status == 503 and body["service"]["error"] == "UNAUTHENTICATED"
        preview = await client.get("/avatar/default/idle.mp4")
        assert preview.status == 502 and "UNAUTHENTICATED" in await preview.text()
        # Several pages: the refusal races the bridge's first write, which grpc.aio can turn
        # into INTERNAL (grpc/grpc#36066); the page must be told UNAUTHENTICATED every time.
        for _ in range(6):
            ws = await client.ws_connect("/ws")
            await ws.send_json({"type": "hello", "v": 1})
            message = await asyncio.wait_for(ws.receive_json(), 30)
            while message["type"] != "error":
                message = await asyncio.wait_for(ws.receive_json(), 30)
            assert message["code_name"] == "UNAUTHENTICATED", message
            assert "GRPC_API_KEY" in message["message"]
            await ws.close()
    finally:
        await client.close()
    assert "refused the bridge's API key" in caplog.text
    assert SERVICE_KEY not in caplog.text and (key is None or key not in caplog.text)


async def test_the_bridge_log_never_shows_its_key_or_token(stack, http, anonymous):
    assert (await post(http, "/api/speak", {"text": "Logged."}))[0] == 200
    async with anonymous.get("/api/videos/" + "0" * 32 + ".mp4") as reply:
        assert reply.status == 401
    async with anonymous.get(f"/?token={TOKEN}", allow_redirects=False) as reply:
        assert reply.status == 303
    text = stack.log.read_text()
    assert "listening on" in text and "presenting an API key" in text  # the log is being read
    assert '"GET /?token=REDACTED" 303' in text  # the sign-in visit is logged, its token not
    assert SERVICE_KEY not in text and TOKEN not in text


def _self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )
    return cert, key


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl missing")
async def test_the_bridge_reaches_a_tls_service_with_its_key(data_dir, tmp_path):
    cert, key = _self_signed_certificate(tmp_path)
    async with running_service(data_dir, auth_disabled=False, api_keys=SERVICE_KEY,
                               tls_cert_file=cert, tls_key_file=key) as service:
        plain = WebSettings(grpc_target=service.target, grpc_api_key=SERVICE_KEY,
                            videos_dir=tmp_path / "plain")
        tls = plain.model_copy(update={"grpc_tls_ca_file": cert, "videos_dir": tmp_path / "tls"})
        for settings, expected in ((tls, 200), (plain, 503)):
            client = TestClient(TestServer(create_app(settings)))
            await client.start_server()
            try:
                reply = await client.post("/api/speak", json={"text": "Over TLS."})
                body = await reply.json()
                assert reply.status == expected, body
                if expected == 200:
                    video = await client.get(body["video_url"])
                    assert video.status == 200 and (await video.read())[4:8] == b"ftyp"
                    assert (await (await client.get("/healthz")).json())["grpc_tls"] is True
            finally:
                await client.close()
