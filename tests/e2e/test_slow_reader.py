"""Slow readers: a worker that never reads its stream is ended RESOURCE_EXHAUSTED and costs no memory.

A real coordinator process (its RSS read from /proc), a raw stream that says hello with credit and then
never reads, and an SDK worker process beside it. Jobs with large payloads are submitted twice in the same
way: first with no silent stream (the control: what this load costs the process, its allocator's high-water
mark included), then with it. The coordinator's peak RSS in the second round must stay within RSS_GROWTH_MAX
of the first's, the silent stream must be ended, and the SDK worker must run every job.
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
LEASE_TTL_MS = 10_000
# 8 MiB of unacknowledged grants is 32 of these, and hand-offs reserved before the mark was passed (one per
# submitter) may follow. Without the acknowledgement count it was 48-52 here, and 186 in one run.
SILENT_GRANTS_MAX = 44


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
    # A 10 s lease TTL: at the suite's 2 s, 100 MiB of payloads through one Postgres on a loaded machine make the
    # reading worker miss heartbeat replies and reconnect, and the jobs it runs again are memory that varies
    # from run to run by more than this test's bound.
    coord = await coordinator_proc_factory(env={"FAULTLINE_METRICS_ADDR": metrics_addr,
                                                "FAULTLINE_LEASE_TTL_MS": str(LEASE_TTL_MS)})
    addr = str(coord.extra["addr"])
    await worker_procs(addr, "reader", concurrency=4, queues="big")
    payload = b"p" * PAYLOAD_BYTES
    async with Client(addr) as client:
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

        peak = rss_bytes(coord.pid)
        stop = asyncio.Event()

        async def sample() -> None:
            nonlocal peak
            while not stop.is_set():
                peak = max(peak, rss_bytes(coord.pid))
                await asyncio.sleep(0.05)

        async def submit_all() -> list[str]:
            ids: list[str] = []

            async def submitter(n: int) -> None:
                for _ in range(n):
                    ids.append((await client.submit("echo", payload, queue="big")).id)

            await asyncio.gather(*(submitter(JOBS // SUBMITTERS) for _ in range(SUBMITTERS)))
            return ids

        # The control round: the same load with no silent stream. At 256 KiB a job, the allocator's
        # high-water mark for it is tens of MiB and varies from run to run, so a baseline taken before
        # the load would measure the allocator, not the silent worker.
        sampler = asyncio.create_task(sample())
        control = await submit_all()
        await eventually(lambda: finished(control), timeout=180, message="the control round ran")
        stop.set()
        await sampler
        baseline = max(peak, rss_bytes(coord.pid))

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
        sampler = asyncio.create_task(sample())
        ids = await submit_all()

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
    print(f"slow reader: coordinator RSS peak without the silent stream {baseline / 2**20:.1f} MiB, "
          f"with it {peak / 2**20:.1f} MiB, growth {growth / 2**20:.1f} MiB; {JOBS} jobs of {PAYLOAD_BYTES >> 10} KiB; "
          f"stream ended {code}")
    assert growth < RSS_GROWTH_MAX, f"coordinator RSS grew {growth / 2**20:.1f} MiB"
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED, code
    assert "not reading its stream" in details
    aborted = [line for line in text.splitlines() if line.startswith("faultline_sessions_aborted_total{")]
    assert any('reason="slow_reader"' in line and not line.endswith(" 0.0") for line in aborted), aborted
    assert coord.alive()


async def test_a_silent_stream_is_not_fed_again_each_time_its_leases_expire(
    coordinator_proc_factory: Callable[..., Awaitable[Proc]], worker_procs: Callable[..., Any], dsn: str
) -> None:
    """gRPC and the kernel take writes off the outbox that the worker never reads, so the outbox stays short;
    each expired lease gives its slot back. Only grants the worker has not acknowledged (named) can tell the
    coordinator that nothing it sent was read: past 8 MiB of them the stream gets nothing more."""
    coord = await coordinator_proc_factory()  # the suite's 2 s TTL: leases expire while the stream is open
    addr = str(coord.extra["addr"])
    await worker_procs(addr, "reader", concurrency=4, queues="big")
    channel = grpc.aio.insecure_channel(addr)

    async def silent_requests() -> AsyncIterator[Any]:
        yield wpb.ConnectRequest(frames=[
            wpb.WorkerFrame(hello=wpb.Hello(worker_id="silent", queues=["big"], kinds=["echo"],
                                            capacity=SILENT_CAPACITY, sdk_name="silent")),
            wpb.WorkerFrame(credit=wpb.Credit(count=SILENT_CAPACITY)),
        ])
        await asyncio.Event().wait()

    silent = worker_service_pb2_grpc.WorkerServiceStub(channel).Connect(silent_requests())
    payload = b"p" * PAYLOAD_BYTES
    async with Client(addr) as client:
        async def silent_listed() -> bool:
            return any(w.worker_id == "silent" for w in await client.list_workers())

        await eventually(silent_listed, timeout=30, message="the silent worker connected")
        ids: list[str] = []

        async def submitter(n: int) -> None:
            for _ in range(n):
                ids.append((await client.submit("echo", payload, queue="big")).id)

        await asyncio.gather(*(submitter(JOBS // SUBMITTERS) for _ in range(SUBMITTERS)))

        async def silent_gone() -> bool:
            return not await silent_listed()

        await eventually(silent_gone, timeout=90, message="the silent worker's stream was ended")
        con = await asyncpg.connect(dsn)
        try:
            async def all_done() -> bool:
                n = await con.fetchval("SELECT count(*) FROM faultline_jobs WHERE id = ANY($1::bigint[]) "
                                       "AND state = 'succeeded'", [int(i) for i in ids])
                return bool(n == len(ids))

            await eventually(all_done, timeout=180, message="every job ran on the reading worker")
            granted = await con.fetchval("SELECT count(*) FROM faultline_attempts WHERE worker_id = 'silent'")
        finally:
            await con.close()
    silent.cancel()
    await channel.close()
    print(f"silent stream: {granted} leases granted to it; {JOBS} jobs of {PAYLOAD_BYTES >> 10} KiB")
    assert granted <= SILENT_GRANTS_MAX, f"{granted} leases were granted to a stream that never read one"
    assert coord.alive()
