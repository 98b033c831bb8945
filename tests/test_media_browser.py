"""A real browser's MediaSource accepts the encoder's init + segments and plays them through."""

from __future__ import annotations

import base64
import os
import shutil

import numpy as np
import pytest
from avatar_server.core.frames import Frame
from avatar_server.media import SegmentEncoder
from media_helpers import encode_segment

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed")

PLAY_THROUGH = """
async ([mime, parts]) => {
  const result = {supported: MediaSource.isTypeSupported(mime)};
  const video = document.createElement('video');
  video.muted = true;
  document.body.appendChild(video);
  const source = new MediaSource();
  video.src = URL.createObjectURL(source);
  await new Promise(resolve => source.addEventListener('sourceopen', resolve, {once: true}));
  const buffer = source.addSourceBuffer(mime);
  for (const part of parts) {
    buffer.appendBuffer(Uint8Array.from(atob(part), c => c.charCodeAt(0)));
    await new Promise((resolve, reject) => {
      buffer.addEventListener('updateend', resolve, {once: true});
      buffer.addEventListener('error', () => reject(new Error('append failed')), {once: true});
    });
  }
  result.buffered = [...Array(buffer.buffered.length).keys()].map(i => [buffer.buffered.start(i), buffer.buffered.end(i)]);
  source.endOfStream();
  video.playbackRate = 4;
  const ended = new Promise(resolve => video.addEventListener('ended', resolve, {once: true}));
  await video.play();
  await Promise.race([ended, new Promise(resolve => setTimeout(resolve, 10000))]);
  result.ended = video.ended;
  result.currentTime = video.currentTime;
  result.error = video.error && video.error.message;
  result.frames = video.getVideoPlaybackQuality().totalVideoFrames;
  return result;
}
"""


def chromium_executable() -> str | None:
    """A system Chromium (apt-get install chromium), else Playwright's own download, else None."""
    system = shutil.which("chromium") or shutil.which("chromium-browser")
    if system:
        return system
    with sync_api.sync_playwright() as playwright:
        bundled = playwright.chromium.executable_path
    return bundled if os.path.exists(bundled) else None


def test_chromium_media_source_plays_all_segments() -> None:
    executable = chromium_executable()
    if executable is None:
        pytest.skip("no Chromium (apt-get install chromium, or playwright install chromium)")
    encoder = SegmentEncoder(width=64, height=64, fps=25, clock_rate=16000, preset="ultrafast")
    parts = [encoder.init_segment()]
    first = 0
    for count in (25, 12, 38):
        frames = [Frame(np.full((64, 64, 3), (7 * index) % 256, np.uint8)) for index in range(first, first + count)]
        tone = (4000 * np.sin(2 * np.pi * 440 * np.arange(count * 640) / 16000)).astype(np.int16)
        parts.append(encode_segment(encoder, frames, tone).data)
        first += count
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable, args=["--autoplay-policy=no-user-gesture-required"]
        )
        try:
            result = browser.new_page().evaluate(
                PLAY_THROUGH, [encoder.mime_type, [base64.b64encode(part).decode() for part in parts]]
            )
        finally:
            browser.close()
    assert result["supported"] and result["error"] is None
    # One continuous range from 0; it ends where the audio does (AAC holds 128-192 ms back).
    assert len(result["buffered"]) == 1 and result["buffered"][0][0] == 0
    assert 3.0 - 0.192 <= result["buffered"][0][1] <= 3.0 - 0.128
    assert result["ended"] and result["currentTime"] == pytest.approx(3.0, abs=0.05)
    assert result["frames"] == 75
