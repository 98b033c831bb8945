"""Positions on a session's media clock, counted in audio samples."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Span:
    """A stretch of the session's media clock, in samples: [start, end)."""

    start: int
    end: int
