"""The set of open browser connections, for notices sent to all of them (e.g. video_ready)."""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from avatar_web.protocol import encode_json

log = logging.getLogger(__name__)


class Member(Protocol):
    """An open connection that can take a frame without waiting and be closed."""

    def offer(self, frame: str | bytes) -> bool:
        """Queues a frame if there is room; False if it was dropped."""
        ...

    async def close(self, code: int, message: str) -> None:
        """Closes the connection."""
        ...


class Hub:
    """Tracks open connections; a broadcast never waits on a slow browser (it drops instead)."""

    def __init__(self) -> None:
        self._members: set[Member] = set()

    def join(self, member: Member) -> None:
        self._members.add(member)

    def leave(self, member: Member) -> None:
        self._members.discard(member)

    def __len__(self) -> int:
        return len(self._members)

    def broadcast(self, message: dict) -> int:
        """Sends a JSON message with a "type" to every connection; returns how many took it."""
        if not isinstance(message.get("type"), str):
            raise ValueError("a broadcast message needs a string 'type'")
        frame = encode_json(message)
        return sum(member.offer(frame) for member in list(self._members))

    async def close_all(self, code: int, message: str) -> None:
        """Closes every connection at once (on shutdown, so pages reconnect elsewhere)."""
        members = list(self._members)
        results = await asyncio.gather(
            *(member.close(code, message) for member in members), return_exceptions=True
        )
        for result in results:
            if isinstance(result, Exception):
                log.error("closing a connection failed", exc_info=result)
