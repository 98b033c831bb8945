"""What a turn's stages share: the session's media timeline, and the turn's outlet and report."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from avatar_server.core.clock import Span
from avatar_server.media.encoder import EncodedSegment, SegmentEncoder
from avatar_server.pipeline.events import TurnEvent, TurnReport
from avatar_server.renderers.base import RenderSession

Emit = Callable[[TurnEvent], Awaitable[None]]


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

    def record_segment(self, segment: EncodedSegment) -> None:
        """A segment was closed: the session's video (and so its clock) now ends where it ends."""
        self.next_frame = segment.first_frame + segment.frames
        self.next_sequence = segment.sequence + 1
        self.position = self.next_frame * self.samples_per_frame

    def record_audio(self, end: int) -> None:
        """Without video: the clock moves past speech that ends at `end`, to a frame boundary."""
        spf = self.samples_per_frame
        self.position = max(self.position, -(-end // spf) * spf)


@dataclass
class TurnContext:
    """One turn as every stage sees it: where it starts on the clock, where its events go, and
    the report its stages fill in (`started` is the perf_counter time the turn was received)."""

    start: int
    emit: Emit
    report: TurnReport
    started: float

    def mark(self, name: str) -> None:
        """Records the first time something happened (a `TurnTimings` field), once."""
        timings = self.report.timings
        if not getattr(timings, name):
            setattr(timings, name, (time.perf_counter() - self.started) * 1000.0)

    def reach(self, end: int) -> None:
        """The turn's media now reaches clock sample `end`."""
        self.report.span = Span(self.start, end)
