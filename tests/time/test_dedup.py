"""Dedup windows on idempotency keys: for a period, or while the job is unfinished; the answer says which job, why."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from tests.helpers.wait import eventually
from worker_sdk import Client, JobSpec
from worker_sdk._proto.faultline.v1 import job_service_pb2 as jpb
from worker_sdk._proto.faultline.v1 import job_service_pb2_grpc


async def test_a_period_window_returns_the_job_within_it_and_a_new_one_after(addr: str, db: Any) -> None:
    spec = JobSpec(kind="report", idempotency_key="daily-report", dedup_period=timedelta(seconds=1))
    async with Client(addr) as client:
        first = await client.submit_spec(spec)
        again = await client.submit_spec(spec)
        assert first.created and first.outcome == "created"
        assert not again.created and again.outcome == "duplicate_in_period" and again.job.id == first.job.id
        assert f"job {first.job.id}" in again.detail and "until" in again.detail

        async def over() -> bool:
            return bool(await db.fetchval("SELECT dedup_until <= now() FROM faultline_jobs WHERE id = $1",
                                          int(first.job.id)))

        await eventually(over, timeout=10, message="the dedup period passed")
        later = await client.submit_spec(spec)
    assert later.created and later.job.id != first.job.id
    old = await db.fetchrow("SELECT idempotency_key, released_idempotency_key FROM faultline_jobs WHERE id = $1",
                            int(first.job.id))
    assert old["idempotency_key"] is None and old["released_idempotency_key"] == "daily-report"


async def test_an_unfinished_window_holds_until_the_job_ends(addr: str) -> None:
    spec = JobSpec(kind="sync", idempotency_key="sync-user-7", dedup_while_unfinished=True)
    async with Client(addr) as client:
        first = await client.submit_spec(spec)
        again = await client.submit_spec(spec)
        assert again.outcome == "duplicate_unfinished" and again.job.id == first.job.id
        assert "unfinished" in again.detail
        await client.cancel(first.job.id)
        after = await client.submit_spec(spec)
        assert after.created and after.job.id != first.job.id
        # The plain key keeps its meaning: for as long as the job exists.
        plain = JobSpec(kind="sync", idempotency_key="plain")
        await client.submit_spec(plain)
        dup = await client.submit_spec(plain)
        assert dup.outcome == "duplicate_key" and "as long as" in dup.detail


async def test_a_batch_with_a_key_twice_stores_one_job_and_says_why(addr: str) -> None:
    async with grpc.aio.insecure_channel(addr) as ch:
        stub = job_service_pb2_grpc.JobServiceStub(ch)  # type: ignore[no-untyped-call]
        req = jpb.SubmitRequest(kind="k", idempotency_key="x", dedup_window=jpb.DEDUP_WINDOW_UNFINISHED)
        resp = await stub.SubmitBatch(jpb.SubmitBatchRequest(jobs=[req, req]))
    assert [r.outcome for r in resp.results] == [jpb.SUBMIT_OUTCOME_CREATED, jpb.SUBMIT_OUTCOME_DUPLICATE_UNFINISHED]
    assert resp.results[0].job.id == resp.results[1].job.id


BAD = [
    ("window without a key", jpb.SubmitRequest(kind="k", dedup_window=jpb.DEDUP_WINDOW_UNFINISHED), "dedup_window"),
    ("period without the window", jpb.SubmitRequest(kind="k", idempotency_key="a", dedup_period=Duration(seconds=5)),
     "dedup_period"),
    ("period window without a period", jpb.SubmitRequest(kind="k", idempotency_key="a",
                                                         dedup_window=jpb.DEDUP_WINDOW_PERIOD), "dedup_period"),
    ("period under 1 s", jpb.SubmitRequest(kind="k", idempotency_key="a", dedup_window=jpb.DEDUP_WINDOW_PERIOD,
                                           dedup_period=Duration(nanos=500_000_000)), "dedup_period"),
    ("period over 366 days", jpb.SubmitRequest(kind="k", idempotency_key="a", dedup_window=jpb.DEDUP_WINDOW_PERIOD,
                                               dedup_period=Duration(seconds=400 * 86400)), "dedup_period"),
    ("unfinished with a period", jpb.SubmitRequest(kind="k", idempotency_key="a",
                                                   dedup_window=jpb.DEDUP_WINDOW_UNFINISHED,
                                                   dedup_period=Duration(seconds=5)), "dedup_period"),
    ("unknown window", jpb.SubmitRequest(kind="k", idempotency_key="a", dedup_window=7), "dedup_window"),  # type: ignore[arg-type]
]


async def test_bad_windows_are_refused_naming_the_field(addr: str, db: Any) -> None:
    async with grpc.aio.insecure_channel(addr) as ch:
        stub = job_service_pb2_grpc.JobServiceStub(ch)  # type: ignore[no-untyped-call]
        for case, req, field in BAD:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Submit(req, timeout=30)
            assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT, case
            assert (err.value.details() or "").startswith(field), (case, err.value.details())
    assert await db.fetchval("SELECT count(*) FROM faultline_jobs") == 0
