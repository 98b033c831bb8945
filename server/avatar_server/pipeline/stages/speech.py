"""Speech stage: sentences -> speech PCM placed on the media clock, with audio and captions."""

from __future__ import annotations

import numpy as np

from avatar_server.core.clock import Span
from avatar_server.media.resample import StreamResampler
from avatar_server.pipeline.channels import Channel
from avatar_server.pipeline.context import TurnContext
from avatar_server.pipeline.events import AudioOut, CaptionOut
from avatar_server.pipeline.items import AudioChunk
from avatar_server.pipeline.runner import Stage
from avatar_server.providers.tts.base import SpeechAudio, SpeechSynthesizer

LEAD_IN_FRAMES = 2  # silence before speech: a soft onset, and the AAC encoder's priming room
TAIL_FRAMES = 4  # silence after speech: the mouth closes, AAC's held-back audio is released


class SpeechStage(Stage):
    """Synthesizes each sentence as it comes and places its audio on the clock, right after
    the audio before it. Word captions are placed from the start of their sentence's audio
    (a provider's word times count from the start of the text it was given). The turn's
    speech is framed by a short lead-in and a tail of silence, padded to whole frames.

    `report.media_samples` always says how much speech is on the clock so far.
    """

    name = "tts"

    def __init__(self, turn: TurnContext, sentences: Channel[str], output: Channel[AudioChunk], *,
                 tts: SpeechSynthesizer, voice: str, language: str, clock_rate: int, fps: int,
                 pcm_out: bool) -> None:
        self._turn = turn
        self._sentences = sentences
        self._output = output
        self._tts, self._voice, self._language = tts, voice, language
        self._clock_rate = clock_rate
        self._samples_per_frame = clock_rate // fps
        self._pcm_out = pcm_out
        self._position = turn.start  # clock sample where the next audio goes
        lead_in = LEAD_IN_FRAMES * self._samples_per_frame
        self._lead_in: np.ndarray | None = np.zeros(lead_in, np.int16)  # sent with the first audio

    async def run(self) -> None:
        async for sentence in self._sentences:
            await self._speak(sentence)
        lead_in = len(self._lead_in) if self._lead_in is not None else 0
        length = self._position - self._turn.start + lead_in
        tail = TAIL_FRAMES * self._samples_per_frame + (-length) % self._samples_per_frame
        await self._send(np.zeros(tail, np.int16), speech=False, last=True)
        await self._output.close()

    async def _speak(self, sentence: str) -> None:
        start = self._position + (len(self._lead_in) if self._lead_in is not None else 0)
        resampler: StreamResampler | None = None
        speech = self._tts.synthesize(sentence, voice=self._voice, language=self._language)
        async for piece in speech:
            self._turn.mark("tts_first_audio_ms")
            if resampler is None:
                resampler = StreamResampler(piece.sample_rate, self._clock_rate)
            if len(pcm := resampler.push(piece.pcm)):
                await self._send(pcm, speech=True)
            await self._caption_words(piece, start)
        if resampler is not None and len(rest := resampler.flush()):
            await self._send(rest, speech=True)
        await self._turn.emit(CaptionOut(sentence, Span(start, self._position), sentence=True))

    async def _caption_words(self, piece: SpeechAudio, sentence_start: int) -> None:
        for word in piece.words:
            start = sentence_start + round(word.start_s * self._clock_rate)
            end = sentence_start + round(word.end_s * self._clock_rate)
            caption = CaptionOut(word.word, Span(start, max(start, end)), sentence=False)
            await self._turn.emit(caption)

    async def _send(self, pcm: np.ndarray, *, speech: bool, last: bool = False) -> None:
        """Places `pcm` on the clock (after the lead-in, the first time) and passes it on."""
        if self._lead_in is not None:
            lead_in, self._lead_in = self._lead_in, None
            await self._send(lead_in, speech=False)
        span = Span(self._position, self._position + len(pcm))
        if self._pcm_out:
            await self._turn.emit(AudioOut(pcm, span))
            if speech:
                self._turn.mark("first_audio_ms")
        self._position = span.end
        self._turn.report.media_samples = self._position - self._turn.start
        await self._output.put(AudioChunk(pcm, last=last))
