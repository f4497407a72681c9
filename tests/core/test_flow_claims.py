"""claim_jobs_limited on real Postgres: a claim that waited for the queue's lock never counts from a stale snapshot.

Two coordinators' claims of one capped queue meet at the queue row's lock. The one that waited took its
snapshot before the other committed; counting running jobs from it would see too few and grant past
max_running. The test makes that interleaving happen on purpose: another transaction holds the row lock
and leases jobs while the Store's claim waits, then commits.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from coordinator.db.pool import create_pool
from coordinator.db.store import Store
from coordinator.model import UNCHANGED, SettingsChange
from tests.helpers.wait import eventually

TTL_MS = 30_000


@pytest.fixture
async def store(dsn: str) -> AsyncIterator[Store]:
    pool = await create_pool(dsn, max_size=4)
    yield Store(pool)
    await pool.close()


async def queue_jobs(db: asyncpg.Connection[Any], n: int, *, key: str | None = None) -> None:
    await db.execute(
        "INSERT INTO faultline_jobs (id, queue, kind, state, payload, max_attempts, concurrency_key) "
        "SELECT nextval('faultline_jobs_id_seq'), 'capped', 'k', 'queued', '', 3, $2 FROM generate_series(1, $1)",
        n, key)


async def running(db: asyncpg.Connection[Any]) -> int:
    return int(await db.fetchval("SELECT count(*) FROM faultline_jobs WHERE queue = 'capped' AND state = 'running'"))


async def claim_while_another_claim_commits(store: Store, dsn: str, db: asyncpg.Connection[Any]) -> int:
    """Another session locks the queue row and leases 3 jobs; the Store's claim of 8 waits and then runs."""
    other = await asyncpg.connect(dsn)
    try:
        tx = other.transaction()
        await tx.start()
        await other.execute("SELECT 1 FROM faultline_queues WHERE queue = 'capped' FOR UPDATE")
        await other.execute(
            "UPDATE faultline_jobs SET state = 'running', attempts = 1, lease_token = 1, worker_id = 'other', "
            "lease_expires_at = now() + interval '30 s', gated = true "
            "WHERE id IN (SELECT id FROM faultline_jobs WHERE queue = 'capped' AND state = 'queued' "
            "ORDER BY id DESC LIMIT 3)")  # not the jobs the waiting claim picks first
        await other.execute("UPDATE faultline_queues SET claim_seq = claim_seq + 1 WHERE queue = 'capped'")
        claim = asyncio.create_task(store.claim_jobs_limited(
            queue="capped", kinds=["k"], slots=[f"w{i}" for i in range(8)], lease_ttl_ms=TTL_MS))

        async def waiting_for_the_lock() -> bool:
            return bool(await db.fetchval(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE wait_event_type = 'Lock' AND datname = current_database()"))

        await eventually(waiting_for_the_lock, message="the claim waits for the queue row's lock")
        await tx.commit()
        got = await claim
    finally:
        await other.close()
    return len(got.jobs)


async def test_a_claim_that_waited_for_the_lock_never_passes_max_running(
        store: Store, dsn: str, db: asyncpg.Connection[Any]) -> None:
    await queue_jobs(db, 20)
    await store.set_queue_settings("capped", SettingsChange(max_running=5))
    granted = await claim_while_another_claim_commits(store, dsn, db)
    assert await running(db) == 5, "3 leased by the other claim, 2 by the one that waited: never more than 5"
    assert granted == 2


async def test_a_claim_that_waited_for_the_lock_never_passes_the_per_key_cap(
        store: Store, dsn: str, db: asyncpg.Connection[Any]) -> None:
    await queue_jobs(db, 10, key="cust-1")
    await store.set_queue_settings("capped", SettingsChange(per_key_concurrency=4, max_running=UNCHANGED))
    granted = await claim_while_another_claim_commits(store, dsn, db)
    assert await running(db) == 4 and granted == 1


async def test_paused_queue_claims_nothing_and_throttled_queue_says_when_to_come_back(
        store: Store, db: asyncpg.Connection[Any]) -> None:
    await queue_jobs(db, 10)
    await store.pause_queue("capped", paused=True)
    got = await store.claim_jobs_limited(queue="capped", kinds=["k"], slots=["w"] * 4, lease_ttl_ms=TTL_MS)
    assert (got.jobs, got.paused, got.throttled, got.retry_in) == ([], True, False, None)
    plain = await store.claim_jobs(queue="capped", kinds=["k"], slots=["w"] * 4, lease_ttl_ms=TTL_MS)
    assert plain == [], "the plain claim grants nothing in a limited queue"
    await store.pause_queue("capped", paused=False)
    await store.set_queue_settings("capped", SettingsChange(rate_per_s=10.0, burst=2))
    got = await store.claim_jobs_limited(queue="capped", kinds=["k"], slots=["w"] * 4, lease_ttl_ms=TTL_MS)
    assert len(got.jobs) == 2 and got.throttled and got.retry_in is not None
    assert 0 < got.retry_in.total_seconds() <= 0.1
