"""Acceptance: the player page in a real headless Chromium, via avatar-web, against avatar-server.

The service is the real `avatar-server` subprocess on embedded defaults (echo LLM, espeak TTS,
CPU lip-sync renderer) with authentication on, as in production; the bridge is the real
`avatar-web` process presenting its own key and guarding the page with an access token (each
browser context signs in by opening the page once with ?token=). Screenshots go to artifacts/web/.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import (
    REPO,
    VENV_BIN,
    ServiceProcess,
    free_port,
    start_service_process,
    stop_process,
)

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed")

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ARTIFACTS = REPO / "artifacts" / "web"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--autoplay-policy=no-user-gesture-required",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--no-first-run",
]
TURN_TIMEOUT_MS = 90_000
SERVICE_KEY = "player-service-key-0001"
TOKEN = "player-page-token-0001"

SNAPSHOT = """() => {
  const v = document.getElementById('live');
  const s = window.avatarPlayer.state;
  const ranges = [];
  for (let i = 0; i < v.buffered.length; i += 1) {
    ranges.push([v.buffered.start(i), v.buffered.end(i)]);
  }
  const q = v.getVideoPlaybackQuality();
  return {
    t: v.currentTime, paused: v.paused, readyState: v.readyState, buffered: ranges,
    speaking: s.speaking, screenSpeaking: document.getElementById('screen').dataset.speaking,
    caption: document.getElementById('caption').textContent,
    captions: s.captions.map(c => [c.start, c.end, c.text]),
    decodedFrames: q.totalVideoFrames, videoWidth: v.videoWidth,
    turn: s.turn && {id: s.turn.id, start: s.turn.start, end: s.turn.end, done: s.turn.done,
                     cancelled: s.turn.cancelled, segments: s.turn.segments,
                     completed: Boolean(s.turn.completed), lastSegmentIn: s.turn.lastSegmentIn},
    pending: window.avatarPlayer.sink.pending, appended: window.avatarPlayer.sink.appended,
    session: s.session && {id: s.session.session_id, resumed: s.session.resumed},
    sessionsStarted: s.sessionsStarted, errors: s.errors,
    mseErrors: window.avatarPlayer.sink.errors,
    mime: window.avatarPlayer.sink.mime,
    idleT: document.getElementById('idle').currentTime,
    idlePaused: document.getElementById('idle').paused,
  };
}"""

# The live video's current picture, 64x64 grey levels (the page and its media are same-origin).
PIXELS = """() => {
  const v = document.getElementById('live');
  const c = document.createElement('canvas');
  c.width = 64; c.height = 64;
  const g = c.getContext('2d', {willReadFrequently: true});
  g.drawImage(v, 0, 0, 64, 64);
  const d = g.getImageData(0, 0, 64, 64).data;
  const out = [];
  for (let i = 0; i < d.length; i += 4) out.push((d[i] + d[i + 1] + d[i + 2]) / 3);
  return out;
}"""


# Whether the chat log's font draws Hangul: two syllables must give different, inked glyphs,
# unlike two private-use code points, which draw the same missing-glyph box.
HANGUL_GLYPHS = """() => {
  const family = getComputedStyle(document.querySelector('#log li.avatar')).fontFamily;
  const draw = (text) => {
    const c = document.createElement('canvas');
    c.width = 48; c.height = 48;
    const g = c.getContext('2d', {willReadFrequently: true});
    g.font = `32px ${family}`;
    g.fillText(text, 4, 38);
    return Array.from(g.getImageData(0, 0, 48, 48).data.filter((_, i) => i % 4 === 3)).join();
  };
  const an = draw('안'), nyeong = draw('녕'), tofu = draw('\\uE000');
  return {inked: /[1-9]/.test(an) && /[1-9]/.test(nyeong), distinct: an !== nyeong,
          notTofu: an !== tofu && nyeong !== tofu};
}"""


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("Debian chromium is not installed (apt-get install -y chromium)")
    return path


class Bridge:
    """An `avatar-web` subprocess that can be restarted on the same port."""

    def __init__(self, grpc_target: str, videos_dir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.grpc_target = grpc_target
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("AVATAR_WEB_")}
        self.env.update(AVATAR_WEB_VIDEOS_DIR=str(videos_dir), AVATAR_WEB_ACCESS_TOKEN=TOKEN,
                        AVATAR_WEB_GRPC_API_KEY=SERVICE_KEY)
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [str(VENV_BIN / "avatar-web"), "--port", str(self.port), "--grpc", self.grpc_target],
            env=self.env, cwd=REPO)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"avatar-web exited with {self.process.returncode}")
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=2) as reply:
                    if reply.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.1)
        raise TimeoutError("avatar-web did not come up")

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None


@pytest.fixture(scope="module")
def secured_service(data_dir: Path) -> Iterator[ServiceProcess]:
    """A real `avatar-server` that requires an API key on every call."""
    service = start_service_process(
        data_dir, env={"AVATAR_AUTH_DISABLED": "false", "AVATAR_API_KEYS": SERVICE_KEY})
    yield service
    stop_process(service.process)


@pytest.fixture(scope="module")
def bridge(secured_service: ServiceProcess, tmp_path_factory) -> Iterator[Bridge]:
    bridge = Bridge(secured_service.target, tmp_path_factory.mktemp("web-videos"))
    bridge.start()
    yield bridge
    bridge.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    executable = _chromium()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def _new_page(browser, viewport=(1100, 760)):
    # bypass_csp lets Playwright's polling helpers run; the page itself keeps its strict CSP.
    context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]},
                                  bypass_csp=True)
    return context.new_page()


def _open_page(browser, bridge: Bridge, query: str = "", viewport=(1100, 760)):
    """A page signed in the way a user does it: one visit with ?token=, then the cookie."""
    page = _new_page(browser, viewport)
    page.goto(f"{bridge.url}/?token={TOKEN}{'&' + query if query else ''}")
    assert "token=" not in page.url, "the token must leave the address bar"
    _wait_ready(page)
    return page


def _wait_ready(page) -> None:
    page.wait_for_function("window.avatarPlayer && window.avatarPlayer.state.session !== null",
                           timeout=30_000)
    # The idle loop is showing (the page's load time; from here on nothing may be black).
    page.wait_for_function("document.getElementById('idle').readyState >= 2", timeout=30_000)


@pytest.fixture
def page(browser, bridge):
    page = _open_page(browser, bridge)
    yield page
    page.context.close()


def _say(page, text: str) -> None:
    page.fill("#input", text)
    page.click("#send")


def _wait_for(page, condition: str) -> None:
    """Waits for `condition`; on timeout the failure shows the player's state."""
    try:
        page.wait_for_function(condition, timeout=TURN_TIMEOUT_MS)
    except sync_api.TimeoutError:
        pytest.fail(f"timed out waiting for {condition!r}; player: {page.evaluate(SNAPSHOT)}")


