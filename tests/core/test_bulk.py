"""BulkCancelJobs and BulkRequeueJobs over real gRPC and Postgres: chunks, resume tokens, running jobs, validation."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from coordinator import bulk
from tests.conftest import bounded
from tests.helpers.wait import eventually
from worker_sdk import JobContext, Worker
from worker_sdk._proto.faultline.v1 import job_pb2, job_service_pb2_grpc
from worker_sdk._proto.faultline.v1 import job_service_pb2 as jpb

INVALID = grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture
async def stub(addr: str) -> AsyncIterator[Any]:
    ch = grpc.aio.insecure_channel(addr)
    yield job_service_pb2_grpc.JobServiceStub(ch)
    await bounded(ch.close(), "channel.close()")


async def _submit(stub: Any, n: int, **fields: Any) -> list[str]:
    out: list[str] = []
    while n > 0:
        size = min(n, 10_000)
        resp = await stub.SubmitBatch(jpb.SubmitBatchRequest(jobs=[jpb.SubmitRequest(**fields)] * size), timeout=60)
        out += [r.job.id for r in resp.results]
        n -= size
    return out


async def _states(db: Any, ids: list[str]) -> dict[str, int]:
    rows = await db.fetch("SELECT state::text AS s, count(*) AS n FROM faultline_jobs WHERE id = ANY($1::bigint[]) "
                          "GROUP BY state", [int(i) for i in ids])
    return {r["s"]: r["n"] for r in rows}


async def _dead_letter(db: Any, ids: list[str]) -> None:
    await db.execute("UPDATE faultline_jobs SET state = 'dead_lettered', attempts = max_attempts, finished_at = now(), "
                     "last_error = 'boom' WHERE id = ANY($1::bigint[])", [int(i) for i in ids])


async def test_bulk_cancel_of_3000_jobs_by_filter_resumes_across_calls_and_touches_nothing_else(
        stub: Any, db: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bulk, "TIME_BUDGET_S", 0.0)  # one chunk per call: resumption is really exercised
    target = await _submit(stub, 3000, kind="mail", queue="bulk", labels={"team": "a"})
    other_kind = await _submit(stub, 40, kind="sms", queue="bulk", labels={"team": "a"})
    other_queue = await _submit(stub, 40, kind="mail", queue="elsewhere", labels={"team": "a"})
    other_label = await _submit(stub, 40, kind="mail", queue="bulk", labels={"team": "b"})
    done = await _submit(stub, 25, kind="mail", queue="bulk", labels={"team": "a"})
    await db.execute("UPDATE faultline_jobs SET state = 'succeeded', finished_at = now() WHERE id = ANY($1::bigint[])",
                     [int(i) for i in done])
    filt = jpb.JobFilter(queue="bulk", kind="mail", labels={"team": "a"})
    totals = {"cancelled": 0, "cancel_requested": 0, "skipped": 0}
    calls = 0
    token = ""
    while True:
        resp = await stub.BulkCancelJobs(jpb.BulkCancelJobsRequest(filter=filt, resume_token=token), timeout=30)
        calls += 1
        for k in totals:
            totals[k] += getattr(resp, k)
        token = resp.resume_token
        if not token:
            break
        assert calls < 20
    assert totals == {"cancelled": 3000, "cancel_requested": 0, "skipped": 25}
    assert calls == 7  # 3025 rows: six full chunks of 500 and a short one
    assert await _states(db, target) == {"cancelled": 3000}
    for untouched in (other_kind, other_queue, other_label):
        assert await _states(db, untouched) == {"queued": 40}
    assert await _states(db, done) == {"succeeded": 25}
    # Done: again from the top finds no queued job that matches.
    again = await stub.BulkCancelJobs(jpb.BulkCancelJobsRequest(filter=jpb.JobFilter(
        queue="bulk", kind="mail", labels={"team": "a"}, state=job_pb2.JOB_STATE_QUEUED)))
    assert (again.cancelled, again.skipped, again.resume_token) == (0, 0, "")


async def test_bulk_cancel_by_ids_counts_unknown_and_finished_ids_as_skipped(stub: Any, db: Any) -> None:
    ids = await _submit(stub, 5, kind="k")
    await db.execute("UPDATE faultline_jobs SET state = 'succeeded', finished_at = now() WHERE id = $1", int(ids[0]))
    resp = await stub.BulkCancelJobs(jpb.BulkCancelJobsRequest(ids=[*ids, "999999", ids[1]]))
    assert (resp.cancelled, resp.cancel_requested, resp.skipped, resp.resume_token) == (4, 0, 2, "")
    assert await _states(db, ids) == {"cancelled": 4, "succeeded": 1}


async def test_bulk_cancel_of_many_ids_in_small_chunks_resumes(stub: Any, db: Any,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bulk, "TIME_BUDGET_S", 0.0)
    monkeypatch.setattr(bulk, "CHUNK_JOBS", 7)
    ids = await _submit(stub, 30, kind="k")
    named = [*ids, *(str(10**12 + i) for i in range(5))]
    totals = [0, 0]
    token = ""
    calls = 0
    while True:
        resp = await stub.BulkCancelJobs(jpb.BulkCancelJobsRequest(ids=named, resume_token=token))
        totals[0] += resp.cancelled
        totals[1] += resp.skipped
        calls += 1
        token = resp.resume_token
        if not token:
            break
    assert totals == [30, 5] and calls == 5


async def test_bulk_cancel_marks_a_running_job_and_its_sdk_worker_is_told_and_stops(addr: str, stub: Any,
                                                                                  db: Any) -> None:
    started = asyncio.Event()
    saw_cancel = asyncio.Event()
    w = Worker(addr, queues=["live"], handle_signals=False)

    @w.handler("long")
    async def long(ctx: JobContext) -> bytes:
        started.set()
        try:
            await asyncio.wait_for(ctx.cancel_event.wait(), 30)
        finally:
            if ctx.cancelled:
                saw_cancel.set()
        return b"should not be stored"

    task = asyncio.create_task(w.run())
    try:
        [running] = await _submit(stub, 1, kind="long", queue="live")
        await asyncio.wait_for(started.wait(), 20)
        waiting = await _submit(stub, 3, kind="other", queue="live")
        resp = await stub.BulkCancelJobs(jpb.BulkCancelJobsRequest(filter=jpb.JobFilter(queue="live")))
        assert (resp.cancelled, resp.cancel_requested, resp.skipped) == (3, 1, 0)
        await asyncio.wait_for(saw_cancel.wait(), 10)

        async def cancelled() -> bool:
            return await _states(db, [running]) == {"cancelled": 1}

        await eventually(cancelled, timeout=20, message="running job cancelled by its worker")
        assert await _states(db, waiting) == {"cancelled": 3}
    finally:
        await asyncio.wait_for(w.stop(), 30)
        await asyncio.wait_for(task, 30)
    assert await db.fetchval("SELECT outcome FROM faultline_attempts WHERE job_id = $1", int(running)) == "cancelled"


async def test_bulk_requeue_of_dead_lettered_jobs_by_ids_and_by_filter(stub: Any, db: Any) -> None:
    dead = await _submit(stub, 6, kind="k", queue="dlq", max_attempts=2)
    queued = await _submit(stub, 2, kind="k", queue="dlq")
    await _dead_letter(db, dead)
    by_ids = await stub.BulkRequeueJobs(jpb.BulkRequeueJobsRequest(ids=[*dead[:2], queued[0]], extra_attempts=3))
    assert (by_ids.requeued, by_ids.skipped, by_ids.resume_token) == (2, 1, "")
    rows = await db.fetch("SELECT state::text AS s, max_attempts - attempts AS room FROM faultline_jobs "
                          "WHERE id = ANY($1::bigint[])", [int(i) for i in dead[:2]])
    assert [(r["s"], r["room"]) for r in rows] == [("queued", 3), ("queued", 3)]
    by_filter = await stub.BulkRequeueJobs(jpb.BulkRequeueJobsRequest(
        filter=jpb.JobFilter(queue="dlq", state=job_pb2.JOB_STATE_DEAD_LETTERED)))
    assert (by_filter.requeued, by_filter.skipped, by_filter.resume_token) == (4, 0, "")
    assert await _states(db, dead) == {"queued": 6}
    # Without a state the filter sees queued jobs too, and skips them.
    wide = await stub.BulkRequeueJobs(jpb.BulkRequeueJobsRequest(filter=jpb.JobFilter(queue="dlq")))
    assert (wide.requeued, wide.skipped) == (0, 8)


async def test_a_resume_token_is_refused_with_another_filter_or_when_malformed(
        stub: Any, db: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bulk, "TIME_BUDGET_S", 0.0)
    monkeypatch.setattr(bulk, "CHUNK_JOBS", 2)
    await _submit(stub, 5, kind="k", queue="tok")
    first = await stub.BulkCancelJobs(jpb.BulkCancelJobsRequest(filter=jpb.JobFilter(queue="tok")))
    assert first.cancelled == 2 and first.resume_token
    for req in (
        jpb.BulkCancelJobsRequest(filter=jpb.JobFilter(queue="tok", kind="k"), resume_token=first.resume_token),
        jpb.BulkCancelJobsRequest(ids=["1"], resume_token=first.resume_token),
        jpb.BulkCancelJobsRequest(filter=jpb.JobFilter(queue="tok"), resume_token="not-a-token"),
        jpb.BulkCancelJobsRequest(filter=jpb.JobFilter(queue="tok"), resume_token=first.resume_token[:-4]),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.BulkCancelJobs(req)
        assert err.value.code() == INVALID and "resume_token" in (err.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as err:  # a cancel's token does not resume a requeue
        await stub.BulkRequeueJobs(jpb.BulkRequeueJobsRequest(filter=jpb.JobFilter(queue="tok"),
                                                              resume_token=first.resume_token))
    assert err.value.code() == INVALID and "resume_token" in (err.value.details() or "")
    assert await db.fetchval("SELECT count(*) FROM faultline_jobs WHERE state = 'cancelled'") == 2
    # A requeue's token resumes that requeue only: the same filter with other extra_attempts is refused.
    again = await stub.BulkRequeueJobs(jpb.BulkRequeueJobsRequest(filter=jpb.JobFilter(queue="tok"),
                                                                  extra_attempts=2))
    assert again.requeued == 2 and again.resume_token
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.BulkRequeueJobs(jpb.BulkRequeueJobsRequest(filter=jpb.JobFilter(queue="tok"), extra_attempts=3,
                                                              resume_token=again.resume_token))
    assert err.value.code() == INVALID and "resume_token" in (err.value.details() or "")
    await stub.BulkCancelJobs(jpb.BulkCancelJobsRequest(filter=jpb.JobFilter(queue="tok")))  # cancel them again
    assert await db.fetchval("SELECT count(*) FROM faultline_jobs WHERE state = 'cancelled'") == 2
    rest = await stub.BulkCancelJobs(jpb.BulkCancelJobsRequest(filter=jpb.JobFilter(queue="tok"),
                                                               resume_token=first.resume_token))
    assert rest.cancelled == 2


BAD_BULK = [
    ("neither", "BulkCancelJobs", jpb.BulkCancelJobsRequest(), "ids"),
    ("both", "BulkCancelJobs", jpb.BulkCancelJobsRequest(ids=["1"], filter=jpb.JobFilter(queue="q")), "ids"),
    ("empty filter", "BulkCancelJobs", jpb.BulkCancelJobsRequest(filter=jpb.JobFilter()), "filter"),
    ("1001 ids", "BulkCancelJobs", jpb.BulkCancelJobsRequest(ids=[str(i + 1) for i in range(1001)]), "ids"),
    ("id not decimal", "BulkCancelJobs", jpb.BulkCancelJobsRequest(ids=["1", "x"]), "ids[1]"),
    ("id past bigint", "BulkCancelJobs", jpb.BulkCancelJobsRequest(ids=[str(2**63)]), "ids[0]"),
    ("bad queue", "BulkCancelJobs", jpb.BulkCancelJobsRequest(filter=jpb.JobFilter(queue="a b")), "filter.queue"),
    ("bad kind", "BulkCancelJobs", jpb.BulkCancelJobsRequest(filter=jpb.JobFilter(kind="é")), "filter.kind"),
    ("bad state", "BulkCancelJobs", jpb.BulkCancelJobsRequest(filter=jpb.JobFilter(state=77)), "filter.state"),
    ("9 labels", "BulkCancelJobs",
     jpb.BulkCancelJobsRequest(filter=jpb.JobFilter(labels={f"k{i}": "v" for i in range(9)})), "filter.labels"),
    ("bad label key", "BulkCancelJobs", jpb.BulkCancelJobsRequest(filter=jpb.JobFilter(labels={"-": "v"})),
     "filter.labels"),
    ("requeue queued", "BulkRequeueJobs",
     jpb.BulkRequeueJobsRequest(filter=jpb.JobFilter(state=job_pb2.JOB_STATE_QUEUED)), "filter.state"),
    ("requeue extra 1001", "BulkRequeueJobs", jpb.BulkRequeueJobsRequest(ids=["1"], extra_attempts=1001),
     "extra_attempts"),
    ("requeue extra negative", "BulkRequeueJobs", jpb.BulkRequeueJobsRequest(ids=["1"], extra_attempts=-1),
     "extra_attempts"),
]


@pytest.mark.parametrize("case,rpc,req,field", BAD_BULK, ids=[b[0] for b in BAD_BULK])
async def test_bad_bulk_requests_are_invalid_argument_naming_the_field_and_change_nothing(
        stub: Any, db: Any, case: str, rpc: str, req: Any, field: str) -> None:
    ids = await _submit(stub, 3, kind="k", queue="q")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await getattr(stub, rpc)(req, timeout=10)
    assert err.value.code() == INVALID, (case, err.value.details())
    assert (err.value.details() or "").startswith(field), err.value.details()
    assert await _states(db, ids) == {"queued": 3}


async def test_bulk_cancel_of_20000_jobs_with_the_default_budget(stub: Any, db: Any) -> None:
    """The real constants: tens of thousands of matching jobs, each call inside its budget, no timeouts."""
    await _submit(stub, 20_000, kind="big", queue="big")
    calls, cancelled, started = 0, 0, time.monotonic()
    token = ""
    while True:
        t0 = time.monotonic()
        resp = await stub.BulkCancelJobs(jpb.BulkCancelJobsRequest(filter=jpb.JobFilter(queue="big"),
                                                                   resume_token=token), timeout=30)
        assert time.monotonic() - t0 < bulk.TIME_BUDGET_S + 5
        calls += 1
        cancelled += resp.cancelled
        token = resp.resume_token
        if not token:
            break
    took = time.monotonic() - started
    print(f"bulk cancel of 20000 jobs: {took:.2f}s over {calls} calls")
    assert cancelled == 20_000
    assert await db.fetchval("SELECT count(*) FROM faultline_jobs WHERE state = 'cancelled'") == 20_000


async def test_bulk_boundaries_are_accepted(stub: Any, db: Any) -> None:
    ids = await _submit(stub, 3, kind="k", queue="edge", labels={f"l{i}": "v" for i in range(8)})
    named = [*ids, *(str(2**63 - 1 - i) for i in range(997))]  # 1000 ids, the highest a bigint holds
    resp = await stub.BulkCancelJobs(jpb.BulkCancelJobsRequest(ids=named))
    assert (resp.cancelled, resp.skipped, resp.resume_token) == (3, 997, "")
    back = await stub.BulkRequeueJobs(jpb.BulkRequeueJobsRequest(
        filter=jpb.JobFilter(labels={f"l{i}": "v" for i in range(8)}, state=job_pb2.JOB_STATE_CANCELLED),
        extra_attempts=1000))
    assert back.requeued == 3
    assert await db.fetchval("SELECT min(max_attempts - attempts) FROM faultline_jobs") == 1000
