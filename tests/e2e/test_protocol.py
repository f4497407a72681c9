"""The worker protocol, frame by frame over real gRPC and Postgres: fencing, duplicates, replies with reasons."""

from __future__ import annotations

from typing import Any

import grpc

from coordinator.app import Coordinator
from tests.helpers.raw_worker import RawWorker
from tests.helpers.wait import eventually
from worker_sdk import Client
from worker_sdk._proto.faultline.v1 import worker_service_pb2 as wpb


async def test_stale_completion_from_expired_lease_is_refused_and_newer_result_kept(
    coordinator: Coordinator, addr: str, db: Any
) -> None:
    async with Client(addr) as client:
        job = await client.submit("echo", b"in")
    slow = await RawWorker(addr, "slow").connect()
    slow.credit(1)
    old = await slow.next_grant()
    assert old.attempt == 1
    # The slow worker never heartbeats: the reaper must take the job back (TTL 2 s in tests).
    fast = await RawWorker(addr, "fast").connect()
    fast.credit(1)
    new = await fast.next_grant(timeout=20)
    assert new.job.id == job.id and new.fencing_token > old.fencing_token and new.attempt == 2
    assert (await fast.complete(new, b"from-fast")).status == wpb.REPLY_STATUS_ACCEPTED

    stale = await slow.complete(old, b"from-slow")
    assert stale.status == wpb.REPLY_STATUS_STALE_LEASE
    assert "stale" in stale.message and str(new.fencing_token) in stale.message
    beat = await slow.heartbeat(old)
    assert beat.leases[0].status == wpb.REPLY_STATUS_STALE_LEASE
    row = await db.fetchrow("SELECT state, result, lease_token FROM faultline_jobs WHERE id = $1", int(job.id))
    assert (row["state"], bytes(row["result"]), row["lease_token"]) == ("succeeded", b"from-fast", new.fencing_token)
    outcomes = [r["outcome"] for r in await db.fetch(
        "SELECT outcome FROM faultline_attempts WHERE job_id = $1 ORDER BY attempt", int(job.id))]
    assert outcomes == ["lease_expired", "succeeded"]
    await slow.close()
    await fast.close()


async def test_repeated_completion_is_duplicate_with_stored_result(coordinator: Coordinator, addr: str) -> None:
    async with Client(addr) as client:
        await client.submit("echo", b"x")
    w = await RawWorker(addr, "w").connect()
    w.credit(1)
    g = await w.next_grant()
    assert (await w.complete(g, b"first")).status == wpb.REPLY_STATUS_ACCEPTED
    again = await w.complete(g, b"second")
    assert again.status == wpb.REPLY_STATUS_DUPLICATE and again.result == b"first"
    late_fail = await w.fail(g, "oops")
    assert late_fail.status in (wpb.REPLY_STATUS_STALE_LEASE, wpb.REPLY_STATUS_DUPLICATE)
    await w.close()


async def test_completion_for_another_workers_lease_is_refused(coordinator: Coordinator, addr: str, db: Any) -> None:
    async with Client(addr) as client:
        job = await client.submit("echo", b"x")
    owner = await RawWorker(addr, "owner").connect()
    owner.credit(1)
    g = await owner.next_grant()
    thief = await RawWorker(addr, "thief").connect()
    reply = await thief.complete(g, b"stolen")
    assert reply.status == wpb.REPLY_STATUS_STALE_LEASE and "another worker" in reply.message
    future = wpb.LeaseRef(lease_id=f"{job.id}.{g.fencing_token + 5}", fencing_token=g.fencing_token + 5)
    reply = await owner.request(complete=wpb.Complete(lease=future, result=b"x"))
    assert reply.status == wpb.REPLY_STATUS_STALE_LEASE
    assert await db.fetchval("SELECT state FROM faultline_jobs WHERE id = $1", int(job.id)) == "running"
    assert (await owner.complete(g, b"mine")).status == wpb.REPLY_STATUS_ACCEPTED
    await owner.close()
    await thief.close()


