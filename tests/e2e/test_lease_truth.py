"""INV-013 and the wire contract's order: a session's leases follow Postgres, credit comes back, frames apply in order.

Raw-protocol tests drive the stream frame by frame; the process tests pause a real SDK worker (SIGSTOP past
the TTL) and cut Postgres (a private cluster), then check that the *same* worker processes drain a queue.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import asyncpg
import pytest

from coordinator.app import Coordinator
from coordinator.db.migrate import migrate
from coordinator.drills.cluster import PrivateCluster
from tests.conftest import bounded
from tests.conftest import test_config as coordinator_config
from tests.helpers.raw_worker import FRAME_TIMEOUT_S, RawWorker
from tests.helpers.wait import eventually
from worker_sdk import Client
from worker_sdk._proto.faultline.v1 import worker_service_pb2 as wpb

SETTLE_TIMEOUT_S = 60.0


class BatchWorker(RawWorker):
    """A RawWorker that can also put several frames into one ConnectRequest (send_batch)."""

    async def _requests(self) -> Any:
        while True:
            item = await self._out.get()
            if item is None:
                return
            yield wpb.ConnectRequest(frames=item if isinstance(item, list) else [item])

    def send_batch(self, frames: list[dict[str, Any]]) -> list[asyncio.Future[Any]]:
        """One message; each dict is a request frame's fields; returns the reply futures in order."""
        out, futs = [], []
        for fields in frames:
            seq = next(self._seq)
            fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self._replies[seq] = fut
            futs.append(fut)
            out.append(wpb.WorkerFrame(seq=seq, **fields))
        self._out.put_nowait(out)
        return futs


async def next_other(w: RawWorker, which: str, timeout: float = SETTLE_TIMEOUT_S) -> Any:
    """The next coordinator frame of type `which` (welcome, cancel, drain, lease_revoked' message class)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        left = deadline - asyncio.get_running_loop().time()
        frame = await asyncio.wait_for(w.others.get(), max(left, 0.01))
        if frame is None:
            raise AssertionError(f"stream ended before a {which}: {w.status} {w.details}")
        if type(frame).__name__ == which:
            return frame


async def session_of(addr: str, worker_id: str) -> Any:
    async with Client(addr) as c:
        for w in await c.list_workers():
            if w.worker_id == worker_id:
                return w
    return None


async def running_held_by(db: Any, worker_id: str) -> set[str]:
    rows = await db.fetch("SELECT id, lease_token FROM faultline_jobs WHERE state = 'running' AND worker_id = $1",
                          worker_id)
    return {f"{r['id']}.{r['lease_token']}" for r in rows}


async def assert_session_matches_sql(addr: str, db: Any, worker_id: str, *, idle_credit: int | None) -> None:
    """INV-013: the session's held leases equal the running rows the worker holds; an idle worker has credit."""

    async def matches() -> bool:
        s = await session_of(addr, worker_id)
        if s is None:
            return False
        held = await running_held_by(db, worker_id)
        if set(s.lease_ids) != held:
            return False
        return idle_credit is None or held or s.credit >= idle_credit

    await eventually(matches, timeout=SETTLE_TIMEOUT_S, message=f"session of {worker_id} agrees with Postgres")


# ---- raw protocol --------------------------------------------------------------------------------


async def test_a_reaped_lease_leaves_the_session_is_revoked_and_its_credit_comes_back(
    coordinator: Coordinator, addr: str, db: Any
) -> None:
    w = await RawWorker(addr, "reaped", capacity=1).connect()
    w.credit(1)
    async with Client(addr) as c:
        job = await c.submit("echo", b"x")
        grant = await w.next_grant()
        assert (await session_of(addr, "reaped")).lease_ids == (grant.lease_id,)
        # The worker stops heartbeating (its trust window dropped the lease) and frees its slot.
        w.credit(1)
        revoked = await next_other(w, "LeaseRevoked")
        assert revoked.lease.lease_id == grant.lease_id and revoked.reason
        # The retry comes back to the same session: its slot was counted free again.
        again = await w.next_grant(timeout=SETTLE_TIMEOUT_S)
        assert again.job.id == job.id and again.fencing_token > grant.fencing_token
        assert (await w.complete(again, b"done")).status == wpb.REPLY_STATUS_ACCEPTED
        w.credit(1)
    await assert_session_matches_sql(addr, db, "reaped", idle_credit=1)
    await w.close()


