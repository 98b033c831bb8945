"""Render stage: speech PCM -> avatar frames, each paired with the speech of its frame time."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import numpy as np

from avatar_server.core.errors import RenderError
from avatar_server.media.resample import StreamResampler
from avatar_server.pipeline.channels import Channel
from avatar_server.pipeline.context import TurnContext
from avatar_server.pipeline.items import AudioChunk, RenderedFrame
from avatar_server.pipeline.runner import Stage
from avatar_server.renderers.base import RenderSession


class RenderStage(Stage):
    """Feeds the turn's speech to the session's renderer (resampled to its rate) and pairs
    every frame it yields with that frame's samples_per_frame samples of clock-rate speech,
    so a segment always carries exactly the audio of its frames. Time the renderer spends
    waiting for speech is not counted as render work."""

    name = "render"

    def __init__(self, turn: TurnContext, audio: Channel[AudioChunk],
                 output: Channel[RenderedFrame], *, render: RenderSession, clock_rate: int,
                 renderer_rate: int, samples_per_frame: int) -> None:
        self._turn = turn
        self._audio = audio
        self._output = output
        self._render = render
        self._clock_rate, self._renderer_rate = clock_rate, renderer_rate
        self._samples_per_frame = samples_per_frame
        self._speech: list[np.ndarray] = []  # received speech not yet paired with a frame
        self._total_frames: int | None = None  # known once the last chunk arrived
        self._starved_s = 0.0

    async def run(self) -> None:
        frames = self._render.render(self._renderer_input())
        count = 0
        try:
            while True:
                began, starved_before = time.perf_counter(), self._starved_s
                try:
                    image = await anext(frames)
                except StopAsyncIteration:
                    break
                waited = self._starved_s - starved_before
                self._turn.report.work_seconds += time.perf_counter() - began - waited
                self._turn.mark("first_frame_ms")
                count += 1
                last = count == self._total_frames
                await self._output.put(RenderedFrame(image, self._frame_speech(count), last=last))
        finally:
            await frames.aclose()  # type: ignore[attr-defined]
        await self._output.close()

    async def _renderer_input(self) -> AsyncIterator[np.ndarray]:
        """The speech as float32 at the renderer's rate, chunk by chunk as it arrives."""
        received = 0
        to_renderer = (StreamResampler(self._clock_rate, self._renderer_rate)
                       if self._renderer_rate != self._clock_rate else None)
        while True:
            waited = time.perf_counter()
            try:
                chunk = await self._audio.get()
            finally:
                self._starved_s += time.perf_counter() - waited
            if chunk is None:
                if to_renderer is not None:
                    yield to_renderer.flush()
                return
            self._speech.append(chunk.pcm)
            received += len(chunk.pcm)
            if chunk.last:
                self._total_frames = received // self._samples_per_frame
            samples = chunk.pcm.astype(np.float32) / 32768.0
            yield to_renderer.push(samples) if to_renderer is not None else samples

    def _frame_speech(self, frame_number: int) -> np.ndarray:
        """The next samples_per_frame samples of speech, for the frame just rendered."""
        joined = np.concatenate(self._speech) if len(self._speech) != 1 else self._speech[0]
        spf = self._samples_per_frame
        if len(joined) < spf:
            raise RenderError(f"the renderer gave frame {frame_number} before its audio arrived "
                              f"({len(joined)} of {spf} samples)")
        self._speech = [joined[spf:]] if len(joined) > spf else []
        return joined[:spf]
