"""The retention pruner on a real database: per-state ages, attempts and steps with the job, keyed jobs, batches,
one pruner at a time."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import asyncpg

from coordinator.actors.pruner import Pruner, PrunerConfig
from coordinator.db.pool import create_pool
from coordinator.db.store import Store
from coordinator.model import JobState

PRUNER_LOCK = 7355608003


async def make_jobs(db: Any, n: int, *, state: str, age_s: float, key_prefix: str | None = None) -> list[int]:
    """n jobs that finished (state) age_s seconds ago, each with one attempt row and one step row."""
    ids = [int(r["id"]) for r in await db.fetch(
        """INSERT INTO faultline_jobs (queue, kind, state, payload, max_attempts, attempts, lease_token,
               idempotency_key, finished_at)
           SELECT 'default', 'k', $1::faultline_job_state, '', 1, 1, 1,
               CASE WHEN $3::text IS NULL THEN NULL ELSE $3 || g END,
               CASE WHEN $1 IN ('succeeded', 'dead_lettered', 'cancelled')
                    THEN now() - $2 * interval '1 second' END
           FROM generate_series(1, $4) g RETURNING id""", state, age_s, key_prefix, n)]
    await db.execute("INSERT INTO faultline_attempts (job_id, attempt, lease_token, outcome) "
                     "SELECT id, 1, 1, 'x' FROM unnest($1::bigint[]) id", ids)
    await db.execute("INSERT INTO faultline_steps (job_id, step_key, result, lease_token) "
                     "SELECT id, 's', '', 1 FROM unnest($1::bigint[]) id", ids)
    return ids


async def counts(db: Any) -> dict[str, int]:
    return {r["state"]: r["n"] for r in await db.fetch(
        "SELECT state::text AS state, count(*) AS n FROM faultline_jobs GROUP BY state")}


async def test_prunes_each_finished_state_past_its_age_with_attempts_and_steps(dsn: str, db: Any) -> None:
    old_ok = await make_jobs(db, 30, state="succeeded", age_s=120)
    await make_jobs(db, 5, state="succeeded", age_s=1)          # younger than its age
    await make_jobs(db, 7, state="dead_lettered", age_s=120)    # dead letters are kept longer
    await make_jobs(db, 4, state="cancelled", age_s=120)
    await make_jobs(db, 3, state="queued", age_s=0)             # never finished: never pruned
    pool = await create_pool(dsn, max_size=4)
    try:
        pruner = Pruner(store=Store(pool), config=PrunerConfig(
            succeeded=timedelta(minutes=1), dead_lettered=timedelta(hours=1), cancelled=timedelta(minutes=1),
            batch_max=10))
        result = await pruner.run_once()
    finally:
        await pool.close()
    assert result.deleted == {JobState.SUCCEEDED: 30, JobState.CANCELLED: 4} and not result.locked_out
    assert result.batches == 4 + 1 + 1  # 30 succeeded by 10 (the fourth comes back empty), dead letters, cancelled
    assert await counts(db) == {"succeeded": 5, "dead_lettered": 7, "queued": 3}
    left = await db.fetchval("SELECT count(*) FROM faultline_attempts WHERE job_id = ANY($1::bigint[])", old_ok)
    steps = await db.fetchval("SELECT count(*) FROM faultline_steps WHERE job_id = ANY($1::bigint[])", old_ok)
    assert left == 0 and steps == 0
    assert await db.fetchval("SELECT count(*) FROM faultline_attempts") == 15


async def test_keyed_jobs_follow_the_keyed_setting_and_pruning_frees_the_key(dsn: str, db: Any) -> None:
    await make_jobs(db, 3, state="succeeded", age_s=120, key_prefix="order-")
    pool = await create_pool(dsn, max_size=4)
    try:
        store = Store(pool)
        forever = PrunerConfig(succeeded=timedelta(minutes=1), keyed=None)
        assert (await Pruner(store=store, config=forever).run_once()).deleted == {}
        longer = PrunerConfig(succeeded=timedelta(minutes=1), keyed=timedelta(hours=1))
        assert (await Pruner(store=store, config=longer).run_once()).deleted == {}
        default = PrunerConfig(succeeded=timedelta(minutes=1))  # keyed: the state's age
        assert (await Pruner(store=store, config=default).run_once()).deleted == {JobState.SUCCEEDED: 3}
    finally:
        await pool.close()
    # The key is free again: a submit with it stores a new job.
    new = await db.fetchval("INSERT INTO faultline_jobs (queue, kind, state, payload, max_attempts, idempotency_key) "
                            "VALUES ('default', 'k', 'queued', '', 1, 'order-1') "
                            "ON CONFLICT DO NOTHING RETURNING id")
    assert new is not None


async def test_one_pruner_at_a_time(dsn: str, db: Any) -> None:
    await make_jobs(db, 5, state="succeeded", age_s=120)
    other = await asyncpg.connect(dsn)
    pool = await create_pool(dsn, max_size=4)
    try:
        await other.execute("SELECT pg_advisory_lock($1)", PRUNER_LOCK)  # another coordinator mid-batch
        pruner = Pruner(store=Store(pool), config=PrunerConfig(succeeded=timedelta(minutes=1)))
        held = await pruner.run_once()
        assert held.locked_out and held.deleted == {}
        await other.execute("SELECT pg_advisory_unlock($1)", PRUNER_LOCK)
        assert (await pruner.run_once()).deleted == {JobState.SUCCEEDED: 5}
    finally:
        await pool.close()
        await other.close()
