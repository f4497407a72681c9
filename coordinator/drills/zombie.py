"""A protocol-level zombie: a worker that speaks WorkerService.Connect directly and has no trust window.

`python -m coordinator.drills.zombie --target ADDR --dsn DSN --worker-id ID --capacity N --events FILE`

The SDK worker stops trusting a lease when its heartbeats go unanswered, so a paused SDK worker
never sends a stale frame. A worker in another language, or a buggy one, might. This one takes N
leases, registers their tokens with the ledger, heartbeats while it "works" for --work-ms of its
own monotonic clock, then, however long it was paused (SIGSTOP) meanwhile, sends one more
heartbeat, applies its effects to the ledger and completes every lease, recording each answer as
an event. The zombie-worker drill pauses it past its leases and checks that every answer is a refusal.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import grpc

from coordinator import logs
from coordinator.drills import ledger
from coordinator.drills.worker import Events
from worker_sdk._proto.faultline.v1 import worker_service_pb2 as wpb
from worker_sdk._proto.faultline.v1 import worker_service_pb2_grpc

HEARTBEAT_EVERY_S = 0.3
REPLY_TIMEOUT_S = 10.0


class Zombie:
    """One Connect stream; replies are matched to requests by seq. Owner: its event loop."""

    def __init__(self, args: argparse.Namespace, events: Events) -> None:
        self.args = args
        self.events = events
        self.grants: list[Any] = []
        self.granted = asyncio.Event()
        self._out: asyncio.Queue[wpb.ConnectRequest] = asyncio.Queue()
        self._seq = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Any]] = {}

    async def _requests(self) -> AsyncIterator[wpb.ConnectRequest]:
        while True:
            yield await self._out.get()

    async def request(self, frame: wpb.WorkerFrame) -> Any:
        seq = next(self._seq)
        frame.seq = seq
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[seq] = fut
        await self._out.put(wpb.ConnectRequest(frames=[frame]))
        return await asyncio.wait_for(fut, REPLY_TIMEOUT_S)

    async def read(self, call: Any) -> None:
        async for resp in call:
            for f in resp.frames:
                which = f.WhichOneof("frame")
                if which == "lease":
                    self.grants.append(f.lease)
                    if len(self.grants) >= self.args.capacity:
                        self.granted.set()
                elif which == "reply":
                    fut = self._waiting.pop(f.reply.seq, None)
                    if fut is not None and not fut.done():
                        fut.set_result(f.reply)
                elif which == "welcome":
                    self.events.record("welcome", session_id=f.welcome.session_id)

    def refs(self) -> list[wpb.LeaseRef]:
        return [wpb.LeaseRef(lease_id=g.lease_id, fencing_token=g.fencing_token) for g in self.grants]

    async def heartbeat(self, phase: str) -> None:
        reply = await self.request(wpb.WorkerFrame(heartbeat=wpb.Heartbeat(leases=self.refs())))
        for st in reply.leases:
            self.events.record("heartbeat verdict", phase=phase, job_id=int(st.lease.lease_id.split(".")[0]),
                               token=st.lease.fencing_token, status=wpb.ReplyStatus.Name(st.status),
                               reason=st.message)


async def main(args: argparse.Namespace) -> int:
    events = Events(Path(args.events), args.worker_id)
    pool = await asyncpg.create_pool(args.dsn, min_size=1, max_size=2)
    async with grpc.aio.insecure_channel(args.target) as ch:
        z = Zombie(args, events)
        call = worker_service_pb2_grpc.WorkerServiceStub(ch).Connect(  # type: ignore[no-untyped-call]
            z._requests())
        await z._out.put(wpb.ConnectRequest(frames=[
            wpb.WorkerFrame(hello=wpb.Hello(worker_id=args.worker_id, queues=["default"], kinds=["effect"],
                                            capacity=args.capacity, sdk_name="drill-zombie")),
            wpb.WorkerFrame(credit=wpb.Credit(count=args.capacity)),
        ]))
        reader = asyncio.create_task(z.read(call))
        await z.granted.wait()
        for g in z.grants:
            reg = await ledger.register(pool, int(g.job.id), g.fencing_token, args.worker_id)
            events.record("started", job_id=int(g.job.id), token=g.fencing_token, attempt=g.attempt,
                          ledger=reg.verdict.value)
        # "Work" by this process' own clock; a SIGSTOP in here makes the lease expire unnoticed.
        started = time.monotonic()
        while time.monotonic() - started < args.work_ms / 1000:
            await z.heartbeat("working")
            await asyncio.sleep(HEARTBEAT_EVERY_S)
        events.record("resumed", worked_s=round(time.monotonic() - started, 3))
        await z.heartbeat("after pause")
        for g in z.grants:
            ans = await ledger.apply(pool, int(g.job.id), g.fencing_token, args.worker_id)
            events.record("effect", job_id=int(g.job.id), token=g.fencing_token, verdict=ans.verdict.value,
                          applied_token=ans.applied_token)
            reply = await z.request(wpb.WorkerFrame(complete=wpb.Complete(
                lease=wpb.LeaseRef(lease_id=g.lease_id, fencing_token=g.fencing_token),
                result=b'{"token": %d, "zombie": true}' % g.fencing_token)))
            events.record("complete reply", job_id=int(g.job.id), token=g.fencing_token,
                          status=wpb.ReplyStatus.Name(reply.status), reason=reply.message)
        events.record("done")
        reader.cancel()
        call.cancel()
    await pool.close()
    return 0


def cli() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", required=True)
    p.add_argument("--dsn", required=True)
    p.add_argument("--worker-id", required=True)
    p.add_argument("--capacity", type=int, default=4)
    p.add_argument("--work-ms", type=int, default=1000)
    p.add_argument("--events", required=True)
    logs.setup()
    raise SystemExit(asyncio.run(main(p.parse_args())))


if __name__ == "__main__":
    cli()
