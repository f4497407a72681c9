"""JobService over real gRPC and real Postgres: idempotency, validation, cancel, pagination, requeue."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from tests.conftest import bounded
from worker_sdk._proto.faultline.v1 import job_pb2, job_service_pb2_grpc
from worker_sdk._proto.faultline.v1 import job_service_pb2 as jpb


@pytest.fixture
async def stub(addr: str) -> Any:
    ch = grpc.aio.insecure_channel(addr)
    yield job_service_pb2_grpc.JobServiceStub(ch)
    await bounded(ch.close(), "channel.close()")


async def test_submit_returns_queued_job_with_defaults(stub: Any) -> None:
    resp = await stub.Submit(jpb.SubmitRequest(kind="echo", payload=b"hi"))
    assert resp.created
    assert resp.job.state == job_pb2.JOB_STATE_QUEUED
    assert resp.job.queue == "default"
    assert resp.job.max_attempts == 5
    got = await stub.GetJob(jpb.GetJobRequest(id=resp.job.id))
    assert got.job.payload == b"hi" and got.job.id == resp.job.id


async def test_200_concurrent_duplicate_submits_make_exactly_one_job(stub: Any, db: Any) -> None:
    req = jpb.SubmitRequest(kind="echo", payload=b"x", idempotency_key="same-key")
    results = await asyncio.gather(*(stub.Submit(req) for _ in range(200)))
    assert len({r.job.id for r in results}) == 1
    assert sum(r.created for r in results) == 1
    assert await db.fetchval("SELECT count(*) FROM faultline_jobs") == 1


async def test_duplicate_returns_stored_job_unchanged(stub: Any) -> None:
    first = await stub.Submit(jpb.SubmitRequest(kind="echo", payload=b"one", idempotency_key="k"))
    second = await stub.Submit(jpb.SubmitRequest(kind="other", payload=b"two", idempotency_key="k", priority=5,
                                                  view=job_pb2.JOB_VIEW_FULL))
    assert not second.created
    assert second.job.id == first.job.id
    assert second.job.kind == "echo" and second.job.payload == b"one" and second.job.priority == 0


async def test_submit_batch_is_one_transaction_and_keeps_order(stub: Any, db: Any) -> None:
    await stub.Submit(jpb.SubmitRequest(kind="echo", idempotency_key="pre"))
    reqs = [jpb.SubmitRequest(kind="echo", payload=str(i).encode(), idempotency_key=f"b{i}") for i in range(50)]
    reqs.append(jpb.SubmitRequest(kind="echo", idempotency_key="pre"))
    reqs.append(jpb.SubmitRequest(kind="echo", idempotency_key="b3"))  # repeats an earlier row of this batch
    resp = await stub.SubmitBatch(jpb.SubmitBatchRequest(jobs=reqs, view=job_pb2.JOB_VIEW_FULL))
    assert [r.job.payload for r in resp.results[:50]] == [str(i).encode() for i in range(50)]
    assert all(r.created for r in resp.results[:50])
    assert not resp.results[50].created and not resp.results[51].created
    assert resp.results[51].job.id == resp.results[3].job.id
    assert await db.fetchval("SELECT count(*) FROM faultline_jobs") == 51


async def test_invalid_batch_stores_nothing(stub: Any, db: Any) -> None:
    reqs = [jpb.SubmitRequest(kind="echo") for _ in range(5)] + [jpb.SubmitRequest(kind="")]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.SubmitBatch(jpb.SubmitBatchRequest(jobs=reqs))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "jobs[5].kind" in err.value.details()
    assert await db.fetchval("SELECT count(*) FROM faultline_jobs") == 0


def _dur(seconds: int = 0, nanos: int = 0) -> Duration:
    return Duration(seconds=seconds, nanos=nanos)


INVALID_SUBMITS = [
    ("empty kind", dict(kind=""), "kind"),
    ("kind with spaces", dict(kind="a b"), "kind"),
    ("kind too long", dict(kind="k" * 129), "kind"),
    ("bad queue", dict(kind="k", queue="no/slash"), "queue"),
    ("negative max_attempts", dict(kind="k", max_attempts=-1), "max_attempts"),
    ("huge max_attempts", dict(kind="k", max_attempts=100_000), "max_attempts"),
    ("priority too high", dict(kind="k", priority=5000), "priority"),
    ("payload over limit", dict(kind="k", payload=b"x" * ((1 << 20) + 1)), "payload"),
    ("key too long", dict(kind="k", idempotency_key="k" * 300), "idempotency_key"),
    ("negative backoff", dict(kind="k", retry_policy=job_pb2.RetryPolicy(initial_backoff=_dur(-1))),
     "retry_policy.initial_backoff"),
    ("max below initial",
     dict(kind="k", retry_policy=job_pb2.RetryPolicy(initial_backoff=_dur(10), max_backoff=_dur(1))),
     "retry_policy.max_backoff"),
    ("multiplier below 1", dict(kind="k", retry_policy=job_pb2.RetryPolicy(multiplier=0.5)), "retry_policy.multiplier"),
    ("jitter above 1", dict(kind="k", retry_policy=job_pb2.RetryPolicy(jitter=1.5)), "retry_policy.jitter"),
    ("negative timeout", dict(kind="k", timeouts=job_pb2.JobTimeouts(execution=_dur(-5))), "timeouts.execution"),
    ("too many labels", dict(kind="k", labels={f"l{i}": "v" for i in range(65)}), "labels"),
    ("label value too long", dict(kind="k", labels={"a": "v" * 300}), "labels"),
]


@pytest.mark.parametrize("case,fields,field", INVALID_SUBMITS, ids=[c[0] for c in INVALID_SUBMITS])
async def test_submit_rejects_bad_field_naming_it(
    stub: Any, db: Any, case: str, fields: dict[str, Any], field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Submit(jpb.SubmitRequest(**fields), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, case
    assert err.value.details().startswith(field), err.value.details()
    assert await db.fetchval("SELECT count(*) FROM faultline_jobs") == 0


@pytest.mark.parametrize("rpc,req,code,needle", [
    ("GetJob", jpb.GetJobRequest(id=""), grpc.StatusCode.INVALID_ARGUMENT, "id"),
    ("GetJob", jpb.GetJobRequest(id="abc"), grpc.StatusCode.INVALID_ARGUMENT, "id"),
    ("GetJob", jpb.GetJobRequest(id="-4"), grpc.StatusCode.INVALID_ARGUMENT, "id"),
    ("GetJob", jpb.GetJobRequest(id="99999999999999999999"), grpc.StatusCode.INVALID_ARGUMENT, "id"),
    ("GetJob", jpb.GetJobRequest(id="424242"), grpc.StatusCode.NOT_FOUND, "424242"),
    ("CancelJob", jpb.CancelJobRequest(id="424242"), grpc.StatusCode.NOT_FOUND, "424242"),
    ("CancelJob", jpb.CancelJobRequest(id="x"), grpc.StatusCode.INVALID_ARGUMENT, "id"),
    ("RequeueJob", jpb.RequeueJobRequest(id="424242"), grpc.StatusCode.NOT_FOUND, "424242"),
    ("RequeueJob", jpb.RequeueJobRequest(id="1", extra_attempts=-1), grpc.StatusCode.INVALID_ARGUMENT,
     "extra_attempts"),
    ("ListJobs", jpb.ListJobsRequest(page_size=-1), grpc.StatusCode.INVALID_ARGUMENT, "page_size"),
    ("ListJobs", jpb.ListJobsRequest(page_size=1001), grpc.StatusCode.INVALID_ARGUMENT, "page_size"),
    ("ListJobs", jpb.ListJobsRequest(state=99), grpc.StatusCode.INVALID_ARGUMENT, "state"),
    ("ListJobs", jpb.ListJobsRequest(page_token="garbage!"), grpc.StatusCode.INVALID_ARGUMENT, "page_token"),
    ("ListJobs", jpb.ListJobsRequest(queue="bad queue"), grpc.StatusCode.INVALID_ARGUMENT, "queue"),
    ("SubmitBatch", jpb.SubmitBatchRequest(), grpc.StatusCode.INVALID_ARGUMENT, "jobs"),
])
async def test_rpc_errors_name_the_field(stub: Any, rpc: str, req: Any, code: grpc.StatusCode, needle: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await getattr(stub, rpc)(req, timeout=10)
    assert err.value.code() == code
    assert needle in err.value.details()


async def test_cancel_queued_job_is_immediate(stub: Any) -> None:
    job = (await stub.Submit(jpb.SubmitRequest(kind="echo"))).job
    resp = await stub.CancelJob(jpb.CancelJobRequest(id=job.id))
    assert resp.job.state == job_pb2.JOB_STATE_CANCELLED
    again = await stub.CancelJob(jpb.CancelJobRequest(id=job.id))
    assert again.job.state == job_pb2.JOB_STATE_CANCELLED
    got = await stub.GetJob(jpb.GetJobRequest(id=job.id))
    assert got.job.state == job_pb2.JOB_STATE_CANCELLED and got.job.finished_at.seconds > 0


async def test_requeue_cancelled_job_and_refuse_requeue_of_queued(stub: Any) -> None:
    job = (await stub.Submit(jpb.SubmitRequest(kind="echo"))).job
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.RequeueJob(jpb.RequeueJobRequest(id=job.id))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    await stub.CancelJob(jpb.CancelJobRequest(id=job.id))
    back = await stub.RequeueJob(jpb.RequeueJobRequest(id=job.id, extra_attempts=2))
    assert back.job.state == job_pb2.JOB_STATE_QUEUED
    assert back.job.max_attempts == back.job.attempts + 2


async def test_future_run_at_is_scheduled_then_promoted(stub: Any) -> None:
    import time

    from google.protobuf.timestamp_pb2 import Timestamp

    from tests.helpers.wait import eventually

    run_at = Timestamp()
    run_at.FromNanoseconds(time.time_ns() + 300_000_000)
    job = (await stub.Submit(jpb.SubmitRequest(kind="echo", run_at=run_at))).job
    assert job.state == job_pb2.JOB_STATE_SCHEDULED

    async def queued() -> bool:
        return (await stub.GetJob(jpb.GetJobRequest(id=job.id))).job.state == job_pb2.JOB_STATE_QUEUED

    await eventually(queued, timeout=10, message="scheduled job promoted")


async def test_pagination_over_1000_jobs_sees_each_once(stub: Any) -> None:
    reqs = [jpb.SubmitRequest(kind="echo" if i % 2 else "other", queue="pages") for i in range(1000)]
    await stub.SubmitBatch(jpb.SubmitBatchRequest(jobs=reqs))
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        resp = await stub.ListJobs(jpb.ListJobsRequest(queue="pages", page_size=137, page_token=token))
        seen.extend(j.id for j in resp.jobs)
        pages += 1
        token = resp.next_page_token
        if not token:
            break
    assert len(seen) == 1000 and len(set(seen)) == 1000
    assert pages == 8
    assert [int(i) for i in seen] == sorted((int(i) for i in seen), reverse=True)
    kinds = await stub.ListJobs(jpb.ListJobsRequest(queue="pages", kind="other", page_size=1000))
    assert len(kinds.jobs) == 500 and {j.kind for j in kinds.jobs} == {"other"}
    queued = await stub.ListJobs(jpb.ListJobsRequest(state=job_pb2.JOB_STATE_QUEUED, page_size=1000))
    assert len(queued.jobs) == 1000


async def test_list_queues_reports_depth(stub: Any) -> None:
    from tests.helpers.wait import eventually

    await stub.SubmitBatch(jpb.SubmitBatchRequest(jobs=[jpb.SubmitRequest(kind="k", queue="qa") for _ in range(7)]))

    async def sampled() -> Any:  # ListQueues serves the metrics sampler's last sample: wait for one with them
        qa = {q.name: q for q in (await stub.ListQueues(jpb.ListQueuesRequest())).queues}.get("qa")
        return qa if qa is not None and qa.depth["queued"] == 7 else None

    qa = await eventually(sampled, timeout=10, message="a sample counting the 7 jobs")
    assert qa.sampled_at.seconds > 0
