"""Floods: one worker stream flooding the coordinator with frames costs its own session, never another's.

A real coordinator process, a real SDK worker process running long jobs with the test TTL (2 s), and raw
gRPC streams that send heartbeat and get_step frames as fast as flow control lets them. The SDK worker
must keep every lease: not one of its attempts may end lease_expired.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import grpc

from coordinator.api.session import FRAMES_PER_MESSAGE_MAX
from tests.helpers.procs import Proc
from tests.helpers.wait import eventually
from worker_sdk import Client
from worker_sdk._proto.faultline.v1 import worker_service_pb2 as wpb
from worker_sdk._proto.faultline.v1 import worker_service_pb2_grpc

VICTIM_JOBS = 8
VICTIM_JOB_MS = 7_000  # three and a half test TTLs: each job needs several accepted heartbeats
FLOOD_FRAMES_PER_MESSAGE = 1_000
FAKE_LEASES_PER_HEARTBEAT = 500
FLOOD_TIMEOUT_S = 120.0


class Flooder:
    """A worker stream that reads its replies but sends frames as fast as the coordinator takes them."""

    def __init__(self, addr: str, worker_id: str, make_frame: Callable[[int], Any]) -> None:
        self._addr, self._worker_id, self._make = addr, worker_id, make_frame
        self._stop = asyncio.Event()
        self.sent = 0
        self.replies = 0
        self.status: grpc.StatusCode | None = None

    async def _requests(self) -> AsyncIterator[Any]:
        yield wpb.ConnectRequest(frames=[wpb.WorkerFrame(hello=wpb.Hello(
            worker_id=self._worker_id, queues=["flood"], kinds=["flood"], capacity=1, sdk_name="flooder"))])
        seq = itertools.count(1)
        while not self._stop.is_set():
            frames = [self._make(next(seq)) for _ in range(FLOOD_FRAMES_PER_MESSAGE)]
            self.sent += len(frames)
            yield wpb.ConnectRequest(frames=frames)

    async def run(self) -> None:
        async with grpc.aio.insecure_channel(self._addr) as ch:
            call = worker_service_pb2_grpc.WorkerServiceStub(ch).Connect(self._requests())
            try:
                async for msg in call:
                    self.replies += sum(1 for f in msg.frames if f.WhichOneof("frame") == "reply")
            except grpc.aio.AioRpcError as exc:
                self.status = exc.code()

    def stop(self) -> None:
        self._stop.set()


def _fake_ref(i: int) -> Any:
    return wpb.LeaseRef(lease_id=f"{10_000_000 + i}.1", fencing_token=1)


def heartbeat_flood(seq: int) -> Any:
    return wpb.WorkerFrame(seq=seq, heartbeat=wpb.Heartbeat(
        leases=[_fake_ref(seq * FAKE_LEASES_PER_HEARTBEAT + j) for j in range(FAKE_LEASES_PER_HEARTBEAT)]))


def get_step_flood(seq: int) -> Any:
    return wpb.WorkerFrame(seq=seq, get_step=wpb.GetStep(lease=_fake_ref(seq), key="k"))


async def test_a_flooding_stream_costs_no_lease_of_another_worker(
    coordinator_proc_factory: Callable[..., Awaitable[Proc]], worker_procs: Callable[..., Any], dsn: str
) -> None:
    coord = await coordinator_proc_factory()
    addr = str(coord.extra["addr"])
    await worker_procs(addr, "victim", concurrency=VICTIM_JOBS, queues="victim")
    flooders = [Flooder(addr, "flood-heartbeat", heartbeat_flood), Flooder(addr, "flood-get-step", get_step_flood)]
    tasks = [asyncio.create_task(f.run()) for f in flooders]
    try:
        await eventually(lambda: all(f.replies > 0 for f in flooders), timeout=60, message="both floods answered")
        async with Client(addr) as client:
            ids = [(await client.submit("sleep", str(VICTIM_JOB_MS).encode(), queue="victim")).id
                   for _ in range(VICTIM_JOBS)]

            async def all_done() -> bool:
                jobs = [await client.get(i) for i in ids]
                return all(j.state.name in ("SUCCEEDED", "DEAD_LETTERED", "CANCELLED") for j in jobs)

            await eventually(all_done, timeout=FLOOD_TIMEOUT_S, message="the victim's jobs finished")
        assert all(f.status is None for f in flooders), [f.status for f in flooders]
        assert coord.alive()
    finally:
        for f in flooders:
            f.stop()
        await asyncio.wait(tasks, timeout=30)
    ids_int = [int(i) for i in ids]
    con = await asyncpg.connect(dsn)
    try:
        rows = await con.fetch(
            "SELECT job_id, attempt, outcome FROM faultline_attempts WHERE job_id = ANY($1::bigint[]) "
            "ORDER BY job_id, attempt", ids_int)
        states = await con.fetch("SELECT id, state FROM faultline_jobs WHERE id = ANY($1::bigint[])", ids_int)
    finally:
        await con.close()
    lost = [dict(r) for r in rows if r["outcome"] != "succeeded"]
    print(f"flood: heartbeat frames sent {flooders[0].sent} answered {flooders[0].replies}; get_step frames sent "
          f"{flooders[1].sent} answered {flooders[1].replies}; victim attempts {len(rows)}, lost leases {len(lost)}")
    assert lost == [], f"the victim lost leases under the flood: {lost}"
    assert sorted(s["state"] for s in states) == ["succeeded"] * VICTIM_JOBS
    assert len(rows) == VICTIM_JOBS  # one attempt each: nothing ran twice


async def test_a_message_over_the_frame_cap_ends_the_stream_invalid_argument(addr: str) -> None:
    async def requests() -> AsyncIterator[Any]:
        yield wpb.ConnectRequest(frames=[wpb.WorkerFrame(hello=wpb.Hello(
            worker_id="too-many", queues=["q"], kinds=["k"], capacity=1))])
        yield wpb.ConnectRequest(frames=[wpb.WorkerFrame(seq=i + 1, get_step=wpb.GetStep(lease=_fake_ref(i), key="k"))
                                         for i in range(FRAMES_PER_MESSAGE_MAX + 1)])
        await asyncio.Event().wait()

    async with grpc.aio.insecure_channel(addr) as ch:
        call = worker_service_pb2_grpc.WorkerServiceStub(ch).Connect(requests())
        replies = 0
        try:
            async for msg in call:
                replies += sum(1 for f in msg.frames if f.WhichOneof("frame") == "reply")
            raise AssertionError("the stream ended OK")
        except grpc.aio.AioRpcError as exc:
            assert exc.code() is grpc.StatusCode.INVALID_ARGUMENT, exc
            assert "ConnectRequest.frames" in (exc.details() or "")
            assert str(FRAMES_PER_MESSAGE_MAX) in (exc.details() or "")
    assert replies == 0  # refused as a whole: not one frame of that message took effect
