"""Typed events a turn produces; the service maps them to protobuf in one place."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from avatar_server.core.clock import Span


@dataclass(frozen=True)
class TextDelta:
    """New reply text; `span` is the point where the turn's speech begins."""

    text: str
    span: Span


@dataclass(frozen=True)
class AudioOut:
    """Speech PCM (int16 mono at the clock rate) placed on the clock."""

    pcm: np.ndarray
    span: Span


@dataclass(frozen=True)
class CaptionOut:
    """A sentence or word and when it is spoken."""

    text: str
    span: Span
    sentence: bool


@dataclass(frozen=True)
class SegmentOut:
    """An encoded fMP4 media segment."""

    data: bytes
    sequence: int
    first_frame: int
    frames: int
    span: Span
    last_in_turn: bool = False


@dataclass
class TurnTimings:
    """Milliseconds from the turn's start to each first; 0 when it did not happen."""

    llm_first_token_ms: float = 0.0
    first_text_ms: float = 0.0
    tts_first_audio_ms: float = 0.0
    first_audio_ms: float = 0.0
    first_frame_ms: float = 0.0
    first_segment_ms: float = 0.0
    total_ms: float = 0.0

    @property
    def first_segment_after_first_token_ms(self) -> float:
        if not (self.first_segment_ms and self.llm_first_token_ms):
            return 0.0
        return self.first_segment_ms - self.llm_first_token_ms


@dataclass
class TurnReport:
    """What a finished (or stopped) turn produced."""

    text: str = ""
    timings: TurnTimings = field(default_factory=TurnTimings)
    frames: int = 0
    media_samples: int = 0
    work_seconds: float = 0.0  # wall time spent rendering and encoding
    span: Span = field(default_factory=lambda: Span(0, 0))


TurnEvent = TextDelta | AudioOut | CaptionOut | SegmentOut
