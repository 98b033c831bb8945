"""The speech interface: a sentence in, PCM audio (and word timings if known) out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class Voice:
    """A voice a provider offers."""

    name: str
    language: str  # BCP-47, e.g. "en-US", "ko-KR"


@dataclass(frozen=True)
class WordTiming:
    """A word of the text and where it is spoken: seconds from the start of the audio of the
    whole text given to `synthesize` (across every piece it yields), never from a piece's."""

    word: str
    start_s: float
    end_s: float


@dataclass(frozen=True)
class SpeechAudio:
    """A piece of synthesized speech: mono int16 PCM at `sample_rate`."""

    pcm: np.ndarray  # shape (n,), dtype int16
    sample_rate: int
    words: tuple[WordTiming, ...] = field(default=())


class SpeechSynthesizer(Protocol):
    """Turns text into speech, streaming where the provider can.

    The pipeline hands it one sentence at a time (split by `core.sentences`), and it speaks
    exactly that text: it splits again only where a limit of its own forces it, and then
    its word times still count from the start of the whole text's audio.

    Implementations raise `avatar_server.core.errors.ProviderError(stage="tts")` on
    failure and `avatar_server.core.errors.NotFound` for an unknown voice. Audio
    may come at any sample rate; the pipeline resamples it to the media clock.
    """

    name: str

    def voices(self) -> list[Voice]:
        """The voices on offer."""
        ...

    async def load_voices(self) -> list[Voice]:
        """Asks the provider for its full voice list, where it must be asked (once, at
        start-up); `voices()` returns that list afterwards. Returns `voices()`."""
        ...

    def default_voice(self, language: str) -> str:
        """The voice used when a session names none."""
        ...

    def synthesize(
        self, text: str, *, voice: str, language: str
    ) -> AsyncIterator[SpeechAudio]:
        """Yields the speech for `text` in order, as it is synthesized."""
        ...

    async def aclose(self) -> None:
        """Releases connections."""
        ...
