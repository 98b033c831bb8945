"""An OFFLINE stand-in language model that echoes the user; no model is involved."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Sequence

from avatar_server.providers.language import contains_hangul, is_korean
from avatar_server.providers.llm.base import ChatMessage
from avatar_server.settings import EchoSettings

_TOKEN = re.compile(r"\S+\s*")


class EchoLanguageModel:
    """OFFLINE echo responder (not a language model): repeats the user's last message.

    It lets the whole service run with no model and no network. The reply is
    in Korean when the message has Hangul (or, for an empty message, when the
    session language is Korean), else in English; it is deterministic and
    streamed word by word, `settings.token_delay_s` apart, like a model.
    """

    name = "echo"

    def __init__(self, settings: EchoSettings) -> None:
        self._token_delay_s = settings.token_delay_s

    def stream_reply(self, messages: Sequence[ChatMessage], *, language: str) -> AsyncIterator[str]:
        """Yields the echo reply, one word (with its trailing space) at a time."""
        return self._stream(compose_echo_reply(messages, language))

    async def _stream(self, reply: str) -> AsyncIterator[str]:
        for index, token in enumerate(_TOKEN.findall(reply)):
            if index and self._token_delay_s > 0:
                await asyncio.sleep(self._token_delay_s)
            yield token

    async def aclose(self) -> None:
        """Nothing to release."""


def compose_echo_reply(messages: Sequence[ChatMessage], language: str) -> str:
    """The whole echo reply for a conversation (what `stream_reply` streams)."""
    last_user = next((m.content for m in reversed(messages) if m.role == "user"), "")
    said = " ".join(last_user.split())
    korean = contains_hangul(said) if said else is_korean(language)
    if korean:
        return f"말씀하신 내용은 이렇습니다: {said}" if said else "안녕하세요. 무엇을 도와드릴까요?"
    return f"You said: {said}" if said else "Hello! What would you like to talk about?"
