"""HealthMonitor: probes Postgres and drives grpc.health.v1 between SERVING and NOT_SERVING, without a restart.

Health says whether Postgres answers, not how loaded the coordinator is: the probe runs on a connection of
its own (db/store.py ProbeSession), so a pool saturated by load does not read as an outage. Load is
answered by back-pressure (api/admission.py, the sessions' bounds), never by going NOT_SERVING.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from coordinator import metrics
from coordinator.db.store import Store
from coordinator.errors import DatabaseUnavailableError, FaultlineError

logger = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 2.0


class HealthMonitor:
    """Calls on_change(True/False) on every transition of Postgres reachability."""

    name = "health"

    def __init__(
        self, *, store: Store, interval_s: float, on_change: Callable[[bool], Awaitable[None]], initially_up: bool,
        probe: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        self._store = store
        # probe(timeout_s): raises DatabaseUnavailableError when Postgres does not answer. Without one, the pool.
        self._probe = probe
        self._interval_s = interval_s
        self._on_change = on_change
        # Only used by this actor.
        self._up = initially_up

    @property
    def up(self) -> bool:
        return self._up

    async def run(self) -> None:
        while True:
            await self.run_once()
            await asyncio.sleep(self._interval_s)

    async def run_once(self) -> bool:
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S):  # not wait_for: see sessions.DispatchSignal.wait
                if self._probe is not None:
                    await self._probe(PROBE_TIMEOUT_S)
                else:
                    await self._store.ping()
            up = True
        except (DatabaseUnavailableError, TimeoutError, FaultlineError) as exc:
            up = False
            if self._up:
                logger.warning("database unreachable", extra={"error": str(exc)})
        metrics.DB_UP.set(1 if up else 0)
        if up != self._up:
            self._up = up
            if up:
                logger.info("database reachable again")
            await self._on_change(up)
        return up
