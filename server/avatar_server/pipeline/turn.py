"""One turn as three concurrent stages joined by bounded channels.

    reply text --(text stage)--> sentences --(speech stage)--> PCM on the clock
               --(render stage)--> frames --(segment stage)--> fMP4 segments

Every stage emits its typed events as soon as it has them, so the first
sentence is on screen while the model is still writing the next. Cancelling
the task that runs `run_turn` stops every stage (one cancel path); a segment
that is being encoded when the cancel arrives is still sent, so the session's
video timeline never has a hole.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar, cast

import numpy as np

from avatar_server.core.clock import Span
from avatar_server.core.errors import AvatarError, StatusCode
from avatar_server.core.frames import Frame
from avatar_server.media.encoder import EncodedSegment, SegmentEncoder
from avatar_server.media.resample import StreamResampler
from avatar_server.pipeline.events import (
    AudioOut,
    CaptionOut,
    SegmentOut,
    TextDelta,
    TurnEvent,
    TurnReport,
)
from avatar_server.pipeline.queues import Channel
from avatar_server.pipeline.sentences import split_sentences
from avatar_server.providers.tts.base import SpeechSynthesizer
from avatar_server.renderers.base import RenderSession

LEAD_IN_FRAMES = 2  # silence before speech: a soft onset, and the AAC encoder's priming room
TAIL_FRAMES = 4  # silence after speech: the mouth closes, AAC's held-back audio is released
STALL_FLUSH_S = 0.15  # send a short segment rather than let the player starve


@dataclass
class SessionMedia:
    """What a session's turns continue: the clock, the render session and the encoder."""

    clock_rate: int
    fps: int
    segment_frames: int
    first_segment_frames: int
    render: RenderSession | None  # None: video is off
    encoder: SegmentEncoder | None
    renderer_rate: int
    pcm_out: bool
    position: int = 0  # clock sample where the next turn starts, always on a frame boundary
    next_frame: int = 0
    next_sequence: int = 0

    @property
    def samples_per_frame(self) -> int:
        return self.clock_rate // self.fps


Emit = Callable[[TurnEvent], Awaitable[None]]
T = TypeVar("T")


class _CancelledAfterWork(asyncio.CancelledError):
    """A cancel that landed while work ran on to its end; carries the work's result."""

    def __init__(self, result: object) -> None:
        super().__init__()
        self.result = result


async def _to_the_end(work: Awaitable[T]) -> T:
    """Awaits `work` to its end even when the caller is cancelled (once or more) meanwhile;
    the cancel is raised once the work is done, as `_CancelledAfterWork` with its result."""
    task = asyncio.ensure_future(work)
    cancelled = False
    while not task.done():
        try:
            await asyncio.wait({task})  # unlike `await task`, a cancel here leaves the task be
        except asyncio.CancelledError:
            cancelled = True
    result = task.result()
    if cancelled:
        raise _CancelledAfterWork(result)
    return result


async def _stage(name: str, work: Awaitable[None]) -> None:
    """Runs a stage, naming it in any unexpected failure so the Error event says where."""
    try:
        await work
    except AvatarError:
        raise
    except Exception as error:
        raise AvatarError(
            f"{name} stage failed: {type(error).__name__}: {error}", code=StatusCode.INTERNAL, stage=name
        ) from error


