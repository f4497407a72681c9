"""Batched lease writes over the same leases must not deadlock each other.

Found by the coordinator-kill drill: after a restart, reconnecting workers re-send completions and
heartbeat the same leases at once; the completer's and the lease keeper's batch UPDATEs locked the
job rows in the order of their input arrays, Postgres broke the resulting deadlocks by aborting one
statement, and the actor crashed (StoreError) and was restarted by the supervisor. Batches now lock
in job-id order, and a deadlock victim is retried.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

import coordinator.db.store as store_mod
from coordinator.db.pool import create_pool
from coordinator.db.store import Completion, Store
from coordinator.model import JobSpec, LeaseKey

ROUNDS = 20
BATCH = 300


def _spec() -> JobSpec:
    return JobSpec(queue="q", kind="k", payload=b"", idempotency_key=None, max_attempts=5, priority=0, run_at=None,
                   backoff_initial_ms=None, backoff_max_ms=None, backoff_multiplier=None, backoff_jitter=None,
                   execution_timeout_ms=None, heartbeat_timeout_ms=None, schedule_to_start_ms=None)


async def test_heartbeat_and_completion_batches_over_the_same_leases_do_not_deadlock(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_mod, "DEADLOCK_RETRIES", 0)  # the lock order alone must prevent them
    store = Store(await create_pool(dsn, max_size=4))
    try:
        for _ in range(ROUNDS):
            await store.insert_jobs([_spec() for _ in range(BATCH)])
            claimed = await store.claim_jobs(queue="q", kinds=["k"], slots=["w"] * BATCH, lease_ttl_ms=30_000)
            keys = [LeaseKey(j.id, j.lease_token) for j, _ in claimed]
            _extended, completed = await asyncio.gather(
                store.extend_leases([(k, "w") for k in keys], lease_ttl_ms=30_000),
                store.complete_jobs([Completion(k, "w", b"") for k in reversed(keys)]),
            )
            assert len(completed) == BATCH
    finally:
        await store.pool.close()


class _DeadlockOnce:
    """A pool whose first statement is chosen as a deadlock victim."""

    def __init__(self) -> None:
        self.calls = 0

    def acquire(self, timeout: float) -> Any:
        pool = self

        class _Con:
            async def __aenter__(self) -> Any:
                return self

            async def __aexit__(self, *exc: object) -> None:
                return None

            async def fetch(self, sql: str, *args: Any) -> list[Any]:
                pool.calls += 1
                if pool.calls == 1:
                    raise asyncpg.DeadlockDetectedError("deadlock detected")
                return ["row"]

        return _Con()


async def test_deadlock_victim_is_retried() -> None:
    pool = _DeadlockOnce()
    store = Store(pool)  # type: ignore[arg-type]
    assert await store.complete_jobs([Completion(LeaseKey(1, 1), "w", b"")]) == ["row"]
    assert pool.calls == 2
