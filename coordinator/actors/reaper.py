"""LeaseReaper: re-queues or dead-letters jobs whose lease, heartbeat or execution deadline passed.

Expiry is judged by Postgres' clock in SQL, never by this process's clock. The same UPDATE
that takes the job back bumps its fencing token, so the old holder's frames become stale.
It also dead-letters queued jobs that missed their schedule-to-start deadline.
Each pass reports the leases it took back, (old lease, old holder, reason), to on_expired, so that the
session holding one forgets it and tells its worker (LeaseRevoked) at once, not at the next reconcile.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from coordinator import metrics
from coordinator.config import REAPER_BATCH_MAX, RetryDefaults
from coordinator.db.store import Store
from coordinator.errors import DatabaseUnavailableError
from coordinator.model import LeaseKey

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ReaperResult:
    """What one pass did."""

    expired: int
    start_timeouts: int


class LeaseReaper:
    """Runs run_once() every interval."""

    name = "lease_reaper"

    def __init__(
        self,
        *,
        store: Store,
        retry: RetryDefaults,
        interval_s: float,
        on_requeued: Callable[[], None],
        on_closed: Callable[[LeaseKey, str, str | None], None] | None = None,
        on_expired: Callable[[Sequence[tuple[LeaseKey, str | None, str]]], object] | None = None,
        batch_max: int = REAPER_BATCH_MAX,
    ) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        self._store = store
        self._retry = retry
        self._interval_s = interval_s
        self._on_requeued = on_requeued
        self._on_closed = on_closed
        self._on_expired = on_expired
        self._batch_max = batch_max

    async def run(self) -> None:
        while True:
            try:
                await self.run_once()
            except DatabaseUnavailableError as exc:
                logger.warning("reaper paused: database unavailable", extra={"error": str(exc)})
            await asyncio.sleep(self._interval_s)

    async def run_once(self) -> ReaperResult:
        expired = 0
        while True:
            rows = await self._store.expire_leases(limit=self._batch_max, retry=self._retry)
            for r in rows:
                expired += 1
                metrics.LEASE_EXPIRATIONS.labels(r["reason"]).inc()
                metrics.RECOVERIES.labels("lease_expired").inc()
                metrics.JOBS_COMPLETED.labels(r["queue"], r["kind"], r["reason"]).inc()
                if r["state"] == "retrying":
                    metrics.RETRIES.labels(r["queue"], r["kind"]).inc()
                logger.info(
                    "lease reaped",
                    extra={"job_id": r["id"], "lease_token": r["old_token"], "worker_id": r["old_worker"],
                           "reason": r["reason"], "next_state": r["state"]},
                )
                if self._on_closed:
                    self._on_closed(LeaseKey(r["id"], r["old_token"]), r["reason"], r["reason"])
            if self._on_expired is not None and rows:
                self._on_expired([(LeaseKey(r["id"], r["old_token"]), r["old_worker"], r["reason"]) for r in rows])
            if len(rows) < self._batch_max:
                break
        start_timeouts = 0
        while True:
            rows = await self._store.expire_start_deadlines(limit=self._batch_max)
            for r in rows:
                start_timeouts += 1
                metrics.JOBS_COMPLETED.labels(r["queue"], r["kind"], "schedule_to_start_timeout").inc()
                logger.info("schedule-to-start timeout", extra={"job_id": r["id"], "lease_token": r["lease_token"]})
            if len(rows) < self._batch_max:
                break
        if expired:
            self._on_requeued()
        if expired or start_timeouts:
            logger.info("reaper pass", extra={"expired": expired, "start_timeouts": start_timeouts})
        return ReaperResult(expired, start_timeouts)
