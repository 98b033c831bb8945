"""Driving pipeline stages on their own: a turn context that keeps its events, channel helpers."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterable
from typing import TypeVar

from avatar_server.pipeline.channels import Channel
from avatar_server.pipeline.context import TurnContext
from avatar_server.pipeline.events import TurnEvent, TurnReport

T = TypeVar("T")


class EventLog:
    """Where a stage's events go in these tests: kept in order, by kind."""

    def __init__(self) -> None:
        self.events: list[TurnEvent] = []

    async def __call__(self, event: TurnEvent) -> None:
        self.events.append(event)

    def of(self, kind: type[T]) -> list[T]:
        return [e for e in self.events if isinstance(e, kind)]


def turn_context(start: int = 0) -> tuple[TurnContext, EventLog]:
    log = EventLog()
    return TurnContext(start=start, emit=log, report=TurnReport(), started=time.perf_counter()), log


async def filled(items: Iterable[T], *, size: int = 1000, close: bool = True) -> Channel[T]:
    """A channel holding `items` (and closed, unless told otherwise)."""
    channel: Channel[T] = Channel(size)
    for item in items:
        await channel.put(item)
    if close:
        await channel.close()
    return channel


async def drained(channel: Channel[T]) -> list[T]:
    return [item async for item in channel]


async def streamed(pieces: Iterable[str]) -> AsyncIterator[str]:
    for piece in pieces:
        yield piece
