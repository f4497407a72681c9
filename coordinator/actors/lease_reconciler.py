"""LeaseReconciler: makes every open session's lease set follow Postgres, one statement per pass for all sessions.

A session forgets a lease on its verdict, on a stale heartbeat verdict, and when this coordinator's reaper
reports taking it back. Whatever else changes Postgres (another coordinator's reaper, an operator, a lease
lost while Postgres was away and the report with it) is caught here: each pass sends every lease each
session holds, with its worker, to `leases_not_held`, and each session forgets (and revokes) the leases
that are no longer the job's current running lease held by that worker (INV-013). Only leases a session
held before the statement was sent are judged, so a grant that races the pass is never dropped.

A running row held by a worker whose session does not know it (a lease the worker lost before it
reconnected, say) is left to the reaper: nobody heartbeats it, so it expires within its TTL.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from coordinator.db.store import Store
from coordinator.errors import DatabaseUnavailableError
from coordinator.model import LeaseKey
from coordinator.sessions import SessionRegistry

logger = logging.getLogger(__name__)

#: Longest time between passes; app.py runs it at the reaper's interval when that is shorter.
RECONCILE_INTERVAL_DEFAULT = timedelta(milliseconds=500)
#: Most leases judged in one statement; more are judged over several statements in the same pass.
RECONCILE_BATCH_MAX = 20_000


class LeaseReconciler:
    """Runs run_once() every interval."""

    name = "lease_reconciler"

    def __init__(self, *, store: Store, registry: SessionRegistry, interval_s: float,
                 batch_max: int = RECONCILE_BATCH_MAX) -> None:
        if interval_s <= 0 or batch_max < 1:
            raise ValueError("interval_s and batch_max must be positive")
        self._store = store
        self._registry = registry
        self._interval_s = interval_s
        self._batch_max = batch_max

    async def run(self) -> None:
        while True:
            try:
                await self.run_once()
            except DatabaseUnavailableError as exc:
                logger.warning("lease reconciler paused: database unavailable", extra={"error": str(exc)})
            await asyncio.sleep(self._interval_s)

    async def run_once(self) -> int:
        """One pass; returns how many leases sessions forgot."""
        sessions = list(self._registry)
        marks = {s.session_id: s.lease_mark() for s in sessions}
        pairs: list[tuple[LeaseKey, str]] = []
        owners: dict[tuple[LeaseKey, str], list[str]] = {}
        for s in sessions:
            for key in s.held_before(marks[s.session_id]):
                pair = (key, s.worker_id)
                if pair not in owners:
                    owners[pair] = []
                    pairs.append(pair)
                owners[pair].append(s.session_id)
        if not pairs:
            return 0
        gone: dict[str, list[LeaseKey]] = {}
        for i in range(0, len(pairs), self._batch_max):
            for pair in await self._store.leases_not_held(pairs[i:i + self._batch_max]):
                for sid in owners.get(pair, ()):
                    gone.setdefault(sid, []).append(pair[0])
        forgotten = 0
        for s in sessions:
            keys = gone.get(s.session_id)
            if keys:
                forgotten += s.reconcile(keys, marks[s.session_id])
        if forgotten:
            logger.info("sessions forgot leases Postgres no longer gives them", extra={"count": forgotten})
        return forgotten
