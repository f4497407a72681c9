"""Fuzzing every frame type and RPC with the full range of every numeric field, against one coordinator process.

Each field takes the values at the edges of its wire type as well as ordinary ones: uint64 fencing tokens and
seqs at 0, 2^31, 2^53+1, 2^63-1, 2^63 and 2^64-1 (the column is bigint, so 2^63 is one past it); lease ids with
19- and 20-digit job ids, signs, spaces, newlines and Unicode digits; int32 counts and capacities at both
ends; Durations at the int64 ends and one past the proto's own limit; floats at NaN, the infinities and the
subnormals. All of it goes to one real coordinator process. After every example the process is alive and
no actor has been restarted (a frame that crashes an actor on every batch used to end the process once the
restart intensity was spent); at the end the same process serves an SDK worker and a producer normally.
"""

from __future__ import annotations

import asyncio
import math
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import wait_serving
from tests.fuzz.conftest import CLIENT_ERRORS
from tests.fuzz.test_fuzz import Stream
from tests.helpers.db import create_database, drop_database, with_database
from tests.helpers.procs import Proc, coordinator_proc, free_port
from tests.helpers.wait import eventually
from worker_sdk import Client, JobContext, JobSpec, Worker
from worker_sdk._proto.faultline.v1 import job_pb2, job_service_pb2_grpc
from worker_sdk._proto.faultline.v1 import job_service_pb2 as jpb
from worker_sdk._proto.faultline.v1 import worker_service_pb2 as wpb

RANGES = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
UINT64_EDGES = [0, 1, 2, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**53 + 1, 2**63 - 2, 2**63 - 1, 2**63, 2**64 - 2,
                2**64 - 1]
INT32_EDGES = [-(2**31), -(2**31) + 1, -1, 0, 1, 2, 1000, 1001, 2**16, 2**31 - 2, 2**31 - 1]
INT64_EDGES = [-(2**63), -(2**63) + 1, -1, 0, 1, 315_576_000_000, 315_576_000_001, 2**63 - 1]
NANOS_EDGES = [-(2**31), -(10**9), -1, 0, 1, 999_999_999, 10**9, 2**31 - 1]
FLOAT_EDGES = [math.nan, math.inf, -math.inf, -0.0, 0.0, 5e-324, 1.0, 1.0000001, 1e308, -1.0]
uint64s = st.one_of(st.sampled_from(UINT64_EDGES), st.integers(0, 2**64 - 1))
int32s = st.one_of(st.sampled_from(INT32_EDGES), st.integers(-(2**31), 2**31 - 1))
int64s = st.one_of(st.sampled_from(INT64_EDGES), st.integers(-(2**63), 2**63 - 1))
floats = st.one_of(st.sampled_from(FLOAT_EDGES), st.floats())
# The job half of a lease id: real-looking, at and past bigint, and what int() would accept but the wire must not.
JOB_PARTS = ["1", "0", "-1", "+1", " 1", "1 ", "1\n", "01", "9223372036854775807", "9223372036854775808",
             "99999999999999999999", "18446744073709551615", "\u0663", "\uff11", "1e3", "0x10", "", "1_000"]
job_parts = st.one_of(st.sampled_from(JOB_PARTS), st.integers(0, 2**64 - 1).map(str))
durations = st.builds(Duration, seconds=int64s, nanos=st.one_of(st.sampled_from(NANOS_EDGES),
                                                                  st.integers(-(2**31), 2**31 - 1)))
FRAME_TYPES = ["hello", "credit", "heartbeat", "progress", "complete", "fail", "release", "abandon", "get_step",
               "record_step", "empty"]


@st.composite
def refs(draw: st.DrawFn) -> wpb.LeaseRef:
    token = draw(uint64s)
    job = draw(job_parts)
    # Usually self-consistent (the id carries the token), sometimes not.
    id_token = token if draw(st.booleans()) else draw(uint64s)
    lease_id = draw(st.one_of(st.just(f"{job}.{id_token}"), st.just(job), st.text(max_size=30)))
    return wpb.LeaseRef(lease_id=lease_id, fencing_token=token)


