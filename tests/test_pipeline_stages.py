"""Each stage of a turn on its own: fed from a channel, read from a channel, no service.

The parts behind the stages are real: espeak-ng speaks, the CPU lip-sync renderer draws the
built-in avatar, x264 and AAC encode, PyAV decodes what came out.
"""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
from avatar_server.core.frames import Frame
from avatar_server.media.encoder import SegmentEncoder
from avatar_server.pipeline.channels import Channel
from avatar_server.pipeline.context import SessionMedia
from avatar_server.pipeline.events import AudioOut, CaptionOut, SegmentOut, TextDelta
from avatar_server.pipeline.items import AudioChunk, RenderedFrame
from avatar_server.pipeline.stages import segment as segment_module
from avatar_server.pipeline.stages.audio_only import AudioOnlyStage
from avatar_server.pipeline.stages.render import RenderStage
from avatar_server.pipeline.stages.segment import SegmentStage
from avatar_server.pipeline.stages.sentences import SentenceStage
from avatar_server.pipeline.stages.speech import LEAD_IN_FRAMES, TAIL_FRAMES, SpeechStage
from avatar_server.pipeline.stages.text import TextStage
from avatar_server.providers.tts.espeak import EspeakSynthesizer
from avatar_server.renderers.lipsync import LipSyncRenderer
from avatar_server.settings import EspeakSettings, load_settings
from lipsync_helpers import espeak_speech, load_default_avatar
from pipeline_helpers import drained, filled, streamed, turn_context
from service_helpers import decode_fmp4

RATE, FPS = 16000, 25
SPF = RATE // FPS


# --------------------------------------------------------------------------- text
@pytest.mark.parametrize("from_llm", [True, False])
async def test_text_stage_sends_each_delta_at_once_and_passes_it_on(from_llm: bool) -> None:
    turn, log = turn_context(start=4 * SPF)
    output: Channel[str] = Channel(10)
    await TextStage(turn, streamed(["Hel", "", "lo. ", "Bye."]), output, from_llm=from_llm).run()
    assert await drained(output) == ["Hel", "lo. ", "Bye."]
    deltas = log.of(TextDelta)
    assert [d.text for d in deltas] == ["Hel", "lo. ", "Bye."]
    assert all(d.span.start == d.span.end == 4 * SPF for d in deltas)  # where speech will begin
    assert turn.report.text == "Hello. Bye."
    assert turn.report.timings.first_text_ms > 0
    assert (turn.report.timings.llm_first_token_ms > 0) == from_llm


async def test_a_stopped_text_stage_closes_the_reply_stream() -> None:
    closed = asyncio.Event()

    async def endless_reply():  # type: ignore[no-untyped-def]
        try:
            while True:
                yield "more "
        finally:
            closed.set()  # where a model's HTTP stream would be dropped

    turn, _ = turn_context()
    output: Channel[str] = Channel(2)
    task = asyncio.create_task(TextStage(turn, endless_reply(), output, from_llm=True).run())
    while output.qsize() < 2:  # full: the stage now waits in put
        await asyncio.sleep(0.001)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert closed.is_set()


# ---------------------------------------------------------------------- sentences
async def test_sentence_stage_hands_on_each_sentence_once_complete() -> None:
    text = "Well, thinking about it for a while, yes. Dr. Smith agrees! And the rest"
    deltas = await filled(text)  # one character at a time
    output: Channel[str] = Channel(10)
    await SentenceStage(deltas, output).run()
    assert await drained(output) == [
        "Well, thinking about it for a while,",  # the first may end at a comma: speech starts sooner
        "yes.", "Dr. Smith agrees!", "And the rest",
    ]


async def test_an_interrupted_sentence_stage_drops_the_unfinished_sentence() -> None:
    deltas: Channel[str] = Channel(10)
    output: Channel[str] = Channel(10)
    stage = SentenceStage(deltas, output)
    task = asyncio.create_task(stage.run())
    await deltas.put("One more thing. And then")
    assert await output.get() == "One more thing."
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await stage.interrupt()
    await deltas.close()
    await SentenceStage(deltas, output).run()  # what was unfinished is gone, not re-sent later
    assert await drained(output) == []


