"""The SDK's console calls against a real coordinator: whoami, bulk cancel/requeue to the end, filters, audit."""

from __future__ import annotations

import pytest

from coordinator import bulk
from worker_sdk import AttemptAudit, Client, InvalidArgumentError, JobSpec, JobState


async def test_sdk_whoami_list_filters_and_bulk_actions_followed_to_the_end(
        addr: str, db: object, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bulk, "TIME_BUDGET_S", 0.0)
    monkeypatch.setattr(bulk, "CHUNK_JOBS", 50)
    async with Client(addr) as client:
        me = await client.whoami()
        assert me.identity is None and me.name == "anonymous" and not me.auth_enabled and "admin" in me.scopes
        jobs = await client.submit_batch([JobSpec(kind="k", queue="sdk", labels={"batch": "7"})
                                          for _ in range(230)])
        keyed = await client.submit("k", queue="sdk", idempotency_key="the-one")
        page, _ = await client.list(queue="sdk", labels={"batch": "7"}, page_size=1000)
        assert len(page) == 230
        found, _ = await client.list(idempotency_key="the-one")
        assert [j.id for j in found] == [keyed.id]
        done = await client.bulk_cancel(queue="sdk", labels={"batch": "7"})
        assert (done.cancelled, done.cancel_requested, done.skipped, done.calls) == (230, 0, 0, 5)
        assert (await client.get(keyed.id)).state is JobState.QUEUED
        back = await client.bulk_requeue([j.id for j in jobs[:10]], extra_attempts=2)
        assert (back.requeued, back.skipped) == (10, 0)
        back = await client.bulk_requeue(queue="sdk", state="cancelled")
        assert back.requeued == 220
        with pytest.raises(InvalidArgumentError, match=r"filter\.state"):
            await client.bulk_requeue(queue="sdk", state=JobState.QUEUED)
        with pytest.raises(InvalidArgumentError):
            await client.bulk_cancel()
        with pytest.raises(InvalidArgumentError):
            await client.bulk_cancel(["1"], queue="sdk")
        got = await client.get(jobs[0].id)
        assert got.trace_id is None and got.attempt_audit == ()
        assert isinstance(AttemptAudit, type)


async def test_sdk_get_surfaces_each_attempt_and_the_trace_id(addr: str) -> None:
    import asyncio

    from opentelemetry import trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    from tests.helpers.wait import eventually
    from worker_sdk import JobContext, Worker

    w = Worker(addr, queues=["audit"], handle_signals=False)

    @w.handler("flaky")
    async def flaky(ctx: JobContext) -> bytes:
        if ctx.attempt == 1:
            raise RuntimeError("first try fails")
        return b"ok"

    task = asyncio.create_task(w.run())
    try:
        trace_id = 0x4BF92F3577B34DA6A3CE929D0E0E4736
        parent = NonRecordingSpan(SpanContext(trace_id=trace_id, span_id=0x00F067AA0BA902B7, is_remote=True,
                                              trace_flags=TraceFlags(TraceFlags.SAMPLED)))
        async with Client(addr) as client:
            with trace.use_span(parent):  # the SDK sends the current context as traceparent
                job = await client.submit("flaky", queue="audit")

            async def succeeded() -> bool:
                return (await client.get(job.id)).state is JobState.SUCCEEDED

            await eventually(succeeded, timeout=30, message="the flaky job succeeded on its second attempt")
            got = await client.get(job.id)
    finally:
        await asyncio.wait_for(w.stop(), 30)
        await asyncio.wait_for(task, 30)
    assert got.trace_id == f"{trace_id:032x}"
    first, second = got.attempt_audit
    assert (first.attempt, first.outcome, second.attempt, second.outcome) == (1, "failed", 2, "succeeded")
    assert "first try fails" in first.error and second.error == ""
    assert second.fencing_token > first.fencing_token
    assert first.started_at is not None and first.ended_at is not None and first.ended_at >= first.started_at
    assert [(a.attempt, a.worker_id, a.outcome) for a in got.attempt_audit] == list(got.attempt_holders)
