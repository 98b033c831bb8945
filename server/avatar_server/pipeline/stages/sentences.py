"""Sentence stage: streamed reply text -> whole sentences, each spoken as soon as it is complete."""

from __future__ import annotations

import logging

from avatar_server.core.sentences import FIRST_MIN_CHARS, MAX_CHARS, SentenceSplitter
from avatar_server.pipeline.channels import Channel
from avatar_server.pipeline.runner import Stage

log = logging.getLogger(__name__)


class SentenceStage(Stage):
    """Splits the reply by the one sentence rule (`core.sentences`); the first sentence may end
    at a comma once `first_min_chars` long, so speech starts while the model still writes."""

    name = "sentences"

    def __init__(self, text: Channel[str], output: Channel[str], *,
                 first_min_chars: int = FIRST_MIN_CHARS, max_chars: int = MAX_CHARS) -> None:
        self._text = text
        self._output = output
        self._splitter = SentenceSplitter(first_min_chars=first_min_chars, max_chars=max_chars)

    async def run(self) -> None:
        async for delta in self._text:
            for sentence in self._splitter.push(delta):
                await self._output.put(sentence)
        for sentence in self._splitter.flush():
            await self._output.put(sentence)
        await self._output.close()

    async def interrupt(self) -> None:
        """The unfinished sentence will not be spoken: drop it."""
        if dropped := self._splitter.clear():
            log.debug("interrupted: %d characters not spoken", len(dropped))
