"""The SDK against a real coordinator: happy path, retries to dead-letter and back, cancel, step guards."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest

from coordinator.app import Coordinator
from tests.helpers.wait import eventually
from worker_sdk import Client, JobContext, NonRetryableError, Worker


@pytest.fixture
async def run_worker(addr: str) -> AsyncIterator[Any]:
    workers: list[tuple[Worker, asyncio.Task[None]]] = []

    def start(worker: Worker) -> Worker:
        workers.append((worker, asyncio.create_task(worker.run())))
        return worker

    yield start
    for w, t in workers:
        await asyncio.wait_for(w.stop(), 30)
        await asyncio.wait_for(t, 30)


async def test_happy_path_results_progress_and_one_attempt_each(addr: str, run_worker: Any, db: Any) -> None:
    w = Worker(addr, queues=["default"], concurrency=8, handle_signals=False)

    @w.handler("echo")
    async def echo(ctx: JobContext) -> bytes:
        await ctx.progress(0.5, "half way")
        return ctx.payload + b"!"

    run_worker(w)
    async with Client(addr) as client:
        jobs = [await client.submit("echo", f"p{i}".encode()) for i in range(50)]

        async def all_done() -> bool:
            return all([(await client.get(j.id)).state == "succeeded" for j in jobs])

        await eventually(all_done, timeout=30, message="50 jobs succeeded")
        got = await client.get(jobs[7].id)
    assert got.result == b"p7!" and got.attempts == 1
    assert got.progress_fraction == 0.5 and got.progress_message == "half way"
    rows = await db.fetch("SELECT job_id, count(*) AS n, min(outcome) AS o FROM faultline_attempts GROUP BY job_id")
    assert len(rows) == 50 and all(r["n"] == 1 and r["o"] == "succeeded" for r in rows)


async def test_retries_with_backoff_then_dead_letter_then_requeue(addr: str, run_worker: Any, db: Any) -> None:
    healed = asyncio.Event()
    w = Worker(addr, concurrency=2, handle_signals=False)

    @w.handler("flaky")
    async def flaky(ctx: JobContext) -> bytes:
        if not healed.is_set():
            raise RuntimeError(f"attempt {ctx.attempt} failed")
        return b"finally"

    run_worker(w)
    async with Client(addr) as client:
        job = await client.submit("flaky", b"", max_attempts=3)

        async def dead() -> bool:
            return (await client.get(job.id)).state == "dead_lettered"

        await eventually(dead, timeout=30, message="dead-lettered after 3 attempts")
        got = await client.get(job.id)
        assert got.attempts == 3 and "attempt 3 failed" in (got.last_error or "")
        rows = await db.fetch("SELECT started_at, finished_at, outcome FROM faultline_attempts WHERE job_id = $1 "
                              "ORDER BY attempt", int(job.id))
        assert [r["outcome"] for r in rows] == ["failed"] * 3
        # Backoff (tests: base 50 ms, x2, jitter 10%): each gap is at least ~90% of its nominal delay.
        gaps = [(rows[i + 1]["started_at"] - rows[i]["finished_at"]).total_seconds() for i in range(2)]
        assert gaps[0] >= 0.045 and gaps[1] >= 0.09, gaps
        healed.set()
        back = await client.requeue(job.id, extra_attempts=2)
        assert back.state == "queued" and back.max_attempts == 5

        async def ok() -> bool:
            return (await client.get(job.id)).state == "succeeded"

        await eventually(ok, timeout=20, message="requeued job succeeded")
        final = await client.get(job.id)
    assert final.result == b"finally" and final.attempts == 4


async def test_non_retryable_failure_dead_letters_at_once(addr: str, run_worker: Any) -> None:
    w = Worker(addr, handle_signals=False)

    @w.handler("poison")
    async def poison(ctx: JobContext) -> bytes:
        raise NonRetryableError("bad input")

    run_worker(w)
    async with Client(addr) as client:
        job = await client.submit("poison", b"", max_attempts=10)

        async def dead() -> bool:
            return (await client.get(job.id)).state == "dead_lettered"

        await eventually(dead, timeout=20)
        assert (await client.get(job.id)).attempts == 1


async def test_cancel_running_job_reaches_handler(addr: str, run_worker: Any, db: Any) -> None:
    started = asyncio.Event()
    saw_cancel = asyncio.Event()
    w = Worker(addr, handle_signals=False)

    @w.handler("long")
    async def long(ctx: JobContext) -> bytes:
        started.set()
        try:
            await asyncio.wait_for(ctx.cancel_event.wait(), 30)
        finally:
            if ctx.cancelled:
                saw_cancel.set()
        return b"should not be stored"

    run_worker(w)
    async with Client(addr) as client:
        job = await client.submit("long", b"")
        await asyncio.wait_for(started.wait(), 20)
        marked = await client.cancel(job.id)
        assert marked.state in ("running", "cancelled")

        async def cancelled() -> bool:
            return (await client.get(job.id)).state == "cancelled"

        await eventually(cancelled, timeout=20, message="running job cancelled")
    await asyncio.wait_for(saw_cancel.wait(), 5)
    assert await db.fetchval("SELECT outcome FROM faultline_attempts WHERE job_id = $1", int(job.id)) == "cancelled"
    assert await db.fetchval("SELECT result FROM faultline_jobs WHERE id = $1", int(job.id)) is None


async def test_step_guard_skips_done_steps_on_retry(addr: str, run_worker: Any, db: Any) -> None:
    charges: list[int] = []
    w = Worker(addr, handle_signals=False)

    @w.handler("charge")
    async def charge(ctx: JobContext) -> bytes:
        async def do_charge() -> bytes:
            charges.append(ctx.attempt)
            return b"receipt-42"

        receipt = await ctx.step("charge-card", do_charge)
        if ctx.attempt == 1:
            raise RuntimeError("crash after the charge")
        return receipt

    run_worker(w)
    async with Client(addr) as client:
        job = await client.submit("charge", b"", max_attempts=3)

        async def ok() -> bool:
            return (await client.get(job.id)).state == "succeeded"

        await eventually(ok, timeout=20)
        assert (await client.get(job.id)).result == b"receipt-42"
    assert charges == [1], "the step ran once; the retry read its stored result"
    assert await db.fetchval("SELECT count(*) FROM faultline_steps WHERE job_id = $1", int(job.id)) == 1


async def test_sync_handler_runs_in_thread(addr: str, run_worker: Any) -> None:
    import threading

    main = threading.get_ident()
    w = Worker(addr, handle_signals=False)

    @w.handler("sync")
    def sync(ctx: JobContext) -> bytes:
        return b"thread" if threading.get_ident() != main else b"loop"

    run_worker(w)
    async with Client(addr) as client:
        job = await client.submit("sync", b"")

        async def ok() -> bool:
            return (await client.get(job.id)).state == "succeeded"

        await eventually(ok, timeout=20)
        assert (await client.get(job.id)).result == b"thread"


async def test_done_when_200_echo_and_one_poison_within_40s(coordinator_factory: Any, run_worker: Any) -> None:
    """Issue 3's acceptance script, with FAULTLINE_BACKOFF_BASE_MS=100 / MAX_MS=500."""
    import time

    from coordinator.config import RetryDefaults

    c: Coordinator = await coordinator_factory(retry=RetryDefaults(base_ms=100, max_ms=500), lease_ttl_ms=30_000)
    addr = f"127.0.0.1:{c.port}"
    t0 = time.monotonic()
    w = Worker(addr, queues=["default"], concurrency=16, handle_signals=False)

    @w.handler("echo")
    async def echo(ctx: JobContext) -> bytes:
        return ctx.payload

    @w.handler("always-fails")
    async def fails(ctx: JobContext) -> bytes:
        raise RuntimeError("always")

    run_worker(w)
    async with Client(addr) as client:
        jobs = [await client.submit("echo", f"e{i}".encode()) for i in range(200)]
        bad = await client.submit("always-fails", b"", max_attempts=3)

        async def finished() -> bool:
            b = await client.get(bad.id)
            return b.state == "dead_lettered" and all(
                [(await client.get(j.id)).state == "succeeded" for j in jobs])

        await eventually(finished, timeout=40, message="all 201 jobs terminal")
        assert [(await client.get(j.id)).result for j in jobs] == [f"e{i}".encode() for i in range(200)]
        assert (await client.get(bad.id)).attempts == 3
    assert time.monotonic() - t0 < 40


