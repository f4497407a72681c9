"""A coordinator SIGKILLed and restarted at once: the workers' held leases are resumed, not run again.

Real processes: a coordinator (python -m coordinator) killed with SIGKILL and started again on the same
port, and SDK worker processes holding many leases (running and prefetched). A lease is resumed when its
job is still on the token it had before the kill (no reaper re-queued it, so nothing runs twice).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

from tests.e2e.conftest import connected_workers
from tests.helpers.procs import Proc, free_port
from tests.helpers.wait import eventually
from worker_sdk import Client

#: A restart (a new Python process, migrations checked) takes about 0.5 s on a quiet machine, 1.5 s with both
#: cores busy and 4-5 s at a load average of 14 (seen at 3 s TTL: 165/180 resumed, the slow round past a third
#: of the TTL). The claim is about restarts within a third of the TTL: the TTL leaves room for a loaded machine
#: to meet it, and a slower round is not counted but followed by another kill, up to MAX_KILLS.
LEASE_TTL_MS = 18_000
WORKERS = 4
CONCURRENCY = 10  # capacity 15 each with the default prefetch
KILLS = 3  # rounds whose restart came back within a third of the TTL
MAX_KILLS = 6
JOB_MS = 120_000  # outlives every kill; the test cancels the jobs at the end
RESUMED_MIN = 0.95


async def test_held_leases_survive_repeated_coordinator_kills(
    coordinator_proc_factory: Callable[..., Awaitable[Proc]], worker_procs: Callable[..., Any], db: Any
) -> None:
    port = free_port()
    env = {"FAULTLINE_LEASE_TTL_MS": str(LEASE_TTL_MS)}
    coord = await coordinator_proc_factory(port=port, env=env)
    addr = str(coord.extra["addr"])
    ids = [f"resume-{i}" for i in range(WORKERS)]
    for wid in ids:
        await worker_procs(addr, wid, concurrency=CONCURRENCY)
    capacity = CONCURRENCY + CONCURRENCY // 2
    async with Client(addr) as c:
        jobs = [await c.submit("sleep", str(JOB_MS).encode()) for _ in range(WORKERS * capacity)]

    async def all_leased() -> bool:
        n = await db.fetchval("SELECT count(*) FROM faultline_jobs WHERE state = 'running'")
        return bool(n == len(jobs))

    await eventually(all_leased, timeout=60, message="every job leased")
    in_flight = resumed = 0
    downtimes: list[float] = []
    others: list[tuple[int, int]] = []  # (resumed, in flight) of rounds whose restart took longer
    counted = 0
    while counted < KILLS and len(downtimes) < MAX_KILLS:
        before = {r["id"]: r["lease_token"] for r in await db.fetch(
            "SELECT id, lease_token FROM faultline_jobs WHERE state = 'running'")}
        coord.signal(signal.SIGKILL)
        killed_at = time.monotonic()
        coord = await coordinator_proc_factory(port=port, env=env)
        downtimes.append(time.monotonic() - killed_at)

        async def reconnected() -> bool:
            return set(ids) <= await connected_workers(addr)

        await eventually(reconnected, timeout=60, message="workers reconnected")

        # Every lease either resumed or taken back by the reaper.
        async def settled(before: dict[int, int] = before) -> bool:
            rows = await db.fetch("SELECT id, lease_token, state FROM faultline_jobs WHERE id = ANY($1::bigint[])",
                                  list(before))
            async with Client(addr) as c:
                held = {lid for w in await c.list_workers() for lid in w.lease_ids}
            return all(f"{r['id']}.{r['lease_token']}" in held or r["lease_token"] != before[r["id"]]
                       for r in rows)

        await eventually(settled, timeout=60, message="leases resumed or reaped")
        after = {r["id"]: r["lease_token"] for r in await db.fetch(
            "SELECT id, lease_token FROM faultline_jobs WHERE id = ANY($1::bigint[])", list(before))}
        kept = sum(after[j] == t for j, t in before.items())
        if downtimes[-1] <= LEASE_TTL_MS / 3000:
            counted += 1
            in_flight += len(before)
            resumed += kept
        else:
            others.append((kept, len(before)))
    assert in_flight, f"no restart came back within a third of the TTL: {downtimes}"
    ratio = resumed / in_flight
    print(f"\nresumed/in-flight over {counted} coordinator kills: {resumed}/{in_flight} = {ratio:.3f}; "
          f"kill-to-serving {', '.join(f'{d:.2f}s' for d in downtimes)} (TTL {LEASE_TTL_MS / 1000:g}s); "
          f"slower rounds, not counted: {others}")
    assert ratio >= RESUMED_MIN, f"only {resumed} of {in_flight} in-flight leases were resumed"
    async with Client(addr) as c:
        for job in jobs:
            await c.cancel(job.id)