@st.composite
def frames(draw: st.DrawFn, seq: int) -> wpb.WorkerFrame:
    what = draw(st.sampled_from(FRAME_TYPES))
    ref = draw(refs())
    text = draw(st.text(max_size=40))
    blob = draw(st.binary(max_size=16))
    match what:
        case "hello":
            return wpb.WorkerFrame(hello=wpb.Hello(worker_id="ranges", queues=["default"], kinds=["echo"],
                                                   capacity=draw(int32s), held_leases=[ref]))
        case "credit":
            return wpb.WorkerFrame(credit=wpb.Credit(count=draw(int32s)))
        case "heartbeat":
            return wpb.WorkerFrame(seq=seq, heartbeat=wpb.Heartbeat(leases=[ref, draw(refs())]))
        case "progress":
            return wpb.WorkerFrame(seq=seq, progress=wpb.Progress(lease=ref, fraction=draw(floats), message=text,
                                                                  details=blob))
        case "complete":
            return wpb.WorkerFrame(seq=seq, complete=wpb.Complete(lease=ref, result=blob))
        case "fail":
            return wpb.WorkerFrame(seq=seq, fail=wpb.Fail(lease=ref, error=text, retryable=draw(st.booleans()),
                                                          retry_delay=draw(durations)))
        case "release":
            return wpb.WorkerFrame(seq=seq, release=wpb.Release(lease=ref, reason=text))
        case "abandon":
            return wpb.WorkerFrame(seq=seq, abandon=wpb.Abandon(lease=ref, reason=text))
        case "get_step":
            return wpb.WorkerFrame(seq=seq, get_step=wpb.GetStep(lease=ref, key=text))
        case "record_step":
            return wpb.WorkerFrame(seq=seq, record_step=wpb.RecordStep(lease=ref, key=text, result=blob))
    return wpb.WorkerFrame(seq=seq)


@st.composite
def streams(draw: st.DrawFn) -> list[wpb.WorkerFrame]:
    """A hello first (valid or not), then frames whose seqs are distinct values across the whole uint64 range."""
    seqs = draw(st.lists(uint64s, min_size=1, max_size=10, unique=True))
    out = [wpb.WorkerFrame(hello=wpb.Hello(worker_id="ranges", queues=["default"], kinds=["echo"],
                                           capacity=draw(st.one_of(st.just(4), int32s))))]
    out += [draw(frames(seq)) for seq in seqs]
    return out


class Served:
    """One coordinator process for the whole module, with its metrics endpoint and its own database."""

    def __init__(self, proc: Proc, addr: str, metrics_url: str, dsn: str) -> None:
        self.proc, self.addr, self.metrics_url, self.dsn = proc, addr, metrics_url, dsn

    def restarts(self) -> float:
        body = urllib.request.urlopen(self.metrics_url, timeout=10).read().decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines()
                   if line.startswith("faultline_actor_restarts_total{"))


@pytest.fixture(scope="module")
async def served(pg_admin: str, template_db: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Served]:
    name = await create_database(pg_admin, template=template_db)
    dsn = with_database(pg_admin, name)
    port, mport = free_port(), free_port()
    tmp: Path = tmp_path_factory.mktemp("ranges")
    proc = coordinator_proc(dsn=dsn, port=port, tmp=tmp, env={
        "FAULTLINE_METRICS_ADDR": f"127.0.0.1:{mport}", "FAULTLINE_LEASE_TTL_MS": "2000"}).start()
    try:
        await wait_serving(f"127.0.0.1:{port}")
        async with Client(f"127.0.0.1:{port}") as client:  # jobs to grant, so some refs name held leases
            await client.submit_batch([JobSpec(kind="echo", payload=b"x") for _ in range(200)])
        yield Served(proc, f"127.0.0.1:{port}", f"http://127.0.0.1:{mport}/metrics", dsn)
    finally:
        proc.stop()
        await drop_database(pg_admin, name)


ALLOWED_REPLIES = {wpb.REPLY_STATUS_ACCEPTED, wpb.REPLY_STATUS_DUPLICATE, wpb.REPLY_STATUS_STALE_LEASE,
                   wpb.REPLY_STATUS_NOT_FOUND, wpb.REPLY_STATUS_INVALID, wpb.REPLY_STATUS_CANCELLED}


@RANGES
@given(sent=streams(), replay_grant=st.booleans())
async def test_full_range_frames_are_answered_or_end_the_stream_clearly(served: Served, sent: list[wpb.WorkerFrame],
                                                                        replay_grant: bool) -> None:
    s = Stream(served.addr)
    seqs = [f.seq for f in sent[1:] if f.WhichOneof("frame") not in ("hello", "credit")]
    try:
        s.send_all(sent)
        await s.settle(seqs)
        if replay_grant and s.grants and not s._reader.done():
            # Real leases with the numeric fields pushed to their edges around them.
            g = s.grants[0]
            job = g.lease_id.split(".")[0]
            more = [wpb.WorkerFrame(seq=2**64 - 1 - i, complete=wpb.Complete(lease=wpb.LeaseRef(
                lease_id=f"{job}.{t}", fencing_token=t))) for i, t in enumerate(
                    [g.fencing_token + 2**63, 2**64 - 1, 2**63, 0, g.fencing_token])]
            s.send_all(more)
            seqs += [f.seq for f in more]
            await s.settle(seqs)
        if s._reader.done():
            assert s.status in (grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT,
                                grpc.StatusCode.FAILED_PRECONDITION), (s.status, s.details)
            assert s.status is grpc.StatusCode.OK or s.details
        else:
            for seq in seqs:
                assert s.replies[seq].seq == seq
                assert s.replies[seq].status in ALLOWED_REPLIES, s.replies[seq]
    finally:
        await s.close()
    assert served.proc.alive(), served.proc.output()[-3000:]
    assert served.restarts() == 0, served.proc.output()[-3000:]


