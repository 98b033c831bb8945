"""Segment stage: frames and their speech -> fMP4 media segments on the session's timeline."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from avatar_server.core.clock import Span
from avatar_server.media.encoder import EncodedSegment, SegmentEncoder
from avatar_server.pipeline.channels import Channel
from avatar_server.pipeline.context import SessionMedia, TurnContext
from avatar_server.pipeline.events import SegmentOut
from avatar_server.pipeline.items import RenderedFrame
from avatar_server.pipeline.runner import Stage

log = logging.getLogger(__name__)

STALL_FLUSH_S = 0.15  # send a short segment rather than let the player starve
T = TypeVar("T")


class SegmentStage(Stage):
    """Encodes each frame as it comes (in a worker thread) and closes a segment when it is
    full (the turn's first after `first_segment_frames`, then `segment_frames`), when no frame
    came for STALL_FLUSH_S, or at the turn's last frame.

    On an interrupt it closes the segment it holds and sends it, so the session's video has
    no hole: the encoder step running at that moment finishes first (x264 is never touched by
    two threads), and a segment closed at that moment is sent too.
    """

    name = "encode"

    def __init__(self, turn: TurnContext, frames: Channel[RenderedFrame],
                 media: SessionMedia) -> None:
        assert media.encoder is not None
        self._turn = turn
        self._frames = frames
        self._media = media
        self._encoder: SegmentEncoder = media.encoder
        self._target = media.first_segment_frames
        self._speech: list[np.ndarray] = []  # speech of the frames in the encoder, one per frame
        self._step: asyncio.Future[Any] | None = None  # encoder work running in its thread
        self._step_began = 0.0
        self._unsent: SegmentOut | None = None  # closed, not yet handed to the session

    async def run(self) -> None:
        while True:
            frame, ended = await self._next_frame()
            if frame is not None:
                self._speech.append(frame.pcm)
                await self._in_thread(self._encoder.add_frame, frame.image)
            if self._speech and (ended or (frame is not None and frame.last)):
                await self._close_segment(last=True)
            elif self._speech and (frame is None or len(self._speech) >= self._target):
                await self._close_segment(last=False)
            if ended:
                return

    async def interrupt(self) -> None:
        """Closes and sends what is held: the segment an encoder step was closing, or the
        frames already encoded. A cancel while waiting on the encoder still lets it finish
        (and the timeline records the segment), but skips the send."""
        if (step := self._step) is not None:
            try:
                await self._finish_step(step)
            except Exception:  # the frames encoded before it are still closed and sent
                log.exception("an encoder step failed while the turn stopped")
        if self._unsent is None and self._speech:
            await self._finish_step(
                self._start_step(self._encoder.finish_segment, np.concatenate(self._speech)))
        if self._unsent is not None:
            await self._send()

    async def _finish_step(self, step: asyncio.Future[Any]) -> None:
        """Waits for an encoder step to its end, through cancels; records a segment it closed."""
        try:
            await _to_the_end(step)
        finally:
            self._settle()
            if (segment := _segment_closed_by(step)) is not None:
                self._record(segment, last=True)

    async def _next_frame(self) -> tuple[RenderedFrame | None, bool]:
        """The next frame and whether the frames have ended; (None, False) when frames are
        held and none came for STALL_FLUSH_S."""
        try:  # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancel
            async with asyncio.timeout(STALL_FLUSH_S if self._speech else None):
                frame = await self._frames.get()
        except TimeoutError:
            return None, False
        return frame, frame is None

    async def _close_segment(self, *, last: bool) -> None:
        segment = await self._in_thread(self._encoder.finish_segment, np.concatenate(self._speech))
        self._record(segment, last=last)
        self._target = self._media.segment_frames
        await self._send()

    def _record(self, segment: EncodedSegment, *, last: bool) -> None:
        """A closed segment is on the session's timeline, sent or not."""
        self._media.record_segment(segment)
        self._turn.report.frames += segment.frames
        self._turn.reach(self._media.position)
        self._unsent = SegmentOut(
            data=segment.data, sequence=segment.sequence, first_frame=segment.first_frame,
            frames=segment.frames, span=Span(segment.media_start, segment.media_end),
            last_in_turn=last,
        )

    async def _send(self) -> None:
        assert self._unsent is not None
        await self._turn.emit(self._unsent)
        self._unsent = None
        self._turn.mark("first_segment_ms")

    async def _in_thread(self, call: Callable[..., T], *args: object) -> T:
        """Runs one encoder step in a worker thread. A cancel leaves the step running:
        `interrupt` waits for it and uses its result."""
        step = self._start_step(call, *args)
        try:
            result: T = await asyncio.shield(step)
        except asyncio.CancelledError:
            raise
        except BaseException:
            self._settle()
            raise
        self._settle()
        return result

    def _start_step(self, call: Callable[..., T], *args: object) -> asyncio.Future[T]:
        self._step_began = time.perf_counter()
        step = asyncio.ensure_future(asyncio.to_thread(call, *args))
        self._step = step
        return step

    def _settle(self) -> None:
        """An encoder step is over: count its time; keep the speech of the frames still held
        (none after a segment closed; one less after a frame the encoder refused)."""
        self._step = None
        self._turn.report.work_seconds += time.perf_counter() - self._step_began
        del self._speech[self._encoder.pending_frames:]


def _segment_closed_by(step: asyncio.Future[Any]) -> EncodedSegment | None:
    """The segment a finished encoder step closed, if it was a finish_segment that worked."""
    if not step.done() or step.cancelled() or step.exception() is not None:
        return None
    result = step.result()
    return result if isinstance(result, EncodedSegment) else None


async def _to_the_end(step: asyncio.Future[T]) -> T:
    """Waits for `step` to finish even through cancels; then raises a cancel that came."""
    cancelled = False
    while not step.done():
        try:
            await asyncio.wait({step})
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    return step.result()
