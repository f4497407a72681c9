"""Table-driven bad input over every JobService RPC and field, beyond tests/core/test_job_service.py.

Each row is one malformed request: empty, too long, negative, out of range, unknown enum value,
unknown id, over the payload limit, malformed. The answer must be the named client error (never
INTERNAL), name the field, and store nothing; the boundary rows must be accepted.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from tests.conftest import bounded
from tests.fuzz.conftest import assert_no_bad_rows
from worker_sdk._proto.faultline.v1 import job_pb2, job_service_pb2_grpc
from worker_sdk._proto.faultline.v1 import job_service_pb2 as jpb

INVALID = grpc.StatusCode.INVALID_ARGUMENT
MIB = 1 << 20


@pytest.fixture
async def stub(addr: str) -> AsyncIterator[Any]:
    ch = grpc.aio.insecure_channel(addr)
    yield job_service_pb2_grpc.JobServiceStub(ch)
    await bounded(ch.close(), "channel.close()")


def _d(seconds: int = 0, nanos: int = 0) -> Duration:
    return Duration(seconds=seconds, nanos=nanos)


def _submit(**f: Any) -> jpb.SubmitRequest:
    return jpb.SubmitRequest(**{"kind": "k", **f})


# (case, rpc, request, expected code, text the details must contain)
BAD = [
    # Submit: fields test_job_service.py does not cover.
    ("kind unicode", "Submit", _submit(kind="résumé"), INVALID, "kind"),
    ("kind NUL", "Submit", _submit(kind="a\x00b"), INVALID, "kind"),
    ("queue too long", "Submit", _submit(queue="q" * 129), INVALID, "queue"),
    ("key with newline", "Submit", _submit(idempotency_key="a\nb"), INVALID, "idempotency_key"),
    ("key with NUL", "Submit", _submit(idempotency_key="a\x00b"), INVALID, "idempotency_key"),
    ("priority too low", "Submit", _submit(priority=-1001), INVALID, "priority"),
    ("max_attempts 1001", "Submit", _submit(max_attempts=1001), INVALID, "max_attempts"),
    ("payload 64 MiB", "Submit", _submit(payload=b"x" * (2 * MIB)), INVALID, "payload"),
    ("run_at nanos negative", "Submit", _submit(run_at=Timestamp(seconds=1, nanos=-1)), INVALID, "run_at"),
    ("run_at nanos 1e9", "Submit", _submit(run_at=Timestamp(seconds=1, nanos=1_000_000_000)), INVALID, "run_at"),
    ("run_at year 9999", "Submit", _submit(run_at=Timestamp(seconds=253_402_300_000)), INVALID, "run_at"),
    ("run_at beyond datetime", "Submit", _submit(run_at=Timestamp(seconds=2**62)), INVALID, "run_at"),
    ("initial_backoff zero nanos ok but 1ns", "Submit",
     _submit(retry_policy=job_pb2.RetryPolicy(initial_backoff=_d(0, 1))), INVALID, "retry_policy.initial_backoff"),
    ("max_backoff over 7 days", "Submit",
     _submit(retry_policy=job_pb2.RetryPolicy(max_backoff=_d(8 * 86_400))), INVALID, "retry_policy.max_backoff"),
    ("backoff nanos over 1e9", "Submit",
     _submit(retry_policy=job_pb2.RetryPolicy(initial_backoff=_d(1, 1_000_000_000))), INVALID,
     "retry_policy.initial_backoff"),
    ("multiplier NaN", "Submit", _submit(retry_policy=job_pb2.RetryPolicy(multiplier=float("nan"))), INVALID,
     "retry_policy.multiplier"),
    ("multiplier inf", "Submit", _submit(retry_policy=job_pb2.RetryPolicy(multiplier=float("inf"))), INVALID,
     "retry_policy.multiplier"),
    ("multiplier 101", "Submit", _submit(retry_policy=job_pb2.RetryPolicy(multiplier=101)), INVALID,
     "retry_policy.multiplier"),
    ("jitter negative", "Submit", _submit(retry_policy=job_pb2.RetryPolicy(jitter=-0.1)), INVALID,
     "retry_policy.jitter"),
    ("jitter NaN", "Submit", _submit(retry_policy=job_pb2.RetryPolicy(jitter=float("nan"))), INVALID,
     "retry_policy.jitter"),
    ("heartbeat timeout 1ns", "Submit", _submit(timeouts=job_pb2.JobTimeouts(heartbeat=_d(0, 1))), INVALID,
     "timeouts.heartbeat"),
    ("schedule_to_start negative", "Submit",
     _submit(timeouts=job_pb2.JobTimeouts(schedule_to_start=_d(-1))), INVALID, "timeouts.schedule_to_start"),
    ("execution over 7 days", "Submit", _submit(timeouts=job_pb2.JobTimeouts(execution=_d(10**9))), INVALID,
     "timeouts.execution"),
    ("label key empty", "Submit", _submit(labels={"": "v"}), INVALID, "labels"),
    ("label key too long", "Submit", _submit(labels={"k" * 65: "v"}), INVALID, "labels"),
    ("label NUL", "Submit", _submit(labels={"a": "b\x00"}), INVALID, "labels"),
    # SubmitBatch.
    ("batch over 10,000", "SubmitBatch", jpb.SubmitBatchRequest(jobs=[_submit() for _ in range(10_001)]), INVALID,
     "jobs"),
    ("batch bad row in the middle", "SubmitBatch",
     jpb.SubmitBatchRequest(jobs=[_submit(), _submit(priority=9999), _submit()]), INVALID, "jobs[1].priority"),
    # GetJob / CancelJob / RequeueJob ids.
    ("id zero", "GetJob", jpb.GetJobRequest(id="0"), INVALID, "id"),
    ("id leading zero", "GetJob", jpb.GetJobRequest(id="01"), INVALID, "id"),
    ("id with space", "GetJob", jpb.GetJobRequest(id=" 1"), INVALID, "id"),
    ("id fullwidth digits", "GetJob", jpb.GetJobRequest(id="\uff11\uff12"), INVALID, "id"),
    ("id 2^63", "GetJob", jpb.GetJobRequest(id=str(2**63)), INVALID, "id"),
    ("id max int64 unknown", "GetJob", jpb.GetJobRequest(id=str(2**63 - 1)), grpc.StatusCode.NOT_FOUND,
     str(2**63 - 1)),
    ("cancel empty id", "CancelJob", jpb.CancelJobRequest(id=""), INVALID, "id"),
    ("cancel negative id", "CancelJob", jpb.CancelJobRequest(id="-1"), INVALID, "id"),
    ("requeue empty id", "RequeueJob", jpb.RequeueJobRequest(id=""), INVALID, "id"),
    ("requeue extra 1001", "RequeueJob", jpb.RequeueJobRequest(id="1", extra_attempts=1001), INVALID,
     "extra_attempts"),
    # ListJobs.
    ("state negative", "ListJobs", jpb.ListJobsRequest(state=-1), INVALID, "state"),
    ("kind malformed", "ListJobs", jpb.ListJobsRequest(kind="a b"), INVALID, "kind"),
    ("token wrong prefix", "ListJobs", jpb.ListJobsRequest(page_token="djI6MTA="), INVALID, "page_token"),
    ("token not a number", "ListJobs", jpb.ListJobsRequest(page_token="djE6eHk="), INVALID, "page_token"),
    ("token not utf-8", "ListJobs", jpb.ListJobsRequest(page_token="_w=="), INVALID, "page_token"),
    ("page_size huge", "ListJobs", jpb.ListJobsRequest(page_size=2**31 - 1), INVALID, "page_size"),
    ("9 label pairs", "ListJobs", jpb.ListJobsRequest(labels={f"l{i}": "v" for i in range(9)}), INVALID, "labels"),
    ("label filter key unicode", "ListJobs", jpb.ListJobsRequest(labels={"ü": "v"}), INVALID, "labels"),
    ("label filter value too long", "ListJobs", jpb.ListJobsRequest(labels={"a": "v" * 257}), INVALID, "labels"),
    ("key filter with space", "ListJobs", jpb.ListJobsRequest(idempotency_key="a b"), INVALID, "idempotency_key"),
    ("key filter NUL", "ListJobs", jpb.ListJobsRequest(idempotency_key="a\x00"), INVALID, "idempotency_key"),
    # BulkCancelJobs / BulkRequeueJobs.
    ("bulk neither ids nor filter", "BulkCancelJobs", jpb.BulkCancelJobsRequest(), INVALID, "ids"),
    ("bulk empty filter", "BulkCancelJobs", jpb.BulkCancelJobsRequest(filter=jpb.JobFilter()), INVALID, "filter"),
    ("bulk ids and filter", "BulkRequeueJobs",
     jpb.BulkRequeueJobsRequest(ids=["1"], filter=jpb.JobFilter(kind="k")), INVALID, "ids"),
    ("bulk 1001 ids", "BulkRequeueJobs", jpb.BulkRequeueJobsRequest(ids=["1"] * 1001), INVALID, "ids"),
    ("bulk id 2^63", "BulkCancelJobs", jpb.BulkCancelJobsRequest(ids=[str(2**63)]), INVALID, "ids[0]"),
    ("bulk id fullwidth", "BulkCancelJobs", jpb.BulkCancelJobsRequest(ids=["1", "\uff11"]), INVALID, "ids[1]"),
    ("bulk id leading zero", "BulkRequeueJobs", jpb.BulkRequeueJobsRequest(ids=["01"]), INVALID, "ids[0]"),
    ("bulk filter queue NUL", "BulkCancelJobs", jpb.BulkCancelJobsRequest(filter=jpb.JobFilter(queue="a\x00")),
     INVALID, "filter.queue"),
    ("bulk filter state unknown", "BulkCancelJobs",
     jpb.BulkCancelJobsRequest(filter=jpb.JobFilter(state=-3)), INVALID, "filter.state"),
    ("bulk filter 9 labels", "BulkCancelJobs",
     jpb.BulkCancelJobsRequest(filter=jpb.JobFilter(labels={f"l{i}": "" for i in range(9)})), INVALID,
     "filter.labels"),
    ("bulk requeue running", "BulkRequeueJobs",
     jpb.BulkRequeueJobsRequest(filter=jpb.JobFilter(state=job_pb2.JOB_STATE_RUNNING)), INVALID, "filter.state"),
    ("bulk requeue extra 2^31-1", "BulkRequeueJobs",
     jpb.BulkRequeueJobsRequest(ids=["1"], extra_attempts=2**31 - 1), INVALID, "extra_attempts"),
    ("bulk token garbage", "BulkCancelJobs",
     jpb.BulkCancelJobsRequest(filter=jpb.JobFilter(kind="k"), resume_token="%%%"), INVALID, "resume_token"),
    ("bulk token of another filter", "BulkCancelJobs",
     jpb.BulkCancelJobsRequest(filter=jpb.JobFilter(kind="k"), resume_token="YjE6MTA6MDAwMDAwMDAwMDAwMDAwMA=="),
     INVALID, "resume_token"),
    ("bulk token cursor past bigint", "BulkRequeueJobs",
     jpb.BulkRequeueJobsRequest(filter=jpb.JobFilter(kind="k"),
                                resume_token="YjE6OTIyMzM3MjAzNjg1NDc3NTgwODowMDAwMDAwMDAwMDAwMDAw"),
     INVALID, "resume_token"),
]


@pytest.mark.parametrize("case,rpc,req,code,needle", BAD, ids=[b[0] for b in BAD])
async def test_bad_request_gets_a_client_error_naming_the_field_and_stores_nothing(
    stub: Any, db: Any, case: str, rpc: str, req: Any, code: grpc.StatusCode, needle: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await getattr(stub, rpc)(req, timeout=30)
    assert err.value.code() == code, (case, err.value.code(), err.value.details())
    assert needle in (err.value.details() or ""), err.value.details()
    assert await db.fetchval("SELECT count(*) FROM faultline_jobs") == 0
    await assert_no_bad_rows(db)


BOUNDARY_OK = [
    ("kind 128 chars", _submit(kind="k" * 128)),
    ("queue of every allowed character", _submit(queue="Az09_.:-")),
    ("key 256 chars", _submit(idempotency_key="k" * 256)),
    ("payload exactly 1 MiB", _submit(payload=b"x" * MIB)),
    ("priority bounds", _submit(priority=-1000)),
    ("max_attempts 1000", _submit(max_attempts=1000)),
    ("64 labels", _submit(labels={f"l{i}": "v" * 256 for i in range(64)})),
    ("durations of exactly 7 days", _submit(timeouts=job_pb2.JobTimeouts(execution=_d(7 * 86_400)))),
    ("multiplier 100, jitter 1", _submit(retry_policy=job_pb2.RetryPolicy(multiplier=100, jitter=1))),
    ("run_at in the past", _submit(run_at=Timestamp(seconds=1))),
]


@pytest.mark.parametrize("case,req", BOUNDARY_OK, ids=[b[0] for b in BOUNDARY_OK])
async def test_boundary_values_are_accepted_and_stored_as_sent(stub: Any, db: Any, case: str, req: Any) -> None:
    resp = await stub.Submit(req, timeout=30)
    got = (await stub.GetJob(jpb.GetJobRequest(id=resp.job.id))).job
    assert got.kind == req.kind and got.payload == req.payload and got.priority == req.priority
    assert dict(got.labels) == dict(req.labels)
    await assert_no_bad_rows(db)


async def test_every_rpc_answers_on_an_empty_database(stub: Any) -> None:
    assert (await stub.ListQueues(jpb.ListQueuesRequest())).queues == []
    assert (await stub.ListWorkers(jpb.ListWorkersRequest())).workers == []
    assert (await stub.ListJobs(jpb.ListJobsRequest())).jobs == []
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.RequeueJob(jpb.RequeueJobRequest(id="7"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    gone = await stub.BulkCancelJobs(jpb.BulkCancelJobsRequest(ids=["7", str(2**63 - 1)]))
    assert (gone.cancelled, gone.skipped, gone.resume_token) == (0, 2, "")
    none = await stub.BulkRequeueJobs(jpb.BulkRequeueJobsRequest(filter=jpb.JobFilter(queue="q")))
    assert (none.requeued, none.skipped, none.resume_token) == (0, 0, "")
    assert not (await stub.WhoAmI(jpb.WhoAmIRequest())).auth_enabled
