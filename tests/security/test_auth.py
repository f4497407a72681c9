"""Auth over real gRPC, unary calls and the worker stream: anonymous, wrong scope or queue, revoked, impersonating."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from coordinator.app import Coordinator
from tests.helpers.raw_worker import RawWorker
from tests.helpers.wait import eventually
from tests.security.conftest import MakeKey, bearer, revoke
from worker_sdk import Client, PermissionDeniedError, UnauthenticatedError, Worker
from worker_sdk._proto.faultline.v1 import job_service_pb2 as jpb
from worker_sdk._proto.faultline.v1 import job_service_pb2_grpc
from worker_sdk._proto.faultline.v1 import worker_service_pb2 as wpb


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


async def test_anonymous_calls_are_unauthenticated_but_health_answers(auth_coordinator: Coordinator) -> None:
    addr = _addr(auth_coordinator)
    for method, request in (("ListJobs", jpb.ListJobsRequest()), ("Submit", jpb.SubmitRequest(kind="echo")),
                            ("ListWorkers", jpb.ListWorkersRequest()), ("GetJob", jpb.GetJobRequest(id="1"))):
        code, details = await _code(_unary(addr, method, request))
        assert code is grpc.StatusCode.UNAUTHENTICATED, (method, code)
        assert "Bearer" in details
    code, details = await _code(_unary(addr, "ListJobs", jpb.ListJobsRequest(), bearer("fl_0123456789ab_nope")))
    assert code is grpc.StatusCode.UNAUTHENTICATED and "unknown or revoked" in details
    code, _ = await _code(_unary(addr, "ListJobs", jpb.ListJobsRequest(), (("authorization", "Basic eA=="),)))
    assert code is grpc.StatusCode.UNAUTHENTICATED
    async with grpc.aio.insecure_channel(addr) as ch:
        health = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    # The stream too: no key, no session (and no frame of it is read).
    w = RawWorker(addr, "anon")
    await w.connect(hello=wpb.Hello(worker_id="anon", queues=["default"], kinds=["echo"], capacity=1))
    assert await w.closed() is grpc.StatusCode.UNAUTHENTICATED
    await w.close()
    assert len(auth_coordinator.registry or ()) == 0


async def test_wrong_scope_is_permission_denied_naming_the_scope(auth_coordinator: Coordinator,
                                                                 make_key: MakeKey) -> None:
    addr = _addr(auth_coordinator)
    work = await make_key("workers", "work")
    read = await make_key("viewer", "read")
    code, details = await _code(_unary(addr, "Submit", jpb.SubmitRequest(kind="echo"), bearer(work)))
    assert code is grpc.StatusCode.PERMISSION_DENIED and "submit" in details, details
    code, details = await _code(_unary(addr, "CancelJob", jpb.CancelJobRequest(id="1"), bearer(read)))
    assert code is grpc.StatusCode.PERMISSION_DENIED and "admin" in details, details
    assert (await _code(_unary(addr, "ListJobs", jpb.ListJobsRequest(), bearer(read))))[0] is grpc.StatusCode.OK
    # A read key cannot open a worker stream.
    w = RawWorker(addr, "w", metadata=bearer(read))
    await w.connect(hello=wpb.Hello(worker_id="w", queues=["default"], kinds=["echo"], capacity=1))
    assert await w.closed() is grpc.StatusCode.PERMISSION_DENIED
    assert "work" in w.details
    await w.close()
    # The SDK raises its typed errors.
    async with Client(addr, api_key=work) as client:
        with pytest.raises(PermissionDeniedError, match="submit"):
            await client.submit("echo", b"x")
    async with Client(addr, api_key="") as client:
        with pytest.raises(UnauthenticatedError):
            await client.list()


async def test_queue_patterns_limit_submit_read_and_work(auth_coordinator: Coordinator, make_key: MakeKey) -> None:
    addr = _addr(auth_coordinator)
    admin = await make_key("root", "admin")
    team = await make_key("team-a", "submit,read,payloads,work", queues=("team-a.*", "shared"))
    async with Client(addr, api_key=team) as client:
        mine = await client.submit("echo", b"a", queue="team-a.images")
        await client.submit("echo", b"s", queue="shared")
        with pytest.raises(PermissionDeniedError, match="team-b"):
            await client.submit("echo", b"b", queue="team-b")
        with pytest.raises(PermissionDeniedError, match="queue"):
            await client.list()  # a limited key names the queue it reads
        jobs, _ = await client.list(queue="team-a.images")
        assert [j.id for j in jobs] == [mine.id]
    async with Client(addr, api_key=admin) as client:
        other = await client.submit("echo", b"b", queue="team-b")

        async def sampled() -> bool:  # ListQueues serves the last metrics sample: wait for one with the jobs
            return {q.name for q in await client.list_queues()} >= {"team-a.images", "shared", "team-b"}

        await eventually(sampled, timeout=10, message="a sample with every queue")
    async with Client(addr, api_key=team) as client:
        with pytest.raises(PermissionDeniedError):
            await client.get(other.id)
        assert (await client.get(mine.id)).payload == b"a"
        assert {q.name for q in await client.list_queues()} == {"team-a.images", "shared"}
    # A batch with one job outside the key's queues stores nothing.
    code, details = await _code(_unary(addr, "SubmitBatch", jpb.SubmitBatchRequest(jobs=[
        jpb.SubmitRequest(kind="echo", queue="shared"), jpb.SubmitRequest(kind="echo", queue="team-b")]),
        bearer(team)))
    assert code is grpc.StatusCode.PERMISSION_DENIED and "jobs[1].queue" in details
    # A worker of team-a is refused a hello that names team-b: it would receive team-b's payloads.
    spy = RawWorker(addr, "spy", queues=("team-a.images", "team-b"), metadata=bearer(team))
    await spy.connect(hello=wpb.Hello(worker_id="spy", queues=["team-a.images", "team-b"], kinds=["echo"],
                                      capacity=5))
    assert await spy.closed() is grpc.StatusCode.PERMISSION_DENIED and "team-b" in spy.details
    await spy.close()
    ok = await RawWorker(addr, "ok", queues=("team-a.images",), metadata=bearer(team)).connect()
    ok.credit(5)
    grant = await ok.next_grant()
    assert grant.job.id == mine.id
    await ok.close()


async def test_worker_identity_comes_from_the_key_and_impersonation_fails(
    auth_coordinator: Coordinator, make_key: MakeKey, db: Any
) -> None:
    """The attack from the issue, step by step: each step must fail and A's work must stand."""
    addr = _addr(auth_coordinator)
    key_a = await make_key("team-a-workers", "work")
    key_b = await make_key("intruder", "work,read")
    async with Client(addr, api_key=await make_key("producer", "submit")) as client:
        j1 = await client.submit("echo", b"one")
        j2 = await client.submit("echo", b"two")
    a = await RawWorker(addr, "worker-a", metadata=bearer(key_a)).connect()
    a.credit(2)
    g1, g2 = await a.next_grant(), await a.next_grant()
    assert {g1.job.id, g2.job.id} == {j1.id, j2.id}
    # The holder Postgres fences on is the claimed id under A's key.
    holders = {r["worker_id"] for r in await db.fetch("SELECT worker_id FROM faultline_jobs WHERE state = 'running'")}
    assert holders == {"key:team-a-workers/worker-a"}
    # B reads ListWorkers (it has read) and sees the lease ids, then claims A's worker id and A's leases.
    async with Client(addr, api_key=key_b) as client:
        [info] = await client.list_workers()
    assert info.worker_id == "key:team-a-workers/worker-a"
    b = await RawWorker(addr, "worker-a", metadata=bearer(key_b)).connect(held=[a.ref(g1), a.ref(g2)])
    assert list(b.welcome.resumed_leases) == []  # resuming another identity's leases gives nothing
    forged = await b.complete(g1, b"forged")
    assert forged.status in (wpb.REPLY_STATUS_STALE_LEASE, wpb.REPLY_STATUS_NOT_FOUND), forged
    dead = await b.fail(g2, "forged failure", retryable=False)
    assert dead.status in (wpb.REPLY_STATUS_STALE_LEASE, wpb.REPLY_STATUS_NOT_FOUND), dead
    beat = await b.heartbeat(g1)
    assert beat.leases[0].status in (wpb.REPLY_STATUS_STALE_LEASE, wpb.REPLY_STATUS_NOT_FOUND)
    step = await b.request(record_step=wpb.RecordStep(lease=b.ref(g1), key="s", result=b"forged"))
    assert step.status == wpb.REPLY_STATUS_STALE_LEASE
    release = await b.request(release=wpb.Release(lease=b.ref(g2), reason="forged"))
    assert release.status in (wpb.REPLY_STATUS_STALE_LEASE, wpb.REPLY_STATUS_NOT_FOUND), release
    # A still holds both and finishes them with its own results; nothing B sent took effect.
    assert (await a.complete(g1, b"real-1")).status == wpb.REPLY_STATUS_ACCEPTED
    assert (await a.complete(g2, b"real-2")).status == wpb.REPLY_STATUS_ACCEPTED
    rows = {r["id"]: (r["state"], bytes(r["result"])) for r in await db.fetch(
        "SELECT id, state::text, result FROM faultline_jobs WHERE id = ANY($1::bigint[])", [int(j1.id), int(j2.id)])}
    assert rows == {int(g1.job.id): ("succeeded", b"real-1"), int(g2.job.id): ("succeeded", b"real-2")}
    assert await db.fetchval("SELECT count(*) FROM faultline_steps") == 0
    await a.close()
    await b.close()


