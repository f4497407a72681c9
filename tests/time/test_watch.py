"""WatchJob, Client.watch and Client.wait against real coordinators: across coordinators, bounded per watcher."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import grpc
import pytest

from coordinator.model import JobState
from coordinator.watch import Watcher
from tests.helpers.wait import eventually
from worker_sdk import Client, JobContext, JobNotFoundError, WaitTimeoutError, Worker
from worker_sdk._proto.faultline.v1 import job_service_pb2, job_service_pb2_grpc


async def test_watch_follows_a_job_run_on_another_coordinator_to_its_end(coordinator_factory: Any) -> None:
    a = await coordinator_factory()
    b = await coordinator_factory()
    release = asyncio.Event()
    w = Worker(f"127.0.0.1:{a.port}", concurrency=2, handle_signals=False)

    @w.handler("steps")
    async def steps(ctx: JobContext) -> bytes:
        await ctx.progress(0.25, "a quarter")
        await release.wait()
        return b"done"

    task = asyncio.create_task(w.run())
    try:
        async with Client(f"127.0.0.1:{a.port}") as producer, Client(f"127.0.0.1:{b.port}") as watcher:
            job = await producer.submit("steps")
            seen: list[Any] = []

            async def follow() -> None:
                async for j in watcher.watch(job.id):
                    seen.append(j)

            follower = asyncio.create_task(follow())
            await eventually(lambda: any(j.progress_message == "a quarter" for j in seen), timeout=20,
                             message="progress seen through coordinator B")
            release.set()
            finished = await watcher.wait(job.id, timeout=timedelta(seconds=20))
            await asyncio.wait_for(follower, 20)
        assert finished.state == "succeeded" and finished.result == b"done"
        assert seen[-1].state == "succeeded" and seen[-1].result == b""  # BASIC view unless asked
        assert [j.state for j in seen].count("succeeded") == 1
        assert any(j.state == "running" for j in seen)
    finally:
        release.set()
        await w.stop()
        await task


async def test_wait_times_out_and_an_unknown_job_is_not_found(addr: str) -> None:
    async with Client(addr) as client:
        job = await client.submit("nobody-runs-this")
        with pytest.raises(WaitTimeoutError):
            await client.wait(job.id, timeout=timedelta(milliseconds=300))
        with pytest.raises(JobNotFoundError):
            await client.wait("987654321", timeout=timedelta(seconds=5))
        with pytest.raises(Exception, match="id"):
            async for _ in client.watch("not-a-number"):
                pass


async def test_a_watcher_that_never_reads_holds_one_job_not_a_backlog(addr: str, db: Any) -> None:
    """The stream is sampled: 300 changes while the client reads nothing reach it as a handful of messages."""
    async with Client(addr) as client:
        job = await client.submit("parked")
    async with grpc.aio.insecure_channel(addr) as ch:
        stub = job_service_pb2_grpc.JobServiceStub(ch)  # type: ignore[no-untyped-call]
        call = stub.WatchJob(job_service_pb2.WatchJobRequest(id=job.id))
        first = await call.read()
        assert first.job.id == job.id
        for i in range(300):  # 300 visible changes, faster than the hub's poll
            await db.execute("UPDATE faultline_jobs SET priority = $2, updated_at = now() WHERE id = $1",
                             int(job.id), i % 1000)
        await db.execute("UPDATE faultline_jobs SET state = 'cancelled', finished_at = now(), updated_at = now() "
                         "WHERE id = $1", int(job.id))
        got = []
        while (m := await call.read()) is not grpc.aio.EOF:
            got.append(m)
    assert got[-1].job.state == 6  # JOB_STATE_CANCELLED: the final state always arrives
    assert len(got) < 50, f"{len(got)} messages: changes were queued, not sampled"


def test_watcher_slot_keeps_only_the_latest_job() -> None:
    from coordinator.model import Job

    w = Watcher(1)
    base: dict[str, Any] = dict(
        id=1, queue="q", kind="k", priority=0, payload=b"", result=None, last_error=None, attempts=0,
        max_attempts=1, idempotency_key=None, labels={}, backoff_initial_ms=None, backoff_max_ms=None,
        backoff_multiplier=None, backoff_jitter=None, execution_timeout_ms=None, heartbeat_timeout_ms=None,
        schedule_to_start_ms=None, trace_context=None, lease_token=0, worker_id=None, lease_expires_at=None,
        cancel_requested=False, progress_fraction=None, progress_details=None, created_at=None, run_at=None,
        started_at=None, finished_at=None, updated_at=None)
    for i in range(10_000):
        w.offer(Job(**base, state=JobState.RUNNING, progress_message=str(i)))
    latest = asyncio.run(w.next())
    assert latest is not None and latest.progress_message == "9999"
    assert not hasattr(w, "__dict__") or len(vars(w)) <= 4


async def test_watchers_past_the_limit_are_refused(coordinator_factory: Any) -> None:
    c = await coordinator_factory(watchers_max=2)
    addr = f"127.0.0.1:{c.port}"
    async with Client(addr) as client:
        job = await client.submit("parked")
    async with grpc.aio.insecure_channel(addr) as ch:
        stub = job_service_pb2_grpc.JobServiceStub(ch)  # type: ignore[no-untyped-call]
        calls = [stub.WatchJob(job_service_pb2.WatchJobRequest(id=job.id)) for _ in range(2)]
        for call in calls:
            await call.read()
        third = stub.WatchJob(job_service_pb2.WatchJobRequest(id=job.id))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await third.read()
        assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        for call in calls:
            call.cancel()


@pytest.mark.timeout(120)
async def test_wait_survives_its_coordinator_being_killed_and_restarted(coordinator_proc_factory: Any, db: Any) -> None:
    import signal as signals

    from tests.helpers.procs import free_port

    port = free_port()
    first = await coordinator_proc_factory(port=port)
    addr = str(first.extra["addr"])
    async with Client(addr) as client:
        job = await client.submit("parked")
        seen: list[Any] = []

        async def follow() -> Any:
            async for j in client.watch(job.id):
                seen.append(j)
            return seen[-1]

        follower = asyncio.create_task(follow())
        await eventually(lambda: bool(seen), timeout=20, message="the watch's first message")
        first.signal(signals.SIGKILL)
        await db.execute("UPDATE faultline_jobs SET state = 'cancelled', finished_at = now(), updated_at = now() "
                         "WHERE id = $1", int(job.id))
        await coordinator_proc_factory(port=port)  # back on the same address: the watch reconnects by itself
        last = await asyncio.wait_for(follower, 60)
    assert last.state == "cancelled" and [j.state for j in seen] == ["queued", "cancelled"]