async def test_a_lease_another_coordinator_reaped_leaves_this_coordinators_session(
    coordinator_factory: Callable[..., Awaitable[Coordinator]], db: Any
) -> None:
    # This coordinator's own reaper never runs a second pass: only the reconciler can notice.
    holder = await coordinator_factory(reaper_interval=timedelta(hours=1))
    await coordinator_factory()  # the reaper that takes the lease back
    addr = f"127.0.0.1:{holder.port}"
    w = await RawWorker(addr, "elsewhere", capacity=1).connect()
    w.credit(1)
    async with Client(addr) as c:
        await c.submit("echo", b"x")
        grant = await w.next_grant()
        w.credit(1)
        revoked = await next_other(w, "LeaseRevoked")
        assert revoked.lease.lease_id == grant.lease_id
        again = await w.next_grant(timeout=SETTLE_TIMEOUT_S)
        assert (await w.complete(again, b"done")).status == wpb.REPLY_STATUS_ACCEPTED
        w.credit(1)
    await assert_session_matches_sql(addr, db, "elsewhere", idle_credit=1)
    await w.close()


async def test_abandon_frees_the_slot_at_once_and_ends_the_attempt_as_a_retryable_failure(
    coordinator: Coordinator, addr: str, db: Any
) -> None:
    w = await RawWorker(addr, "abandoner", capacity=1).connect()
    assert w.welcome.accepts_abandon
    w.credit(1)
    async with Client(addr) as c:
        job = await c.submit("echo", b"x")
        grant = await w.next_grant()
        w.credit(1)  # its slot is free again: sent before the abandon, kept until the lease is forgotten
        reply = await w.request(abandon=wpb.Abandon(lease=w.ref(grant), reason="trust window"))
        assert reply.status == wpb.REPLY_STATUS_ACCEPTED
        again = await w.next_grant(timeout=SETTLE_TIMEOUT_S)  # re-queued with backoff, not after the TTL
        assert again.job.id == job.id and again.attempt == 2
        attempt = await db.fetchrow(
            "SELECT outcome, error FROM faultline_attempts WHERE job_id = $1 AND lease_token = $2",
            int(job.id), grant.fencing_token)
        assert attempt["outcome"] == "failed" and attempt["error"] == "abandoned: trust window"
        # A second abandon of the same lease changes nothing.
        stale = await w.request(abandon=wpb.Abandon(lease=w.ref(grant), reason="again"))
        assert stale.status in (wpb.REPLY_STATUS_STALE_LEASE, wpb.REPLY_STATUS_DUPLICATE)
        assert (await w.complete(again, b"ok")).status == wpb.REPLY_STATUS_ACCEPTED
        assert (await c.get(job.id)).state.value == "succeeded"
    await w.close()


