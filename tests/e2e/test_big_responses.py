"""Responses are bounded and say only what was asked; idempotency keys are per queue; a lost reply is retried safely.

Against a real coordinator process (its RSS is read from /proc) and real Postgres:
- ListJobs over 1 MiB jobs answers BASIC (no payloads) by default; FULL pages stop at the response budget
  and page on, each job once, and the coordinator's memory stays bounded while they are served;
- SubmitBatch answers BASIC; a FULL batch whose reply could not fit is refused before anything is stored;
- an idempotency key names one job per queue, another in another queue;
- a Submit whose reply is lost on the way back (a proxy holds it, then cuts the connection) is retried
  by the SDK when it carries a key, returning the stored job (created=False) and storing one; without a
  key the SDK raises SubmitOutcomeUnknownError and does not store a second.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import grpc
import pytest

from tests.e2e.test_slow_reader import rss_bytes
from tests.helpers.procs import Proc
from tests.helpers.proxy import ReplyDropper
from tests.helpers.wait import eventually
from worker_sdk import Client, JobSpec, SubmitOutcomeUnknownError
from worker_sdk._proto.faultline.v1 import job_pb2, job_service_pb2_grpc
from worker_sdk._proto.faultline.v1 import job_service_pb2 as jpb

MIB = 1 << 20
BIG_JOBS = 40
# gRPC's default client receive limit; every JobService response must fit below it.
CLIENT_RECEIVE_LIMIT = 4 * MIB
# A FULL page holds at most a few 1 MiB jobs, and the coordinator builds one page at a time: what it holds
# for ListJobs is bounded by the budget, not by page_size x job size (1000 x 1 MiB once took it to 4-6 GB).
RSS_GROWTH_MAX = 150 * MIB


async def _fill(addr: str, n: int, payload: bytes) -> None:
    async with Client(addr) as c:
        for i in range(0, n, 2):
            await c.submit_batch([JobSpec(kind="big", queue="big", payload=payload) for _ in range(min(2, n - i))])


async def test_list_jobs_over_1mib_jobs_is_basic_by_default_and_full_pages_stop_at_the_budget(
        coordinator_proc_factory: Callable[..., Awaitable[Proc]]) -> None:
    coord = await coordinator_proc_factory()
    addr = str(coord.extra["addr"])
    await _fill(addr, BIG_JOBS, b"P" * MIB)
    baseline = peak = rss_bytes(coord.pid)
    async with grpc.aio.insecure_channel(addr) as ch:
        stub = job_service_pb2_grpc.JobServiceStub(ch)  # type: ignore[no-untyped-call]
        basic = await stub.ListJobs(jpb.ListJobsRequest(queue="big", page_size=1000), timeout=60)
        assert len(basic.jobs) == BIG_JOBS and not basic.next_page_token
        assert all(j.payload == b"" for j in basic.jobs) and basic.ByteSize() < 64 * 1024
        seen: list[str] = []
        token, pages = "", 0
        while True:
            resp = await stub.ListJobs(jpb.ListJobsRequest(queue="big", page_size=1000, page_token=token,
                                                           view=job_pb2.JOB_VIEW_FULL), timeout=60)
            peak = max(peak, rss_bytes(coord.pid))
            pages += 1
            assert resp.ByteSize() < CLIENT_RECEIVE_LIMIT, resp.ByteSize()
            assert resp.jobs and all(len(j.payload) == MIB for j in resp.jobs)
            seen += [j.id for j in resp.jobs]
            if not (token := resp.next_page_token):
                break
    print(f"ListJobs FULL over {BIG_JOBS} x 1 MiB: {pages} pages; coordinator RSS {baseline / MIB:.0f} MiB -> "
          f"peak {peak / MIB:.0f} MiB")
    assert sorted(seen, key=int) == sorted(set(seen), key=int) and len(seen) == BIG_JOBS
    assert pages >= BIG_JOBS // 4
    assert peak - baseline < RSS_GROWTH_MAX, f"RSS grew {(peak - baseline) / MIB:.0f} MiB"
    assert coord.alive()


async def test_submit_batch_is_basic_and_a_full_reply_that_cannot_fit_stores_nothing(addr: str, db: Any) -> None:
    async with grpc.aio.insecure_channel(addr, options=[("grpc.max_send_message_length", 16 * MIB)]) as ch:
        stub = job_service_pb2_grpc.JobServiceStub(ch)  # type: ignore[no-untyped-call]
        jobs = [jpb.SubmitRequest(kind="big", queue="batch", payload=b"B" * (MIB // 2)) for _ in range(12)]
        resp = await stub.SubmitBatch(jpb.SubmitBatchRequest(jobs=jobs), timeout=60)
        assert len(resp.results) == 12 and all(r.job.payload == b"" for r in resp.results)
        assert resp.ByteSize() < 64 * 1024
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.SubmitBatch(jpb.SubmitBatchRequest(jobs=jobs, view=job_pb2.JOB_VIEW_FULL), timeout=60)
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT and "view" in (err.value.details() or "")
    assert await db.fetchval("SELECT count(*) FROM faultline_jobs WHERE queue = 'batch'") == 12


async def test_an_idempotency_key_names_one_job_per_queue(addr: str, db: Any) -> None:
    async with Client(addr) as c:
        a1, created_a1 = await c.submit_ex("echo", b"1", queue="qa", idempotency_key="order-7")
        a2, created_a2 = await c.submit_ex("echo", b"2", queue="qa", idempotency_key="order-7")
        b1, created_b1 = await c.submit_ex("echo", b"3", queue="qb", idempotency_key="order-7")
    assert (created_a1, created_a2, created_b1) == (True, False, True)
    assert a1.id == a2.id != b1.id
    rows = await db.fetch("SELECT queue, payload FROM faultline_jobs WHERE idempotency_key = 'order-7' ORDER BY id")
    assert [(r["queue"], bytes(r["payload"])) for r in rows] == [("qa", b"1"), ("qb", b"3")]


@pytest.mark.parametrize("keyed", [True, False], ids=["with-key", "without-key"])
async def test_a_submit_whose_reply_is_lost_is_retried_only_with_a_key_and_stores_one_job(
        addr: str, dsn: str, keyed: bool) -> None:
    proxy = await ReplyDropper(addr).start()
    con = await asyncpg.connect(dsn)
    try:
        async with Client(proxy.addr) as c:
            await c.list_queues()  # the channel is up: what the proxy holds back from now on is the reply
            proxy.arm()
            submit = asyncio.ensure_future(c.submit_ex("echo", b"once", queue="lost",
                                              idempotency_key="lost-1" if keyed else None))

            async def stored() -> bool:
                return bool(await con.fetchval("SELECT count(*) FROM faultline_jobs WHERE queue = 'lost'"))

            await eventually(stored, timeout=30, message="the submit stored while its reply is held back")
            await eventually(lambda: proxy.held > 0, timeout=30, message="the reply reached the proxy")
            proxy.drop()
            if keyed:
                job, created = await submit
                assert created is False  # the retry found the job the lost reply would have returned
                stored_id = await con.fetchval("SELECT id FROM faultline_jobs WHERE queue = 'lost'")
                assert int(job.id) == stored_id
            else:
                with pytest.raises(SubmitOutcomeUnknownError):
                    await submit
        assert await con.fetchval("SELECT count(*) FROM faultline_jobs WHERE queue = 'lost'") == 1
    finally:
        await con.close()
        await proxy.close()
