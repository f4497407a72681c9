"""The console's RPCs with auth on and off: WhoAmI, and who may bulk-cancel or bulk-requeue which queues."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from coordinator.app import Coordinator
from tests.security.conftest import MakeKey, bearer
from worker_sdk._proto.faultline.v1 import job_pb2, job_service_pb2_grpc
from worker_sdk._proto.faultline.v1 import job_service_pb2 as jpb


def _addr(c: Coordinator) -> str:
    return f"127.0.0.1:{c.port}"


async def _unary(addr: str, method: str, request: Any, metadata: tuple[tuple[str, str], ...] = ()) -> Any:
    async with grpc.aio.insecure_channel(addr) as ch:
        return await getattr(job_service_pb2_grpc.JobServiceStub(ch), method)(request, metadata=metadata, timeout=10)


async def _code(aw: Any) -> tuple[grpc.StatusCode, str]:
    try:
        await aw
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


async def test_whoami_with_auth_on_names_the_key_its_scopes_and_queues(auth_coordinator: Coordinator,
                                                                       make_key: MakeKey) -> None:
    addr = _addr(auth_coordinator)
    work = await make_key("workers", "work")
    team = await make_key("team-a-admin", "admin,read", queues=("team-a.*", "shared"))
    me = await _unary(addr, "WhoAmI", jpb.WhoAmIRequest(), bearer(work))  # any scope is enough
    assert me.identity == "key:workers" and me.name == "key workers"
    assert list(me.scopes) == ["work"] and list(me.queues) == [] and me.auth_enabled
    me = await _unary(addr, "WhoAmI", jpb.WhoAmIRequest(), bearer(team))
    assert list(me.scopes) == ["admin", "read"] and list(me.queues) == ["team-a.*", "shared"]
    code, _ = await _code(_unary(addr, "WhoAmI", jpb.WhoAmIRequest()))
    assert code is grpc.StatusCode.UNAUTHENTICATED


async def test_whoami_with_auth_off_is_anonymous_with_every_scope(
        coordinator_factory: Callable[..., Awaitable[Coordinator]]) -> None:
    c = await coordinator_factory()
    me = await _unary(_addr(c), "WhoAmI", jpb.WhoAmIRequest())
    assert me.identity == "" and me.name == "anonymous" and not me.auth_enabled
    assert set(me.scopes) == {"submit", "read", "work", "payloads", "admin"} and list(me.queues) == []


async def test_bulk_needs_admin_and_a_queue_limited_key_stays_in_its_queues(auth_coordinator: Coordinator,
                                                                            make_key: MakeKey, db: Any) -> None:
    addr = _addr(auth_coordinator)
    admin = await make_key("root", "admin")
    read = await make_key("viewer", "read")
    team = await make_key("team-a-admin", "admin", queues=("team-a.*",))
    mine = await _unary(addr, "SubmitBatch", jpb.SubmitBatchRequest(
        jobs=[jpb.SubmitRequest(kind="k", queue="team-a.mail")] * 3), bearer(admin))
    theirs = await _unary(addr, "SubmitBatch", jpb.SubmitBatchRequest(
        jobs=[jpb.SubmitRequest(kind="k", queue="team-b.mail")] * 3), bearer(admin))
    mine_ids = [r.job.id for r in mine.results]
    their_ids = [r.job.id for r in theirs.results]
    for method, req in (("BulkCancelJobs", jpb.BulkCancelJobsRequest(ids=mine_ids)),
                        ("BulkRequeueJobs", jpb.BulkRequeueJobsRequest(ids=mine_ids))):
        code, details = await _code(_unary(addr, method, req, bearer(read)))
        assert code is grpc.StatusCode.PERMISSION_DENIED and "admin" in details, details
    # By filter: it must name a queue of the key's.
    code, details = await _code(_unary(addr, "BulkCancelJobs", jpb.BulkCancelJobsRequest(
        filter=jpb.JobFilter(kind="k")), bearer(team)))
    assert code is grpc.StatusCode.PERMISSION_DENIED and "filter.queue" in details, details
    code, details = await _code(_unary(addr, "BulkCancelJobs", jpb.BulkCancelJobsRequest(
        filter=jpb.JobFilter(queue="team-b.mail")), bearer(team)))
    assert code is grpc.StatusCode.PERMISSION_DENIED and "team-b.mail" in details, details
    # By ids: one job of another queue refuses the whole call before anything changes.
    code, details = await _code(_unary(addr, "BulkCancelJobs", jpb.BulkCancelJobsRequest(
        ids=[*mine_ids, their_ids[0]]), bearer(team)))
    assert code is grpc.StatusCode.PERMISSION_DENIED and "team-b.mail" in details and their_ids[0] in details
    code, _ = await _code(_unary(addr, "BulkRequeueJobs", jpb.BulkRequeueJobsRequest(
        filter=jpb.JobFilter(queue="team-b.mail", state=job_pb2.JOB_STATE_DEAD_LETTERED)), bearer(team)))
    assert code is grpc.StatusCode.PERMISSION_DENIED
    assert await db.fetchval("SELECT count(*) FROM faultline_jobs WHERE state = 'cancelled'") == 0
    # Its own queue works, by ids and by filter, and the audit records the key.
    done = await _unary(addr, "BulkCancelJobs", jpb.BulkCancelJobsRequest(ids=mine_ids[:1]), bearer(team))
    assert done.cancelled == 1
    done = await _unary(addr, "BulkCancelJobs", jpb.BulkCancelJobsRequest(
        filter=jpb.JobFilter(queue="team-a.mail")), bearer(team))
    assert (done.cancelled, done.skipped) == (2, 1)
    rows = await db.fetch("SELECT queue, state::text AS s, cancelled_by FROM faultline_jobs ORDER BY id")
    assert {(r["queue"], r["s"], r["cancelled_by"]) for r in rows} == {
        ("team-a.mail", "cancelled", "key:team-a-admin"), ("team-b.mail", "queued", None)}
    back = await _unary(addr, "BulkRequeueJobs", jpb.BulkRequeueJobsRequest(ids=mine_ids), bearer(team))
    assert back.requeued == 3
    assert await db.fetchval("SELECT count(*) FROM faultline_jobs WHERE requeued_by = 'key:team-a-admin'") == 3
