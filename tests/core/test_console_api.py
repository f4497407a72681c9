"""The console's reads over real gRPC and Postgres: ListJobs label and key filters, GetJob's trace id and attempts."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from tests.conftest import bounded
from tests.helpers.raw_worker import RawWorker
from worker_sdk._proto.faultline.v1 import job_pb2, job_service_pb2_grpc
from worker_sdk._proto.faultline.v1 import job_service_pb2 as jpb

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


@pytest.fixture
async def stub(addr: str) -> AsyncIterator[Any]:
    ch = grpc.aio.insecure_channel(addr)
    yield job_service_pb2_grpc.JobServiceStub(ch)
    await bounded(ch.close(), "channel.close()")


async def test_list_jobs_filters_on_every_label_given_and_on_the_idempotency_key(stub: Any) -> None:
    reqs = [
        jpb.SubmitRequest(kind="k", queue="lab", labels={"team": "a", "env": "prod"}, idempotency_key="one"),
        jpb.SubmitRequest(kind="k", queue="lab", labels={"team": "a", "env": "dev"}),
        jpb.SubmitRequest(kind="k", queue="lab", labels={"team": "b", "env": "prod"}, idempotency_key="two"),
        jpb.SubmitRequest(kind="k", queue="other", labels={"team": "a", "env": "prod"}, idempotency_key="one"),
    ]
    ids = [r.job.id for r in (await stub.SubmitBatch(jpb.SubmitBatchRequest(jobs=reqs))).results]

    async def listed(**f: Any) -> list[str]:
        return [j.id for j in (await stub.ListJobs(jpb.ListJobsRequest(page_size=100, **f))).jobs]

    assert await listed(labels={"team": "a"}) == [ids[3], ids[1], ids[0]]
    assert await listed(labels={"team": "a", "env": "prod"}) == [ids[3], ids[0]]
    assert await listed(queue="lab", labels={"team": "a", "env": "prod"}) == [ids[0]]
    assert await listed(labels={"team": "c"}) == []
    assert await listed(idempotency_key="one") == [ids[3], ids[0]]
    assert await listed(queue="lab", idempotency_key="one") == [ids[0]]
    assert await listed(queue="lab", idempotency_key="two", labels={"team": "a"}) == []
    full = await stub.ListJobs(jpb.ListJobsRequest(labels={"env": "prod"}, view=job_pb2.JOB_VIEW_FULL))
    assert [j.id for j in full.jobs] == [ids[3], ids[2], ids[0]]


@pytest.mark.parametrize("request_,field", [
    (jpb.ListJobsRequest(labels={f"k{i}": "v" for i in range(9)}), "labels"),
    (jpb.ListJobsRequest(labels={"": "v"}), "labels"),
    (jpb.ListJobsRequest(labels={"a": "v\x00"}), "labels"),
    (jpb.ListJobsRequest(idempotency_key="a b"), "idempotency_key"),
    (jpb.ListJobsRequest(idempotency_key="k" * 257), "idempotency_key"),
])
async def test_list_jobs_refuses_bad_filters_naming_the_field(stub: Any, request_: Any, field: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ListJobs(request_, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.value.details() or "").startswith(field)


async def test_get_job_carries_its_trace_id_and_each_attempts_token_times_and_error(stub: Any, addr: str) -> None:
    job = (await stub.Submit(jpb.SubmitRequest(kind="echo", max_attempts=3),
                             metadata=(("traceparent", TRACEPARENT),))).job
    plain = (await stub.Submit(jpb.SubmitRequest(kind="other"))).job
    w = await RawWorker(addr, "w1", kinds=("echo",)).connect()
    try:
        w.credit(1)
        first = await w.next_grant()
        long_error = "é" * 5000  # 10,000 bytes of UTF-8: truncated to 4096 bytes, never inside a character
        assert (await w.fail(first, long_error)).status
        w.credit(1)
        second = await w.next_grant()
        await w.complete(second, b"ok")
    finally:
        await w.close()
    got = await stub.GetJob(jpb.GetJobRequest(id=job.id))
    assert got.trace_id == TRACE_ID
    a1, a2 = got.audit.attempts
    assert (a1.attempt, a1.outcome, a1.fencing_token, a1.worker_id) == (1, "failed", first.fencing_token, "w1")
    assert (a2.attempt, a2.outcome, a2.fencing_token) == (2, "succeeded", second.fencing_token)
    assert a2.fencing_token > a1.fencing_token
    assert len(a1.error.encode()) == 4096 and a1.error == "é" * 2048
    assert a2.error == ""
    for a in (a1, a2):
        assert a.started_at.seconds > 0 and a.ended_at.ToDatetime() >= a.started_at.ToDatetime()
    assert a2.started_at.ToDatetime() >= a1.ended_at.ToDatetime()
    untraced = await stub.GetJob(jpb.GetJobRequest(id=plain.id))
    assert untraced.trace_id == "" and list(untraced.audit.attempts) == []


async def test_list_queues_serves_the_sampler_with_workers_and_a_history_of_runs_and_waits(stub: Any,
                                                                                          addr: str) -> None:
    import asyncio
    from datetime import timedelta

    from tests.helpers.wait import eventually
    from worker_sdk import JobContext, NonRetryableError, Worker

    work = timedelta(milliseconds=30)
    w = Worker(addr, queues=["hist"], concurrency=4, handle_signals=False)

    @w.handler("ok")
    async def ok(ctx: JobContext) -> bytes:
        await asyncio.sleep(work.total_seconds())  # the job's work: its run time is at least this
        return b""

    @w.handler("bad")
    async def bad(ctx: JobContext) -> bytes:
        raise NonRetryableError("no")

    task = asyncio.create_task(w.run())
    try:
        await stub.SubmitBatch(jpb.SubmitBatchRequest(
            jobs=[jpb.SubmitRequest(kind="ok", queue="hist")] * 12 + [jpb.SubmitRequest(kind="bad", queue="hist")] * 3))

        async def hist() -> Any:
            q = {q.name: q for q in (await stub.ListQueues(jpb.ListQueuesRequest())).queues}.get("hist")
            if q is None or sum(m.succeeded for m in q.history) < 12 or sum(m.failed for m in q.history) < 3:
                return None
            return q

        q = await eventually(hist, timeout=30, message="12 succeeded and 3 failed in the history")
        assert sum(m.succeeded for m in q.history) == 12 and sum(m.failed for m in q.history) == 3
        assert 1 <= len(q.history) <= 15 and q.workers_connected == 1
        starts = [m.start.seconds for m in q.history]
        assert starts == sorted(starts) and all(s % 60 == 0 for s in starts)
        busy = [m for m in q.history if m.succeeded]
        assert all(m.run_p50.ToTimedelta() >= work * 0.9 and m.run_p95.ToTimedelta() >= m.run_p50.ToTimedelta()
               for m in busy)
        assert all(m.HasField("wait_p50") and m.wait_p95.ToTimedelta() >= m.wait_p50.ToTimedelta() for m in busy)
        first = q.sampled_at.ToDatetime()

        async def advanced() -> bool:
            again = {q.name: q for q in (await stub.ListQueues(jpb.ListQueuesRequest())).queues}["hist"]
            return again.sampled_at.ToDatetime() > first

        await eventually(advanced, timeout=10, message="sampled_at advances with the next sample")
    finally:
        await asyncio.wait_for(w.stop(), 30)
        await asyncio.wait_for(task, 30)