async def test_frames_of_one_message_take_effect_in_order_per_lease(
    coordinator: Coordinator, addr: str, db: Any
) -> None:
    n = 40
    w = await BatchWorker(addr, "ordered", capacity=n).connect()
    w.credit(n)
    async with Client(addr) as c:
        for _ in range(n):
            await c.submit("echo", b"x")
        grants = [await w.next_grant() for _ in range(n)]
    first, second = grants[: n // 2], grants[n // 2:]
    # heartbeat then complete, in one message: the heartbeat is judged first, so it is accepted.
    futs = w.send_batch([
        {"heartbeat": wpb.Heartbeat(leases=[w.ref(g) for g in first])},
        *({"complete": wpb.Complete(lease=w.ref(g), result=b"r")} for g in first),
    ])
    hb, *completes = [await asyncio.wait_for(f, FRAME_TIMEOUT_S) for f in futs]
    assert [s.status for s in hb.leases] == [wpb.REPLY_STATUS_ACCEPTED] * len(first), hb
    assert {r.status for r in completes} == {wpb.REPLY_STATUS_ACCEPTED}
    # complete then heartbeat: the heartbeat comes after the completion, so the lease is gone.
    futs = w.send_batch([
        *({"complete": wpb.Complete(lease=w.ref(g), result=b"r")} for g in second),
        {"heartbeat": wpb.Heartbeat(leases=[w.ref(g) for g in second])},
    ])
    *completes, hb = [await asyncio.wait_for(f, FRAME_TIMEOUT_S) for f in futs]
    assert {r.status for r in completes} == {wpb.REPLY_STATUS_ACCEPTED}
    assert {s.status for s in hb.leases} == {wpb.REPLY_STATUS_STALE_LEASE}, hb
    await w.close()


async def test_a_complete_after_cancel_lease_is_accepted_and_the_job_succeeds(
    coordinator: Coordinator, addr: str
) -> None:
    w = await RawWorker(addr, "finisher", capacity=2).connect()
    w.credit(2)
    async with Client(addr) as c:
        done = await c.submit("echo", b"a")
        g_done = await w.next_grant()
        failed = await c.submit("echo", b"b")
        g_failed = await w.next_grant()
        for job, grant in ((done, g_done), (failed, g_failed)):
            await c.cancel(job.id)
            cancel = await next_other(w, "CancelLease")
            assert cancel.lease.lease_id == grant.lease_id
        # The handler had finished anyway: its result stands (see CancelLease in the proto).
        assert (await w.complete(g_done, b"finished")).status == wpb.REPLY_STATUS_ACCEPTED
        got = await c.get(done.id)
        assert got.state.value == "succeeded" and got.result == b"finished"
        # A Fail after the cancel, even a retryable one, ends the job cancelled.
        assert (await w.fail(g_failed, "stopped", retryable=True)).status == wpb.REPLY_STATUS_ACCEPTED
        assert (await c.get(failed.id)).state.value == "cancelled"
    await w.close()


# ---- real worker processes -----------------------------------------------------------------------


async def drain_with(addr: str, db: Any, procs: list[Any], worker_ids: list[str], count: int) -> None:
    """Submit `count` echo jobs; the same worker processes must finish all of them."""
    async with Client(addr) as c:
        jobs = [await c.submit("echo", str(i).encode()) for i in range(count)]

        async def all_done() -> bool:
            for p in procs:
                assert p.alive(), f"worker died:\n{p.output()[-3000:]}"
            states = [(await c.get(j.id)).state.value for j in jobs]
            return all(s == "succeeded" for s in states)

        await eventually(all_done, timeout=SETTLE_TIMEOUT_S, message=f"{count} jobs drained by the same workers")
    for wid in worker_ids:
        await assert_session_matches_sql(addr, db, wid, idle_credit=1)


async def test_a_paused_sdk_worker_drains_the_queue_after_sigcont(
    coordinator: Coordinator, addr: str, db: Any, worker_procs: Callable[..., Any]
) -> None:
    p = await worker_procs(addr, "paused", concurrency=3)
    async with Client(addr) as c:
        for _round in range(2):
            for _ in range(4):
                await c.submit("sleep", b"3000")

            async def holds() -> bool:
                return len(await running_held_by(db, "paused")) >= 3

            await eventually(holds, timeout=SETTLE_TIMEOUT_S, message="the worker holds leases")
            p.signal(signal.SIGSTOP)
            try:
                async def reaped() -> bool:  # past the TTL: the reaper took every lease back
                    return not await running_held_by(db, "paused")

                await eventually(reaped, timeout=SETTLE_TIMEOUT_S, message="the paused worker's leases reaped")
            finally:
                p.signal(signal.SIGCONT)
    await drain_with(addr, db, [p], ["paused"], 30)


@pytest.fixture
async def cluster_coordinator(tmp_path: Any) -> Any:
    cluster = PrivateCluster().init()
    cluster.start()
    con = await asyncpg.connect(cluster.dsn)
    try:
        await migrate(con)
    finally:
        await con.close()
    coord = Coordinator(coordinator_config(cluster.dsn))
    await coord.start()
    try:
        yield cluster, coord
    finally:
        await bounded(coord.stop(), "coordinator.stop()")
        cluster.destroy(keep_log_in=tmp_path)


async def test_the_same_workers_drain_the_queue_after_postgres_outages(
    cluster_coordinator: Any, worker_procs: Callable[..., Any]
) -> None:
    cluster, coord = cluster_coordinator
    addr = f"127.0.0.1:{coord.port}"
    ids = ["pg-a", "pg-b"]
    procs = [await worker_procs(addr, wid, concurrency=3) for wid in ids]
    db = await asyncpg.connect(cluster.dsn)
    try:
        async with Client(addr) as c:
            for _outage in range(2):
                for _ in range(8):
                    await c.submit("sleep", b"4000")

                async def busy(con: Any = db) -> bool:
                    return all([len(await running_held_by(con, w)) >= 2 for w in ids])

                await eventually(busy, timeout=SETTLE_TIMEOUT_S, message="both workers hold leases")
                await db.close()
                await asyncio.to_thread(cluster.stop)
                # Longer than the TTL (2 s): every worker's trust window runs out while Postgres is away.
                await asyncio.sleep(5)
                await asyncio.to_thread(cluster.start)
                db = await eventually(lambda: _connect(cluster.dsn), timeout=SETTLE_TIMEOUT_S,
                                      message="postgres back")
        await drain_with(addr, db, procs, ids, 40)
    finally:
        await db.close()


async def _connect(dsn: str) -> Any:
    try:
        return await asyncpg.connect(dsn)
    except (OSError, asyncpg.PostgresError):
        return None
