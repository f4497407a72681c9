"""Watch latency: from a committed state change to a WatchJob watcher on another coordinator seeing it.

    .venv/bin/python scripts/watch_latency.py [SAMPLES=60]   (needs FAULTLINE_TEST_DSN's server; makes its own DB)

Two in-process coordinators on a fresh database; a job is submitted through A and watched through B; another
session cancels it (UPDATE ... clock_timestamp()), and the watcher's receive time minus the commit's timestamp is
one sample (one clock: the same machine). Changes land at varied phases of the hub's poll.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from coordinator.app import Coordinator
from coordinator.config import Config
from worker_sdk import Client

ADMIN = os.environ.get("FAULTLINE_TEST_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
DB = "faultline_watch_latency"
SETTLE_S = 0.15  # the watch is open and polled before the change
PHASE_STEP_S = 0.013


async def main(samples: int) -> None:
    admin = await asyncpg.connect(ADMIN)
    await admin.execute("DROP DATABASE IF EXISTS faultline_watch_latency")
    await admin.execute("CREATE DATABASE faultline_watch_latency")
    await admin.close()
    dsn = ADMIN.rsplit("/", 1)[0] + "/" + DB
    a = Coordinator(Config(database_url=dsn, grpc_addr="127.0.0.1:0", metrics_addr=None))
    await a.start()
    b = Coordinator(Config(database_url=dsn, grpc_addr="127.0.0.1:0", metrics_addr=None))
    await b.start()
    con = await asyncpg.connect(dsn)
    lat: list[float] = []
    try:
        async with Client(f"127.0.0.1:{a.port}") as ca, Client(f"127.0.0.1:{b.port}") as cb:
            for i in range(samples):
                job = await ca.submit("parked")
                seen_at: list[float] = []

                async def follow(job_id: str, seen: list[float]) -> None:
                    async for j in cb.watch(job_id):
                        if j.state == "cancelled":
                            seen.append(time.time())

                task = asyncio.create_task(follow(job.id, seen_at))
                await asyncio.sleep(SETTLE_S + (i % 7) * PHASE_STEP_S)
                changed = await con.fetchval(
                    "UPDATE faultline_jobs SET state = 'cancelled', finished_at = clock_timestamp(), "
                    "updated_at = clock_timestamp() WHERE id = $1 RETURNING updated_at", int(job.id))
                await asyncio.wait_for(task, 10)
                lat.append((seen_at[0] - changed.timestamp()) * 1000)
    finally:
        await con.close()
        await b.stop()
        await a.stop()
    lat.sort()
    print(f"n={len(lat)} p50_ms={statistics.median(lat):.1f} p90_ms={lat[int(len(lat) * 0.9)]:.1f} "
          f"max_ms={lat[-1]:.1f}")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 60))
