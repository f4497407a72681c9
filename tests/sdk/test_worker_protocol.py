"""The Worker against the fake coordinator: credit, heartbeats, replies, cancel, reconnect, drain, steps."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from datetime import timedelta

import pytest
from opentelemetry import trace

from worker_sdk import (
    CancelReason,
    JobContext,
    LeaseLostError,
    NonRetryableError,
    RetryJob,
    Worker,
    WorkerState,
)
from worker_sdk._proto.faultline.v1 import worker_service_pb2 as pb

from .fakes import WAIT_TIMEOUT_S, FakeCoordinator, Received

StartWorker = Callable[[Worker], "asyncio.Task[None]"]


def make_worker(fake: FakeCoordinator, **kwargs: object) -> Worker:
    kwargs.setdefault("concurrency", 2)
    # The credit arithmetic below is about handler slots; prefetch has its own tests at the end.
    kwargs.setdefault("prefetch", 0)
    kwargs.setdefault("handle_signals", False)
    return Worker(fake.target, **kwargs)  # type: ignore[arg-type]


async def eventually(predicate: Callable[[], object], timeout: float = WAIT_TIMEOUT_S) -> None:
    """Poll a local condition that no frame signals (e.g. the worker's own state)."""
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 - polls worker state that no event signals
            await asyncio.sleep(0.005)


def status_by_kind(**statuses: int | None) -> Callable[[Received], int | None]:
    return lambda r: statuses.get(r.kind, pb.REPLY_STATUS_ACCEPTED)


async def heartbeat_barrier(fake: FakeCoordinator) -> None:
    """Wait until a heartbeat sent after this point has arrived: everything written before it has too."""
    seen = len(fake.frames("heartbeat"))
    await fake.wait_for(lambda: len(fake.frames("heartbeat")) > seen)


async def test_grants_follow_credit_and_each_freed_slot_returns_one_credit(
    fake: FakeCoordinator, start_worker: StartWorker
) -> None:
    release = asyncio.Event()
    worker = make_worker(fake, concurrency=2, labels={"zone": "a"})

    @worker.handler("block")
    async def block(ctx: JobContext) -> bytes:
        await release.wait()
        return b"ok"

    start_worker(worker)
    for _ in range(5):
        fake.add_job("block")
    await fake.wait_for(lambda: len(fake.granted) == 2)
    await heartbeat_barrier(fake)

    hello = fake.sessions[0].hello
    assert (hello.capacity, list(hello.kinds), hello.sdk_name) == (2, ["block"], "faultline-python")
    assert dict(hello.labels) == {"zone": "a"} and list(hello.queues) == ["default"]
    assert fake.credit_total() == 2 and len(fake.granted) == 2 and len(fake.pending_jobs) == 3

    release.set()
    await fake.wait_for(lambda: len(fake.frames("complete")) == 5 and fake.credit_total() == 7)
    assert fake.session.credit == 2  # all slots free again: outstanding credit equals concurrency
    assert all(r.frame.seq > 0 for r in fake.frames("complete"))
    assert len({r.frame.seq for r in fake.received if r.frame.seq}) == len([r for r in fake.received if r.frame.seq])


async def test_heartbeat_is_one_frame_listing_every_held_lease(
    fake: FakeCoordinator, start_worker: StartWorker
) -> None:
    release = asyncio.Event()
    worker = make_worker(fake, concurrency=3)

    @worker.handler("block")
    async def block(ctx: JobContext) -> None:
        await release.wait()

    start_worker(worker)
    for _ in range(3):
        fake.add_job("block")
    await fake.wait_for(lambda: len(fake.granted) == 3)
    await fake.wait_for(lambda: sum(len(r.frame.heartbeat.leases) == 3 for r in fake.frames("heartbeat")) >= 2)

    first_full = next(i for i, r in enumerate(fake.frames("heartbeat")) if len(r.frame.heartbeat.leases) == 3)
    later = fake.frames("heartbeat")[first_full:]
    assert all(len(r.frame.heartbeat.leases) == 3 for r in later)
    assert {ref.lease_id for ref in later[0].frame.heartbeat.leases} == {g.lease_id for _, g in fake.granted}
    release.set()
    await fake.wait_for(lambda: len(fake.frames("complete")) == 3)


async def test_duplicate_completion_reply_counts_as_done(fake: FakeCoordinator, start_worker: StartWorker) -> None:
    fake.status_for = status_by_kind(complete=pb.REPLY_STATUS_DUPLICATE)
    worker = make_worker(fake, concurrency=1)

    @worker.handler("echo")
    async def echo(ctx: JobContext) -> bytes:
        return ctx.payload

    start_worker(worker)
    fake.add_job("echo", b"payload")
    await fake.wait_for(lambda: fake.credit_total() == 2)  # initial 1 + the freed slot
    await heartbeat_barrier(fake)
    assert [r.frame.complete.result for r in fake.frames("complete")] == [b"payload"]
    assert fake.frames("fail") == []
    assert fake.frames("heartbeat")[-1].frame.heartbeat.leases == []


async def test_stale_completion_reply_drops_the_lease_without_more_frames(
    fake: FakeCoordinator, start_worker: StartWorker
) -> None:
    fake.status_for = status_by_kind(complete=pb.REPLY_STATUS_STALE_LEASE)
    worker = make_worker(fake, concurrency=1)

    @worker.handler("echo")
    async def echo(ctx: JobContext) -> bytes:
        return b"late"

    start_worker(worker)
    fake.add_job("echo")
    await fake.wait_for(lambda: fake.credit_total() == 2)
    await heartbeat_barrier(fake)
    assert len(fake.frames("complete")) == 1 and fake.frames("fail") == []


async def test_stale_heartbeat_verdict_cancels_the_handler_and_reports_nothing(
    fake: FakeCoordinator, start_worker: StartWorker
) -> None:
    fake.verdict_for = lambda ref: pb.REPLY_STATUS_STALE_LEASE
    seen: list[tuple[bool, CancelReason | None]] = []
    worker = make_worker(fake, concurrency=1)

    @worker.handler("block")
    async def block(ctx: JobContext) -> bytes:
        try:
            await asyncio.Event().wait()
        finally:
            seen.append((ctx.cancelled, ctx.cancel_reason))
        return b"never"

    start_worker(worker)
    job_id = fake.add_job("block")
    await fake.wait_for(lambda: fake.credit_total() == 2)  # the lost lease's slot came back
    lease_id = fake.lease_of(job_id)
    await heartbeat_barrier(fake)
    assert seen == [(True, CancelReason.LEASE_LOST)]
    assert fake.frames("complete", lease_id=lease_id) == [] and fake.frames("fail", lease_id=lease_id) == []
    assert all(
        lease_id not in [ref.lease_id for ref in r.frame.heartbeat.leases] for r in fake.frames("heartbeat")[-1:]
    )


async def test_trust_window_expiry_without_accepted_heartbeats_cancels_locally(
    fake: FakeCoordinator, start_worker: StartWorker
) -> None:
    fake.status_for = status_by_kind(heartbeat=None)  # heartbeats go unanswered
    fake.grant_heartbeat_timeout = timedelta(milliseconds=200)
    cancelled = asyncio.Event()
    worker = make_worker(fake, concurrency=1)

    @worker.handler("block")
    async def block(ctx: JobContext) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            assert ctx.cancel_reason is CancelReason.LEASE_LOST
            cancelled.set()
            raise

    start_worker(worker)
    fake.add_job("block")
    await asyncio.wait_for(cancelled.wait(), WAIT_TIMEOUT_S)
    await fake.wait_for(lambda: fake.credit_total() == 2)
    assert fake.frames("complete") == [] and fake.frames("fail") == []


async def test_cancel_frame_cancels_the_handler_and_fails_not_retryable(
    fake: FakeCoordinator, start_worker: StartWorker
) -> None:
    started = asyncio.Event()
    observed: list[bool] = []
    worker = make_worker(fake, concurrency=1)

    @worker.handler("block")
    async def block(ctx: JobContext) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            observed.append(ctx.cancelled)
            raise

    start_worker(worker)
    job_id = fake.add_job("block")
    await asyncio.wait_for(started.wait(), WAIT_TIMEOUT_S)
    lease_id = fake.lease_of(job_id)
    fake.session.send(pb.CoordinatorFrame(cancel=pb.CancelLease(lease=fake.session.leases[lease_id], reason="user")))
    await fake.wait_for(lambda: fake.frames("fail", lease_id=lease_id))
    fail = fake.frames("fail", lease_id=lease_id)[0].frame.fail
    assert (fail.retryable, fail.error) == (False, "cancelled")
    assert observed == [True]
    assert fake.frames("complete") == []


async def test_reconnect_announces_held_leases_and_completes_on_the_new_session(
    fake: FakeCoordinator, start_worker: StartWorker
) -> None:
    release = asyncio.Event()
    worker = make_worker(fake, concurrency=3)

    @worker.handler("block")
    async def block(ctx: JobContext) -> bytes:
        await release.wait()
        return b"done"

    start_worker(worker)
    job_id = fake.add_job("block")
    await fake.wait_for(lambda: len(fake.granted) == 1)
    lease_id = fake.lease_of(job_id)
    fake.session.end()  # the coordinator drops the stream
    await fake.wait_for(lambda: len(fake.sessions) == 2 and fake.credit_total(session=1) == 2)

    held = list(fake.sessions[1].hello.held_leases)
    assert [(ref.lease_id, ref.fencing_token) for ref in held] == [(lease_id, 1)]
    release.set()
    await fake.wait_for(lambda: fake.frames("complete", lease_id=lease_id))
    assert [r.session for r in fake.frames("complete", lease_id=lease_id)] == [1]
    await fake.wait_for(lambda: fake.credit_total(session=1) == 3)


async def test_held_lease_not_resumed_is_cancelled_and_never_reported(
    fake: FakeCoordinator, start_worker: StartWorker
) -> None:
    fake.resume = lambda ref: False
    reasons: list[CancelReason | None] = []
    worker = make_worker(fake, concurrency=2)

    @worker.handler("block")
    async def block(ctx: JobContext) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            reasons.append(ctx.cancel_reason)

    start_worker(worker)
    job_id = fake.add_job("block")
    await fake.wait_for(lambda: len(fake.granted) == 1)
    lease_id = fake.lease_of(job_id)
    fake.session.end()
    # Session 1 gets credit 1 at welcome (the lost handler still unwinds), then 1 when it is released.
    await fake.wait_for(lambda: len(fake.sessions) == 2 and fake.credit_total(session=1) == 2)
    await heartbeat_barrier(fake)
    assert reasons == [CancelReason.LEASE_LOST]
    assert fake.frames("complete") == [] and fake.frames("fail") == []
    assert [ref.lease_id for ref in fake.sessions[1].hello.held_leases] == [lease_id]


async def test_unanswered_completion_is_resent_after_reconnect(
    fake: FakeCoordinator, start_worker: StartWorker
) -> None:
    # First session: completions get no reply; later sessions answer DUPLICATE (it was recorded after all).
    fake.status_for = lambda r: (
        None
        if r.kind == "complete" and r.session == 0
        else pb.REPLY_STATUS_DUPLICATE
        if r.kind == "complete"
        else pb.REPLY_STATUS_ACCEPTED
    )
    worker = make_worker(fake, concurrency=1)

    @worker.handler("echo")
    async def echo(ctx: JobContext) -> bytes:
        return b"r"

    start_worker(worker)
    job_id = fake.add_job("echo")
    await fake.wait_for(lambda: fake.frames("complete"))
    lease_id = fake.lease_of(job_id)
    fake.session.end()
    await fake.wait_for(lambda: len(fake.frames("complete")) == 2 and fake.credit_total(session=1) == 1)
    first, second = fake.frames("complete")
    assert (first.session, second.session) == (0, 1)
    assert first.frame.complete == second.frame.complete and first.frame.seq != second.frame.seq
    assert [ref.lease_id for ref in fake.sessions[1].hello.held_leases] == [lease_id]
    # Session 1 started with no credit (the slot was still held), then got the slot back.
    assert fake.frames("credit")[-1].session == 1


async def test_unavailable_reply_is_retried_with_a_new_seq(fake: FakeCoordinator, start_worker: StartWorker) -> None:
    answers = iter([pb.REPLY_STATUS_UNAVAILABLE])
    fake.status_for = lambda r: (
        next(answers, pb.REPLY_STATUS_ACCEPTED) if r.kind == "complete" else (pb.REPLY_STATUS_ACCEPTED)
    )
    worker = make_worker(fake, concurrency=1)

    @worker.handler("echo")
    async def echo(ctx: JobContext) -> bytes:
        return b"x"

    start_worker(worker)
    fake.add_job("echo")
    await fake.wait_for(lambda: len(fake.frames("complete")) == 2 and fake.credit_total() == 2)
    first, second = fake.frames("complete")
    assert first.frame.complete == second.frame.complete and first.frame.seq != second.frame.seq


async def test_stop_lets_in_flight_jobs_finish_and_sends_no_more_credit(
    fake: FakeCoordinator, start_worker: StartWorker
) -> None:
    release, started = asyncio.Event(), asyncio.Event()
    worker = make_worker(fake, concurrency=2)

    @worker.handler("block")
    async def block(ctx: JobContext) -> bytes:
        started.set()
        await release.wait()
        return b"finished"

    task = start_worker(worker)
    fake.add_job("block")
    await asyncio.wait_for(started.wait(), WAIT_TIMEOUT_S)
    stopping = asyncio.create_task(worker.stop())
    await eventually(lambda: worker.state is WorkerState.STOPPING)
    release.set()
    await asyncio.wait_for(stopping, WAIT_TIMEOUT_S)
    await asyncio.wait_for(task, WAIT_TIMEOUT_S)
    assert [r.frame.complete.result for r in fake.frames("complete")] == [b"finished"]
    assert fake.credit_total() == 2  # the initial credit only: the freed slot was not re-offered
    await fake.wait_for(lambda: fake.session.closed)


async def test_stop_after_drain_grace_fails_remaining_jobs_as_retryable(
    fake: FakeCoordinator, start_worker: StartWorker
) -> None:
    started = asyncio.Event()
    worker = make_worker(fake, concurrency=1, drain_grace=timedelta(milliseconds=50))

    @worker.handler("stuck")
    async def stuck(ctx: JobContext) -> None:
        started.set()
        await asyncio.Event().wait()

    task = start_worker(worker)
    fake.add_job("stuck")
    await asyncio.wait_for(started.wait(), WAIT_TIMEOUT_S)
    await asyncio.wait_for(worker.stop(), WAIT_TIMEOUT_S)
    await asyncio.wait_for(task, WAIT_TIMEOUT_S)
    fail = fake.frames("fail")[0].frame.fail
    assert (fail.retryable, fail.error) == (True, "worker shutdown")


async def test_sync_handler_runs_in_a_thread_and_reports_progress(
    fake: FakeCoordinator, start_worker: StartWorker
) -> None:
    threads: list[str] = []
    worker = make_worker(fake, concurrency=2)

    @worker.handler("sync")
    def sync_handler(ctx: JobContext) -> str:
        threads.append(threading.current_thread().name)
        ctx.progress_sync(0.5, "half way")
        stored = ctx.step_sync("once", lambda: b"stepped")
        return "text:" + stored.decode()

    start_worker(worker)
    fake.add_job("sync")
    await fake.wait_for(lambda: fake.frames("complete"))
    assert fake.frames("complete")[0].frame.complete.result == b"text:stepped"
    progress = fake.frames("progress")[0].frame.progress
    assert (progress.fraction, progress.message) == (0.5, "half way")
    assert threads[0].startswith("faultline-handler") and threads[0] != threading.main_thread().name


async def test_cancel_reaches_a_sync_handler_through_ctx_cancelled(
    fake: FakeCoordinator, start_worker: StartWorker
) -> None:
    started = threading.Event()
    worker = make_worker(fake, concurrency=1)

    @worker.handler("sync")
    def sync_handler(ctx: JobContext) -> bytes:
        started.set()
        assert ctx.wait_cancelled(WAIT_TIMEOUT_S)
        return b"stopped early"

    start_worker(worker)
    job_id = fake.add_job("sync")
    await asyncio.get_running_loop().run_in_executor(None, started.wait, WAIT_TIMEOUT_S)
    lease_id = fake.lease_of(job_id)
    fake.session.send(pb.CoordinatorFrame(cancel=pb.CancelLease(lease=fake.session.leases[lease_id], reason="x")))
    await fake.wait_for(lambda: fake.frames("fail"))
    assert fake.frames("fail")[0].frame.fail.error == "cancelled"
    assert fake.frames("complete") == []


async def test_step_guard_returns_the_stored_result_and_runs_fn_at_most_once(
    fake: FakeCoordinator, start_worker: StartWorker
) -> None:
    calls: list[str] = []
    worker = make_worker(fake, concurrency=2)

    @worker.handler("charge")
    async def charge(ctx: JobContext) -> bytes:
        async def do_charge() -> bytes:
            calls.append(ctx.job_id)
            return b"charged:" + ctx.job_id.encode()

        first = await ctx.step("charge", do_charge)
        second = await ctx.step("charge", do_charge)
        assert first == second
        return first

    start_worker(worker)
    done_before = fake.add_job("charge")
    fresh = fake.add_job("charge")
    fake.steps[(done_before, "charge")] = b"from an earlier attempt"
    await fake.wait_for(lambda: len(fake.frames("complete")) == 2)
    results = {
        fake.lease_to_job[r.frame.complete.lease.lease_id]: r.frame.complete.result for r in fake.frames("complete")
    }
    assert results == {done_before: b"from an earlier attempt", fresh: b"charged:" + fresh.encode()}
    assert calls == [fresh]
    assert len(fake.frames("record_step")) == 1


async def test_stale_step_lookup_raises_lease_lost_and_nothing_is_reported(
    fake: FakeCoordinator, start_worker: StartWorker
) -> None:
    fake.status_for = status_by_kind(get_step=pb.REPLY_STATUS_STALE_LEASE)
    raised: list[type[BaseException]] = []
    worker = make_worker(fake, concurrency=1)

    @worker.handler("charge")
    async def charge(ctx: JobContext) -> bytes:
        try:
            return await ctx.step("charge", lambda: b"x")
        except LeaseLostError as exc:
            raised.append(type(exc))
            raise

    start_worker(worker)
    fake.add_job("charge")
    await fake.wait_for(lambda: fake.credit_total() == 2)
    await heartbeat_barrier(fake)
    assert raised == [LeaseLostError]
    assert fake.frames("complete") == [] and fake.frames("fail") == [] and fake.frames("record_step") == []


@pytest.mark.parametrize(
    ("exc", "retryable", "error", "delay"),
    [
        (RetryJob(delay=timedelta(seconds=2), message="later"), True, "RetryJob: later", timedelta(seconds=2)),
        (NonRetryableError("bad input"), False, "NonRetryableError: bad input", None),
        (ValueError("boom"), True, "ValueError: boom", None),
    ],
)
async def test_handler_exceptions_become_fail_frames(
    fake: FakeCoordinator,
    start_worker: StartWorker,
    exc: Exception,
    retryable: bool,
    error: str,
    delay: timedelta | None,
) -> None:
    worker = make_worker(fake, concurrency=1)

    @worker.handler("fails")
    async def fails(ctx: JobContext) -> None:
        raise exc

    start_worker(worker)
    fake.add_job("fails")
    await fake.wait_for(lambda: fake.frames("fail"))
    fail = fake.frames("fail")[0].frame.fail
    assert (fail.retryable, fail.error) == (retryable, error)
    assert (fail.retry_delay.ToTimedelta() if fail.HasField("retry_delay") else None) == delay


async def test_long_error_text_is_cut_to_8_kib(fake: FakeCoordinator, start_worker: StartWorker) -> None:
    worker = make_worker(fake, concurrency=1)

    @worker.handler("fails")
    async def fails(ctx: JobContext) -> None:
        raise RuntimeError("é" * 10_000)

    start_worker(worker)
    fake.add_job("fails")
    await fake.wait_for(lambda: fake.frames("fail"))
    assert len(fake.frames("fail")[0].frame.fail.error.encode()) <= 8 * 1024


async def test_execution_timeout_cancels_and_fails_retryable(fake: FakeCoordinator, start_worker: StartWorker) -> None:
    fake.grant_execution_timeout = timedelta(milliseconds=50)
    worker = make_worker(fake, concurrency=1)

    @worker.handler("slow")
    async def slow(ctx: JobContext) -> None:
        await asyncio.Event().wait()

    start_worker(worker)
    fake.add_job("slow")
    await fake.wait_for(lambda: fake.frames("fail"))
    fail = fake.frames("fail")[0].frame.fail
    assert fail.retryable and fail.error.startswith("TimeoutError")


async def test_drain_frame_stops_credit_on_that_session_only(fake: FakeCoordinator, start_worker: StartWorker) -> None:
    release = asyncio.Event()
    worker = make_worker(fake, concurrency=2)

    @worker.handler("block")
    async def block(ctx: JobContext) -> bytes:
        await release.wait()
        return b"ok"

    start_worker(worker)
    fake.add_job("block")
    await fake.wait_for(lambda: len(fake.granted) == 1)
    fake.session.send(pb.CoordinatorFrame(drain=pb.Drain()))
    await heartbeat_barrier(fake)
    release.set()
    await fake.wait_for(lambda: fake.frames("complete"))
    await heartbeat_barrier(fake)
    assert fake.credit_total(session=0) == 2  # nothing re-offered after the drain
    fake.session.end()
    await fake.wait_for(lambda: fake.credit_total(session=1) == 2)


async def test_frames_are_batched_into_few_messages(fake: FakeCoordinator, start_worker: StartWorker) -> None:
    worker = make_worker(fake, concurrency=64)
    release = asyncio.Event()
    started: list[str] = []

    @worker.handler("echo")
    async def echo(ctx: JobContext) -> bytes:
        started.append(ctx.job_id)
        if len(started) == 64:
            release.set()
        await release.wait()
        return ctx.payload

    start_worker(worker)
    for i in range(64):
        fake.add_job("echo", str(i).encode())
    await fake.wait_for(lambda: len(fake.frames("complete")) == 64 and fake.credit_total() == 128)
    # All 64 completions were ready together: they go out in one message, and the 64 freed slots
    # come back as summed credit rather than 64 Credit(1) frames.
    assert max(n for _, n in fake.messages) >= 32
    assert len(fake.frames("credit")) <= 4


async def test_handler_span_is_a_child_of_the_submit_trace(fake: FakeCoordinator, start_worker: StartWorker) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    seen: list[int] = []
    worker = make_worker(fake, concurrency=1)

    @worker.handler("traced")
    async def traced(ctx: JobContext) -> None:
        seen.append(trace.get_current_span().get_span_context().trace_id)

    start_worker(worker)
    fake.add_job("traced", trace_context={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"})
    await fake.wait_for(lambda: fake.frames("complete"))
    assert seen == [int(trace_id, 16)]


async def test_grant_for_an_unknown_kind_fails_retryable(fake: FakeCoordinator, start_worker: StartWorker) -> None:
    worker = make_worker(fake, concurrency=1)

    @worker.handler("known")
    async def known(ctx: JobContext) -> None:
        return None

    start_worker(worker)
    fake.add_job("unknown")
    await fake.wait_for(lambda: fake.frames("fail"))
    fail = fake.frames("fail")[0].frame.fail
    assert fail.retryable and "no handler" in fail.error


async def test_progress_after_cancel_reply_marks_the_context_cancelled(
    fake: FakeCoordinator, start_worker: StartWorker
) -> None:
    fake.status_for = status_by_kind(progress=pb.REPLY_STATUS_CANCELLED)
    worker = make_worker(fake, concurrency=1)
    states: list[bool] = []

    @worker.handler("p")
    async def p(ctx: JobContext) -> None:
        await ctx.progress(0.1)
        states.append(ctx.cancelled)
        await asyncio.Event().wait()

    start_worker(worker)
    fake.add_job("p")
    await fake.wait_for(lambda: fake.frames("fail"))
    assert states == [True]
    assert fake.frames("fail")[0].frame.fail.error == "cancelled"


# ---- prefetch ----------------------------------------------------------------------------------


async def test_prefetch_buffers_leases_beyond_concurrency_and_runs_them_in_grant_order(
    fake: FakeCoordinator, start_worker: StartWorker
) -> None:
    release = asyncio.Event()
    running: list[str] = []
    now = peak = 0
    worker = make_worker(fake, concurrency=1, prefetch=2)

    @worker.handler("block")
    async def block(ctx: JobContext) -> None:
        nonlocal now, peak
        running.append(ctx.job.id)
        now += 1
        peak = max(peak, now)
        await release.wait()
        now -= 1

    start_worker(worker)
    ids = [fake.add_job("block") for _ in range(4)]
    await fake.wait_for(lambda: len(fake.granted) == 3)
    await heartbeat_barrier(fake)
    assert fake.sessions[0].hello.capacity == 3 and fake.credit_total() == 3
    assert running == ids[:1], "one handler slot: the other two leases wait in the buffer"
    beat = fake.frames("heartbeat")[-1].frame.heartbeat
    assert {ref.lease_id for ref in beat.leases} == {g.lease_id for _, g in fake.granted}, "buffered leases beat too"
    release.set()
    await fake.wait_for(lambda: len(fake.frames("complete")) == 4)
    assert running == ids and peak == 1


async def test_buffered_lease_cancelled_before_start_fails_without_running_its_handler(
    fake: FakeCoordinator, start_worker: StartWorker
) -> None:
    release = asyncio.Event()
    ran: list[str] = []
    worker = make_worker(fake, concurrency=1, prefetch=1)

    @worker.handler("block")
    async def block(ctx: JobContext) -> None:
        ran.append(ctx.job.id)
        await release.wait()

    start_worker(worker)
    first, second = fake.add_job("block"), fake.add_job("block")
    await fake.wait_for(lambda: len(fake.granted) == 2)
    lease_id = fake.lease_of(second)
    fake.session.send(pb.CoordinatorFrame(cancel=pb.CancelLease(lease=fake.session.leases[lease_id], reason="x")))
    await fake.wait_for(lambda: len(fake.frames("fail", lease_id=lease_id)) == 1)
    fail = fake.frames("fail", lease_id=lease_id)[0].frame.fail
    assert (fail.retryable, fail.error) == (False, "cancelled")
    release.set()
    await fake.wait_for(lambda: len(fake.frames("complete")) == 1)
    assert ran == [first]


async def _stop_with_one_running_and_one_buffered(fake: FakeCoordinator, start_worker: StartWorker) -> tuple[str, str]:
    """One handler slot stuck on the first job, the second buffered; stop() with a 50 ms grace. Returns both ids."""
    started = asyncio.Event()
    worker = make_worker(fake, concurrency=1, prefetch=1, drain_grace=timedelta(milliseconds=50))

    @worker.handler("stuck")
    async def stuck(ctx: JobContext) -> None:
        started.set()
        await asyncio.Event().wait()

    task = start_worker(worker)
    first, second = fake.add_job("stuck"), fake.add_job("stuck")
    await asyncio.wait_for(started.wait(), WAIT_TIMEOUT_S)
    await fake.wait_for(lambda: len(fake.granted) == 2)
    await asyncio.wait_for(worker.stop(), WAIT_TIMEOUT_S)
    await asyncio.wait_for(task, WAIT_TIMEOUT_S)
    return first, second


async def test_stop_releases_unstarted_buffered_leases_when_the_coordinator_accepts_release(
    fake: FakeCoordinator, start_worker: StartWorker
) -> None:
    """A buffered job that never started is handed back uncounted, so a shutdown spends no attempt of it."""
    fake.accepts_release = True
    first, second = await _stop_with_one_running_and_one_buffered(fake, start_worker)
    releases = fake.frames("release")
    assert [r.frame.release.lease.lease_id for r in releases] == [fake.lease_of(second)]
    assert releases[0].frame.release.reason == "worker shutdown before start"
    fails = fake.frames("fail")
    assert [r.frame.fail.lease.lease_id for r in fails] == [fake.lease_of(first)], "the running one still fails"


async def test_a_refused_release_falls_back_to_a_retryable_fail(
    fake: FakeCoordinator, start_worker: StartWorker
) -> None:
    """Met across a reconnect, a coordinator that does not know Release answers INVALID: fail the lease back."""
    fake.accepts_release = True
    fake.status_for = lambda r: pb.REPLY_STATUS_INVALID if r.kind == "release" else pb.REPLY_STATUS_ACCEPTED
    _, second = await _stop_with_one_running_and_one_buffered(fake, start_worker)
    lease_id = fake.lease_of(second)
    assert len(fake.frames("release", lease_id=lease_id)) == 1
    [fail] = [r.frame.fail for r in fake.frames("fail", lease_id=lease_id)]
    assert (fail.retryable, fail.error, fail.retry_delay.ToTimedelta()) == (
        True, "worker shutdown before start", timedelta(0))


async def test_stop_fails_unstarted_buffered_leases_back_to_a_coordinator_without_release(
    fake: FakeCoordinator, start_worker: StartWorker
) -> None:
    first, second = await _stop_with_one_running_and_one_buffered(fake, start_worker)
    fails = {r.frame.fail.lease.lease_id: r.frame.fail for r in fake.frames("fail")}
    running, buffered = fails[fake.lease_of(first)], fails[fake.lease_of(second)]
    assert (running.retryable, running.error, running.HasField("retry_delay")) == (True, "worker shutdown", False)
    assert (buffered.retryable, buffered.error) == (True, "worker shutdown before start")
    assert buffered.HasField("retry_delay") and buffered.retry_delay.ToTimedelta() == timedelta(0)
