"""Bounded hand-over between a turn's stages: a queue with an end marker, read as an iterator."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Channel(Generic[T]):
    """A bounded queue that its producer closes; the consumer reads until it is closed.

    The bound is the back-pressure between stages: a producer that runs ahead waits in `put`.
    """

    _END = object()

    def __init__(self, maxsize: int) -> None:
        self._queue: asyncio.Queue[object] = asyncio.Queue(maxsize)

    async def put(self, item: T) -> None:
        await self._queue.put(item)

    async def close(self) -> None:
        await self._queue.put(self._END)

    async def get(self) -> T | None:
        """The next item, or None once the channel is closed (safe to cancel: nothing is lost)."""
        item = await self._queue.get()
        if item is self._END:
            self._queue.put_nowait(self._END)  # stays closed for later readers
            return None
        return item  # type: ignore[return-value]

    def qsize(self) -> int:
        return self._queue.qsize()

    async def __aiter__(self) -> AsyncIterator[T]:
        while (item := await self.get()) is not None:
            yield item