async def test_revoked_key_stops_unary_calls_and_ends_open_streams(
    auth_coordinator: Coordinator, make_key: MakeKey, dsn: str
) -> None:
    addr = _addr(auth_coordinator)
    key = await make_key("rotating", "work,read")
    w = await RawWorker(addr, "w", metadata=bearer(key)).connect()
    assert (await _code(_unary(addr, "ListJobs", jpb.ListJobsRequest(), bearer(key))))[0] is grpc.StatusCode.OK
    loop = asyncio.get_running_loop()
    revoked_at = loop.time()
    await revoke(dsn, "rotating")
    # The open stream ends UNAUTHENTICATED within the refresh interval (0.2 s here; 2 s by default).
    assert await w.closed(timeout=10) is grpc.StatusCode.UNAUTHENTICATED
    took = loop.time() - revoked_at
    assert "revoked" in w.details
    await w.close()
    code, _ = await _code(_unary(addr, "ListJobs", jpb.ListJobsRequest(), bearer(key)))
    assert code is grpc.StatusCode.UNAUTHENTICATED
    assert took < 5.0, took


async def test_sdk_worker_stops_with_a_typed_error_instead_of_reconnecting(
    auth_coordinator: Coordinator, make_key: MakeKey, dsn: str
) -> None:
    addr = _addr(auth_coordinator)
    bad = Worker(addr, queues=["default"], api_key="fl_0123456789ab_not-a-key", handle_signals=False)
    bad.register("echo", lambda ctx: b"")
    with pytest.raises(UnauthenticatedError):
        await asyncio.wait_for(bad.run(), 20)
    limited = await make_key("only-a", "work", queues=("a",))
    wrong = Worker(addr, queues=["b"], api_key=limited, handle_signals=False)
    wrong.register("echo", lambda ctx: b"")
    with pytest.raises(PermissionDeniedError, match="queue 'b'"):
        await asyncio.wait_for(wrong.run(), 20)
    # A running worker whose key is revoked stops too.
    key = await make_key("soon-revoked", "work")
    worker = Worker(addr, queues=["default"], api_key=key, handle_signals=False)
    worker.register("echo", lambda ctx: b"")
    run = asyncio.ensure_future(worker.run())
    await eventually(lambda: len(auth_coordinator.registry or ()) == 1, timeout=20, message="worker connected")
    await revoke(dsn, "soon-revoked")
    with pytest.raises(UnauthenticatedError, match="revoked"):
        await asyncio.wait_for(run, 20)


