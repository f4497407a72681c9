"""Promoter: moves scheduled and retrying jobs into the ready queue when their run_at comes.

It sleeps until the earliest run_at (by Postgres' clock), or until told that a new retry or
scheduled job exists, whichever is first; it never sleeps longer than PROMOTER_IDLE_MAX.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from coordinator.config import PROMOTER_BATCH_MAX, PROMOTER_IDLE_MAX
from coordinator.db.store import Store
from coordinator.errors import DatabaseUnavailableError
from coordinator.sessions import DispatchSignal

logger = logging.getLogger(__name__)

UNAVAILABLE_PAUSE_S = 1.0


@dataclass(frozen=True, slots=True)
class PromoterResult:
    """What one pass did, and how long until the next job is due."""

    promoted: int
    next_due_in_s: float | None


class Promoter:
    """See the module docstring."""

    name = "promoter"

    def __init__(self, *, store: Store, signal: DispatchSignal, wake: asyncio.Event,
                 batch_max: int = PROMOTER_BATCH_MAX) -> None:
        self._store = store
        self._signal = signal
        # Set by whoever schedules a retry or a future job; cleared here.
        self._wake = wake
        self._batch_max = batch_max

    async def run(self) -> None:
        while True:
            self._wake.clear()
            try:
                result = await self.run_once()
                sleep_s = PROMOTER_IDLE_MAX.total_seconds()
                if result.next_due_in_s is not None:
                    sleep_s = min(sleep_s, max(result.next_due_in_s, 0.0))
            except DatabaseUnavailableError as exc:
                logger.warning("promoter paused: database unavailable", extra={"error": str(exc)})
                sleep_s = UNAVAILABLE_PAUSE_S
            if sleep_s > 0:
                try:
                    async with asyncio.timeout(sleep_s):  # not wait_for: see sessions.DispatchSignal.wait
                        await self._wake.wait()
                except TimeoutError:
                    pass

    async def run_once(self) -> PromoterResult:
        promoted = 0
        while True:
            rows = await self._store.promote_due(limit=self._batch_max)
            for queue in {r["queue"] for r in rows}:
                self._signal.wake(queue)
            promoted += len(rows)
            if len(rows) < self._batch_max:
                break
        if promoted:
            logger.info("promoted due jobs", extra={"count": promoted})
        return PromoterResult(promoted, await self._store.next_due_in())
