"""Two coordinators on one database: workers on either side share the queue, nothing is leased twice."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.helpers.wait import eventually
from worker_sdk import Client, JobContext, JobSpec, Worker


async def test_two_coordinators_share_one_queue_without_double_leases(coordinator_factory: Any, db: Any) -> None:
    a = await coordinator_factory()
    b = await coordinator_factory()
    addrs = [f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"]
    workers = []
    # Handlers hold their job until both workers have run one: otherwise A's worker can finish the
    # whole batch before B hears of it, and the test would only time that.
    seen: set[int] = set()
    both_seen = asyncio.Event()
    for i, addr in enumerate(addrs):
        w = Worker(addr, concurrency=8, worker_id=f"w-{i}", handle_signals=False)

        @w.handler("echo")
        async def echo(ctx: JobContext, i: int = i) -> bytes:
            seen.add(i)
            if len(seen) == len(addrs):
                both_seen.set()
            await both_seen.wait()
            return ctx.payload

        workers.append((w, asyncio.create_task(w.run())))
    # Submit everything through coordinator A only: B's workers must still get work
    # (B learns of it from A's NOTIFY, or at worst its dispatcher's fallback poll).
    async with Client(addrs[0]) as client:
        await client.submit_batch([JobSpec(kind="echo", payload=str(i).encode()) for i in range(2000)])

        async def done() -> bool:
            return await db.fetchval("SELECT count(*) FROM faultline_jobs WHERE state = 'succeeded'") == 2000

        await eventually(done, timeout=60, message="2,000 jobs done by two coordinators")
    per_worker = dict(await db.fetch("SELECT worker_id, count(*) FROM faultline_attempts GROUP BY worker_id"))
    assert set(per_worker) == {"w-0", "w-1"} and min(per_worker.values()) > 0, per_worker
    assert await db.fetchval("SELECT count(*) FROM faultline_attempts") == 2000, "no job was leased twice"
    for w, t in workers:
        await w.stop()
        await t
