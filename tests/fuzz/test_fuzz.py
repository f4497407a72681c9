"""Hypothesis fuzzing of Submit, ListJobs, the bulk calls and the worker stream, against a real coordinator and
Postgres.

Properties: a request is either accepted or refused with a client error (never INTERNAL or UNKNOWN);
an accepted Submit stores exactly what it returns; a refused one stores nothing; a worker stream fed
arbitrary frames in arbitrary order (a completion before hello, another worker's lease, a token from
the future, garbage ids) either carries on, answering each frame with a reply, or closes with
INVALID_ARGUMENT / FAILED_PRECONDITION and a message; and no stored row breaks the checker's
invariants afterwards.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import bounded
from tests.fuzz.conftest import CLIENT_ERRORS, assert_no_bad_rows
from tests.helpers.raw_worker import RawWorker
from worker_sdk._proto.faultline.v1 import job_service_pb2 as jpb
from worker_sdk._proto.faultline.v1 import job_service_pb2_grpc, worker_service_pb2_grpc
from worker_sdk._proto.faultline.v1 import worker_service_pb2 as wpb

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
STREAM_FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
REPLY_TIMEOUT_S = 10.0
INT32 = st.integers(-(2**31), 2**31 - 1)
INT64 = st.integers(-(2**63), 2**63 - 1)

names = st.one_of(st.sampled_from(["", "k", "default", "a" * 128, "a" * 129, "x y", "ü", "a\x00", "q:1.-_"]),
                  st.text(max_size=140))
durations = st.one_of(st.none(), st.builds(Duration, seconds=st.integers(-10, 10**9),
                                           nanos=st.integers(-(10**9), 2 * 10**9 - 1)))
floats = st.one_of(st.sampled_from([0.0, 1.0, 100.0, 0.5, -1.0, math.nan, math.inf]), st.floats())


@st.composite
def submit_requests(draw: st.DrawFn) -> jpb.SubmitRequest:
    req = jpb.SubmitRequest(
        kind=draw(names), queue=draw(names),
        payload=draw(st.one_of(st.binary(max_size=64), st.just(b"x" * ((1 << 20) + 1)))),
        idempotency_key=draw(st.one_of(st.just(""), st.text(max_size=300))),
        max_attempts=draw(INT32), priority=draw(INT32),
        labels=draw(st.dictionaries(st.text(max_size=70), st.text(max_size=300), max_size=70)),
    )
    if draw(st.booleans()):
        req.run_at.CopyFrom(Timestamp(seconds=draw(st.integers(-(2**40), 2**40)),
                                      nanos=draw(st.integers(-(10**9), 2 * 10**9))))
    for field in ("initial_backoff", "max_backoff"):
        d = draw(durations)
        if d is not None:
            getattr(req.retry_policy, field).CopyFrom(d)
    req.retry_policy.multiplier = draw(floats)
    req.retry_policy.jitter = draw(floats)
    for field in ("execution", "heartbeat", "schedule_to_start"):
        d = draw(durations)
        if d is not None:
            getattr(req.timeouts, field).CopyFrom(d)
    return req


@pytest.fixture
async def stub(addr: str) -> AsyncIterator[Any]:
    ch = grpc.aio.insecure_channel(addr)
    yield job_service_pb2_grpc.JobServiceStub(ch)
    await bounded(ch.close(), "channel.close()")


@FUZZ
@given(req=submit_requests())
async def test_fuzzed_submit_is_accepted_as_sent_or_refused_storing_nothing(stub: Any, db: Any,
                                                                           req: jpb.SubmitRequest) -> None:
    before = await db.fetchval("SELECT count(*) FROM faultline_jobs")
    try:
        resp = await stub.Submit(req, timeout=30)
    except grpc.aio.AioRpcError as exc:
        assert exc.code() in CLIENT_ERRORS, (exc.code(), exc.details(), req)
        assert exc.details()
        assert await db.fetchval("SELECT count(*) FROM faultline_jobs") == before
        return
    row = await db.fetchrow("SELECT * FROM faultline_jobs WHERE id = $1", int(resp.job.id))
    assert row is not None
    assert row["kind"] == req.kind and bytes(row["payload"]) == req.payload
    assert row["queue"] == (req.queue or "default")
    assert row["priority"] == req.priority and 1 <= row["max_attempts"] <= 1000
    assert json.loads(row["labels"]) == dict(req.labels)
    if not resp.created:
        assert req.idempotency_key
    await assert_no_bad_rows(db)


@FUZZ
@given(queue=names, kind=names, state=INT32, page_size=INT32,
       page_token=st.one_of(st.text(max_size=40),
                            st.sampled_from(["", "djE6MQ==", "djE6MA==", "djE6OTk5OTk5OTk5OTk5OTk5OTk5OQ=="])))
async def test_fuzzed_list_jobs_answers_or_refuses_cleanly(stub: Any, queue: str, kind: str, state: int,
                                                           page_size: int, page_token: str) -> None:
    try:
        resp = await stub.ListJobs(jpb.ListJobsRequest(queue=queue, kind=kind, state=state, page_size=page_size,
                                                       page_token=page_token), timeout=30)
    except grpc.aio.AioRpcError as exc:
        assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, (exc.code(), exc.details())
        assert exc.details()
        return
    assert len(resp.jobs) <= (page_size or 100)


ids_text = st.one_of(st.sampled_from(["1", "0", "-1", "01", " 1", "9223372036854775807", "9223372036854775808",
                                      "\uff11", "1e3", ""]), st.integers(0, 2**64).map(str), st.text(max_size=22))
label_filters = st.dictionaries(st.one_of(st.sampled_from(["team", "", "a/b", "-x"]), st.text(max_size=70)),
                                st.text(max_size=260), max_size=10)


@FUZZ
@given(queue=names, kind=names, labels=label_filters, key=st.one_of(st.just(""), st.text(max_size=300)))
async def test_fuzzed_list_jobs_filters_answer_or_refuse_cleanly(stub: Any, queue: str, kind: str,
                                                                 labels: dict[str, str], key: str) -> None:
    try:
        await stub.ListJobs(jpb.ListJobsRequest(queue=queue, kind=kind, labels=labels, idempotency_key=key),
                            timeout=30)
    except grpc.aio.AioRpcError as exc:
        assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, (exc.code(), exc.details())
        assert exc.details()


@FUZZ
@given(ids=st.lists(ids_text, max_size=12), use_filter=st.booleans(), queue=names, kind=names, state=INT32,
       labels=label_filters, token=st.one_of(st.just(""), st.text(max_size=60),
                                             st.sampled_from(["YjE6MTA6MDAwMDAwMDAwMDAwMDAwMA==", "YjE6MA=="])),
       extra=INT32, requeue=st.booleans())
async def test_fuzzed_bulk_calls_answer_or_refuse_changing_nothing(
        stub: Any, db: Any, ids: list[str], use_filter: bool, queue: str, kind: str, state: int,
        labels: dict[str, str], token: str, extra: int, requeue: bool) -> None:
    await stub.SubmitBatch(jpb.SubmitBatchRequest(jobs=[jpb.SubmitRequest(kind="k", queue="fz")] * 3), timeout=30)
    before = await db.fetch("SELECT id, state::text, updated_at FROM faultline_jobs ORDER BY id")
    target: dict[str, Any] = {"filter": jpb.JobFilter(queue=queue, kind=kind, state=state, labels=labels)} \
        if use_filter else {"ids": ids}
    try:
        if requeue:
            await stub.BulkRequeueJobs(jpb.BulkRequeueJobsRequest(**target, extra_attempts=extra,
                                                                  resume_token=token), timeout=30)
        else:
            await stub.BulkCancelJobs(jpb.BulkCancelJobsRequest(**target, resume_token=token), timeout=30)
    except grpc.aio.AioRpcError as exc:
        assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, (exc.code(), exc.details())
        assert exc.details()
        assert await db.fetch("SELECT id, state::text, updated_at FROM faultline_jobs ORDER BY id") == before
    await assert_no_bad_rows(db)


# -- the worker stream -----------------------------------------------------------------------------

REF_KINDS = ["own", "other", "future", "past", "garbage_id", "mismatch", "unknown_job", "empty"]


def _ref(kind: str, grant: Any | None, other: Any) -> wpb.LeaseRef:
    g = grant or other
    job = g.lease_id.split(".")[0]
    match kind:
        case "own":
            return wpb.LeaseRef(lease_id=g.lease_id, fencing_token=g.fencing_token)
        case "other":
            return wpb.LeaseRef(lease_id=other.lease_id, fencing_token=other.fencing_token)
        case "future":
            return wpb.LeaseRef(lease_id=f"{job}.{g.fencing_token + 7}", fencing_token=g.fencing_token + 7)
        case "past":
            return wpb.LeaseRef(lease_id=f"{job}.0", fencing_token=0)
        case "garbage_id":
            return wpb.LeaseRef(lease_id="not-a-lease", fencing_token=1)
        case "mismatch":
            return wpb.LeaseRef(lease_id=g.lease_id, fencing_token=g.fencing_token + 1)
        case "unknown_job":
            return wpb.LeaseRef(lease_id="987654321.1", fencing_token=1)
    return wpb.LeaseRef()


frame_specs = st.lists(st.tuples(
    st.sampled_from(["hello", "hello_bad", "credit", "heartbeat", "progress", "complete", "fail", "release", "get_step",
                     "record_step", "empty"]),
    st.sampled_from(REF_KINDS),
    st.integers(-5, 20_000),
    st.one_of(st.floats(allow_nan=True), st.sampled_from([0.0, 1.0, 2.0])),
    st.text(max_size=300),
    st.binary(max_size=32),
), min_size=1, max_size=12)


def _frame(spec: tuple[Any, ...], worker_id: str, grant: Any | None, other: Any) -> wpb.WorkerFrame:
    what, ref_kind, n, fraction, text, blob = spec
    ref = _ref(ref_kind, grant, other)
    match what:
        case "hello":
            return wpb.WorkerFrame(hello=wpb.Hello(worker_id=worker_id, queues=["default"], kinds=["echo"],
                                                   capacity=2, held_leases=[ref]))
        case "hello_bad":
            return wpb.WorkerFrame(hello=wpb.Hello(worker_id=text[:200], queues=[text[:10]], kinds=["echo"],
                                                   capacity=n))
        case "credit":
            return wpb.WorkerFrame(credit=wpb.Credit(count=n))
        case "heartbeat":
            return wpb.WorkerFrame(heartbeat=wpb.Heartbeat(leases=[ref, ref]))
        case "progress":
            return wpb.WorkerFrame(progress=wpb.Progress(lease=ref, fraction=fraction, message=text, details=blob))
        case "complete":
            return wpb.WorkerFrame(complete=wpb.Complete(lease=ref, result=blob))
        case "fail":
            return wpb.WorkerFrame(fail=wpb.Fail(lease=ref, error=text, retryable=n % 2 == 0,
                                                 retry_delay=Duration(seconds=n - 3)))
        case "release":
            return wpb.WorkerFrame(release=wpb.Release(lease=ref, reason=text))
        case "get_step":
            return wpb.WorkerFrame(get_step=wpb.GetStep(lease=ref, key=text))
        case "record_step":
            return wpb.WorkerFrame(record_step=wpb.RecordStep(lease=ref, key=text, result=blob))
    return wpb.WorkerFrame()


class Stream:
    """A raw Connect stream that sends exactly the frames given and collects the answers.

    send_all() packs every frame into one ConnectRequest, as the SDK's batching sender does. Writing
    them one message each would race the coordinator's abort: grpcio's asyncio client replaces the
    server's status with INTERNAL "Internal error from Core" when a write fails after the server has
    ended the stream (grpc/grpc#36066), which is a client-side artifact, not the coordinator's answer.
    """

    def __init__(self, addr: str) -> None:
        self._channel = grpc.aio.insecure_channel(addr)
        self._out: asyncio.Queue[Any] = asyncio.Queue()
        self.replies: dict[int, Any] = {}
        self.grants: list[Any] = []
        self.status: grpc.StatusCode | None = None
        self.details = ""
        self._call = worker_service_pb2_grpc.WorkerServiceStub(self._channel).Connect(self._requests())
        self._reader = asyncio.create_task(self._read())

    async def _requests(self) -> Any:
        while (item := await self._out.get()) is not None:
            yield wpb.ConnectRequest(frames=item if isinstance(item, list) else [item])

    async def _read(self) -> None:
        try:
            async for msg in self._call:
                for f in msg.frames:
                    which = f.WhichOneof("frame")
                    if which == "reply":
                        self.replies[f.reply.seq] = f.reply
                    elif which == "lease":
                        self.grants.append(f.lease)
        except grpc.aio.AioRpcError as exc:
            self.status, self.details = exc.code(), exc.details() or ""
        else:
            self.status = grpc.StatusCode.OK

    def send(self, frame: wpb.WorkerFrame) -> None:
        self._out.put_nowait(frame)

    def send_all(self, frames: list[wpb.WorkerFrame]) -> None:
        self._out.put_nowait(frames)

    async def settle(self, seqs: list[int]) -> None:
        """Until every request got its reply or the stream closed."""
        deadline = asyncio.get_running_loop().time() + REPLY_TIMEOUT_S
        while not self._reader.done() and not all(s in self.replies for s in seqs):
            assert asyncio.get_running_loop().time() < deadline, f"no reply for {set(seqs) - set(self.replies)}"
            await asyncio.sleep(0.01)

    async def close(self) -> None:
        self._out.put_nowait(None)
        self._call.cancel()
        self._reader.cancel()
        await self._channel.close()


@pytest.fixture
async def owner(addr: str, stub: Any) -> AsyncIterator[tuple[RawWorker, Any]]:
    """A well-behaved worker holding a real lease, so fuzzed frames can name another worker's lease."""
    for i in range(20):
        await stub.Submit(jpb.SubmitRequest(kind="echo", payload=str(i).encode()))
    w = await RawWorker(addr, "owner", capacity=1).connect()
    w.credit(1)
    grant = await w.next_grant()
    yield w, grant
    await w.close()


@STREAM_FUZZ
@given(specs=frame_specs)
async def test_fuzzed_stream_frames_carry_on_or_close_clearly(addr: str, db: Any, owner: tuple[RawWorker, Any],
                                                              specs: list[tuple[Any, ...]]) -> None:
    owner_worker, other = owner
    s = Stream(addr)
    seqs: list[int] = []
    try:
        frames = []
        for i, spec in enumerate(specs, start=1):
            frame = _frame(spec, "fuzzer", None, other)
            if frame.WhichOneof("frame") not in ("hello", "credit", None):
                frame.seq = i
                seqs.append(i)
            frames.append(frame)
        s.send_all(frames)
        await s.settle(seqs)
        if not s._reader.done() and s.grants:
            # A second round against a lease this stream really holds (its own, then replayed).
            more = [_frame(spec, "fuzzer", s.grants[0], other) for spec in specs]
            for j, frame in enumerate(more, start=len(specs) + 1):
                if frame.WhichOneof("frame") not in ("hello", "credit", None):
                    frame.seq = j
                    seqs.append(j)
            s.send_all(more)
            await s.settle(seqs)
        if s._reader.done():
            assert s.status in (grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT,
                                grpc.StatusCode.FAILED_PRECONDITION), (s.status, s.details)
            assert s.status is grpc.StatusCode.OK or s.details
        else:
            allowed = {wpb.REPLY_STATUS_ACCEPTED, wpb.REPLY_STATUS_DUPLICATE, wpb.REPLY_STATUS_STALE_LEASE,
                       wpb.REPLY_STATUS_NOT_FOUND, wpb.REPLY_STATUS_INVALID, wpb.REPLY_STATUS_CANCELLED}
            for seq in seqs:
                assert s.replies[seq].status in allowed, s.replies[seq]
    finally:
        await s.close()
    # The owner's lease was never closed by anyone else: its job is still running under its token.
    row = await db.fetchrow("SELECT state, lease_token, worker_id FROM faultline_jobs WHERE id = $1",
                            int(other.lease_id.split(".")[0]))
    assert (row["state"], row["lease_token"], row["worker_id"]) == ("running", other.fencing_token, "owner")
    await assert_no_bad_rows(db)
    assert (await owner_worker.heartbeat(other)).leases[0].status == wpb.REPLY_STATUS_ACCEPTED


async def test_completion_before_hello_and_future_token_are_refused(addr: str, db: Any,
                                                                    owner: tuple[RawWorker, Any]) -> None:
    _, other = owner
    s = Stream(addr)
    s.send(wpb.WorkerFrame(seq=1, complete=wpb.Complete(lease=wpb.LeaseRef(
        lease_id=f"{other.lease_id.split('.')[0]}.{other.fencing_token + 1}", fencing_token=other.fencing_token + 1))))
    await s.settle([1])
    assert s.status == grpc.StatusCode.FAILED_PRECONDITION and "hello" in s.details
    await s.close()
    assert await db.fetchval("SELECT count(*) FROM faultline_jobs WHERE state = 'succeeded'") == 0