async def test_sdk_worker_and_producer_with_keys_run_a_job_and_the_audit_names_them(
    auth_coordinator: Coordinator, make_key: MakeKey
) -> None:
    addr = _addr(auth_coordinator)
    worker = Worker(addr, queues=["default"], api_key=await make_key("fleet", "work"), worker_id="host-1",
                    handle_signals=False)
    worker.register("echo", lambda ctx: b"out:" + ctx.payload)
    run = asyncio.ensure_future(worker.run())
    admin = await make_key("ops", "admin")
    try:
        async with Client(addr, api_key=await make_key("producer", "submit,read,payloads")) as client:
            job = await client.submit("echo", b"x")

            async def done() -> bool:
                return (await client.get(job.id)).result == b"out:x"

            await eventually(done, timeout=20, message="job ran")
            got = await client.get(job.id)
        assert got.submitted_by == "key:producer"
        assert got.attempt_holders == ((1, "key:fleet/host-1", "succeeded"),)
        async with Client(addr, api_key=admin) as client:
            await client.cancel(job.id)
            assert (await client.get(job.id)).cancelled_by is None  # finished: the cancel changed nothing
            other = await client.submit("echo", b"later", run_at=datetime.now(UTC) + timedelta(hours=1))
            await client.cancel(other.id)
            await client.requeue(other.id)
            got = await client.get(other.id)
        assert (got.submitted_by, got.cancelled_by, got.requeued_by) == ("key:ops", "key:ops", "key:ops")
    finally:
        await worker.stop()
        await run


