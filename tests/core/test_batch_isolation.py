"""A value the store refuses fails its own item, never its batch: the completer and the lease keeper write a
refused batch again item by item (the second line of defence behind the edge's range checks)."""

from __future__ import annotations

import asyncio
from typing import Any

from coordinator.actors.batching import Request, Requests
from coordinator.actors.completer import Completer
from coordinator.actors.lease_keeper import HeartbeatItem, LeaseKeeper
from coordinator.config import RetryDefaults
from coordinator.db.pool import create_pool
from coordinator.db.store import Completion, Store, Verdict
from coordinator.model import JobSpec, LeaseKey, Outcome

OUT_OF_RANGE = 2**63  # fits the wire's uint64, not Postgres' bigint


def _spec() -> JobSpec:
    return JobSpec(queue="default", kind="echo", payload=b"", idempotency_key=None, max_attempts=3, priority=0,
                   run_at=None, backoff_initial_ms=None, backoff_max_ms=None, backoff_multiplier=None,
                   backoff_jitter=None, execution_timeout_ms=None, heartbeat_timeout_ms=None,
                   schedule_to_start_ms=None)


async def _leases(store: Store, n: int) -> list[LeaseKey]:
    await store.insert_jobs([_spec() for _ in range(n)])
    claimed = await store.claim_jobs(queue="default", kinds=["echo"], slots=["w"] * n, lease_ttl_ms=30_000)
    return [LeaseKey(job.id, job.lease_token) for job, _ in claimed]


async def test_one_out_of_range_completion_fails_alone(dsn: str) -> None:
    store = Store(await create_pool(dsn, max_size=2))
    try:
        good = await _leases(store, 2)
        inbox: asyncio.Queue[Request[Any, Verdict]] = asyncio.Queue()
        completer = Completer(inbox=inbox, store=store, retry=RetryDefaults(), max_items=100,
                              on_retry_scheduled=lambda: None)
        loop = asyncio.get_running_loop()
        keys = [good[0], LeaseKey(good[1].job_id, OUT_OF_RANGE), LeaseKey(OUT_OF_RANGE, 1), good[1]]
        reqs = [Request(Completion(k, "w", b"r"), loop.create_future()) for k in keys]
        for r in reqs:
            inbox.put_nowait(r)
        assert await completer.run_once() == 4  # one batch, and the actor did not raise
        outcomes = [r.reply.result().outcome for r in reqs]
        assert outcomes == [Outcome.ACCEPTED, Outcome.INVALID, Outcome.INVALID, Outcome.ACCEPTED]
    finally:
        await store.pool.close()


async def test_one_out_of_range_heartbeat_fails_alone(dsn: str) -> None:
    store = Store(await create_pool(dsn, max_size=2))
    try:
        [good] = await _leases(store, 1)
        inbox: asyncio.Queue[Request[Any, Any]] = asyncio.Queue()
        keeper = LeaseKeeper(inbox=inbox, store=store, lease_ttl_ms=30_000, max_items=100)
        loop = asyncio.get_running_loop()
        bad = HeartbeatItem((LeaseKey(OUT_OF_RANGE, OUT_OF_RANGE), LeaseKey(1, OUT_OF_RANGE)), "w")
        reqs = [Request(HeartbeatItem((good,), "w"), loop.create_future()), Request(bad, loop.create_future())]
        for r in reqs:
            inbox.put_nowait(r)
        assert await keeper.run_once() == 2
        assert [v.outcome for v in reqs[0].reply.result()] == [Outcome.ACCEPTED]
        assert [v.outcome for v in reqs[1].reply.result()] == [Outcome.INVALID, Outcome.INVALID]
    finally:
        await store.pool.close()


async def test_a_message_of_completions_is_answered_in_order_and_a_bad_one_fails_alone(dsn: str) -> None:
    """A session hands a worker's message of completions in as one Requests: one future, answers in item order,
    beside single Requests in the same flush; the out-of-range item is refused alone."""
    store = Store(await create_pool(dsn, max_size=2))
    try:
        good = await _leases(store, 3)
        inbox: asyncio.Queue[Any] = asyncio.Queue()
        completer = Completer(inbox=inbox, store=store, retry=RetryDefaults(), max_items=100,
                              on_retry_scheduled=lambda: None)
        loop = asyncio.get_running_loop()
        keys = [good[0], LeaseKey(good[1].job_id, OUT_OF_RANGE), good[1]]
        many = Requests([Completion(k, "w", b"r") for k in keys], loop.create_future())
        single = Request(Completion(good[2], "w", b"r"), loop.create_future())
        again = Requests([Completion(good[0], "w", b"r")], loop.create_future())
        inbox.put_nowait(many)
        inbox.put_nowait(single)
        assert await completer.run_once() == 4
        assert [v.outcome for v in many.reply.result()] == [Outcome.ACCEPTED, Outcome.INVALID, Outcome.ACCEPTED]
        assert single.reply.result().outcome is Outcome.ACCEPTED
        inbox.put_nowait(again)  # the same close once more: first write won, the repeat is told so
        assert await completer.run_once() == 1
        assert [v.outcome for v in again.reply.result()] == [Outcome.DUPLICATE]
    finally:
        await store.pool.close()


async def test_a_message_of_completions_is_answered_unavailable_when_postgres_is_gone(dsn: str) -> None:
    """Every item of a Requests gets an answer when the flush cannot reach Postgres, and the actor lives on."""
    store = Store(await create_pool(dsn, max_size=2))
    good = await _leases(store, 2)
    await store.pool.close()
    inbox: asyncio.Queue[Any] = asyncio.Queue()
    completer = Completer(inbox=inbox, store=store, retry=RetryDefaults(), max_items=100,
                          on_retry_scheduled=lambda: None)
    loop = asyncio.get_running_loop()
    many = Requests([Completion(k, "w", b"r") for k in good], loop.create_future())
    inbox.put_nowait(many)
    assert await completer.run_once() == 0
    assert [v.outcome for v in many.reply.result()] == [Outcome.UNAVAILABLE, Outcome.UNAVAILABLE]
