"""LeaseKeeper: extends leases for heartbeats and stores progress, many workers' frames per statement.

A heartbeat names every lease its worker holds; all heartbeats waiting in the inbox are written
with one UPDATE (HOT: lease_expires_at is in no index), so 10,000 held leases cost a handful of
statements per interval, never one write per lease per heartbeat.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from coordinator import metrics
from coordinator.actors.batching import BatchingActor, Inbox
from coordinator.db.store import ProgressUpdate, Store, Verdict
from coordinator.model import LeaseKey, Outcome

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class HeartbeatItem:
    """All leases of one heartbeat frame, and the worker that sent it."""

    keys: tuple[LeaseKey, ...]
    worker_id: str


KeeperItem = HeartbeatItem | ProgressUpdate
# A heartbeat is answered with one verdict per lease; progress with one verdict.
KeeperAnswer = tuple[Verdict, ...]


class LeaseKeeper(BatchingActor[KeeperItem, KeeperAnswer]):
    """Batches heartbeats and progress."""

    name = "lease_keeper"

    def __init__(
        self,
        *,
        inbox: Inbox[KeeperItem, KeeperAnswer],
        store: Store,
        lease_ttl_ms: int,
        max_items: int,
    ) -> None:
        super().__init__(inbox=inbox, max_items=max_items)
        self._store = store
        self._ttl = lease_ttl_ms

    def unavailable(self, message: str) -> KeeperAnswer:
        return (Verdict(Outcome.UNAVAILABLE, message),)

    def refused(self, item: KeeperItem, message: str) -> KeeperAnswer:
        n = len(item.keys) if isinstance(item, HeartbeatItem) else 1
        return tuple(Verdict(Outcome.INVALID, message) for _ in range(n))

    async def flush(self, items: list[KeeperItem]) -> list[KeeperAnswer]:
        beat_pairs = list(
            dict.fromkeys((k, i.worker_id) for i in items if isinstance(i, HeartbeatItem) for k in i.keys)
        )
        beat_keys = [k for k, _ in beat_pairs]
        progress = [i for i in items if isinstance(i, ProgressUpdate)]
        alive: dict[LeaseKey, bool] = {}  # key -> cancel_requested
        if beat_keys:
            metrics.DB_BATCH_SIZE.labels("heartbeat").observe(len(beat_keys))
            for key, row in (await self._store.extend_leases(beat_pairs, lease_ttl_ms=self._ttl)).items():
                alive[key] = row["cancel_requested"]
        if progress:
            metrics.DB_BATCH_SIZE.labels("progress").observe(len(progress))
            for key, row in (await self._store.record_progress(progress, lease_ttl_ms=self._ttl)).items():
                alive[key] = row["cancel_requested"]
        all_keys = list(dict.fromkeys([*beat_keys, *(p.key for p in progress)]))
        misses = [k for k in all_keys if k not in alive]
        explained = await self._store.classify(misses, closing_outcome=None) if misses else {}
        for key in misses:
            verdict = explained.get(key)
            if verdict is not None and verdict.superseded:  # not the race with the lease's own completion
                metrics.STALE_REJECTED.labels("heartbeat").inc()

        def verdict_for(key: LeaseKey) -> Verdict:
            if key in alive:
                if alive[key]:
                    return Verdict(Outcome.CANCELLED, "cancel requested")
                return Verdict(Outcome.ACCEPTED)
            return explained.get(key, Verdict(Outcome.NOT_FOUND, "no such job"))

        return [
            tuple(verdict_for(k) for k in i.keys) if isinstance(i, HeartbeatItem) else (verdict_for(i.key),)
            for i in items
        ]
