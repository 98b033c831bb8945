"""One turn: the stages that make it, joined by bounded channels, run by `runner.run_stages`.

    reply --text--> deltas --sentences--> sentences --speech--> PCM on the clock
          --render--> frames + their PCM --segment--> fMP4 segments      (video on)
          --audio-only--> the clock moves past the speech                 (video off)

Every stage sends its events as soon as it has them, so the first sentence is on screen while
the model is still writing the next. Cancelling the task that runs `run_turn` stops every stage
(one cancel path); each is then interrupted, so the segment being encoded is still sent and
the session's video timeline never has a hole. See docs/pipeline.md.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from avatar_server.core.clock import Span
from avatar_server.pipeline.channels import Channel
from avatar_server.pipeline.context import Emit, SessionMedia, TurnContext
from avatar_server.pipeline.events import TurnReport
from avatar_server.pipeline.items import AudioChunk, RenderedFrame
from avatar_server.pipeline.runner import Stage, run_stages
from avatar_server.pipeline.stages.audio_only import AudioOnlyStage
from avatar_server.pipeline.stages.render import RenderStage
from avatar_server.pipeline.stages.segment import SegmentStage
from avatar_server.pipeline.stages.sentences import SentenceStage
from avatar_server.pipeline.stages.speech import SpeechStage
from avatar_server.pipeline.stages.text import TextStage
from avatar_server.providers.tts.base import SpeechSynthesizer

__all__ = ["SessionMedia", "run_turn"]  # what a session needs to run its turns

TEXT_CHANNEL = 64  # reply deltas
SENTENCE_CHANNEL = 16
AUDIO_CHANNEL = 32  # speech chunks


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
    turn = TurnContext(start=media.position, emit=emit, report=report, started=started)
    report.span = Span(turn.start, turn.start)
    text: Channel[str] = Channel(TEXT_CHANNEL)
    sentences: Channel[str] = Channel(SENTENCE_CHANNEL)
    audio: Channel[AudioChunk] = Channel(AUDIO_CHANNEL)
    stages: list[Stage] = [
        TextStage(turn, reply, text, from_llm=from_llm),
        SentenceStage(text, sentences),
        SpeechStage(turn, sentences, audio, tts=tts, voice=voice, language=language,
                    clock_rate=media.clock_rate, fps=media.fps, pcm_out=media.pcm_out),
    ]
    await run_stages(stages + _media_stages(turn, audio, media))


def _media_stages(turn: TurnContext, audio: Channel[AudioChunk],
                  media: SessionMedia) -> list[Stage]:
    """What becomes of the speech: rendered and encoded into video, or (video off) only timed."""
    if media.render is None or media.encoder is None:
        return [AudioOnlyStage(turn, audio, media)]
    frames: Channel[RenderedFrame] = Channel(max(8, 2 * media.segment_frames))
    return [
        RenderStage(turn, audio, frames, render=media.render, clock_rate=media.clock_rate,
                    renderer_rate=media.renderer_rate, samples_per_frame=media.samples_per_frame),
        SegmentStage(turn, frames, media),
    ]
