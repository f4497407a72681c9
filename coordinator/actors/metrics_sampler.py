"""MetricsSampler: refreshes the gauges that need a query (queue depth, oldest ready age, jobs waiting on flow
control) or a look at memory.

It never writes.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from coordinator import metrics
from coordinator.db.store import Store
from coordinator.errors import DatabaseUnavailableError
from coordinator.sessions import SessionRegistry

logger = logging.getLogger(__name__)

_STATES = ("queued", "running", "scheduled", "retrying", "dead_lettered")


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

    async def run(self) -> None:
        while True:
            try:
                await self.run_once()
            except DatabaseUnavailableError as exc:
                logger.debug("metrics sample skipped", extra={"error": str(exc)})
            await asyncio.sleep(self._interval_s)

    async def run_once(self) -> None:
        self.sample_memory()
        depths = await self._store.queue_depths()
        oldest = await self._store.oldest_ready()
        # Queues past the label budget share the metrics.OTHER_LABEL series: depths add up, the age is the oldest.
        seen: dict[tuple[str, str], int] = {}
        for r in depths:
            key = (metrics.queue_label(r["queue"]), r["state"])
            seen[key] = seen.get(key, 0) + r["depth"]
        self._queues |= {q for q, _ in seen}
        for q in self._queues:
            for s in _STATES:
                metrics.QUEUE_DEPTH.labels(q, s).set(seen.get((q, s), 0))
        ages: dict[str, float] = {}
        for r in oldest:
            q = metrics.queue_label(r["queue"])
            ages[q] = max(ages.get(q, 0.0), (r["now"] - r["oldest_run_at"]).total_seconds())
        for q in self._queues:
            metrics.OLDEST_READY_AGE.labels(q).set(ages.get(q, 0.0))
        # Flow control (coordinator/policy.py): ready jobs held back by a key at its cap, or needing labels.
        on_key: dict[str, int] = {}
        on_labels: dict[str, int] = {}
        for r in await self._store.queue_flow_waiting():
            q = metrics.queue_label(r["queue"])
            on_key[q] = on_key.get(q, 0) + r["waiting_on_key"]
            on_labels[q] = on_labels.get(q, 0) + r["requiring_labels"]
        for q in self._queues:
            metrics.JOBS_WAITING_ON_KEY.labels(q).set(on_key.get(q, 0))
            metrics.JOBS_REQUIRING_LABELS.labels(q).set(on_labels.get(q, 0))

    def sample_memory(self) -> None:
        """Gauges that come from this process alone."""
        metrics.WORKERS_CONNECTED.set(len(self._registry))
        metrics.LEASES_ACTIVE.set(sum(s.lease_count for s in self._registry))  # type: ignore[attr-defined]
        pool: Any = self._store.pool
        size, idle = pool.get_size(), pool.get_idle_size()
        metrics.DB_POOL_SIZE.labels("busy").set(size - idle)
        metrics.DB_POOL_SIZE.labels("idle").set(idle)
        metrics.DB_POOL_MAX.set(self._pool_max)
