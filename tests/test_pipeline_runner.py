"""The runner: stages side by side; a failure or a cancel stops them all and interrupts each, in order.

The stages here are small ones written for the test (they pass numbers along or wait), so
that each way a turn can stop happens exactly when the test says.
"""

from __future__ import annotations

import asyncio
import logging

import pytest
from avatar_server.core.errors import AvatarError, StatusCode
from avatar_server.pipeline.channels import Channel
from avatar_server.pipeline.runner import Stage, run_stages
from pipeline_helpers import drained


class Numbers(Stage):
    """Puts `count` numbers out (then waits forever, if `then_wait`)."""

    name = "numbers"

    def __init__(self, output: Channel[int], count: int, journal: list[str], *, then_wait: bool = False):
        self.output, self.count, self.journal, self.then_wait = output, count, journal, then_wait

    async def run(self) -> None:
        for number in range(self.count):
            await self.output.put(number)
        if self.then_wait:
            await asyncio.Event().wait()
        await self.output.close()

    async def interrupt(self) -> None:
        self.journal.append(f"{self.name} interrupted")


class Doubler(Stage):
    """Doubles what comes in; fails on `fail_at` with `error`."""

    name = "doubler"

    def __init__(self, inbox: Channel[int], output: Channel[int], journal: list[str], *,
                 fail_at: int | None = None, error: Exception | None = None) -> None:
        self.inbox, self.output, self.journal = inbox, output, journal
        self.fail_at, self.error = fail_at, error

    async def run(self) -> None:
        async for number in self.inbox:
            if number == self.fail_at:
                raise self.error or RuntimeError("bad number")
            await self.output.put(2 * number)
        await self.output.close()

    async def interrupt(self) -> None:
        self.journal.append(f"{self.name} interrupted")


class Sink(Stage):
    """Keeps what comes in; its interrupt can be made to wait for `release`."""

    name = "sink"

    def __init__(self, inbox: Channel[int], journal: list[str]) -> None:
        self.inbox, self.journal, self.kept = inbox, journal, []
        self.release: asyncio.Event | None = None
        self.interrupting = asyncio.Event()

    async def run(self) -> None:
        async for number in self.inbox:
            self.kept.append(number)

    async def interrupt(self) -> None:
        self.journal.append(f"{self.name} interrupted")
        self.interrupting.set()
        if self.release is not None:
            await self.release.wait()
            self.journal.append(f"{self.name} finished its interrupt")


def pipeline(count: int, **doubler: object) -> tuple[list[Stage], list[str], Sink]:
    journal: list[str] = []
    first, second = Channel[int](4), Channel[int](4)
    sink = Sink(second, journal)
    then_wait = bool(doubler.pop("then_wait", False))
    return [Numbers(first, count, journal, then_wait=then_wait),
            Doubler(first, second, journal, **doubler), sink], journal, sink  # type: ignore[arg-type]


EVERY_STAGE_INTERRUPTED = ["numbers interrupted", "doubler interrupted", "sink interrupted"]


async def test_stages_run_side_by_side_to_the_end() -> None:
    stages, journal, sink = pipeline(100)  # far more than the channels hold: they must overlap
    await run_stages(stages)
    assert sink.kept == [2 * n for n in range(100)]
    assert journal == []  # nothing stopped early: no interrupts


async def test_a_failing_stage_stops_all_interrupts_each_in_order_and_is_named() -> None:
    stages, journal, sink = pipeline(100, fail_at=10, then_wait=True)
    with pytest.raises(AvatarError) as raised:
        await run_stages(stages)
    assert raised.value.stage == "doubler" and raised.value.code == StatusCode.INTERNAL
    assert "RuntimeError: bad number" in raised.value.message
    assert isinstance(raised.value.__cause__, RuntimeError)
    assert journal == EVERY_STAGE_INTERRUPTED
    assert sink.kept == [2 * n for n in range(10)]


async def test_an_avatar_error_keeps_its_own_stage_and_status() -> None:
    error = AvatarError("voice gone", code=StatusCode.NOT_FOUND, stage="tts")
    stages, journal, _ = pipeline(5, fail_at=2, error=error)
    with pytest.raises(AvatarError) as raised:
        await run_stages(stages)
    assert raised.value is error
    assert journal == EVERY_STAGE_INTERRUPTED


async def test_a_cancel_stops_every_stage_and_interrupts_each_in_order() -> None:
    stages, journal, sink = pipeline(3, then_wait=True)
    task = asyncio.create_task(run_stages(stages))
    while len(sink.kept) < 3:
        await asyncio.sleep(0.001)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert journal == EVERY_STAGE_INTERRUPTED


async def test_a_second_cancel_cuts_the_interrupts_short() -> None:
    stages, journal, sink = pipeline(3, then_wait=True)
    sink.release = asyncio.Event()  # the sink's interrupt would wait forever
    task = asyncio.create_task(run_stages(stages))
    while len(sink.kept) < 3:
        await asyncio.sleep(0.001)
    task.cancel()
    await sink.interrupting.wait()
    assert not task.done()  # the first cancel waits for the interrupts
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    assert journal == EVERY_STAGE_INTERRUPTED  # the sink never finished its interrupt


async def test_a_stage_cancelled_from_inside_stops_the_turn() -> None:
    class Quitter(Sink):
        async def run(self) -> None:
            await self.inbox.get()
            raise asyncio.CancelledError  # as a session's send does for a client too slow to read

    stages, journal, _ = pipeline(50, then_wait=True)
    stages[2] = Quitter(stages[2].inbox, journal)  # type: ignore[attr-defined]
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(run_stages(stages), 5)
    assert journal == EVERY_STAGE_INTERRUPTED


async def test_an_interrupt_that_fails_is_logged_and_the_others_still_run(caplog) -> None:  # type: ignore[no-untyped-def]
    class BrokenInterrupt(Doubler):
        async def interrupt(self) -> None:
            raise RuntimeError("cannot flush")

    stages, journal, _ = pipeline(5, fail_at=1, then_wait=True)
    old = stages[1]
    stages[1] = BrokenInterrupt(old.inbox, old.output, journal, fail_at=1)  # type: ignore[attr-defined]
    with caplog.at_level(logging.ERROR), pytest.raises(AvatarError):
        await run_stages(stages)
    assert journal == ["numbers interrupted", "sink interrupted"]
    assert "doubler stage failed to act on the interrupt" in caplog.text
    assert "cannot flush" in caplog.text


async def test_channels_are_bounded_and_keep_order() -> None:
    channel: Channel[int] = Channel(2)
    await channel.put(1)
    await channel.put(2)
    blocked = asyncio.create_task(channel.put(3))
    await asyncio.sleep(0.01)
    assert not blocked.done()  # back-pressure
    assert await channel.get() == 1
    await blocked
    closing = asyncio.create_task(channel.close())  # the end marker waits for room like any item
    assert await drained(channel) == [2, 3]
    await closing
    assert await channel.get() is None  # stays closed