def _wait_speaking(page) -> None:
    _wait_for(page, "window.avatarPlayer.state.speaking && "
                    "document.getElementById('live').currentTime > 0.2 + "
                    "(window.avatarPlayer.state.turn.start || 0)")


def _wait_silent(page) -> None:
    _wait_for(page, "!window.avatarPlayer.state.speaking && "
                    "window.avatarPlayer.state.turn && window.avatarPlayer.state.turn.done")


def _brightness(page) -> float:
    png = page.locator("#screen").screenshot()
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_GRAYSCALE)
    return float(image.mean())


def test_turn_streams_text_and_plays_video_with_captions_in_step(page):
    facts = {k: page.text_content(f"#fact-{k}") for k in ("renderer", "voice", "llm")}
    assert facts["renderer"] == "lipsync" and facts["llm"] == "echo" and facts["voice"] != "–"
    idle_before = page.evaluate(SNAPSHOT)["idleT"]

    # Long enough to sample playback several times even when a loaded CPU slows the page down.
    _say(page, "Hello there! The quick brown fox jumps over the lazy dog, twice over. "
               "Then it rests in the shade, and the dog, still lazy, does not move at all.")
    page.wait_for_selector("#log li.avatar", timeout=TURN_TIMEOUT_MS)
    page.wait_for_function("document.querySelector('#log li.avatar').textContent"
                           ".includes('quick brown fox')", timeout=TURN_TIMEOUT_MS)
    # The idle loop plays while the reply is being prepared; nothing on screen is black.
    brightness = [_brightness(page)]
    _wait_speaking(page)
    brightness.append(_brightness(page))

    samples = []
    for index in range(24):  # up to ~8 s, while the reply plays (a loaded CPU may stall it)
        snap = page.evaluate(SNAPSHOT)
        if not snap["speaking"]:
            break
        samples.append((snap, np.array(page.evaluate(PIXELS))))
        brightness.append(_brightness(page))
        if index == 2:
            page.screenshot(path=str(ARTIFACTS / "turn-speaking.png"))
        page.wait_for_timeout(250)
    first = samples[0][0]
    assert first["mime"] and page.evaluate(f"MediaSource.isTypeSupported({first['mime']!r})")
    assert first["videoWidth"] > 0 and first["decodedFrames"] > 0, "H.264 was not decoded"
    assert not first["errors"] and not first["mseErrors"]
    times = [s["t"] for s, _ in samples]
    # currentTime only moves forward and advances over the samples (a CPU renderer slower than
    # real time may make the video wait for its next segment now and then).
    assert len(samples) >= 3 and all(b >= a for a, b in zip(times, times[1:], strict=False)), times
    assert times[-1] > times[0] + 0.5, times
    pictures = [pixels for _, pixels in samples]
    changes = [float(np.abs(b - a).mean()) for a, b in zip(pictures, pictures[1:], strict=False)]
    assert max(changes) > 0.3, f"frames did not change while speaking: {changes}"
    # Captions follow the video clock: the one shown is the one whose span holds currentTime.
    shown = 0
    for snap, _ in samples:
        covering = [text for start, end, text in snap["captions"] if start <= snap["t"] < end]
        if snap["caption"]:
            shown += 1
            assert snap["caption"] in covering, (snap["t"], snap["caption"], snap["captions"])
    assert shown > 0
    for cell in ("#m-text", "#m-video", "#m-audio"):
        assert page.text_content(cell) != "–"

    _wait_silent(page)
    end = page.evaluate(SNAPSHOT)
    assert end["screenSpeaking"] == "false" and end["paused"]
    _wait_for(page, f"document.getElementById('idle').currentTime != {end['idleT']}")
    after = page.evaluate(SNAPSHOT)
    assert not after["idlePaused"] and after["idleT"] != idle_before, "idle loop is not playing"
    brightness.append(_brightness(page))
    assert min(brightness) > 20, f"a black frame on screen: {brightness}"
    page.screenshot(path=str(ARTIFACTS / "turn-done.png"))

    # A second turn continues the same SourceBuffer on the same media clock, without a gap.
    _say(page, "And one more sentence, please.")
    _wait_speaking(page)
    second = page.evaluate(SNAPSHOT)
    assert second["turn"]["start"] >= end["turn"]["end"] - 0.05
    assert second["t"] > end["t"]
    # One SourceBuffer from 0; a hole between turns can only be the audio track's last AAC
    # frames (the page seeks to each turn's first frame, behind the idle loop, anyway).
    ranges = second["buffered"]
    holes = [b[0] - a[1] for a, b in zip(ranges, ranges[1:], strict=False)]
    assert ranges[0][0] < 0.1 and all(hole < 0.25 for hole in holes), ranges
    _wait_silent(page)


