"""Console page times with a million jobs: fill a fresh database, start a coordinator and the console, time pages.

    .venv/bin/python scripts/console_bench.py [--jobs 1000000] [--loads 20] [--out FILE.json]
    (needs FAULTLINE_TEST_DSN's server, default postgresql://postgres@127.0.0.1:5432/postgres; makes its own DB)

The fill is the bench-only named query bench_fill_jobs (coordinator/db/queries.sql) in chunks, then ANALYZE.
The coordinator (`python -m coordinator`) and the console (`faultline console`) run as their own processes,
auth off; each page is fetched --loads times in a row over HTTP after one warm-up load, and the median and
the slowest are reported. A page's time is the console's whole answer: its gRPC calls, the coordinator's
queries, rendering. The console's stop on SIGTERM is timed too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from coordinator.bench.runner import fresh_database
from coordinator.db.migrate import migrate
from coordinator.db.pool import create_pool
from coordinator.db.store import Store
from worker_sdk import Client

ADMIN = os.environ.get("FAULTLINE_TEST_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
JOBS_DEFAULT = 1_000_000
LOADS_DEFAULT = 20
FILL_CHUNK = 100_000
QUEUES = 12
START_TIMEOUT_S = 60.0
POLL_S = 0.1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _fill(dsn: str, jobs: int) -> float:
    con = await asyncpg.connect(dsn)
    try:
        await migrate(con)
    finally:
        await con.close()
    pool = await create_pool(dsn, max_size=2)
    store = Store(pool)
    started = time.perf_counter()
    try:
        done = 0
        while done < jobs:
            n = min(FILL_CHUNK, jobs - done)
            done += await store.bench_fill_jobs(done + 1, n, QUEUES)
            print(f"  filled {done:,} / {jobs:,}", flush=True)
        await store.bench_analyze_jobs()
    finally:
        await pool.close()
    return time.perf_counter() - started


async def _until(check: Any, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            if await check():
                return
        except (OSError, aiohttp.ClientError, grpc.aio.AioRpcError):
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"console_bench: {what} did not happen within {START_TIMEOUT_S}s")
        await asyncio.sleep(POLL_S)


async def _time_page(http: aiohttp.ClientSession, url: str, loads: int) -> dict[str, Any]:
    async with http.get(url) as r:  # warm-up (and the status to report)
        status = r.status
        await r.read()
    times = []
    for _ in range(loads):
        t0 = time.perf_counter()
        async with http.get(url) as r:
            body = await r.read()
        times.append((time.perf_counter() - t0) * 1000)
    return {"status": status, "bytes": len(body), "median_ms": statistics.median(times), "max_ms": max(times)}


async def main(args: argparse.Namespace) -> dict[str, Any]:
    async with fresh_database(ADMIN, "faultline_console_bench") as dsn:
        print(f"filling {args.jobs:,} jobs", flush=True)
        fill_s = await _fill(dsn, args.jobs)
        grpc_port, http_port = _free_port(), _free_port()
        addr = f"127.0.0.1:{grpc_port}"
        env = dict(os.environ, DATABASE_URL=dsn, FAULTLINE_GRPC_ADDR=addr, FAULTLINE_METRICS_ADDR="off",
                   FAULTLINE_LOG_LEVEL="WARNING")
        coord = await asyncio.create_subprocess_exec(sys.executable, "-m", "coordinator", env=env)
        console = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "import sys; from coordinator.cli import main; sys.exit(main())", "console",
            "--addr", f"127.0.0.1:{http_port}", "--coordinator", addr, env=env)
        base = f"http://127.0.0.1:{http_port}"
        results: dict[str, Any] = {}
        try:
            async with Client(addr) as client, aiohttp.ClientSession() as http:
                async def sampled() -> bool:
                    async with http.get(base + "/") as r:
                        return r.status == 200 and "bench-q3" in await r.text()

                await _until(sampled, "the overview showing the filled queues")
                jobs, _ = await client.list(page_size=1)
                one = jobs[0].id
                async with http.get(base + "/jobs") as r:
                    m = re.search(r'href="(/jobs\?[^"]*page_token=[^"]*)" rel="next"', await r.text())
                page2 = m.group(1).replace("&amp;", "&") if m else "/jobs"
                pages = {
                    "overview": "/",
                    "jobs (newest 50)": "/jobs",
                    "jobs page 2": page2,
                    "jobs ?queue": "/jobs?queue=bench-q3",
                    "jobs ?queue&state=queued": "/jobs?queue=bench-q3&state=queued",
                    "jobs ?kind": "/jobs?kind=bench.kind2",
                    "jobs ?label (1 in 50)": "/jobs?label=tenant%3Dt7",
                    "jobs ?label (matches none)": "/jobs?label=tenant%3Dnobody",
                    "find by idempotency key": "/jobs?find=bench-key-500000",
                    "dead letters": "/dlq",
                    "dead letters ?queue": "/dlq?queue=bench-q1",
                    "one job": f"/jobs/{one}",
                    "workers": "/workers",
                    "schedules": "/schedules",
                }
                for name, path in pages.items():
                    results[name] = await _time_page(http, base + path, args.loads)
                    r = results[name]
                    print(f"  {name:<30} {r['status']}  median {r['median_ms']:8.1f} ms   "
                          f"slowest {r['max_ms']:8.1f} ms", flush=True)
        finally:
            t0 = time.perf_counter()
            console.send_signal(signal.SIGTERM)
            console_rc = await asyncio.wait_for(console.wait(), 30)
            stop_s = time.perf_counter() - t0
            coord.send_signal(signal.SIGTERM)
            await asyncio.wait_for(coord.wait(), 60)
        print(f"console stopped on SIGTERM in {stop_s:.2f} s (exit {console_rc})")
        report = {"jobs": args.jobs, "loads": args.loads, "fill_s": fill_s, "console_stop_s": stop_s,
                  "pages": results}
        print(json.dumps(report, indent=2))
        return report


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--jobs", type=int, default=JOBS_DEFAULT)
    p.add_argument("--loads", type=int, default=LOADS_DEFAULT)
    p.add_argument("--out", default=None)
    parsed = p.parse_args()
    out = asyncio.run(main(parsed))
    if parsed.out:
        Path(parsed.out).write_text(json.dumps(out, indent=2) + "\n")
