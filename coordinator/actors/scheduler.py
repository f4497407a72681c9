"""Scheduler: fires the due ticks of schedules, at most one job per tick across every coordinator.

Every coordinator runs one. A pass (run_once) takes a transaction that locks the due schedules no other
coordinator holds (claim_due_schedules: FOR UPDATE SKIP LOCKED), plans each one (coordinator/schedules.py
plan: catch-up and overlap policies), submits the tick's job through schedules.SubmitJob under the tick's
deterministic idempotency key, and advances next_run_at, then commits.

    sleep until the earliest tick (Postgres' clock), at most SCHEDULER_IDLE_MAX
      -> lock due rows -> per row: plan -> submit (key schedule:<id>:<tick>) -> advance -> commit

Killed anywhere in that, its transaction rolls back and its locks go; the next coordinator redoes the tick
and the key hands it the job already stored, so no tick makes two jobs. A submit refused for the whole
database (unavailable) leaves the tick due; a tick whose job is refused for good (a kind that no longer
validates) is skipped and logged, so one broken schedule cannot stall the others.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import timedelta

from coordinator import metrics
from coordinator.config import SCHEDULE_MISFIRE_GRACE, SCHEDULER_BATCH_MAX, SCHEDULER_BUSY_PAUSE, SCHEDULER_IDLE_MAX
from coordinator.db.store import Store, StoreDataError
from coordinator.errors import DatabaseUnavailableError
from coordinator.schedules import SubmitJob, plan, tick_key, tick_spec

logger = logging.getLogger(__name__)

UNAVAILABLE_PAUSE_S = 1.0


@dataclass(frozen=True, slots=True)
class SchedulerResult:
    """What one pass did, and how long until the next tick."""

    fired: int
    duplicates: int
    skipped: int
    next_due_in_s: float | None


class Scheduler:
    """See the module docstring."""

    name = "scheduler"

    def __init__(self, *, store: Store, submit: SubmitJob, grace: timedelta = SCHEDULE_MISFIRE_GRACE,
                 batch_max: int = SCHEDULER_BATCH_MAX) -> None:
        if batch_max < 1 or grace < timedelta(0):
            raise ValueError("batch_max must be positive and grace not negative")
        self._store = store
        self._submit = submit
        self._grace = grace
        self._batch_max = batch_max

    async def run(self) -> None:
        while True:
            try:
                result = await self.run_once()
                sleep_s = SCHEDULER_IDLE_MAX.total_seconds()
                if result.next_due_in_s is not None:
                    sleep_s = min(sleep_s, max(result.next_due_in_s, SCHEDULER_BUSY_PAUSE.total_seconds()))
            except DatabaseUnavailableError as exc:
                logger.warning("scheduler paused: database unavailable", extra={"error": str(exc)})
                sleep_s = UNAVAILABLE_PAUSE_S
            await asyncio.sleep(sleep_s)

    async def run_once(self) -> SchedulerResult:
        fired = duplicates = skipped = 0
        async with self._store.schedule_claim(self._batch_max) as claim:
            for due in claim.due:
                p = plan(due, grace=self._grace)
                job_id = None
                if p.fire is not None:
                    key = tick_key(due.row.id, p.fire)
                    try:
                        job, created = await self._submit(tick_spec(due.row, p.fire, key=key))
                    except StoreDataError:
                        logger.error("schedule tick refused by the store; skipped", exc_info=True,
                                     extra={"schedule": due.row.name})
                    else:
                        job_id = job.id
                        if created:
                            fired += 1
                            metrics.SCHEDULE_TICKS.labels("fired").inc()
                        else:
                            duplicates += 1  # another coordinator submitted it and died before advancing
                        logger.info("schedule fired", extra={
                            "schedule": due.row.name, "tick": p.fire.isoformat(), "job_id": job.id,
                            "job_created": created})
                if p.skipped_missed:
                    metrics.SCHEDULE_TICKS.labels("skipped_missed").inc(p.skipped_missed)
                if p.skipped_overlap:
                    metrics.SCHEDULE_TICKS.labels("skipped_overlap").inc(p.skipped_overlap)
                skipped += p.skipped_missed + p.skipped_overlap
                await claim.advance(due, next_run_at=p.next_run_at, fired_job_id=job_id,
                                    fired_tick=p.fire if job_id is not None else None,
                                    skipped=p.skipped_missed + p.skipped_overlap)
        return SchedulerResult(fired=fired, duplicates=duplicates, skipped=skipped,
                               next_due_in_s=await self._store.next_schedule_due_in())
