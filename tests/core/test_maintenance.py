"""Maintenance actor: ANALYZE after an insert burst, VACUUM after updates, nothing below thresholds, one maintainer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import asyncpg
import pytest

from coordinator import metrics
from coordinator.actors.maintenance import Maintenance, MaintenanceConfig, MaintenanceResult
from coordinator.db.pool import create_pool
from coordinator.db.store import MaintenanceOp, MaintenanceSession, Store, TableStats, maintenance_session
from coordinator.errors import DatabaseUnavailableError
from tests.helpers.procs import free_port

JOBS = "faultline_jobs"
# Small thresholds, so that a few hundred rows are enough to call for work.
SMALL = MaintenanceConfig(vacuum_base_rows=100, vacuum_scale=0.05, analyze_base_rows=100, analyze_scale=0.1)


@pytest.fixture
async def store(dsn: str) -> AsyncIterator[Store]:
    pool = await create_pool(dsn, max_size=2)
    yield Store(pool)
    await pool.close()


async def insert_jobs(db: asyncpg.Connection[Any], n: int) -> None:
    await db.execute("INSERT INTO faultline_jobs (queue, kind, state, payload, max_attempts) "
                     "SELECT 'q', 'k', 'queued', '', 1 FROM generate_series(1, $1::int)", n)
    await flush_stats(db)


async def update_jobs(db: asyncpg.Connection[Any]) -> None:
    """Every row gets a new version; the old ones are dead."""
    await db.execute("UPDATE faultline_jobs SET priority = priority + 1")
    await flush_stats(db)


async def flush_stats(db: asyncpg.Connection[Any]) -> None:
    # A backend sends its table counters to the shared statistics at most once a second, when idle; this makes
    # the next idle moment (right after this statement, before its reply) send them whatever the interval.
    await db.execute("SELECT pg_stat_force_next_flush()")


async def table(db: asyncpg.Connection[Any], name: str = JOBS) -> Any:
    return await db.fetchrow(
        "SELECT s.n_live_tup, s.n_dead_tup, s.n_mod_since_analyze, s.vacuum_count, s.analyze_count, s.last_analyze, "
        "c.reltuples FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid WHERE s.relname = $1", name)


def runs(table_name: str, op: str) -> float:
    value = metrics.REGISTRY.get_sample_value("faultline_maintenance_runs_total", {"table": table_name, "op": op})
    assert value is not None
    return value


def actor(store: Store, dsn: str, config: MaintenanceConfig = SMALL) -> Maintenance:
    return Maintenance(store=store, dsn=dsn, config=config)


async def test_burst_of_inserts_into_an_analyzed_small_table_is_analyzed_at_the_default_thresholds(
    db: asyncpg.Connection[Any], store: Store, dsn: str
) -> None:
    maintenance = actor(store, dsn, MaintenanceConfig())
    await insert_jobs(db, 5)
    await db.execute("ANALYZE faultline_jobs")
    assert (await table(db))["reltuples"] == 5
    assert await maintenance.run_once() == MaintenanceResult()

    before = runs(JOBS, "analyze")
    await insert_jobs(db, 5_000)
    result = await maintenance.run_once()

    assert [(m.table, m.op) for m in result.done] == [(JOBS, MaintenanceOp.ANALYZE)]
    assert result.done[0].modified_rows_before == 5_000 and result.done[0].dead_rows_before == 0
    after = await table(db)
    assert after["analyze_count"] == 2 and after["vacuum_count"] == 0
    assert after["reltuples"] == 5_005, "the planner now knows the table's size"
    assert after["n_mod_since_analyze"] == 0
    assert runs(JOBS, "analyze") == before + 1


async def test_inserts_into_a_never_analyzed_table_are_analyzed(
    db: asyncpg.Connection[Any], store: Store, dsn: str
) -> None:
    assert (await table(db))["last_analyze"] is None
    await insert_jobs(db, 500)

    result = await actor(store, dsn).run_once()

    assert [(m.table, m.op) for m in result.done] == [(JOBS, MaintenanceOp.ANALYZE)]
    after = await table(db)
    assert after["last_analyze"] is not None and after["analyze_count"] == 1


async def test_dead_row_versions_past_the_threshold_are_vacuumed(
    db: asyncpg.Connection[Any], store: Store, dsn: str
) -> None:
    await insert_jobs(db, 1_000)
    await update_jobs(db)
    assert (await table(db))["n_dead_tup"] == 1_000
    before = runs(JOBS, "vacuum")

    result = await actor(store, dsn).run_once()

    assert [(m.table, m.op) for m in result.done] == [(JOBS, MaintenanceOp.VACUUM)]
    assert result.done[0].dead_rows_before == 1_000
    after = await table(db)
    assert after["vacuum_count"] == 1 and after["n_dead_tup"] == 0
    assert after["analyze_count"] == 1, "VACUUM (ANALYZE) refreshes the statistics too"
    assert runs(JOBS, "vacuum") == before + 1
    # Done: the next pass finds nothing to do.
    assert await actor(store, dsn).run_once() == MaintenanceResult()


async def test_below_the_thresholds_nothing_runs(db: asyncpg.Connection[Any], store: Store, dsn: str) -> None:
    await insert_jobs(db, 300)
    await update_jobs(db)  # 300 dead row versions, 600 rows modified: under 1000 + scale x rows for both

    assert await actor(store, dsn, MaintenanceConfig()).run_once() == MaintenanceResult()

    for name in ("faultline_jobs", "faultline_attempts"):
        row = await table(db, name)
        assert row["vacuum_count"] == 0 and row["analyze_count"] == 0, name
    assert (await table(db))["n_dead_tup"] == 300


async def test_a_coordinator_skips_while_another_holds_the_maintenance_lock(
    db: asyncpg.Connection[Any], store: Store, dsn: str
) -> None:
    await insert_jobs(db, 1_000)
    await update_jobs(db)
    async with maintenance_session(dsn, statement_timeout=timedelta(seconds=30),
                                   lock_timeout=timedelta(seconds=1)) as other:
        assert await other.try_lock()
        result = await actor(store, dsn).run_once()
        assert result == MaintenanceResult(locked_out=True)
        assert (await table(db))["vacuum_count"] == 0
        await other.unlock()

    result = await actor(store, dsn).run_once()
    assert [(m.table, m.op) for m in result.done] == [(JOBS, MaintenanceOp.VACUUM)]


async def test_two_coordinators_at_once_vacuum_a_table_once(
    db: asyncpg.Connection[Any], store: Store, dsn: str
) -> None:
    await insert_jobs(db, 1_000)
    await update_jobs(db)

    # Either they overlap and one is locked out, or one runs after the other and finds the counts fresh.
    results = await asyncio.gather(actor(store, dsn).run_once(), actor(store, dsn).run_once())

    assert sum(len(r.done) for r in results) == 1
    assert (await table(db))["vacuum_count"] == 1


async def test_a_table_locked_by_another_session_is_deferred_not_waited_for(
    db: asyncpg.Connection[Any], store: Store, dsn: str
) -> None:
    await insert_jobs(db, 1_000)
    await update_jobs(db)
    quick = MaintenanceConfig(vacuum_base_rows=100, lock_timeout=timedelta(milliseconds=50))
    async with db.transaction():
        # What a manual VACUUM or a migration would hold: it conflicts with VACUUM's SHARE UPDATE EXCLUSIVE.
        await db.execute("LOCK TABLE faultline_jobs IN SHARE UPDATE EXCLUSIVE MODE")
        result = await actor(store, dsn, quick).run_once()
    assert result == MaintenanceResult(lock_busy=(JOBS,))
    assert (await actor(store, dsn, quick).run_once()).done[0].op is MaintenanceOp.VACUUM


async def test_an_unreachable_database_is_unavailable_not_a_crash(
    db: asyncpg.Connection[Any], store: Store
) -> None:
    await insert_jobs(db, 500)
    nowhere = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    with pytest.raises(DatabaseUnavailableError):
        await actor(store, nowhere).run_once()


def test_thresholds_follow_the_formula() -> None:
    cfg = MaintenanceConfig()

    def stats(*, live: int = 0, dead: int = 0, modified: int = 0, planned: int = 0) -> TableStats:
        return TableStats(table=JOBS, live_rows=live, dead_rows=dead, modified_rows=modified, planned_rows=planned)

    assert cfg.op_for(stats()) is None
    # A million inserts into a table that was empty when last analyzed: analyze at once.
    assert cfg.op_for(stats(live=1_000_000, modified=1_000_000)) is MaintenanceOp.ANALYZE
    # 1000 + 0.1 x 1,000,000 planned rows.
    assert cfg.op_for(stats(live=1_000_000, modified=101_000, planned=1_000_000)) is None
    assert cfg.op_for(stats(live=1_000_000, modified=101_001, planned=1_000_000)) is MaintenanceOp.ANALYZE
    # 1000 + 0.05 x 1,000,000 live rows; a vacuum (which analyzes) wins over an analyze.
    assert cfg.op_for(stats(live=1_000_000, dead=51_000, modified=10**6)) is MaintenanceOp.ANALYZE
    assert cfg.op_for(stats(live=1_000_000, dead=51_001, modified=10**6)) is MaintenanceOp.VACUUM
    with pytest.raises(ValueError):
        MaintenanceConfig(interval=timedelta(0))
    with pytest.raises(ValueError):
        MaintenanceConfig(vacuum_scale=-0.1)


def test_every_maintained_table_and_op_has_metric_series_and_a_statement() -> None:
    pairs = {(t, op.value) for t, op in MaintenanceSession.STATEMENTS}
    assert pairs == {(t, op) for t in metrics.MAINTENANCE_TABLES for op in metrics.MAINTENANCE_OPS}