async def run_turn(
    reply: AsyncIterator[str],
    *,
    media: SessionMedia,
    tts: SpeechSynthesizer,
    voice: str,
    language: str,
    emit: Emit,
    report: TurnReport,
    started: float,
    from_llm: bool,
) -> None:
    """Runs one turn to completion, filling `report` as it goes (also when cancelled)."""
    timings = report.timings
    turn_start = media.position
    report.span = Span(turn_start, turn_start)

    def mark(name: str) -> None:
        if not getattr(timings, name):
            setattr(timings, name, (time.perf_counter() - started) * 1000.0)

    text_channel: Channel[str] = Channel(64)
    audio_channel: Channel[np.ndarray] = Channel(32)

    async def text_stage() -> None:
        async for delta in reply:
            if not delta:
                continue
            if from_llm:
                mark("llm_first_token_ms")
            report.text += delta
            await emit(TextDelta(delta, Span(turn_start, turn_start)))
            mark("first_text_ms")
            await text_channel.put(delta)
        await text_channel.close()

    async def speech_stage() -> None:
        position = turn_start
        spf = media.samples_per_frame
        lead_in = np.zeros(LEAD_IN_FRAMES * spf, np.int16)  # sent with the first speech

        async def send(pcm: np.ndarray, *, speech: bool) -> None:
            nonlocal position, lead_in
            if lead_in is not None:
                pending, lead_in = lead_in, None
                await send(pending, speech=False)
            span = Span(position, position + len(pcm))
            if media.pcm_out:
                await emit(AudioOut(pcm, span))
                if speech:
                    mark("first_audio_ms")
            await audio_channel.put(pcm)
            position = span.end

        async for sentence in split_sentences(aiter(text_channel)):
            sentence_start = position + (len(lead_in) if lead_in is not None else 0)
            resampler: StreamResampler | None = None
            async for piece in tts.synthesize(sentence, voice=voice, language=language):
                mark("tts_first_audio_ms")
                if resampler is None:
                    resampler = StreamResampler(piece.sample_rate, media.clock_rate)
                pcm = resampler.push(piece.pcm)
                if len(pcm):
                    await send(pcm, speech=True)
                for word in piece.words:  # word times count from the sentence's start
                    start = sentence_start + round(word.start_s * media.clock_rate)
                    end = sentence_start + round(word.end_s * media.clock_rate)
                    await emit(CaptionOut(word.word, Span(start, max(start, end)), sentence=False))
            if resampler is not None and len(rest := resampler.flush()):
                await send(rest, speech=True)
            await emit(CaptionOut(sentence, Span(sentence_start, position), sentence=True))
        length = position - turn_start + (len(lead_in) if lead_in is not None else 0)
        await send(np.zeros(TAIL_FRAMES * spf + (-length) % spf, np.int16), speech=False)
        report.media_samples = position - turn_start
        await audio_channel.close()

    if media.render is None or media.encoder is None:
        async def audio_only_stage() -> None:
            async for _ in audio_channel:
                pass
            media.position = turn_start + report.media_samples
            report.span = Span(turn_start, media.position)

        async with asyncio.TaskGroup() as group:
            group.create_task(_stage("llm", text_stage()))
            group.create_task(_stage("tts", speech_stage()))
            group.create_task(audio_only_stage())
        return

    await _run_video(
        media=media,
        text_stage=text_stage,
        speech_stage=speech_stage,
        audio_channel=audio_channel,
        emit=emit,
        report=report,
        mark=mark,
        turn_start=turn_start,
    )


