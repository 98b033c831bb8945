"""Audio-only stage: with video off, takes the turn's speech and moves the clock past it."""

from __future__ import annotations

from avatar_server.pipeline.channels import Channel
from avatar_server.pipeline.context import SessionMedia, TurnContext
from avatar_server.pipeline.items import AudioChunk
from avatar_server.pipeline.runner import Stage


class AudioOnlyStage(Stage):
    """The end of a turn without video: the client has the speech as Audio events already, so
    this stage only keeps the speech stage flowing and, at the end or on an interrupt, moves
    the session's clock past the speech sent (to a frame boundary)."""

    name = "audio"

    def __init__(self, turn: TurnContext, audio: Channel[AudioChunk], media: SessionMedia) -> None:
        self._turn = turn
        self._audio = audio
        self._media = media

    async def run(self) -> None:
        async for _ in self._audio:
            pass
        self._move_clock()

    async def interrupt(self) -> None:
        """The speech already sent stays on the clock: the next turn starts after it."""
        self._move_clock()

    def _move_clock(self) -> None:
        self._media.record_audio(self._turn.start + self._turn.report.media_samples)
        self._turn.reach(self._media.position)
