"""Text stage: the streamed reply -> TextDelta events for the client, text for the sentences."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator

from avatar_server.core.clock import Span
from avatar_server.pipeline.channels import Channel
from avatar_server.pipeline.context import TurnContext
from avatar_server.pipeline.events import TextDelta
from avatar_server.pipeline.runner import Stage


class TextStage(Stage):
    """Sends each piece of the reply (from the language model, or a Speak call's text) to the
    client at once and passes it on; its span is the point where the turn's speech begins."""

    name = "llm"

    def __init__(self, turn: TurnContext, reply: AsyncIterator[str], output: Channel[str], *,
                 from_llm: bool) -> None:
        self._turn = turn
        self._reply = reply
        self._output = output
        self._from_llm = from_llm

    async def run(self) -> None:
        turn = self._turn
        try:
            async for delta in self._reply:
                if not delta:
                    continue
                if self._from_llm:
                    turn.mark("llm_first_token_ms")
                turn.report.text += delta
                await turn.emit(TextDelta(delta, Span(turn.start, turn.start)))
                turn.mark("first_text_ms")
                await self._output.put(delta)
        finally:
            if isinstance(self._reply, AsyncGenerator):  # a stopped turn ends the model's stream
                await self._reply.aclose()
        await self._output.close()
