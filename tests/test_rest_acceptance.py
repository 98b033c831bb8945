"""REST API acceptance over real HTTP: the real avatar-server and avatar-web as subprocesses.

The service runs on embedded defaults except its language model, which points at the FAKE
OpenAI-compatible server from provider_servers.py (real SSE protocol, no model): that fake
records every conversation it is sent, so the tests can see a session's history reach the
model, and its `[[fake:error-mid-stream]]` scenario makes a real turn fail midway.
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
from conftest import free_port, start_service_process, stop_process
from provider_servers import FakeOpenAIServer

pytestmark = pytest.mark.slow

VENV_BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]
MAX_VIDEOS = 2


class Stack:
    """The running fake LLM, service and bridge."""

    def __init__(self, llm: FakeOpenAIServer, url: str, videos_dir: Path) -> None:
        self.llm = llm
        self.url = url
        self.videos_dir = videos_dir


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
    with FakeOpenAIServer() as llm:
        service = start_service_process(
            data_dir,
            env={
                "AVATAR_LLM": "openai",
                "AVATAR_OPENAI_BASE_URL": llm.url,
                "AVATAR_OPENAI_API_KEY": "fake-key",
                "AVATAR_OPENAI_MAX_RETRIES": "0",
            },
        )
        port = free_port()
        env = dict(os.environ)
        env.update(
            {
                "AVATAR_WEB_HOST": "127.0.0.1",
                "AVATAR_WEB_VIDEOS_DIR": str(videos_dir),
                "AVATAR_WEB_VIDEOS_MAX_COUNT": str(MAX_VIDEOS),
            }
        )
        bridge = subprocess.Popen(
            [str(VENV_BIN / "avatar-web"), "--port", str(port), "--grpc", service.target],
            env=env,
            cwd=REPO,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            wait_for_bridge(url, bridge)
            yield Stack(llm, url, videos_dir)
        finally:
            stop_process(bridge)
            stop_process(service.process)


@pytest.fixture
async def http(stack):
    async with aiohttp.ClientSession(
        stack.url, timeout=aiohttp.ClientTimeout(total=180)
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


async def test_same_session_calls_never_interleave(http):
    status, first = await post(http, "/api/speak", {"text": "Start."})
    assert status == 200
    session = first["session"]
    results = await asyncio.gather(
        *[post(http, "/api/chat", {"message": f"Turn {i}.", "session": session}) for i in range(3)]
    )
    statuses = sorted(status for status, _ in results)
    assert set(statuses) <= {200, 409} and statuses[0] == 200
    for status, body in results:
        if status == 409:
            assert body["error"]["field"] == "session"
        else:
            assert body["session"] == session and body["reply"].startswith("Echo: Turn")


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
    async with http.get("/api/health") as reply:
        body = await reply.json()
    assert reply.status == 200 and body["status"] == "ok"
    assert body["service"]["llm"] == "openai" and 0 < body["videos"]["count"] <= MAX_VIDEOS
