"""Back-off between provider retries, shared by the LLM and TTS providers."""

from __future__ import annotations

import asyncio
import random

BASE_DELAY_S = 0.2
MAX_DELAY_S = 5.0


def backoff_delay(attempt: int, retry_after_s: float | None = None) -> float:
    """Seconds to wait before retry number `attempt` (0-based).

    Exponential with jitter, so that many sessions hit by one outage do not
    retry in lock step; a server's Retry-After is honoured up to MAX_DELAY_S.
    """
    exponential = min(MAX_DELAY_S, BASE_DELAY_S * (2**attempt))
    delay = exponential * random.uniform(0.5, 1.0)
    if retry_after_s is not None and retry_after_s > 0:
        delay = max(delay, min(retry_after_s, MAX_DELAY_S))
    return delay


async def sleep_before_retry(attempt: int, retry_after_s: float | None = None) -> None:
    """Waits out the back-off for retry number `attempt`."""
    await asyncio.sleep(backoff_delay(attempt, retry_after_s))
