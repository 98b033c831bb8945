"""The language-model interface: a conversation in, reply text streamed out."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol


@dataclass(frozen=True)
class ChatMessage:
    """One message of a conversation, as OpenAI-style chat APIs take it."""

    role: Literal["system", "user", "assistant"]
    content: str


class LanguageModel(Protocol):
    """Streams a reply to a conversation.

    Implementations raise `avatar_server.core.errors.ProviderError(stage="llm")` on
    failure (after their own retries), never hang: a provider that stops
    answering raises DEADLINE_EXCEEDED after its configured timeout. Text
    already yielded stays said.
    """

    name: str

    def stream_reply(
        self, messages: Sequence[ChatMessage], *, language: str
    ) -> AsyncIterator[str]:
        """Yields the reply as text deltas, in order."""
        ...

    async def aclose(self) -> None:
        """Releases connections."""
        ...
