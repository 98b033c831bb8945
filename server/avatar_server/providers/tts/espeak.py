"""OFFLINE speech through espeak-ng (English and Korean), with word timings from its events."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import AsyncIterator

import numpy as np

from avatar_server.core.errors import AvatarError, NotFound, ProviderError, StatusCode
from avatar_server.core.sentences import split_to_fit, spoken_words
from avatar_server.providers.language import is_english, is_korean
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
    """Robotic but fully offline speech: espeak-ng at 22.05 kHz, the text it is given in one call.

    All instances share the process's one espeak-ng engine (one worker thread),
    so synthesis never blocks the event loop and never runs concurrently. A text
    longer than `max_piece_chars` is spoken in pieces (sentences, else cut at a
    comma or space) so that no call holds the engine long.
    """

    name = "espeak"

    def __init__(self, settings: EspeakSettings) -> None:
        self._rate_wpm = settings.rate_wpm
        self._max_piece_chars = settings.max_piece_chars
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
        """Yields one SpeechAudio per piece of `text` (one unless it is longer than
        `max_piece_chars`); word times count from the start of the first piece."""
        if voice not in _VOICES:
            raise NotFound(
                f"unknown espeak voice {voice!r}; choose one of {', '.join(_VOICES)}", stage="tts"
            )
        espeak_voice = _VOICES[voice][0]
        offset_s = 0.0
        for piece in split_to_fit(text.replace("\0", " "), self._max_piece_chars):
            try:
                result = await self._engine.synthesize(piece, espeak_voice, self._rate_wpm)
            except RuntimeError as exc:
                raise ProviderError(
                    f"espeak-ng failed: {exc}",
                    code=StatusCode.INTERNAL,
                    stage="tts",
                    retriable=False,
                ) from exc
            if result.pcm.size:
                words = word_timings(piece, result, offset_s)
                yield SpeechAudio(result.pcm, result.sample_rate, words)
                offset_s += result.pcm.size / result.sample_rate

    async def aclose(self) -> None:
        """The shared engine lives as long as the process; nothing to release."""


def word_timings(text: str, result: EspeakResult, offset_s: float = 0.0) -> tuple[WordTiming, ...]:
    """The words of `text` with their times in `result`, plus `offset_s` (where this piece starts).

    espeak-ng reports WORD events by character position: a number or an abbreviation
    ("3.5", "p.m.") may give several events, a Korean word none. Each word of the text takes
    the time of its first event; a word without one is spoken within the word before it, so
    it joins that caption. A word lasts until the next word or clause end, and never past
    the last voiced sample (the end pause is silence).
    """
    voiced = np.flatnonzero(np.abs(result.pcm.astype(np.int32)) >= _SILENCE_LEVEL)
    voiced_end_ms = (voiced[-1] + 1) * 1000 / result.sample_rate if voiced.size else 0.0
    words = spoken_words(text)
    word_starts = [start for start, _, _ in words]
    first_event_ms: dict[int, int] = {}
    for event in result.words:
        index = bisect_right(word_starts, event.text_offset) - 1
        if index >= 0 and event.text_offset < words[index][1]:
            first_event_ms.setdefault(index, event.start_ms)
    captions: list[tuple[str, int]] = []  # caption text, start ms; starts strictly increase
    leading = ""  # words before the first event: they open the first caption
    for index, (_, _, word) in enumerate(words):
        start_ms = first_event_ms.get(index)
        later = not captions or (start_ms is not None and start_ms > captions[-1][1])
        if start_ms is not None and start_ms < voiced_end_ms and later:
            captions.append((f"{leading} {word}".lstrip(), start_ms))
            leading = ""
        elif captions:
            captions[-1] = (f"{captions[-1][0]} {word}", captions[-1][1])
        else:
            leading = f"{leading} {word}".lstrip()
    boundaries_ms = sorted({start for _, start in captions} | set(result.clause_ends_ms))
    timings = []
    for word, start_ms in captions:
        later = [ms for ms in boundaries_ms if ms > start_ms]
        end_ms = min(later[0] if later else voiced_end_ms, voiced_end_ms)
        timings.append(WordTiming(word, offset_s + start_ms / 1000, offset_s + end_ms / 1000))
    return tuple(timings)
