"""MetricsSampler: refreshes the gauges that need a query (queue depth, oldest ready age, jobs waiting on flow
control) or a look at memory, and keeps the last sample (QueueSnapshot) that ListQueues serves.

It never writes. ListQueues never counts the jobs table itself: it answers from the last snapshot with
its sampled_at, so a console polling it costs nothing more than the sampler's own GROUP BYs every
interval. Before the first sample exists (a coordinator just started), the first reader takes it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any

from coordinator import metrics
from coordinator.db.store import Store
from coordinator.errors import DatabaseUnavailableError
from coordinator.sessions import SessionRegistry

logger = logging.getLogger(__name__)

_STATES = ("queued", "running", "scheduled", "retrying", "dead_lettered")


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueSample:
    """One queue's figures in a sample."""

    depth: Mapping[str, int]  # jobs per state (queued, running, scheduled, retrying, dead_lettered); absent is 0
    oldest_ready_age: timedelta  # how long its oldest ready job has waited; 0 when none is ready
    waiting_on_key: int
    requiring_labels: int


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueSnapshot:
    """One sample of every queue that has jobs in a non-finished state or dead-lettered (read-only)."""

    sampled_at: datetime
    queues: Mapping[str, QueueSample]


class MetricsSampler:
    """Samples every interval; also keeps the last sample for ListQueues."""

    name = "metrics_sampler"

    def __init__(self, *, store: Store, registry: SessionRegistry, pool_max: int, interval_s: float) -> None:
        self._store = store
        self._registry = registry
        self._pool_max = pool_max
        self._interval_s = interval_s
        # Only written by this actor: queue label values seen so far (bounded by the label budget), so a drained
        # queue reads 0 rather than vanishing.
        self._queues: set[str] = set()
        # Written only by run_once (this actor's loop, or the first reader before any sample exists); replaced
        # whole, never changed in place, so a reader holds a consistent sample.
        self._last: QueueSnapshot | None = None
        self._first = asyncio.Lock()  # one first sample at a time when readers come before the loop's

    async def run(self) -> None:
        while True:
            try:
                await self.run_once()
            except DatabaseUnavailableError as exc:
                logger.debug("metrics sample skipped", extra={"error": str(exc)})
            await asyncio.sleep(self._interval_s)

    async def latest(self) -> QueueSnapshot:
        """The last sample; taken now when there is none yet (DatabaseUnavailableError if that fails)."""
        if self._last is None:
            async with self._first:
                if self._last is None:
                    await self.run_once()
        assert self._last is not None
        return self._last

    async def run_once(self) -> QueueSnapshot:
        self.sample_memory()
        depths = await self._store.queue_depths()
        oldest = await self._store.oldest_ready()
        flow = await self._store.queue_flow_waiting()
        sampled_at = datetime.now(UTC)
        # Queues past the label budget share the metrics.OTHER_LABEL series: depths add up, the age is the oldest.
        seen: dict[tuple[str, str], int] = {}
        by_queue: dict[str, dict[str, int]] = {}
        for r in depths:
            key = (metrics.queue_label(r["queue"]), r["state"])
            seen[key] = seen.get(key, 0) + r["depth"]
            by_queue.setdefault(r["queue"], {})[r["state"]] = r["depth"]
        self._queues |= {q for q, _ in seen}
        for q in self._queues:
            for s in _STATES:
                metrics.QUEUE_DEPTH.labels(q, s).set(seen.get((q, s), 0))
        ages: dict[str, float] = {}
        raw_ages: dict[str, timedelta] = {}
        for r in oldest:
            q = metrics.queue_label(r["queue"])
            age = max(r["now"] - r["oldest_run_at"], timedelta(0))
            raw_ages[r["queue"]] = age
            ages[q] = max(ages.get(q, 0.0), age.total_seconds())
        for q in self._queues:
            metrics.OLDEST_READY_AGE.labels(q).set(ages.get(q, 0.0))
        # Flow control (coordinator/policy.py): ready jobs held back by a key at its cap, or needing labels.
        on_key: dict[str, int] = {}
        on_labels: dict[str, int] = {}
        raw_flow: dict[str, tuple[int, int]] = {}
        for r in flow:
            q = metrics.queue_label(r["queue"])
            on_key[q] = on_key.get(q, 0) + r["waiting_on_key"]
            on_labels[q] = on_labels.get(q, 0) + r["requiring_labels"]
            raw_flow[r["queue"]] = (r["waiting_on_key"], r["requiring_labels"])
        for q in self._queues:
            metrics.JOBS_WAITING_ON_KEY.labels(q).set(on_key.get(q, 0))
            metrics.JOBS_REQUIRING_LABELS.labels(q).set(on_labels.get(q, 0))
        names = {*by_queue, *raw_ages, *raw_flow}
        snapshot = QueueSnapshot(sampled_at=sampled_at, queues=MappingProxyType({
            q: QueueSample(depth=MappingProxyType(by_queue.get(q, {})), oldest_ready_age=raw_ages.get(q, timedelta(0)),
                           waiting_on_key=raw_flow.get(q, (0, 0))[0], requiring_labels=raw_flow.get(q, (0, 0))[1])
            for q in names}))
        self._last = snapshot
        return snapshot

    def sample_memory(self) -> None:
        """Gauges that come from this process alone."""
        metrics.WORKERS_CONNECTED.set(len(self._registry))
        metrics.LEASES_ACTIVE.set(sum(s.lease_count for s in self._registry))  # type: ignore[attr-defined]
        pool: Any = self._store.pool
        size, idle = pool.get_size(), pool.get_idle_size()
        metrics.DB_POOL_SIZE.labels("busy").set(size - idle)
        metrics.DB_POOL_SIZE.labels("idle").set(idle)
        metrics.DB_POOL_MAX.set(self._pool_max)