async def test_shutdown_hands_back_a_prefetched_job_without_spending_its_attempt(addr: str, db: Any) -> None:
    """Prefetch must not make a deploy dead-letter work: a buffered job on its only attempt is queued again."""
    started = asyncio.Event()
    w = Worker(addr, concurrency=1, prefetch=1, drain_grace=timedelta(milliseconds=100),
               handle_signals=False)

    @w.handler("stuck")
    async def stuck(ctx: JobContext) -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(w.run())
    async with Client(addr) as client:
        running = await client.submit("stuck", b"1", max_attempts=1)
        await asyncio.wait_for(started.wait(), 15)
        buffered = await client.submit("stuck", b"2", max_attempts=1)
        await eventually(lambda: _state(db, buffered.id, "running"), message="the second job is buffered")
        await asyncio.wait_for(w.stop(), 30)
        await asyncio.wait_for(task, 30)
        row = await db.fetchrow("SELECT state, attempts FROM faultline_jobs WHERE id = $1", int(buffered.id))
        assert (row["state"], row["attempts"]) == ("queued", 0)
        assert await db.fetchval("SELECT count(*) FROM faultline_attempts WHERE job_id = $1", int(buffered.id)) == 0
        # The job that was running when the grace ran out had its one attempt: that is what it ran.
        assert (await client.get(running.id)).state.value == "dead_lettered"


async def _state(db: Any, job_id: str, state: str) -> bool:
    return bool(await db.fetchval("SELECT state = $2 FROM faultline_jobs WHERE id = $1", int(job_id), state))
