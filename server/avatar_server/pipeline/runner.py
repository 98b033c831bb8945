"""Runs a turn's stages side by side and owns how they stop: done, failed or interrupted.

A stage is a small object with a typed input channel, a typed output channel and its own
state (see `Stage`). The runner starts one task per stage and waits. When a stage fails, or
the task running the turn is cancelled (an interrupt, a new message, a deadline, a closing
session), every stage's task is cancelled, then every stage, in data-flow order, is told so
by `Stage.interrupt` and acts on what it holds: the sentence stage drops its unfinished
sentence, the segment stage closes and sends the segment it was encoding (no hole in the
video), the audio-only stage moves the clock past the speech already sent.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar

from avatar_server.core.errors import AvatarError, StatusCode

log = logging.getLogger(__name__)


class Stage(ABC):
    """One unit of a turn, made with its input and output channels. `run` reads the input
    until it closes, writes the output and closes it; `interrupt` is called once `run` was
    stopped early."""

    name: ClassVar[str]  # names the stage in errors, metrics and logs

    @abstractmethod
    async def run(self) -> None:
        """Does the stage's work, to the end of its input."""

    async def interrupt(self) -> None:
        """The turn stopped early and `run` is no longer running: drop, flush or close what
        this stage holds. Nothing by default."""


async def run_stages(stages: Sequence[Stage]) -> None:
    """Runs `stages` (in data-flow order) until every one has finished.

    A stage's failure is raised as an AvatarError naming the stage, after all stages were
    stopped and interrupted; a cancel of the caller stops and interrupts them the same way,
    then is raised. A second cancel while they stop cuts the stop short: a segment being sent
    is dropped, though encoder work in its thread still finishes first.
    """
    tasks = {asyncio.create_task(stage.run(), name=f"{stage.name} stage"): stage
             for stage in stages}
    try:
        failed = await _first_failed(tasks)
    except asyncio.CancelledError:
        await _stop(stages, tasks, None)
        raise
    if failed is not None:
        await _stop(stages, tasks, failed)
        if failed.cancelled():  # a stage was cancelled from inside (a client too slow to read)
            raise asyncio.CancelledError(f"{tasks[failed].name} stage was cancelled")
        raise _named(tasks[failed].name, failed.exception())


async def _first_failed(tasks: dict[asyncio.Task[None], Stage]) -> asyncio.Task[None] | None:
    """Waits until every task is done (None) or one has failed or was cancelled (that task)."""
    pending = set(tasks)
    while pending:
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task.cancelled() or task.exception() is not None:
                return task
    return None


async def _stop(stages: Sequence[Stage], tasks: dict[asyncio.Task[None], Stage],
                failed: asyncio.Task[None] | None) -> None:
    """Stops and interrupts every stage; waits for that through cancels (see `run_stages`)."""
    stopping = asyncio.ensure_future(_stop_and_interrupt(stages, tasks, failed))
    cancelled = False
    while not stopping.done():
        try:
            await asyncio.wait({stopping})
        except asyncio.CancelledError:
            cancelled = True
            stopping.cancel()
    if cancelled:
        raise asyncio.CancelledError
    stopping.result()  # a fault in stopping itself is not lost


async def _stop_and_interrupt(stages: Sequence[Stage], tasks: dict[asyncio.Task[None], Stage],
                              failed: asyncio.Task[None] | None) -> None:
    for task in tasks:
        task.cancel()
    try:
        await _all_ended(tasks)
    finally:
        for task, stage in tasks.items():
            if task is failed or not task.done() or task.cancelled() or task.exception() is None:
                continue
            log.error("%s stage also failed while the turn stopped", stage.name,
                      exc_info=task.exception())
    for stage in stages:
        try:
            await stage.interrupt()
        except Exception:
            log.exception("%s stage failed to act on the interrupt", stage.name)


async def _all_ended(tasks: dict[asyncio.Task[None], Stage]) -> None:
    """Waits until every cancelled stage task has ended (within a turn of the loop), also
    through further cancels, raised afterwards: no stage outlives its turn."""
    cancelled = False
    while not all(task.done() for task in tasks):
        try:
            await asyncio.wait(tasks)
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError


def _named(name: str, error: BaseException | None) -> BaseException:
    """The error a failed stage raised, as an AvatarError that names the stage."""
    if isinstance(error, AvatarError) or not isinstance(error, Exception):
        return error or AvatarError(f"{name} stage failed", stage=name)
    named = AvatarError(f"{name} stage failed: {type(error).__name__}: {error}",
                        code=StatusCode.INTERNAL, stage=name)
    named.__cause__ = error
    return named
