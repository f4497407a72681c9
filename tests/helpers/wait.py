"""eventually(): poll a condition until it holds or a deadline passes; tests wait on conditions, never on sleeps."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")
POLL_INTERVAL_S = 0.02


async def eventually(
    check: Callable[[], Awaitable[T]] | Callable[[], T], *, timeout: float = 15.0, message: str = "condition"
) -> T:
    """Return check()'s first truthy value; fail with the last value seen when time runs out."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        value = check()
        if asyncio.iscoroutine(value) or isinstance(value, Awaitable):
            value = await value  # type: ignore[misc]
        if value:
            return value  # type: ignore[return-value]
        last = value
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} did not hold within {timeout}s (last value: {last!r})")
        await asyncio.sleep(POLL_INTERVAL_S)
