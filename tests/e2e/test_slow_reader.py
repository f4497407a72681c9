"""Slow readers: a worker that never reads its stream is ended RESOURCE_EXHAUSTED and costs no memory.

A real coordinator process (its RSS read from /proc), a raw stream that says hello with credit and then
never reads, and an SDK worker process beside it. Jobs with large payloads are submitted; the
coordinator's RSS must stay within RSS_GROWTH_MAX of where it started, the silent stream must be ended,
and the SDK worker must run every job.
"""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import grpc

from tests.helpers.procs import Proc, free_port
from tests.helpers.wait import eventually
from worker_sdk import Client
from worker_sdk._proto.faultline.v1 import worker_service_pb2 as wpb
from worker_sdk._proto.faultline.v1 import worker_service_pb2_grpc

PAYLOAD_BYTES = 256 << 10
JOBS = 400  # 100 MiB of payloads: a coordinator that queued them all for the silent worker grows far past the bound
SUBMITTERS = 8
SILENT_CAPACITY = 1_000
RSS_GROWTH_MAX = 50 << 20
WARMUP_JOBS = 40


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def scrape(addr: str) -> str:
    with urllib.request.urlopen(f"http://{addr}/metrics", timeout=10) as r:
        return str(r.read().decode())


async def test_a_worker_that_never_reads_is_ended_and_costs_no_memory(
    coordinator_proc_factory: Callable[..., Awaitable[Proc]], worker_procs: Callable[..., Any], dsn: str
) -> None:
    metrics_addr = f"127.0.0.1:{free_port()}"
    coord = await coordinator_proc_factory(env={"FAULTLINE_METRICS_ADDR": metrics_addr})
    addr = str(coord.extra["addr"])
    await worker_procs(addr, "reader", concurrency=4, queues="big")
    payload = b"p" * PAYLOAD_BYTES
    async with Client(addr) as client:
        # Warm up every path the test takes (submit, hand-off, grant, completion of a large job), so that
        # the baseline is the process at work, not the process before its first job.
        warm = [(await client.submit("echo", payload, queue="big")).id for _ in range(WARMUP_JOBS)]

        async def finished(ids: list[str]) -> bool:
            # From Postgres, not GetJob: reading 400 payloads back through the coordinator would be the
            # memory this test measures.
            con = await asyncpg.connect(dsn)
            try:
                done = await con.fetchval("SELECT count(*) FROM faultline_jobs WHERE id = ANY($1::bigint[]) "
                                          "AND state = 'succeeded'", [int(i) for i in ids])
            finally:
                await con.close()
            return bool(done == len(ids))

        await eventually(lambda: finished(warm), timeout=60, message="warm-up jobs done")
        baseline = rss_bytes(coord.pid)

        sent = asyncio.Event()

        async def silent_requests() -> AsyncIterator[Any]:
            yield wpb.ConnectRequest(frames=[
                wpb.WorkerFrame(hello=wpb.Hello(worker_id="silent", queues=["big"], kinds=["echo"],
                                                capacity=SILENT_CAPACITY, sdk_name="silent")),
                wpb.WorkerFrame(credit=wpb.Credit(count=SILENT_CAPACITY)),
            ])
            sent.set()
            await asyncio.Event().wait()

        channel = grpc.aio.insecure_channel(addr)
        silent = worker_service_pb2_grpc.WorkerServiceStub(channel).Connect(silent_requests())

        async def silent_listed() -> bool:
            return any(w.worker_id == "silent" for w in await client.list_workers())

        await eventually(silent_listed, timeout=30, message="the silent worker connected")

        peak = baseline
        stop = asyncio.Event()

        async def sample() -> None:
            nonlocal peak
            while not stop.is_set():
                peak = max(peak, rss_bytes(coord.pid))
                await asyncio.sleep(0.05)

        sampler = asyncio.create_task(sample())
        ids: list[str] = []

        async def submitter(n: int) -> None:
            for _ in range(n):
                ids.append((await client.submit("echo", payload, queue="big")).id)

        await asyncio.gather(*(submitter(JOBS // SUBMITTERS) for _ in range(SUBMITTERS)))

        async def silent_gone() -> bool:
            return not await silent_listed()

        await eventually(silent_gone, timeout=90, message="the silent worker's stream was ended")
        await eventually(lambda: finished(ids), timeout=180, message="every job ran on the reading worker")
        stop.set()
        await sampler
        peak = max(peak, rss_bytes(coord.pid))

        # Now read: the frames the coordinator had written, then the status it ended the stream with.
        code = None
        try:
            async for _ in silent:
                pass
        except grpc.aio.AioRpcError as exc:
            code, details = exc.code(), exc.details() or ""
        await channel.close()
        text = scrape(metrics_addr)
    growth = peak - baseline
    print(f"slow reader: coordinator RSS baseline {baseline / 2**20:.1f} MiB, peak {peak / 2**20:.1f} MiB, "
          f"growth {growth / 2**20:.1f} MiB; {JOBS} jobs of {PAYLOAD_BYTES >> 10} KiB; stream ended {code}")
    assert growth < RSS_GROWTH_MAX, f"coordinator RSS grew {growth / 2**20:.1f} MiB"
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED, code
    assert "not reading its stream" in details
    aborted = [line for line in text.splitlines() if line.startswith("faultline_sessions_aborted_total{")]
    assert any('reason="slow_reader"' in line and not line.endswith(" 0.0") for line in aborted), aborted
    assert coord.alive()
