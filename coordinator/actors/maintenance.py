"""Maintenance: VACUUMs and ANALYZEs the job tables when their row counts call for it, so claims need no autovacuum.

Every job leaves dead row versions behind (inserted, updated to running, updated to finished), and
with no vacuum the head of the faultline_jobs_ready index fills with entries that every claim must
visit and skip. A burst of inserts into a table that was empty at its last ANALYZE leaves the planner
choosing a bitmap scan and a sort of every ready row. Both happen when the server's autovacuum is off
or behind; this actor does not depend on it.

One pass (run_once):

    read row counts (pooled connection) --nothing due--> done, nothing opened
      | something due
    open a maintenance connection (db/store.py MaintenanceSession: own statement and lock timeouts)
      -> pg_try_advisory_lock --held by another coordinator--> done (locked_out)
      -> read row counts again (another coordinator may just have done the work)
      -> per table: VACUUM (ANALYZE) if dead > VACUUM_BASE + VACUUM_SCALE x live rows,
                    else ANALYZE if modified since analyze > ANALYZE_BASE + ANALYZE_SCALE x planned rows
      -> unlock, close

Thresholds are in config.py (MAINTENANCE_*). A failed pass changes nothing that the next one cannot
redo; a lost connection ends the session and with it the lock.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from coordinator import metrics
from coordinator.config import (
    MAINTENANCE_ANALYZE_BASE_ROWS_DEFAULT,
    MAINTENANCE_ANALYZE_SCALE_DEFAULT,
    MAINTENANCE_INTERVAL,
    MAINTENANCE_LOCK_TIMEOUT,
    MAINTENANCE_STATEMENT_TIMEOUT,
    MAINTENANCE_VACUUM_BASE_ROWS_DEFAULT,
    MAINTENANCE_VACUUM_SCALE_DEFAULT,
)
from coordinator.db.store import MaintenanceOp, MaintenanceSession, Store, TableStats, maintenance_session
from coordinator.errors import DatabaseUnavailableError

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class MaintenanceConfig:
    """When a job table is vacuumed or analyzed, and the limits of the connection that does it."""

    interval: timedelta = MAINTENANCE_INTERVAL
    vacuum_base_rows: int = MAINTENANCE_VACUUM_BASE_ROWS_DEFAULT
    vacuum_scale: float = MAINTENANCE_VACUUM_SCALE_DEFAULT
    analyze_base_rows: int = MAINTENANCE_ANALYZE_BASE_ROWS_DEFAULT
    analyze_scale: float = MAINTENANCE_ANALYZE_SCALE_DEFAULT
    statement_timeout: timedelta = MAINTENANCE_STATEMENT_TIMEOUT
    lock_timeout: timedelta = MAINTENANCE_LOCK_TIMEOUT

    def __post_init__(self) -> None:
        if self.interval <= timedelta(0):
            raise ValueError("interval must be positive")
        if min(self.vacuum_base_rows, self.analyze_base_rows) < 0 or min(self.vacuum_scale, self.analyze_scale) < 0:
            raise ValueError("thresholds must not be negative")
        if self.statement_timeout <= timedelta(0) or self.lock_timeout <= timedelta(0):
            raise ValueError("timeouts must be positive (0 would mean none)")

    def op_for(self, stats: TableStats) -> MaintenanceOp | None:
        """What the table needs now, if anything. A vacuum analyzes too, so it comes first."""
        if stats.dead_rows > self.vacuum_base_rows + self.vacuum_scale * stats.live_rows:
            return MaintenanceOp.VACUUM
        # Against the planner's estimate, not the live count: after a burst of inserts into a table that
        # was empty when last analyzed, the planner believes it empty, and that is what must be corrected.
        if stats.modified_rows > self.analyze_base_rows + self.analyze_scale * stats.planned_rows:
            return MaintenanceOp.ANALYZE
        return None


@dataclass(frozen=True, slots=True, kw_only=True)
class Maintained:
    """One VACUUM or ANALYZE that ran, with the counts that called for it."""

    table: str
    op: MaintenanceOp
    dead_rows_before: int
    modified_rows_before: int
    seconds: float


@dataclass(frozen=True, slots=True, kw_only=True)
class MaintenanceResult:
    """What one pass did."""

    done: tuple[Maintained, ...] = ()
    # Another coordinator of this database held the maintenance lock, so this one did nothing.
    locked_out: bool = False
    # Tables whose VACUUM or ANALYZE gave up on a table lock held by another session (tried again next pass).
    lock_busy: tuple[str, ...] = ()


class Maintenance:
    """Runs run_once() every interval."""

    name = "maintenance"

    def __init__(
        self,
        *,
        store: Store,
        dsn: str,
        config: MaintenanceConfig,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._dsn = dsn
        self._config = config
        self._clock = clock

    async def run(self) -> None:
        while True:
            try:
                await self.run_once()
            except DatabaseUnavailableError as exc:
                logger.warning("maintenance paused: database unavailable", extra={"error": str(exc)})
            await asyncio.sleep(self._config.interval.total_seconds())

    async def run_once(self) -> MaintenanceResult:
        # Most passes end here, after one short read on a pooled connection.
        if not any(self._config.op_for(s) for s in await self._store.table_stats()):
            return MaintenanceResult()
        cfg = self._config
        async with maintenance_session(
            self._dsn, statement_timeout=cfg.statement_timeout, lock_timeout=cfg.lock_timeout
        ) as session:
            if not await session.try_lock():
                logger.debug("maintenance skipped: another coordinator holds the lock")
                return MaintenanceResult(locked_out=True)
            # On an error the session is terminated instead, which releases the lock as well.
            result = await self._maintain(session)
            await session.unlock()
        return result

    async def _maintain(self, session: MaintenanceSession) -> MaintenanceResult:
        done: list[Maintained] = []
        busy: list[str] = []
        # Counted again under the lock: the first read may predate another coordinator's pass.
        for stats in await session.table_stats():
            op = self._config.op_for(stats)
            if op is None:
                continue
            started = self._clock()
            ran = await session.maintain(stats.table, op)
            seconds = self._clock() - started
            if not ran:
                busy.append(stats.table)
                logger.info("maintenance deferred: table locked by another session",
                            extra={"table": stats.table, "op": op.value})
                continue
            metrics.MAINTENANCE_RUNS.labels(stats.table, op.value).inc()
            metrics.MAINTENANCE_DURATION.labels(stats.table, op.value).observe(seconds)
            logger.info("table maintained", extra={
                "table": stats.table, "op": op.value, "dead_rows_before": stats.dead_rows,
                "modified_rows_before": stats.modified_rows, "live_rows": stats.live_rows,
                "seconds": round(seconds, 3),
            })
            done.append(Maintained(table=stats.table, op=op, dead_rows_before=stats.dead_rows,
                                   modified_rows_before=stats.modified_rows, seconds=seconds))
        return MaintenanceResult(done=tuple(done), lock_busy=tuple(busy))
