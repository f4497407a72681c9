"""Client against the fake JobService: field mapping, trace propagation, status-code mapping."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from worker_sdk import (
    Client,
    FailedPreconditionError,
    InvalidArgumentError,
    JobNotFoundError,
    JobSpec,
    JobState,
    JobTimeouts,
    RetryPolicy,
    UnavailableError,
    WorkerSDKError,
)

from .conftest import FakeServer


async def test_submit_maps_every_option_and_returns_the_stored_job(server: FakeServer) -> None:
    run_at = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    async with Client(server.target) as client:
        job = await client.submit(
            "resize",
            b"img",
            queue="images",
            idempotency_key="k1",
            max_attempts=5,
            priority=7,
            run_at=run_at,
            retry_policy=RetryPolicy(initial_backoff=timedelta(seconds=1), multiplier=3.0),
            timeouts=JobTimeouts(execution=timedelta(minutes=2)),
            labels={"team": "media"},
        )
    request = server.jobs.submits[0]
    assert (request.kind, request.queue, request.payload, request.idempotency_key) == ("resize", "images", b"img", "k1")
    assert (request.max_attempts, request.priority, dict(request.labels)) == (5, 7, {"team": "media"})
    assert request.run_at.ToDatetime(tzinfo=UTC) == run_at
    assert request.retry_policy.initial_backoff.ToTimedelta() == timedelta(seconds=1)
    assert request.retry_policy.multiplier == 3.0
    assert request.timeouts.execution.ToTimedelta() == timedelta(minutes=2)
    assert not request.timeouts.HasField("heartbeat")
    assert (job.id, job.kind, job.queue, job.state, job.attempts) == ("1", "resize", "images", JobState.QUEUED, 0)
    assert job.idempotency_key == "k1" and job.labels == {"team": "media"} and job.max_attempts == 5
    assert job.created_at is not None and job.created_at.tzinfo is not None and job.finished_at is None


async def test_submit_ex_reports_whether_the_idempotency_key_created_a_job(server: FakeServer) -> None:
    async with Client(server.target) as client:
        first, created = await client.submit_ex("echo", b"a", idempotency_key="same")
        again, created_again = await client.submit_ex("echo", b"b", idempotency_key="same")
    assert (created, created_again) == (True, False)
    assert first.id == again.id and again.payload == b"a"


async def test_client_injects_the_current_trace_context(server: FakeServer) -> None:
    context = SpanContext(
        trace_id=0x4BF92F3577B34DA6A3CE929D0E0E4736,
        span_id=0x00F067AA0BA902B7,
        is_remote=False,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )
    async with Client(server.target) as client:
        with trace.use_span(NonRecordingSpan(context)):
            await client.submit("echo")
    assert server.jobs.metadata[0]["traceparent"] == "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


async def test_status_codes_map_to_sdk_errors_with_the_server_message(server: FakeServer) -> None:
    async with Client(server.target) as client:
        with pytest.raises(JobNotFoundError, match="job 404 not found"):
            await client.get("404")
        with pytest.raises(InvalidArgumentError, match="kind is required"):
            await client.submit("")
        job = await client.submit("echo")
        with pytest.raises(FailedPreconditionError, match="not dead-lettered"):
            await client.requeue(job.id)


async def test_unreachable_coordinator_raises_unavailable() -> None:
    async with Client("127.0.0.1:1", timeout=timedelta(seconds=2)) as client:
        with pytest.raises(UnavailableError) as info:
            await client.get("1")
    assert isinstance(info.value, WorkerSDKError)


async def test_batch_list_cancel_requeue_and_operator_views(server: FakeServer) -> None:
    async with Client(server.target) as client:
        pairs = await client.submit_batch_ex([JobSpec(kind="a"), JobSpec(kind="b", payload=b"x", idempotency_key="b")])
        assert [(job.kind, created) for job, created in pairs] == [("a", True), ("b", True)]
        assert [job.kind for job in await client.submit_batch([JobSpec(kind="c")])] == ["c"]
        assert await client.submit_batch([]) == []

        cancelled = await client.cancel(pairs[0][0].id)
        assert cancelled.state is JobState.CANCELLED
        requeued = await client.requeue(cancelled.id, extra_attempts=2)
        assert requeued.state is JobState.QUEUED

        jobs, token = await client.list(state=JobState.QUEUED, page_size=10)
        assert {job.kind for job in jobs} == {"a", "b", "c"} and token is None

        (queue,) = await client.list_queues()
        assert queue.name == "default" and queue.depth[JobState.QUEUED] == 3 and queue.finished_last_minute == 2
        (worker,) = await client.list_workers()
        assert (worker.worker_id, worker.queues, worker.capacity) == ("w1", ("default",), 4)


async def test_naive_run_at_is_rejected_locally(server: FakeServer) -> None:
    async with Client(server.target) as client:
        with pytest.raises(InvalidArgumentError, match="timezone-aware"):
            await client.submit("echo", run_at=datetime(2030, 1, 1))