@RANGES
@given(job_id=st.one_of(st.sampled_from(JOB_PARTS), st.integers(-(2**64), 2**64).map(str), st.text(max_size=25)),
       page_size=int32s, state=int32s, max_attempts=int32s, priority=int32s, run_at_s=int64s,
       backoff=durations, timeout=durations, multiplier=floats)
async def test_full_range_unary_fields_are_answered_or_refused_as_client_errors(
        served: Served, job_id: str, page_size: int, state: int, max_attempts: int, priority: int, run_at_s: int,
        backoff: Duration, timeout: Duration, multiplier: float) -> None:
    async with grpc.aio.insecure_channel(served.addr) as ch:
        stub = job_service_pb2_grpc.JobServiceStub(ch)  # type: ignore[no-untyped-call]
        submit = jpb.SubmitRequest(kind="ranges", queue="ranges", max_attempts=max_attempts, priority=priority,
                                   retry_policy=job_pb2.RetryPolicy(initial_backoff=backoff, max_backoff=backoff,
                                                                multiplier=multiplier),
                                   timeouts=job_pb2.JobTimeouts(execution=timeout, heartbeat=timeout))
        submit.run_at.seconds = run_at_s
        calls = [
            stub.Submit(submit, timeout=30),
            stub.GetJob(jpb.GetJobRequest(id=job_id), timeout=30),
            stub.CancelJob(jpb.CancelJobRequest(id=job_id), timeout=30),
            stub.RequeueJob(jpb.RequeueJobRequest(id=job_id), timeout=30),
            stub.ListJobs(jpb.ListJobsRequest(queue="ranges", state=state, page_size=page_size), timeout=30),
            stub.ListJobs(jpb.ListJobsRequest(page_size=page_size, page_token=job_id), timeout=30),
            stub.ListJobs(jpb.ListJobsRequest(idempotency_key=job_id, labels={"a": job_id}), timeout=30),
            stub.BulkCancelJobs(jpb.BulkCancelJobsRequest(ids=[job_id, "1"]), timeout=30),
            stub.BulkCancelJobs(jpb.BulkCancelJobsRequest(filter=jpb.JobFilter(queue="ranges", kind=job_id,
                                                                               state=state),
                                                          resume_token=job_id), timeout=30),
            stub.BulkRequeueJobs(jpb.BulkRequeueJobsRequest(ids=[job_id], extra_attempts=max_attempts), timeout=30),
            stub.BulkRequeueJobs(jpb.BulkRequeueJobsRequest(filter=jpb.JobFilter(queue="ranges", state=state),
                                                            extra_attempts=priority, resume_token=job_id), timeout=30),
        ]
        for call in calls:
            try:
                await call
            except grpc.aio.AioRpcError as exc:
                assert exc.code() in CLIENT_ERRORS, (exc.code(), exc.details())
                assert exc.details()
    assert served.proc.alive(), served.proc.output()[-3000:]


async def test_after_the_fuzzing_the_same_process_serves_an_sdk_worker(served: Served) -> None:
    """Runs after the fuzz tests in this module, against the process they fed."""
    w = Worker(served.addr, queues=["after"], concurrency=4, handle_signals=False)

    @w.handler("echo")
    async def echo(ctx: JobContext) -> bytes:
        return ctx.payload

    task = asyncio.create_task(w.run())
    try:
        async with Client(served.addr) as client:
            jobs = [await client.submit("echo", str(i).encode(), queue="after") for i in range(20)]

            async def done() -> bool:
                return all([(await client.get(j.id)).state == "succeeded" for j in jobs])

            await eventually(done, timeout=60, message="20 jobs run by an SDK worker after the fuzzing")
    finally:
        await asyncio.wait_for(w.stop(), 30)
        await asyncio.wait_for(task, 30)
    assert served.proc.alive()
    assert served.restarts() == 0
