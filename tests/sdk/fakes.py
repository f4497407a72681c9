"""An in-process fake coordinator (WorkerService + JobService) for SDK-only tests.

It implements the coordinator side of the worker protocol minimally: welcome with resumed leases,
grants pushed only against credit, one reply per seq frame (statuses chosen by the test), heartbeat
verdicts, step storage (first write wins), and test-driven cancel / drain / stream drops. Tests wait
on `fake.wait_for(predicate)`, which wakes on every frame received; there are no sleeps.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

import grpc
import grpc.aio

from worker_sdk._proto.faultline.v1 import (
    job_pb2,
    job_service_pb2,
    job_service_pb2_grpc,
    worker_service_pb2_grpc,
)
from worker_sdk._proto.faultline.v1 import (
    worker_service_pb2 as pb,
)

WAIT_TIMEOUT_S = 10.0
_END = object()


def duration(td: timedelta) -> object:
    from google.protobuf import duration_pb2

    d = duration_pb2.Duration()
    d.FromTimedelta(td)
    return d


@dataclass(eq=False)
class FakeSession:
    index: int
    hello: pb.Hello
    outbox: asyncio.Queue[object] = field(default_factory=asyncio.Queue)
    credit: int = 0
    leases: dict[str, pb.LeaseRef] = field(default_factory=dict)
    closed: bool = False

    def send(self, *frames: pb.CoordinatorFrame) -> None:
        self.outbox.put_nowait(list(frames))

    def end(self) -> None:
        self.outbox.put_nowait(_END)


@dataclass
class Received:
    session: int
    frame: pb.WorkerFrame

    @property
    def kind(self) -> str:
        return self.frame.WhichOneof("frame") or ""


class FakeCoordinator(worker_service_pb2_grpc.WorkerServiceServicer):
    def __init__(self) -> None:
        self.target = ""
        self.sessions: list[FakeSession] = []
        self.received: list[Received] = []
        self.messages: list[tuple[int, int]] = []  # (session, number of frames) per ConnectRequest
        self.cond = asyncio.Condition()
        self.pending_jobs: deque[tuple[job_pb2.Job, dict[str, str]]] = deque()
        self.granted: list[tuple[int, pb.LeaseGrant]] = []
        self.steps: dict[tuple[str, str], bytes] = {}
        self.lease_to_job: dict[str, str] = {}
        # Whether the welcome says Release frames are understood (a coordinator older than them does not).
        self.accepts_release = False
        self.heartbeat_interval = timedelta(milliseconds=50)
        self.lease_ttl = timedelta(seconds=30)
        self.grant_heartbeat_timeout: timedelta | None = None
        self.grant_execution_timeout: timedelta | None = None
        # Test hooks: the reply status for a frame (None: do not reply), the verdict per heartbeat lease,
        # and whether a held lease is resumed on hello.
        self.status_for: Callable[[Received], int | None] = lambda r: pb.REPLY_STATUS_ACCEPTED
        self.verdict_for: Callable[[pb.LeaseRef], int] = lambda ref: pb.REPLY_STATUS_ACCEPTED
        self.resume: Callable[[pb.LeaseRef], bool] = lambda ref: True
        self._tokens = itertools.count(1)
        self._job_ids = itertools.count(1)

    # ---- test API ----------------------------------------------------------------------

    @property
    def session(self) -> FakeSession:
        return self.sessions[-1]

    def add_job(
        self, kind: str, payload: bytes = b"", *, queue: str = "default", trace_context: dict[str, str] | None = None
    ) -> str:
        job_id = str(next(self._job_ids))
        job = job_pb2.Job(
            id=job_id, kind=kind, queue=queue, payload=payload, state=job_pb2.JOB_STATE_RUNNING, max_attempts=3
        )
        self.pending_jobs.append((job, trace_context or {}))
        if self.sessions and not self.session.closed:
            self._push_grants(self.session)
        return job_id

    def frames(self, kind: str, *, lease_id: str | None = None) -> list[Received]:
        out = [r for r in self.received if r.kind == kind]
        if lease_id is not None:
            out = [r for r in out if getattr(r.frame, kind).lease.lease_id == lease_id]
        return out

    def credit_total(self, session: int | None = None) -> int:
        return sum(r.frame.credit.count for r in self.frames("credit") if session is None or r.session == session)

    def lease_of(self, job_id: str) -> str:
        for _, grant in self.granted:
            if grant.job.id == job_id:
                return grant.lease_id
        raise KeyError(job_id)

    async def wait_for(self, predicate: Callable[[], object], timeout: float = WAIT_TIMEOUT_S) -> None:
        async with self.cond:
            await asyncio.wait_for(self.cond.wait_for(predicate), timeout)

    async def notify(self) -> None:
        async with self.cond:
            self.cond.notify_all()

    # ---- the servicer --------------------------------------------------------------------

    async def Connect(self, request_iterator: object, context: grpc.aio.ServicerContext) -> None:
        first = await context.read()
        assert first is not grpc.aio.EOF
        assert first.frames[0].WhichOneof("frame") == "hello", "first frame must be hello"
        hello = first.frames[0].hello
        session = FakeSession(len(self.sessions), hello)
        resumed = [ref for ref in hello.held_leases if self.resume(ref)]
        for ref in resumed:
            session.leases[ref.lease_id] = ref
        self.sessions.append(session)
        self.received.append(Received(session.index, first.frames[0]))
        await context.write(
            pb.ConnectResponse(
                frames=[
                    pb.CoordinatorFrame(
                        welcome=pb.Welcome(
                            session_id=f"s{session.index}",
                            heartbeat_interval=duration(self.heartbeat_interval),
                            lease_ttl=duration(self.lease_ttl),
                            resumed_leases=resumed,
                            accepts_release=self.accepts_release,
                        )
                    )
                ]
            )
        )
        await self.notify()
        for frame in list(first.frames)[1:]:
            await self._handle(session, frame)
        reader = asyncio.create_task(self._read(session, context))
        try:
            ended = False
            while not ended:
                # Like the real coordinator, pack everything pending into one message.
                items = [await session.outbox.get()]
                while not session.outbox.empty():
                    items.append(session.outbox.get_nowait())
                frames = []
                for item in items:
                    if item is _END:
                        ended = True
                        break
                    assert isinstance(item, list)
                    frames.extend(item)
                if frames:
                    await context.write(pb.ConnectResponse(frames=frames))
        finally:
            session.closed = True
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            await self.notify()

    async def _read(self, session: FakeSession, context: grpc.aio.ServicerContext) -> None:
        try:
            while True:
                message = await context.read()
                if message is grpc.aio.EOF:
                    break
                self.messages.append((session.index, len(message.frames)))
                for frame in message.frames:
                    await self._handle(session, frame)
        finally:
            session.end()

    async def _handle(self, session: FakeSession, frame: pb.WorkerFrame) -> None:
        received = Received(session.index, frame)
        self.received.append(received)
        kind = received.kind
        if kind == "credit":
            session.credit += frame.credit.count
            self._push_grants(session)
        elif kind != "hello":
            status = self.status_for(received)
            if status is not None:
                session.send(pb.CoordinatorFrame(reply=self._reply(session, frame, status)))
        await self.notify()

    def _reply(self, session: FakeSession, frame: pb.WorkerFrame, status: int) -> pb.Reply:
        kind = frame.WhichOneof("frame")
        reply = pb.Reply(seq=frame.seq, status=status)
        if status != pb.REPLY_STATUS_ACCEPTED:
            return reply
        if kind == "heartbeat":
            for ref in frame.heartbeat.leases:
                reply.leases.append(pb.LeaseStatus(lease=ref, status=self.verdict_for(ref)))
        elif kind == "get_step":
            key = (self.lease_to_job[frame.get_step.lease.lease_id], frame.get_step.key)
            if key in self.steps:
                reply.step_found = True
                reply.result = self.steps[key]
        elif kind == "record_step":
            key = (self.lease_to_job[frame.record_step.lease.lease_id], frame.record_step.key)
            self.steps.setdefault(key, frame.record_step.result)
            reply.result = self.steps[key]
        return reply

    def _push_grants(self, session: FakeSession) -> None:
        frames = []
        while session.credit > 0 and self.pending_jobs:
            job, trace_context = self.pending_jobs.popleft()
            session.credit -= 1
            token = next(self._tokens)
            grant = pb.LeaseGrant(
                lease_id=f"L{token}", fencing_token=token, job=job, attempt=1, trace_context=trace_context
            )
            if self.grant_heartbeat_timeout is not None:
                grant.heartbeat_timeout.CopyFrom(duration(self.grant_heartbeat_timeout))
            if self.grant_execution_timeout is not None:
                grant.execution_timeout.CopyFrom(duration(self.grant_execution_timeout))
            self.granted.append((session.index, grant))
            self.lease_to_job[grant.lease_id] = job.id
            session.leases[grant.lease_id] = pb.LeaseRef(lease_id=grant.lease_id, fencing_token=token)
            frames.append(pb.CoordinatorFrame(lease=grant))
        if frames:
            session.send(*frames)


class FakeJobService(job_service_pb2_grpc.JobServiceServicer):
    def __init__(self) -> None:
        self.metadata: list[dict[str, str]] = []
        self.submits: list[job_service_pb2.SubmitRequest] = []
        self.jobs: dict[str, job_pb2.Job] = {}
        self.keys: dict[str, str] = {}

    def _record(self, context: grpc.aio.ServicerContext) -> None:
        self.metadata.append({k: v for k, v in context.invocation_metadata() or ()})  # type: ignore[misc]

    def _store(self, request: job_service_pb2.SubmitRequest) -> job_service_pb2.SubmitResponse:
        self.submits.append(request)
        if request.idempotency_key and request.idempotency_key in self.keys:
            return job_service_pb2.SubmitResponse(job=self.jobs[self.keys[request.idempotency_key]], created=False)
        job_id = str(len(self.jobs) + 1)
        job = job_pb2.Job(
            id=job_id,
            kind=request.kind,
            queue=request.queue or "default",
            payload=request.payload,
            state=job_pb2.JOB_STATE_QUEUED,
            max_attempts=request.max_attempts or 3,
            priority=request.priority,
            idempotency_key=request.idempotency_key,
            labels=dict(request.labels),
        )
        job.created_at.GetCurrentTime()
        self.jobs[job_id] = job
        if request.idempotency_key:
            self.keys[request.idempotency_key] = job_id
        return job_service_pb2.SubmitResponse(job=job, created=True)

    async def Submit(self, request, context):  # type: ignore[no-untyped-def]
        self._record(context)
        if not request.kind:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "kind is required")
        return self._store(request)

    async def SubmitBatch(self, request, context):  # type: ignore[no-untyped-def]
        self._record(context)
        return job_service_pb2.SubmitBatchResponse(results=[self._store(r) for r in request.jobs])

    async def GetJob(self, request, context):  # type: ignore[no-untyped-def]
        self._record(context)
        if request.id not in self.jobs:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"job {request.id} not found")
        return job_service_pb2.GetJobResponse(job=self.jobs[request.id])

    async def ListJobs(self, request, context):  # type: ignore[no-untyped-def]
        self._record(context)
        jobs = [j for j in self.jobs.values() if not request.state or j.state == request.state]
        return job_service_pb2.ListJobsResponse(jobs=jobs[: request.page_size or 100], next_page_token="")

    async def CancelJob(self, request, context):  # type: ignore[no-untyped-def]
        self._record(context)
        job = self.jobs[request.id]
        job.state = job_pb2.JOB_STATE_CANCELLED
        return job_service_pb2.CancelJobResponse(job=job)

    async def RequeueJob(self, request, context):  # type: ignore[no-untyped-def]
        self._record(context)
        job = self.jobs[request.id]
        if job.state not in (job_pb2.JOB_STATE_CANCELLED, job_pb2.JOB_STATE_DEAD_LETTERED):
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "job is not dead-lettered or cancelled")
        job.state = job_pb2.JOB_STATE_QUEUED
        job.max_attempts += request.extra_attempts or 1
        return job_service_pb2.RequeueJobResponse(job=job)

    async def ListQueues(self, request, context):  # type: ignore[no-untyped-def]
        self._record(context)
        stats = job_service_pb2.QueueStats(name="default", depth={"queued": len(self.jobs)}, finished_last_minute=2)
        return job_service_pb2.ListQueuesResponse(queues=[stats])

    async def ListWorkers(self, request, context):  # type: ignore[no-untyped-def]
        self._record(context)
        return job_service_pb2.ListWorkersResponse(
            workers=[job_service_pb2.WorkerInfo(worker_id="w1", session_id="s0", queues=["default"], capacity=4)]
        )
