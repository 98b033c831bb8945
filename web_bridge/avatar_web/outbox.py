"""A byte-bounded queue of frames waiting to be sent to one browser."""

from __future__ import annotations

import asyncio
from collections import deque


class SlowConsumer(Exception):
    """The browser did not take its frames for too long."""


class Outbox:
    """FIFO of WebSocket frames bounded by their total size.

    The relay waits (with a deadline) when it is full, which slows the session's own gRPC stream
    through flow control; small side messages are offered and dropped when there is no room.
    One frame larger than the whole limit is still let in when the queue is empty.
    """

    def __init__(self, limit_bytes: int) -> None:
        self._limit = limit_bytes
        self._frames: deque[str | bytes] = deque()
        self._bytes = 0
        self._readable = asyncio.Event()
        self._room = asyncio.Event()
        self._closed = False

    @property
    def queued_bytes(self) -> int:
        return self._bytes

    def _fits(self, size: int) -> bool:
        return not self._frames or self._bytes + size <= self._limit

    def offer(self, frame: str | bytes) -> bool:
        """Queues the frame if it fits now; never waits."""
        if self._closed or not self._fits(len(frame)):
            return False
        self._push(frame)
        return True

    async def put(self, frame: str | bytes, timeout: float) -> None:
        """Queues the frame, waiting up to `timeout` seconds for room (else SlowConsumer)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not (self._closed or self._fits(len(frame))):
            self._room.clear()
            try:
                await asyncio.wait_for(self._room.wait(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                raise SlowConsumer(
                    f"{self._bytes} queued bytes waited more than {timeout:g} s for the browser"
                ) from None
        if not self._closed:
            self._push(frame)

    def _push(self, frame: str | bytes) -> None:
        self._frames.append(frame)
        self._bytes += len(frame)
        self._readable.set()

    async def get(self) -> str | bytes | None:
        """The next frame, or None once closed and drained."""
        while not self._frames:
            if self._closed:
                return None
            self._readable.clear()
            await self._readable.wait()
        frame = self._frames.popleft()
        self._bytes -= len(frame)
        self._room.set()
        return frame

    def close(self) -> None:
        """Stops taking frames; get() returns what is left, then None."""
        self._closed = True
        self._readable.set()
        self._room.set()
