"""PgQueuer as a peer, through its public API only (PgQueuer, Queries, AsyncpgDriver, entrypoint, run).

Each run gets a fresh database on the same server, `Queries.install()`, the same producers as Faultline
(N tasks; one `enqueue` call per job, or per --batch list) and one consumer subprocess
(`python -m coordinator.bench.peers`) that runs K PgQueuer instances, each on its own asyncpg
connection, in one uvloop, the way PgQueuer's own tools/benchmark.py does. Shapes:

    defaults      1 instance, run() defaults (batch_size 10)
    tasks         1 instance, max_concurrent_tasks = --concurrency (PgQueuer needs >= 2 x batch_size)
    bench         5 instances, batch_size 10: the shape of PgQueuer's own benchmark (-dq 5, batch 10)

A PgQueuer job counts as complete once its row has left the queue table (PgQueuer buffers its status
log and deletes finished rows in batches): after the handlers counted every job, the parent polls
`Queries.queue_size()` until no row is left and takes that moment as the last completion.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from array import array
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from coordinator.bench.runner import BenchConfig, Harness
from coordinator.bench.worker import KIND, PAYLOAD, REPORT_MIN_INTERVAL_S

if TYPE_CHECKING:
    from pgqueuer import Queries

BENCH_CONSUMERS = 5
BENCH_BATCH = 10
DEFAULT_BATCH = 10
SETTLE_POLL_S = 0.005
READY_DELAY_S = 0.5
SHAPES = ("defaults", "tasks", "bench")


def available() -> bool:
    try:
        import pgqueuer  # noqa: F401
    except ImportError:
        return False
    return True


def version() -> str:
    import pgqueuer

    return str(getattr(pgqueuer, "__version__", "?"))


def shape_args(shape: str, concurrency: int) -> tuple[int, int, int]:
    """(instances, batch_size, max_concurrent_tasks or 0) for a shape."""
    match shape:
        case "defaults":
            return 1, DEFAULT_BATCH, 0
        case "tasks":
            return 1, max(1, min(DEFAULT_BATCH, concurrency // 2)), max(concurrency, 2)
        case "bench":
            return BENCH_CONSUMERS, BENCH_BATCH, 0
    raise ValueError(f"unknown PgQueuer shape {shape!r}; one of {', '.join(SHAPES)}")


class PgQueuerHarness(Harness):
    """PgQueuer in one of SHAPES (see the module docstring)."""

    system = "pgqueuer"

    def __init__(self, cfg: BenchConfig, tmp: Path, say: Callable[[str], None], shape: str) -> None:
        super().__init__(cfg, tmp, say)
        self._shape = shape
        self._dsn = ""
        self._connections: list[object] = []

    @property
    def shape(self) -> str:
        n, batch, tasks = shape_args(self._shape, self.cfg.concurrency)
        more = f", max_concurrent_tasks {tasks}" if tasks else ""
        return f"{self._shape}: {n} x batch {batch}{more}"

    async def start(self, dsn: str | None) -> None:
        assert dsn is not None
        self._dsn = dsn
        queries = await self._queries()
        await queries.install()

    async def _queries(self) -> Queries:
        import asyncpg
        from pgqueuer import AsyncpgDriver, Queries

        con = await asyncpg.connect(self._dsn)
        self._connections.append(con)
        return Queries(AsyncpgDriver(con))

    def consumer_commands(self) -> list[list[str]]:
        n, batch, tasks = shape_args(self._shape, self.cfg.concurrency)
        return [[sys.executable, "-m", "coordinator.bench.peers", "--dsn", self._dsn, "--instances", str(n),
                 "--batch-size", str(batch), "--max-concurrent-tasks", str(tasks),
                 "--sleep-ms", str(self.cfg.sleep_ms)]]

    async def open_producer(self) -> Callable[[list[bytes]], object]:
        queries = await self._queries()

        async def submit(payloads: list[bytes]) -> None:
            if len(payloads) == 1 and self.cfg.batch == 1:
                await queries.enqueue(KIND, payloads[0])
            else:
                await queries.enqueue([KIND] * len(payloads), list(payloads), [0] * len(payloads))

        return submit

    async def settle(self, target: int) -> int:
        queries = await self._queries()
        while True:
            left = sum(s.count for s in await queries.queue_size())
            now = time.time_ns()
            if left == 0:
                return now
            await asyncio.sleep(SETTLE_POLL_S)

    async def stop(self) -> None:
        for con in self._connections:
            await con.close()  # type: ignore[attr-defined]


# ---- the consumer subprocess ----------------------------------------------------------------


async def _consume(args: argparse.Namespace) -> None:
    import asyncpg
    from pgqueuer import AsyncpgDriver, Job, PgQueuer

    latencies: dict[int, array[float]] = {}
    done = 0
    last_ns = 0
    wake = asyncio.Event()
    sleep_s = args.sleep_ms / 1000.0
    instances: list[PgQueuer] = []
    for _ in range(args.instances):
        pgq = PgQueuer(AsyncpgDriver(await asyncpg.connect(args.dsn)))

        @pgq.entrypoint(KIND)
        async def noop(job: Job) -> None:
            nonlocal done, last_ns
            started = time.time_ns()
            if job.payload and len(job.payload) >= PAYLOAD.size:
                submitted, phase = PAYLOAD.unpack_from(job.payload)
                latencies.setdefault(phase, array("d")).append((started - submitted) / 1e6)
            if sleep_s:
                await asyncio.sleep(sleep_s)
            done += 1
            last_ns = time.time_ns()
            wake.set()

        instances.append(pgq)

    async def report() -> None:
        # PgQueuer exposes no "listening" hook; give every instance time to LISTEN before saying ready.
        await asyncio.sleep(READY_DELAY_S)
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        written = -1
        while True:
            await wake.wait()
            wake.clear()
            if done != written:
                written = done
                sys.stdout.write(f"done {done} {last_ns}\n")
                sys.stdout.flush()
            await asyncio.sleep(REPORT_MIN_INTERVAL_S)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    import signal

    loop.add_signal_handler(signal.SIGTERM, stop.set)
    runs = [
        asyncio.create_task(pgq.run(batch_size=args.batch_size, max_concurrent_tasks=args.max_concurrent_tasks or None))
        for pgq in instances
    ]
    reporter = asyncio.create_task(report())
    await stop.wait()
    for pgq in instances:
        pgq.shutdown.set()
    await asyncio.wait(runs, timeout=10)
    reporter.cancel()
    Path(args.out).write_text(json.dumps({str(k): list(v) for k, v in latencies.items()}))


def cli() -> None:
    p = argparse.ArgumentParser(prog="python -m coordinator.bench.peers")
    p.add_argument("--dsn", required=True)
    p.add_argument("--instances", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH)
    p.add_argument("--max-concurrent-tasks", type=int, default=0)
    p.add_argument("--sleep-ms", type=float, default=0.0)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    try:
        import uvloop

        uvloop.run(_consume(args))
    except ImportError:
        asyncio.run(_consume(args))


if __name__ == "__main__":
    cli()
