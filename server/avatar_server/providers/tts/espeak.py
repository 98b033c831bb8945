"""OFFLINE speech through espeak-ng (English and Korean), with word timings from its events."""

from __future__ import annotations

from collections.abc import AsyncIterator

import numpy as np

from avatar_server.core.errors import AvatarError, NotFound, ProviderError, StatusCode
from avatar_server.providers.language import is_english, is_korean, split_sentences
from avatar_server.providers.tts.base import SpeechAudio, Voice, WordTiming
from avatar_server.providers.tts.espeak_engine import EspeakEngine, EspeakResult
from avatar_server.settings import EspeakSettings

# Our voice name -> (espeak-ng voice, BCP-47 language).
_VOICES = {
    "espeak-en-us": ("en-us", "en-US"),
    "espeak-ko": ("ko", "ko-KR"),
}
_SILENCE_LEVEL = 200  # int16 amplitude below which a sample counts as silence


class EspeakSynthesizer:
    """Robotic but fully offline speech: espeak-ng at 22.05 kHz, one sentence at a time.

    All instances share the process's one espeak-ng engine (one worker thread),
    so synthesis never blocks the event loop and never runs concurrently.
    """

    name = "espeak"

    def __init__(self, settings: EspeakSettings) -> None:
        self._rate_wpm = settings.rate_wpm
        try:
            self._engine = EspeakEngine.shared()
        except (OSError, RuntimeError) as exc:
            raise AvatarError(
                f"espeak-ng could not start ({exc}); reinstall the espeakng-loader package",
                code=StatusCode.FAILED_PRECONDITION,
                stage="tts",
            ) from exc

    def voices(self) -> list[Voice]:
        """espeak-en-us and espeak-ko."""
        return [Voice(name, language) for name, (_, language) in _VOICES.items()]

    async def load_voices(self) -> list[Voice]:
        """The voices are built in: nothing to ask."""
        return self.voices()

    def default_voice(self, language: str) -> str:
        """espeak-ko for Korean, espeak-en-us for English (or no language)."""
        if is_korean(language):
            return "espeak-ko"
        if is_english(language):
            return "espeak-en-us"
        raise NotFound(f"espeak has no voice for language {language!r}", stage="tts")

    async def synthesize(
        self, text: str, *, voice: str, language: str
    ) -> AsyncIterator[SpeechAudio]:
        """Yields one SpeechAudio per sentence of `text`, with its word timings."""
        if voice not in _VOICES:
            raise NotFound(
                f"unknown espeak voice {voice!r}; choose one of {', '.join(_VOICES)}", stage="tts"
            )
        espeak_voice = _VOICES[voice][0]
        for sentence in split_sentences(text.replace("\0", " ")):
            try:
                result = await self._engine.synthesize(sentence, espeak_voice, self._rate_wpm)
            except RuntimeError as exc:
                raise ProviderError(
                    f"espeak-ng failed: {exc}",
                    code=StatusCode.INTERNAL,
                    stage="tts",
                    retriable=False,
                ) from exc
            if result.pcm.size:
                yield SpeechAudio(result.pcm, result.sample_rate, word_timings(sentence, result))

    async def aclose(self) -> None:
        """The shared engine lives as long as the process; nothing to release."""


def word_timings(text: str, result: EspeakResult) -> tuple[WordTiming, ...]:
    """Word timings from espeak's WORD events: a word lasts until the next word or clause
    end, and never past the last voiced sample (the end pause is silence). espeak-ng
    reports no event for some Korean words; the word before then spans them."""
    voiced = np.flatnonzero(np.abs(result.pcm.astype(np.int32)) >= _SILENCE_LEVEL)
    voiced_end_s = (voiced[-1] + 1) / result.sample_rate if voiced.size else 0.0
    boundaries_ms = sorted({w.start_ms for w in result.words} | set(result.clause_ends_ms))
    timings = []
    for word in result.words:
        start_s = word.start_ms / 1000
        later = [ms for ms in boundaries_ms if ms > word.start_ms]
        end_s = min(later[0] / 1000 if later else voiced_end_s, voiced_end_s)
        spelled = text[word.text_offset : word.text_offset + word.length]
        if spelled.strip() and end_s > start_s:
            timings.append(WordTiming(spelled, start_s, end_s))
    return tuple(timings)