async def test_frame_before_hello_closes_stream_with_clear_status(coordinator: Coordinator, addr: str) -> None:
    w = RawWorker(addr, "rude")
    await w.connect(hello=wpb.Hello())  # an empty hello: no worker id
    assert await w.closed() == grpc.StatusCode.INVALID_ARGUMENT
    assert "hello.worker_id" in w.details
    w2 = RawWorker(addr, "rude2")
    w2._channel = grpc.aio.insecure_channel(addr)
    import asyncio

    from worker_sdk._proto.faultline.v1 import worker_service_pb2_grpc

    w2._call = worker_service_pb2_grpc.WorkerServiceStub(w2._channel).Connect(w2._requests())
    w2._reader = asyncio.create_task(w2._read())
    w2.send(wpb.WorkerFrame(seq=1, complete=wpb.Complete(lease=wpb.LeaseRef(lease_id="1.1", fencing_token=1))))
    assert await w2.closed() == grpc.StatusCode.FAILED_PRECONDITION
    assert "first frame must be hello" in w2.details


async def test_leases_only_against_credit(coordinator: Coordinator, addr: str) -> None:
    async with Client(addr) as client:
        for i in range(5):
            await client.submit("echo", str(i).encode())
    w = await RawWorker(addr, "w", capacity=10).connect()
    w.credit(2)
    got = [await w.next_grant(), await w.next_grant()]
    assert w.grants.empty()
    # No third grant may arrive without credit; prove it by a round trip after the dispatcher had every chance.
    beat = await w.heartbeat(*got)
    assert [s.status for s in beat.leases] == [wpb.REPLY_STATUS_ACCEPTED] * 2
    assert w.grants.empty()
    w.credit(3)
    more = [await w.next_grant() for _ in range(3)]
    assert len({g.job.id for g in got + more}) == 5
    await w.close()


async def test_reconnect_resumes_held_lease(coordinator: Coordinator, addr: str, db: Any) -> None:
    async with Client(addr) as client:
        job = await client.submit("echo", b"x")
    w = await RawWorker(addr, "same-id").connect()
    w.credit(1)
    g = await w.next_grant()
    await w.close()
    back = await RawWorker(addr, "same-id").connect(held=[RawWorker.ref(g)])
    assert [r.lease_id for r in back.welcome.resumed_leases] == [g.lease_id]
    assert (await back.complete(g, b"ok")).status == wpb.REPLY_STATUS_ACCEPTED
    other = await RawWorker(addr, "other-id").connect(held=[RawWorker.ref(g)])
    assert list(other.welcome.resumed_leases) == []
    assert await db.fetchval("SELECT count(*) FROM faultline_attempts WHERE job_id = $1", int(job.id)) == 1
    await back.close()
    await other.close()


async def test_heartbeat_timeout_and_execution_timeout_are_recorded(
    coordinator: Coordinator, addr: str, db: Any
) -> None:
    from datetime import timedelta

    from worker_sdk import JobTimeouts

    async with Client(addr) as client:
        hb_timeouts = JobTimeouts(heartbeat=timedelta(milliseconds=300))
        ex_timeouts = JobTimeouts(execution=timedelta(milliseconds=400))
        hb = await client.submit("echo", b"", max_attempts=1, timeouts=hb_timeouts)
        ex = await client.submit("echo", b"", max_attempts=1, timeouts=ex_timeouts)
    w = await RawWorker(addr, "w").connect()
    w.credit(2)
    grants = {g.job.id: g for g in [await w.next_grant(), await w.next_grant()]}
    assert grants[hb.id].heartbeat_timeout.ToMilliseconds() == 300

    # Keep heartbeating only the execution-timeout job: its lease stays alive, its deadline must still fire.
    async def both_dead() -> bool:
        await w.heartbeat(grants[ex.id])
        rows = await db.fetch("SELECT id, state FROM faultline_jobs WHERE id = ANY($1::bigint[])",
                              [int(hb.id), int(ex.id)])
        return all(r["state"] == "dead_lettered" for r in rows)

    await eventually(both_dead, timeout=15, message="both timeouts fired")
    outcomes = {r["job_id"]: r["outcome"] for r in await db.fetch(
        "SELECT job_id, outcome FROM faultline_attempts WHERE job_id = ANY($1::bigint[])", [int(hb.id), int(ex.id)])}
    assert outcomes == {int(hb.id): "heartbeat_timeout", int(ex.id): "execution_timeout"}
    await w.close()