def test_interrupt_stops_the_avatar_at_once(page):
    _say(page, "Please read this long passage. " + "It keeps going with many words. " * 8)
    _wait_speaking(page)
    page.click("#stop")
    page.wait_for_function("!window.avatarPlayer.state.speaking", timeout=2_000)
    snap = page.evaluate(SNAPSHOT)
    assert snap["paused"] and snap["turn"]["cancelled"] and snap["screenSpeaking"] == "false"
    page.wait_for_function("window.avatarPlayer.state.lastCancelled !== null", timeout=15_000)
    cancelled = page.evaluate("window.avatarPlayer.state.lastCancelled")
    assert cancelled["reason"] == "interrupted" and cancelled["turn_id"] == snap["turn"]["id"]
    page.wait_for_timeout(1000)  # not a stand-in for an event: nothing may move for a second
    later = page.evaluate(SNAPSHOT)
    assert later["paused"] and later["t"] == snap["t"] and not later["speaking"]
    assert page.get_attribute("#log li.avatar", "data-state") == "cancelled"
    page.screenshot(path=str(ARTIFACTS / "interrupted.png"))
    # The session goes on: a new turn plays from the turn's own start, and the cancelled
    # turn's video runs up to it without a hole.
    _say(page, "Short reply now.")
    _wait_speaking(page)
    ranges = page.evaluate(SNAPSHOT)["buffered"]
    holes = [b[0] - a[1] for a, b in zip(ranges, ranges[1:], strict=False)]
    assert all(hole < 0.25 for hole in holes), ranges
    _wait_silent(page)


def test_playback_jumps_over_a_hole_in_the_turn(page):
    _say(page, "Please read this long passage. " + "It keeps going with many words. " * 3)
    _wait_speaking(page)
    _wait_for(page, "window.avatarPlayer.state.turn.lastSegmentIn === true")
    # Cut a hole ahead of the playhead, as media lost on the way would leave one.
    ranges = page.evaluate("""async () => {
      const sink = window.avatarPlayer.sink;
      const t = sink.video.currentTime;
      await sink.enqueue({op: 'trim', start: t + 0.6, end: t + 1.0});
      const b = sink.sourceBuffer.buffered, out = [];
      for (let i = 0; i < b.length; i += 1) out.push([b.start(i), b.end(i)]);
      return out;
    }""")
    assert len(ranges) >= 2, ranges
    hole_end = ranges[-1][0]
    _wait_silent(page)
    end = page.evaluate(SNAPSHOT)
    assert not end["turn"]["cancelled"] and end["t"] > hole_end + 1.0, (ranges, end)