# ------------------------------------------------------------------------- speech
@pytest.mark.parametrize("pcm_out", [True, False])
async def test_speech_stage_puts_speech_on_the_clock_in_whole_frames(pcm_out: bool) -> None:
    start = 5 * RATE
    turn, log = turn_context(start=start)
    sentences = await filled(["Hello there.", "How are you today?"])
    output: Channel[AudioChunk] = Channel(1000)
    stage = SpeechStage(turn, sentences, output, tts=EspeakSynthesizer(EspeakSettings()),
                        voice="espeak-en-us", language="en-US", clock_rate=RATE, fps=FPS,
                        pcm_out=pcm_out)
    await stage.run()
    chunks = await drained(output)
    total = sum(len(c.pcm) for c in chunks)
    assert [c.last for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert total % SPF == 0 and total == turn.report.media_samples
    assert not chunks[0].pcm.any() and len(chunks[0].pcm) == LEAD_IN_FRAMES * SPF  # lead-in
    assert not chunks[-1].pcm.any() and len(chunks[-1].pcm) >= TAIL_FRAMES * SPF  # tail
    audio = log.of(AudioOut)
    if pcm_out:
        assert audio[0].span.start == start and audio[-1].span.end == start + total
        assert all(a.span.start == b.span.end for a, b in zip(audio[1:], audio))
        np.testing.assert_array_equal(np.concatenate([a.pcm for a in audio]),
                                      np.concatenate([c.pcm for c in chunks]))
    else:
        assert audio == []
    said = [c for c in log.of(CaptionOut) if c.sentence]
    assert [c.text for c in said] == ["Hello there.", "How are you today?"]
    assert said[0].span.start == start + LEAD_IN_FRAMES * SPF
    assert said[0].span.end == said[1].span.start and said[1].span.end <= start + total


# ------------------------------------------------------------------------- render
@pytest.fixture(scope="module")
def default_avatar(data_dir):  # type: ignore[no-untyped-def]
    return load_default_avatar(data_dir)


def speech_chunks(pcm: np.ndarray, size: int = 1500) -> list[AudioChunk]:
    """Speech as the speech stage hands it on: int16 pieces, the last one marked."""
    pieces = [pcm[i : i + size] for i in range(0, len(pcm), size)]
    return [AudioChunk(p, last=i == len(pieces) - 1) for i, p in enumerate(pieces)]


@pytest.mark.parametrize("renderer_rate", [RATE, 24000])
async def test_render_stage_pairs_every_frame_with_the_speech_of_its_time(
    default_avatar, renderer_rate: int  # type: ignore[no-untyped-def]
) -> None:
    speech = await espeak_speech("Good morning, how are you?", "espeak-en-us")
    pcm = (speech * 32767).astype(np.int16)
    renderer = LipSyncRenderer(load_settings(clock_rate=renderer_rate))
    session = await renderer.open_session(default_avatar, fps=FPS)
    turn, _ = turn_context()
    output: Channel[RenderedFrame] = Channel(1000)
    stage = RenderStage(turn, await filled(speech_chunks(pcm)), output, render=session,
                        clock_rate=RATE, renderer_rate=renderer_rate, samples_per_frame=SPF)
    try:
        await stage.run()
    finally:
        await session.aclose()
    frames = await drained(output)
    assert len(frames) == len(pcm) // SPF
    assert [f.last for f in frames] == [False] * (len(frames) - 1) + [True]
    np.testing.assert_array_equal(np.concatenate([f.pcm for f in frames]), pcm)
    assert all(f.image.data.shape == (session.height, session.width, 3) for f in frames)
    assert turn.report.timings.first_frame_ms > 0 and turn.report.work_seconds > 0


# ------------------------------------------------------------------------ segment
def video_media(start_frame: int = 0, *, segment_frames: int = 25) -> SessionMedia:
    encoder = SegmentEncoder(width=64, height=64, fps=FPS, clock_rate=RATE, start_frame=start_frame,
                             start_sequence=start_frame // 10)
    return SessionMedia(clock_rate=RATE, fps=FPS, segment_frames=segment_frames, first_segment_frames=8,
                        render=None, encoder=encoder, renderer_rate=RATE, pcm_out=True,
                        position=start_frame * SPF, next_frame=start_frame,
                        next_sequence=start_frame // 10)


def frames_to_encode(count: int, *, last: bool = True) -> list[RenderedFrame]:
    tone = (3000 * np.sin(np.arange(SPF) * 2 * np.pi * 440 / RATE)).astype(np.int16)
    return [RenderedFrame(Frame(np.full((64, 64, 3), (7 * i) % 256, np.uint8)), tone,
                          last=last and i == count - 1) for i in range(count)]


def check_timeline(segments: list[SegmentOut], media: SessionMedia, first_frame: int) -> None:
    frame = first_frame
    for segment in segments:
        assert segment.first_frame == frame and segment.span.start == frame * SPF
        frame += segment.frames
        assert segment.span.end == frame * SPF
    assert media.next_frame == frame and media.position == frame * SPF
    assert [s.sequence for s in segments] == list(range(segments[0].sequence,
                                                        segments[0].sequence + len(segments)))


async def test_segment_stage_closes_full_segments_then_the_last_on_the_session_timeline() -> None:
    media = video_media(start_frame=50)
    turn, log = turn_context(start=media.position)
    await SegmentStage(turn, await filled(frames_to_encode(60)), media).run()
    segments = log.of(SegmentOut)
    assert [s.frames for s in segments] == [8, 25, 25, 2]  # a short first segment: video starts sooner
    assert [s.last_in_turn for s in segments] == [False, False, False, True]
    check_timeline(segments, media, first_frame=50)
    assert turn.report.frames == 60 and turn.report.span.end == media.position
    decoded = decode_fmp4(media.encoder.init_segment() + b"".join(s.data for s in segments))
    assert decoded.video_frames == 60


async def test_a_stalled_renderer_gets_a_short_segment_instead_of_a_starving_player() -> None:
    media = video_media()
    turn, log = turn_context()
    frames: Channel[RenderedFrame] = Channel(100)
    task = asyncio.create_task(SegmentStage(turn, frames, media).run())
    for frame in frames_to_encode(3, last=False):
        await frames.put(frame)
    while not log.of(SegmentOut):  # nothing more comes: after STALL_FLUSH_S the 3 frames go out
        await asyncio.sleep(0.01)
    assert [s.frames for s in log.of(SegmentOut)] == [3]
    for frame in frames_to_encode(4):
        await frames.put(frame)
    await frames.close()
    await task
    segments = log.of(SegmentOut)
    assert [s.frames for s in segments] == [3, 4] and segments[-1].last_in_turn
    check_timeline(segments, media, first_frame=0)


async def test_an_interrupted_segment_stage_sends_the_frames_it_holds(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(segment_module, "STALL_FLUSH_S", 60.0)  # only the interrupt closes it
    media = video_media(start_frame=10)
    turn, log = turn_context(start=media.position)
    frames = await filled(frames_to_encode(5, last=False), close=False)
    stage = SegmentStage(turn, frames, media)
    task = asyncio.create_task(stage.run())
    while frames.qsize():  # all five taken (the last may still be in the encoder)
        await asyncio.sleep(0.001)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert log.of(SegmentOut) == []
    await stage.interrupt()
    segments = log.of(SegmentOut)
    assert [(s.frames, s.last_in_turn) for s in segments] == [(5, True)]
    check_timeline(segments, media, first_frame=10)


class HeldFinish:
    """The encoder's real finish_segment, held in its thread until the test lets it go."""

    def __init__(self, encoder: SegmentEncoder) -> None:
        self.real = encoder.finish_segment
        self.closing, self.release = threading.Event(), threading.Event()
        encoder.finish_segment = self  # type: ignore[method-assign]

    def __call__(self, pcm: np.ndarray):  # type: ignore[no-untyped-def]
        self.closing.set()
        assert self.release.wait(30)
        return self.real(pcm)


async def test_a_segment_closing_when_the_cancel_lands_is_still_sent() -> None:
    media = video_media()
    turn, log = turn_context()
    held = HeldFinish(media.encoder)
    stage = SegmentStage(turn, await filled(frames_to_encode(8, last=False), close=False), media)
    task = asyncio.create_task(stage.run())
    assert await asyncio.to_thread(held.closing.wait, 30)  # 8 frames: the first segment closes
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task  # the stage stops at once; the encoder step runs on in its thread
    interrupt = asyncio.create_task(stage.interrupt())
    await asyncio.sleep(0.05)
    assert not interrupt.done()  # it waits for the encoder: x264 is never used by two threads
    held.release.set()
    await interrupt
    segments = log.of(SegmentOut)
    assert [(s.frames, s.last_in_turn) for s in segments] == [(8, True)]
    check_timeline(segments, media, first_frame=0)


async def test_a_second_cancel_skips_the_send_but_still_waits_for_the_encoder() -> None:
    media = video_media()
    turn, log = turn_context()
    held = HeldFinish(media.encoder)
    stage = SegmentStage(turn, await filled(frames_to_encode(8, last=False), close=False), media)
    task = asyncio.create_task(stage.run())
    assert await asyncio.to_thread(held.closing.wait, 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    interrupt = asyncio.create_task(stage.interrupt())
    await asyncio.sleep(0.05)
    interrupt.cancel()  # stop now
    await asyncio.sleep(0.05)
    assert not interrupt.done()
    held.release.set()
    with pytest.raises(asyncio.CancelledError):
        await interrupt
    assert log.of(SegmentOut) == []
    assert media.next_frame == 8 and media.next_sequence == 1  # the timeline knows it was closed


# --------------------------------------------------------------------- audio-only
async def test_audio_only_stage_moves_the_clock_past_the_speech() -> None:
    media = SessionMedia(clock_rate=RATE, fps=FPS, segment_frames=25, first_segment_frames=8,
                         render=None, encoder=None, renderer_rate=RATE, pcm_out=True, position=7 * SPF)
    turn, _ = turn_context(start=media.position)
    turn.report.media_samples = 12 * SPF  # what the speech stage placed on the clock
    await AudioOnlyStage(turn, await filled([AudioChunk(np.zeros(12 * SPF, np.int16), last=True)]),
                         media).run()
    assert media.position == 19 * SPF and turn.report.span.end == media.position
    # interrupted mid-frame: the clock still moves past what was sent, to a frame boundary
    turn, _ = turn_context(start=media.position)
    turn.report.media_samples = 3 * SPF + 17
    stage = AudioOnlyStage(turn, await filled([], close=False), media)
    await stage.interrupt()
    assert media.position == 23 * SPF
