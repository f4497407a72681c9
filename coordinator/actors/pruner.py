"""Pruner: deletes finished jobs past their state's retention age, with their attempts and steps, in small batches.

Without it every finished row stays for ever and the tables grow without bound. Each batch is one short
autocommit statement (prune_finished): it takes a transaction-scoped advisory lock (7355608003) with
pg_try_advisory_xact_lock, so one coordinator prunes at a time, and deletes at most RETENTION_BATCH_MAX rows
of one state, oldest finished first, skipping rows another session has locked. Attempts and steps go by
ON DELETE CASCADE on their primary keys. No lock outlives its statement, so a crash mid-pass leaves nothing
held and nothing half-done; the next pass (on any coordinator) goes on from what is left.

    every RETENTION_INTERVAL: for state in succeeded, dead_lettered, cancelled (age set):
        repeat prune_finished(state, age, batch) --lock held elsewhere--> stop the pass (locked_out)
                 until a batch comes back short, or RETENTION_BATCHES_PER_PASS batches

Idempotency keys: pruning a job frees its key (a later submit with the key stores a new job). A job holding
a key is kept for max(its state's age, FAULTLINE_RETENTION_KEYED_MS); FAULTLINE_RETENTION_KEYED_MS=forever
keeps keyed jobs, and so their keys, for ever (README "Retention").
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import timedelta

from coordinator import metrics
from coordinator.config import (
    RETENTION_BATCH_MAX,
    RETENTION_BATCHES_PER_PASS,
    RETENTION_CANCELLED_DEFAULT,
    RETENTION_DEAD_LETTERED_DEFAULT,
    RETENTION_INTERVAL,
    RETENTION_KEYED_DEFAULT,
    RETENTION_SUCCEEDED_DEFAULT,
)
from coordinator.db.store import Store
from coordinator.errors import DatabaseUnavailableError
from coordinator.model import JobState

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class PrunerConfig:
    """Retention ages per finished state (None keeps that state for ever) and the batch bounds."""

    interval: timedelta = RETENTION_INTERVAL
    succeeded: timedelta | None = RETENTION_SUCCEEDED_DEFAULT
    dead_lettered: timedelta | None = RETENTION_DEAD_LETTERED_DEFAULT
    cancelled: timedelta | None = RETENTION_CANCELLED_DEFAULT
    # Least age of a job that holds an idempotency key; None keeps keyed jobs for ever.
    keyed: timedelta | None = RETENTION_KEYED_DEFAULT
    batch_max: int = RETENTION_BATCH_MAX
    batches_per_pass: int = RETENTION_BATCHES_PER_PASS

    def __post_init__(self) -> None:
        if self.interval <= timedelta(0) or self.batch_max < 1 or self.batches_per_pass < 1:
            raise ValueError("interval, batch_max and batches_per_pass must be positive")
        for age in (self.succeeded, self.dead_lettered, self.cancelled, self.keyed):
            if age is not None and age < timedelta(0):
                raise ValueError("retention ages must not be negative")

    def ages(self) -> list[tuple[JobState, timedelta]]:
        pairs = ((JobState.SUCCEEDED, self.succeeded), (JobState.DEAD_LETTERED, self.dead_lettered),
                 (JobState.CANCELLED, self.cancelled))
        return [(s, a) for s, a in pairs if a is not None]


@dataclass(frozen=True, slots=True)
class PruneResult:
    """What one pass deleted, per state, and whether another coordinator held the pruner's lock."""

    deleted: dict[JobState, int] = field(default_factory=dict)
    batches: int = 0
    locked_out: bool = False


def _ms(d: timedelta) -> int:
    return int(d.total_seconds() * 1000)


class Pruner:
    """See the module docstring."""

    name = "pruner"

    def __init__(self, *, store: Store, config: PrunerConfig) -> None:
        self._store = store
        self._config = config

    async def run(self) -> None:
        while True:
            try:
                await self.run_once()
            except DatabaseUnavailableError as exc:
                logger.warning("pruner paused: database unavailable", extra={"error": str(exc)})
            await asyncio.sleep(self._config.interval.total_seconds())

    async def run_once(self) -> PruneResult:
        cfg = self._config
        deleted: dict[JobState, int] = {}
        batches = 0
        for state, age in cfg.ages():
            keyed = None if cfg.keyed is None else _ms(max(age, cfg.keyed))
            while batches < cfg.batches_per_pass:
                locked, n = await self._store.prune_finished(state, age_ms=_ms(age), keyed_age_ms=keyed,
                                                             limit=cfg.batch_max)
                batches += 1
                if not locked:
                    return PruneResult(deleted=deleted, batches=batches, locked_out=True)
                if n:
                    deleted[state] = deleted.get(state, 0) + n
                    metrics.JOBS_PRUNED.labels(state.value).inc(n)
                if n < cfg.batch_max:
                    break
                await asyncio.sleep(0)  # let the hot path in between batches
        if deleted:
            logger.info("finished jobs pruned", extra={
                **{state.value: deleted.get(state, 0) for state, _ in cfg.ages()}, "batches": batches})
        return PruneResult(deleted=deleted, batches=batches)