def test_page_reconnects_and_resumes_after_the_bridge_restarts(page, bridge):
    _say(page, "Before the restart.")
    _wait_speaking(page)
    _wait_silent(page)
    before = page.evaluate(SNAPSHOT)
    page.evaluate("window.__sink = window.avatarPlayer.sink.mediaSource")
    bridge.stop()
    page.wait_for_function("document.getElementById('conn').dataset.state === 'closed'",
                           timeout=10_000)
    page.screenshot(path=str(ARTIFACTS / "reconnecting.png"))
    bridge.start()
    page.wait_for_function("window.avatarPlayer.state.sessionsStarted === 2", timeout=15_000)
    after = page.evaluate(SNAPSHOT)
    assert after["session"]["id"] == before["session"]["id"] and after["session"]["resumed"]
    assert page.evaluate("window.__sink === window.avatarPlayer.sink.mediaSource"), \
        "a resumed session keeps its MediaSource"
    _say(page, "After the restart.")
    _wait_speaking(page)
    resumed = page.evaluate(SNAPSHOT)
    assert resumed["turn"]["start"] >= before["turn"]["end"] - 0.05  # the media clock went on
    assert resumed["t"] > before["t"]
    _wait_silent(page)
    assert not page.evaluate(SNAPSHOT)["mseErrors"]


def test_a_refused_resume_starts_a_new_session_cleanly(page):
    _say(page, "First session.")
    _wait_speaking(page)
    _wait_silent(page)
    before = page.evaluate(SNAPSHOT)
    page.evaluate("window.__sink = window.avatarPlayer.sink.mediaSource")
    # The page reconnects with a session id the service does not know: it answers resumed=false.
    page.evaluate("sessionStorage.setItem('avatar.session_id', 'unknown-session');"
                  "window.avatarPlayer.connection.ws.close()")
    page.wait_for_function("window.avatarPlayer.state.sessionsStarted === 2", timeout=15_000)
    after = page.evaluate(SNAPSHOT)
    assert after["session"]["id"] != before["session"]["id"] and not after["session"]["resumed"]
    assert page.evaluate("window.__sink !== window.avatarPlayer.sink.mediaSource"), \
        "a new session gets a fresh MediaSource"
    assert page.evaluate("sessionStorage.getItem('avatar.session_id')") == after["session"]["id"]
    _say(page, "Second session.")
    _wait_speaking(page)
    fresh = page.evaluate(SNAPSHOT)
    assert fresh["turn"]["start"] < 0.05 and fresh["buffered"][0][0] < 0.1  # a new media clock
    _wait_silent(page)
    assert not page.evaluate(SNAPSHOT)["mseErrors"]


def test_phone_width_and_korean_text(browser, bridge):
    page = _open_page(browser, bridge, "lang=ko-KR", viewport=(390, 844))
    try:
        _say(page, "안녕하세요, 만나서 반갑습니다. Hello!")
        page.wait_for_function("document.querySelector('#log li.avatar')?.textContent"
                               ".includes('반갑습니다')", timeout=TURN_TIMEOUT_MS)
        _wait_speaking(page)
        page.screenshot(path=str(ARTIFACTS / "phone-korean.png"), full_page=True)
        layout = page.evaluate("""() => ({
            scroll: document.documentElement.scrollWidth, width: innerWidth,
            screen: document.getElementById('screen').getBoundingClientRect().width,
            lang: document.documentElement.lang})""")
        assert layout["scroll"] <= layout["width"], layout
        assert layout["screen"] > 300 and layout["lang"] == "ko"
        glyphs = page.evaluate(HANGUL_GLYPHS)
        assert glyphs["inked"], "Hangul drew nothing"
        assert glyphs["distinct"], "two Hangul syllables drew the same glyph: no Korean font"
        assert glyphs["notTofu"], "Hangul drew the missing-glyph box: no Korean font"
        _wait_silent(page)
    finally:
        page.context.close()


def test_without_the_token_the_page_asks_for_it_and_signs_in(browser, bridge):
    page = _new_page(browser)
    try:
        response = page.goto(f"{bridge.url}/?token=not-the-token")
        assert response.status == 401 and page.text_content("#note").startswith("That token")
        response = page.goto(f"{bridge.url}/")
        assert response.status == 401 and page.locator("#token").count() == 1
        assert page.evaluate("typeof window.avatarPlayer") == "undefined"  # no player served
        page.fill("#token", TOKEN)
        page.click("#open")
        _wait_ready(page)
        assert "token=" not in page.url
        cookies = {c["name"]: c for c in page.context.cookies()}
        assert cookies["avatar_web_access"]["httpOnly"] and TOKEN not in str(cookies)
        _say(page, "Signed in.")
        _wait_speaking(page)
        _wait_silent(page)
        assert not page.evaluate(SNAPSHOT)["errors"]
    finally:
        page.context.close()