async def _run_video(
    *,
    media: SessionMedia,
    text_stage: Callable[[], Awaitable[None]],
    speech_stage: Callable[[], Awaitable[None]],
    audio_channel: Channel[np.ndarray],
    emit: Emit,
    report: TurnReport,
    mark: Callable[[str], None],
    turn_start: int,
) -> None:
    """Render and segment stages: PCM in, frames out, frames + PCM into fMP4 segments."""
    assert media.render is not None and media.encoder is not None
    render, encoder = media.render, media.encoder
    spf = media.samples_per_frame
    pcm_pending: list[np.ndarray] = []  # speech PCM not yet put into a segment
    expected_frames: int | None = None  # known once the speech stage has finished
    frame_channel: Channel[Frame] = Channel(max(8, 2 * media.segment_frames))
    starved_s = 0.0  # time the renderer waited for speech, not working

    async def renderer_input() -> AsyncIterator[np.ndarray]:
        nonlocal expected_frames, starved_s
        received = 0
        iterator = aiter(audio_channel)
        to_renderer = (StreamResampler(media.clock_rate, media.renderer_rate)
                       if media.renderer_rate != media.clock_rate else None)
        while True:
            waited = time.perf_counter()
            try:
                pcm = await anext(iterator)
            except StopAsyncIteration:
                expected_frames = received // spf
                if to_renderer is not None:
                    yield to_renderer.flush()
                return
            finally:
                starved_s += time.perf_counter() - waited
            received += len(pcm)
            pcm_pending.append(pcm)
            chunk = pcm.astype(np.float32) / 32768.0
            yield to_renderer.push(chunk) if to_renderer is not None else chunk

    async def render_stage() -> None:
        nonlocal starved_s
        frames = render.render(renderer_input())
        try:
            while True:
                began, starved_before = time.perf_counter(), starved_s
                try:
                    frame = await anext(frames)
                except StopAsyncIteration:
                    break
                report.work_seconds += (time.perf_counter() - began) - (starved_s - starved_before)
                mark("first_frame_ms")
                await frame_channel.put(frame)
        finally:
            await frames.aclose()
        await frame_channel.close()

    def take_pcm(frame_count: int) -> np.ndarray:
        needed = frame_count * spf
        joined = np.concatenate(pcm_pending) if pcm_pending else np.zeros(0, np.int16)
        pcm_pending.clear()
        if len(joined) > needed:
            pcm_pending.append(joined[needed:])
        return joined[:needed]

    async def in_worker(call: Callable[..., T], *args: object) -> T:
        """Runs encoder work in a thread; a cancel waits for it, so x264 is never touched by
        two threads and what was encoded is accounted for."""
        began = time.perf_counter()
        try:
            return await _to_the_end(asyncio.to_thread(call, *args))
        finally:
            report.work_seconds += time.perf_counter() - began

    async def finish_segment(last: bool) -> None:
        """Closes the segment of the frames encoded so far and sends it. A segment closed
        while a cancel lands is still sent: its frames are on the session's timeline, and a
        segment closed but never sent would leave a hole that stalls the player."""
        try:
            segment = await in_worker(encoder.finish_segment, take_pcm(encoder.pending_frames))
        except _CancelledAfterWork as cancel:
            await send_segment(cast(EncodedSegment, cancel.result), last=True)
            raise
        await send_segment(segment, last)

    async def send_segment(segment: EncodedSegment, last: bool) -> None:
        media.next_frame = segment.first_frame + segment.frames
        media.next_sequence = segment.sequence + 1
        media.position = media.next_frame * spf
        report.frames += segment.frames
        report.span = Span(turn_start, media.position)
        await emit(
            SegmentOut(
                data=segment.data,
                sequence=segment.sequence,
                first_frame=segment.first_frame,
                frames=segment.frames,
                span=Span(segment.media_start, segment.media_end),
                last_in_turn=last,
            )
        )
        mark("first_segment_ms")

    async def segment_stage() -> None:
        """Encodes each frame as it comes; closes a segment when it is full, stalled or the last.

        Whatever happens (cancel, a failing stage), frames already in the encoder are sent as
        a last segment first, so the session's video timeline never has a hole.
        """
        done = 0
        target = media.first_segment_frames
        try:
            while True:
                pending = encoder.pending_frames
                try:  # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancel
                    async with asyncio.timeout(STALL_FLUSH_S if pending else None):
                        frame = await frame_channel.get()
                    ended = frame is None
                except TimeoutError:
                    frame, ended = None, False
                if frame is not None:
                    await in_worker(encoder.add_frame, frame)
                    pending += 1
                if ended:
                    if pending:
                        await finish_segment(last=True)
                    return
                if pending >= target or (frame is None and pending):
                    last = expected_frames is not None and done + pending >= expected_frames
                    done += pending
                    target = media.segment_frames
                    await finish_segment(last)
        except BaseException:
            if encoder.pending_frames:
                with contextlib.suppress(Exception):  # the original failure is what gets reported
                    await finish_segment(last=True)
            raise

    async with asyncio.TaskGroup() as group:
        group.create_task(_stage("llm", text_stage()))
        group.create_task(_stage("tts", speech_stage()))
        group.create_task(_stage("render", render_stage()))
        group.create_task(_stage("encode", segment_stage()))