async def test_schedule_to_start_timeout_dead_letters(coordinator: Coordinator, addr: str, db: Any) -> None:
    from datetime import timedelta

    from worker_sdk import JobTimeouts

    async with Client(addr) as client:
        job = await client.submit("echo", b"", queue="nobody-listens",
                                  timeouts=JobTimeouts(schedule_to_start=timedelta(milliseconds=200)))

        async def dead() -> bool:
            return (await client.get(job.id)).state == "dead_lettered"

        await eventually(dead, timeout=10, message="schedule-to-start timeout")
        got = await client.get(job.id)
    assert got.last_error == "schedule_to_start_timeout"
    assert await db.fetchval("SELECT outcome FROM faultline_attempts WHERE job_id = $1", int(job.id)) == \
        "schedule_to_start_timeout"


def _stale(frame: str) -> float:
    from coordinator import metrics

    return sum(s.value for m in metrics.STALE_REJECTED.collect() for s in m.samples
               if s.name.endswith("_total") and s.labels.get("frame") == frame)


async def test_heartbeat_after_own_completion_is_not_counted_as_a_zombie(
    coordinator: Coordinator, addr: str
) -> None:
    async with Client(addr) as client:
        await client.submit("echo", b"x")
    w = await RawWorker(addr, "w").connect()
    w.credit(1)
    g = await w.next_grant()
    assert (await w.complete(g, b"ok")).status == wpb.REPLY_STATUS_ACCEPTED
    before = _stale("heartbeat")
    # A heartbeat that raced the lease's own completion: refused (the lease is closed), not a zombie.
    beat = await w.heartbeat(g)
    assert beat.leases[0].status == wpb.REPLY_STATUS_STALE_LEASE
    assert _stale("heartbeat") == before
    await w.close()


async def test_heartbeat_from_superseded_lease_is_counted(coordinator: Coordinator, addr: str) -> None:
    async with Client(addr) as client:
        await client.submit("echo", b"x")
    old_holder = await RawWorker(addr, "old").connect()
    old_holder.credit(1)
    old = await old_holder.next_grant()
    new_holder = await RawWorker(addr, "new").connect()
    new_holder.credit(1)
    await new_holder.next_grant(timeout=20)  # the reaper re-leased it after the 2 s TTL
    before = _stale("heartbeat")
    beat = await old_holder.heartbeat(old)
    assert beat.leases[0].status == wpb.REPLY_STATUS_STALE_LEASE
    assert _stale("heartbeat") == before + 1
    await old_holder.close()
    await new_holder.close()


async def test_half_closed_stream_still_gets_the_reply_to_its_last_completion(
    coordinator: Coordinator, addr: str, db: Any
) -> None:
    """FM-012: a worker that ends its side right after a completion is still told the verdict."""
    import asyncio

    async with Client(addr) as client:
        job = await client.submit("echo", b"x")
        await client.submit("echo", b"y")  # waiting work: a half-closed session must not be granted it
    w = await RawWorker(addr, "w").connect()
    w.credit(1)
    g = await w.next_grant()
    pending = w.send_request(complete=wpb.Complete(lease=RawWorker.ref(g), result=b"last words"))
    w.half_close()
    reply = await asyncio.wait_for(pending, 15)
    assert reply.status == wpb.REPLY_STATUS_ACCEPTED
    assert await w.closed() == grpc.StatusCode.OK
    assert w.grants.empty()
    assert await db.fetchval("SELECT result FROM faultline_jobs WHERE id = $1", int(job.id)) == b"last words"