async def test_reading_payloads_and_results_is_a_scope_of_its_own(auth_coordinator: Coordinator,
                                                                  make_key: MakeKey) -> None:
    addr = _addr(auth_coordinator)
    async with Client(addr, api_key=await make_key("producer", "submit")) as client:
        job = await client.submit("echo", b"secret payload")
        with pytest.raises(PermissionDeniedError, match="payloads"):
            await client.submit("echo", b"x", full=True)  # an idempotent repeat would echo someone's payload
    async with Client(addr, api_key=await make_key("dashboard", "read")) as client:
        seen = await client.get(job.id)
        assert (seen.state, seen.payload) == (job.state, b"")  # the job, not its data
        jobs, _ = await client.list()
        assert [j.id for j in jobs] == [job.id]
        with pytest.raises(PermissionDeniedError, match="payloads"):
            await client.list(full=True)
    async with Client(addr, api_key=await make_key("debugger", "read,payloads")) as client:
        assert (await client.get(job.id)).payload == b"secret payload"
        jobs, _ = await client.list(full=True)
        assert jobs[0].payload == b"secret payload"


async def test_watch_and_schedule_rpcs_follow_scopes_and_queues(auth_coordinator: Coordinator,
                                                                make_key: MakeKey) -> None:
    """WatchJob is a server stream: the interceptor admits it under `read` and the key's queues, like GetJob."""
    addr = _addr(auth_coordinator)
    admin = await make_key("root", "admin,submit,read")
    team = await make_key("team-a", "submit,read", queues=("team-a",))
    async with Client(addr, api_key=admin) as root:
        other = await root.submit("echo", b"b", queue="team-b")
    async with grpc.aio.insecure_channel(addr) as ch:
        stub = job_service_pb2_grpc.JobServiceStub(ch)  # type: ignore[no-untyped-call]

        async def first(call: Any) -> Any:
            async for msg in call:
                return msg
            return None

        code, _ = await _code(first(stub.WatchJob(jpb.WatchJobRequest(id=other.id), timeout=10)))
        assert code is grpc.StatusCode.UNAUTHENTICATED
        code, details = await _code(first(stub.WatchJob(jpb.WatchJobRequest(id=other.id), metadata=bearer(team),
                                                        timeout=10)))
        assert code is grpc.StatusCode.PERMISSION_DENIED and "team-b" in details, details
    async with Client(addr, api_key=team) as client:
        mine = await client.submit("echo", b"a", queue="team-a")
        seen = client.watch(mine.id)
        assert (await anext(seen)).id == mine.id  # a read key watches its own queue's job
        await seen.aclose()
        assert await client.list_schedules() == []
        with pytest.raises(PermissionDeniedError, match="admin"):
            await client.create_schedule("nightly", "echo", every=timedelta(seconds=60), queue="team-a")


async def test_one_clients_watches_cost_that_client_not_its_neighbours(
        coordinator_factory: Callable[..., Awaitable[Coordinator]], make_key: MakeKey) -> None:
    from tests.security.conftest import TEST_KEY_REFRESH

    c = await coordinator_factory(auth="required", key_refresh_interval=TEST_KEY_REFRESH, watchers_per_client_max=3)
    addr = _addr(c)
    greedy = await make_key("greedy", "submit,read")
    polite = await make_key("polite", "submit,read")
    async with Client(addr, api_key=greedy) as g, Client(addr, api_key=polite) as p:
        job = await g.submit("nobody-runs-this", b"x")
        held = [g.watch(job.id) for _ in range(3)]
        for w in held:
            await anext(w)  # each holds a watch open on the coordinator
        async with grpc.aio.insecure_channel(addr) as ch:
            stub = job_service_pb2_grpc.JobServiceStub(ch)  # type: ignore[no-untyped-call]

            async def first(token: str) -> Any:
                async for msg in stub.WatchJob(jpb.WatchJobRequest(id=job.id), metadata=bearer(token), timeout=10):
                    return msg
                return None

            code, details = await _code(first(greedy))
            assert code is grpc.StatusCode.RESOURCE_EXHAUSTED and "share" in details, (code, details)
            assert (await first(polite)).job.id == job.id  # the neighbour still watches
        for w in held:
            await w.aclose()
        assert (await anext(p.watch(job.id))).id == job.id