async def _release(w: RawWorker, grant: Any, reason: str = "shutting down") -> Any:
    return await w.request(release=wpb.Release(lease=w.ref(grant), reason=reason))


async def test_release_puts_the_job_back_without_counting_the_attempt(
    coordinator: Coordinator, addr: str, db: Any
) -> None:
    """A job on its only attempt, handed back unstarted, runs again rather than being dead-lettered."""
    async with Client(addr) as client:
        job = await client.submit("echo", b"x", max_attempts=1)
    w = await RawWorker(addr, "w").connect()
    assert w.welcome.accepts_release
    w.credit(1)
    first = await w.next_grant()
    assert (await _release(w, first)).status == wpb.REPLY_STATUS_ACCEPTED
    row = await db.fetchrow("SELECT state, attempts, lease_token, worker_id FROM faultline_jobs WHERE id = $1",
                            int(job.id))
    assert (row["state"], row["attempts"], row["lease_token"], row["worker_id"]) == (
        "queued", 0, first.fencing_token + 1, None)
    assert await db.fetchval("SELECT count(*) FROM faultline_attempts WHERE job_id = $1", int(job.id)) == 0
    w.credit(1)
    again = await w.next_grant()
    assert (again.job.id, again.attempt, again.fencing_token) == (job.id, 1, first.fencing_token + 2)
    assert (await w.complete(again, b"ran")).status == wpb.REPLY_STATUS_ACCEPTED
    # The old lease is gone for good: releasing it again is refused, and changes nothing.
    assert (await _release(w, first)).status == wpb.REPLY_STATUS_STALE_LEASE
    assert await db.fetchval("SELECT state FROM faultline_jobs WHERE id = $1", int(job.id)) == "succeeded"
    await w.close()


async def test_release_is_fenced_on_token_and_holder(coordinator: Coordinator, addr: str, db: Any) -> None:
    async with Client(addr) as client:
        job = await client.submit("echo", b"x")
    holder = await RawWorker(addr, "holder").connect()
    other = await RawWorker(addr, "other").connect()
    holder.credit(1)
    grant = await holder.next_grant()
    refused = await _release(other, grant)
    assert refused.status == wpb.REPLY_STATUS_STALE_LEASE and "another worker" in refused.message
    stale = await holder.request(release=wpb.Release(
        lease=wpb.LeaseRef(lease_id=grant.lease_id, fencing_token=grant.fencing_token - 1)))
    assert stale.status in (wpb.REPLY_STATUS_STALE_LEASE, wpb.REPLY_STATUS_INVALID)
    row = await db.fetchrow("SELECT state, lease_token, worker_id FROM faultline_jobs WHERE id = $1", int(job.id))
    assert (row["state"], row["lease_token"], row["worker_id"]) == ("running", grant.fencing_token, "holder")
    await holder.close()
    await other.close()


async def test_release_of_a_job_cancelled_meanwhile_cancels_it(coordinator: Coordinator, addr: str, db: Any) -> None:
    async with Client(addr) as client:
        job = await client.submit("echo", b"x")
        w = await RawWorker(addr, "w").connect()
        w.credit(1)
        grant = await w.next_grant()
        await client.cancel(job.id)
        assert (await _release(w, grant)).status == wpb.REPLY_STATUS_ACCEPTED
        row = await db.fetchrow("SELECT state, attempts, finished_at FROM faultline_jobs WHERE id = $1", int(job.id))
        assert (row["state"], row["attempts"]) == ("cancelled", 0) and row["finished_at"] is not None
    await w.close()
