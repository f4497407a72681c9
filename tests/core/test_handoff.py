"""Direct hand-off: a job submitted while a worker waits is inserted already leased, never ahead of queued work.

The Store-level tests drive coordinator/grants.py's Handoff against real Postgres with sessions whose
credit and delivery the test controls; the end-to-end test runs a coordinator and a raw worker over gRPC.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from coordinator import metrics
from coordinator.app import Coordinator
from coordinator.db.pool import create_pool
from coordinator.db.store import Completion, Store, StoreError
from coordinator.grants import Handoff, deliver
from coordinator.model import Job, JobSpec, JobState, LeaseKey
from coordinator.policy import GrantPolicy
from coordinator.sessions import DispatchSignal, SessionRegistry
from tests.helpers.raw_worker import RawWorker
from tests.helpers.sessions import FakeSession
from tests.helpers.wait import eventually
from worker_sdk import Client
from worker_sdk import JobState as SdkJobState
from worker_sdk._proto.faultline.v1 import worker_service_pb2 as wpb

TTL_MS = 30_000


def spec(*, priority: int = 0, kind: str = "k", key: str | None = None, run_at: datetime | None = None) -> JobSpec:
    return JobSpec(queue="default", kind=kind, payload=b"p", idempotency_key=key, max_attempts=3,
                   priority=priority, run_at=run_at, backoff_initial_ms=None, backoff_max_ms=None,
                   backoff_multiplier=None, backoff_jitter=None, execution_timeout_ms=None,
                   heartbeat_timeout_ms=None, schedule_to_start_ms=None)


@pytest.fixture
async def store(dsn: str) -> AsyncIterator[Store]:
    pool = await create_pool(dsn, max_size=4)
    yield Store(pool)
    await pool.close()


def handoff(store: Store, *sessions: FakeSession, enabled: bool = True) -> tuple[Handoff, DispatchSignal]:
    signal = DispatchSignal()
    registry = SessionRegistry(signal)
    for s in sessions:
        registry.add(s)
    signal.take()
    return Handoff(store=store, registry=registry, signal=signal, lease_ttl_ms=TTL_MS, enabled=enabled,
                   policy=GrantPolicy(store=store)), signal


async def row(db: asyncpg.Connection[Any], job_id: int) -> Any:
    return await db.fetchrow(
        "SELECT state, attempts, lease_token, worker_id, lease_expires_at - started_at AS ttl, start_deadline "
        "FROM faultline_jobs WHERE id = $1", job_id)


async def test_idle_worker_gets_the_job_leased_at_insert(store: Store, db: asyncpg.Connection[Any]) -> None:
    w = FakeSession("a", 2)
    h, _ = handoff(store, w)
    before = metrics.LEASES_GRANTED.labels("handoff")._value.get()
    [(job, created)] = await h.insert([spec()])
    assert created and job.state is JobState.RUNNING
    assert (job.attempts, job.lease_token, job.worker_id) == (1, 1, "worker-a")
    assert [j.id for j in w.delivered] == [job.id]
    assert w.credit == 1
    r = await row(db, job.id)
    assert (r["state"], r["attempts"], r["lease_token"], r["worker_id"]) == ("running", 1, 1, "worker-a")
    assert r["ttl"] == timedelta(milliseconds=TTL_MS)
    assert r["start_deadline"] is None
    attempts = await db.fetch("SELECT attempt, lease_token, worker_id, outcome FROM faultline_attempts "
                              "WHERE job_id = $1", job.id)
    assert [tuple(a) for a in attempts] == [(1, 1, "worker-a", None)]
    assert metrics.LEASES_GRANTED.labels("handoff")._value.get() == before + 1
    # The lease is an ordinary one: completion is fenced on (id, token 1, holder) as for a claimed job.
    done = await store.complete_jobs([Completion(key=LeaseKey(job.id, 1), worker_id="worker-a", result=b"ok")])
    assert len(done) == 1


async def test_queued_work_is_never_overtaken(store: Store, db: asyncpg.Connection[Any]) -> None:
    """With an equal-priority job waiting, the new one is queued behind it and the credit goes back."""
    [(older, _)] = await store.insert_jobs([spec()])
    w = FakeSession("a", 1)
    h, signal = handoff(store, w)
    [(job, created)] = await h.insert([spec()])
    assert created and job.state is JobState.QUEUED
    assert w.delivered == [] and w.credit == 1
    assert (await row(db, job.id))["lease_token"] == 0
    assert await db.fetchval("SELECT count(*) FROM faultline_attempts") == 0
    # The dispatcher was told credit is back; the claim then takes the older job first.
    assert signal._event.is_set()
    claimed = await store.claim_jobs(queue="default", kinds=["k"], slots=["worker-a"], lease_ttl_ms=TTL_MS)
    assert [j.id for j, _ in claimed] == [older.id]


async def test_higher_priority_job_goes_ahead_of_lower_queued_work(store: Store) -> None:
    """Dispatch order is priority first: a job the dispatcher would pick before the queued one may be handed off."""
    await store.insert_jobs([spec(priority=0)])
    w = FakeSession("a", 1)
    h, _ = handoff(store, w)
    [(job, _)] = await h.insert([spec(priority=5)])
    assert job.state is JobState.RUNNING and [j.id for j in w.delivered] == [job.id]


async def test_batch_credit_goes_to_the_jobs_dispatch_order_takes_first(store: Store) -> None:
    w = FakeSession("a", 2)
    h, _ = handoff(store, w)
    results = await h.insert([spec(priority=0), spec(priority=9), spec(priority=0), spec(priority=5)])
    states = [j.state for j, _ in results]
    assert states == [JobState.QUEUED, JobState.RUNNING, JobState.QUEUED, JobState.RUNNING]
    assert w.credit == 0 and len(w.delivered) == 2


async def test_credit_is_spread_and_kinds_respected(store: Store) -> None:
    a, b, other = FakeSession("a", 1), FakeSession("b", 1), FakeSession("c", 5, kinds=("other",))
    h, _ = handoff(store, a, b, other)
    results = await h.insert([spec(), spec(), spec()])
    assert [j.state for j, _ in results] == [JobState.RUNNING, JobState.RUNNING, JobState.QUEUED]
    assert {j.worker_id for j, _ in results[:2]} == {"worker-a", "worker-b"}
    assert other.delivered == [] and other.credit == 5


async def test_scheduled_and_duplicate_jobs_are_not_handed_off(store: Store) -> None:
    w = FakeSession("a", 5)
    h, _ = handoff(store, w)
    [(first, created)] = await h.insert([spec(key="once")])
    assert created and first.state is JobState.RUNNING
    later = datetime.now(UTC) + timedelta(hours=1)
    results = await h.insert([spec(key="once"), spec(run_at=later)])
    assert (results[0][0].id, results[0][1]) == (first.id, False)
    assert results[1][0].state is JobState.SCHEDULED
    assert w.credit == 4 and len(w.delivered) == 1


async def test_closed_session_releases_the_lease(store: Store, db: asyncpg.Connection[Any]) -> None:
    """The session closed between reserving credit and delivering: the job goes back to the queue, token bumped."""
    w = FakeSession("a", 1, open_=False)
    h, signal = handoff(store, w)
    [(job, _)] = await h.insert([spec()])
    r = await row(db, job.id)
    assert (r["state"], r["lease_token"], r["worker_id"]) == ("queued", 2, None)
    assert await db.fetchval("SELECT count(*) FROM faultline_attempts WHERE job_id = $1", job.id) == 0
    assert signal._event.is_set()


async def test_cancelled_submit_still_delivers_the_handed_off_lease(store: Store, db: asyncpg.Connection[Any]) -> None:
    """Once credit is reserved the insert and delivery run to the end, or a committed lease would sit unsent."""
    w = FakeSession("a", 1)
    h, _ = handoff(store, w)
    task = asyncio.create_task(h.insert([spec()]))
    await asyncio.sleep(0)  # let it reserve credit and start the insert
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await eventually(lambda: len(w.delivered) == 1, message="the grant reaches the session")
    assert (await row(db, w.delivered[0].id))["state"] == "running"


async def test_disabled_handoff_queues(store: Store) -> None:
    w = FakeSession("a", 3)
    h, _ = handoff(store, w, enabled=False)
    [(job, _)] = await h.insert([spec()])
    assert job.state is JobState.QUEUED and w.credit == 3


async def test_failed_insert_gives_the_credit_back(store: Store) -> None:
    w = FakeSession("a", 2)
    h, _ = handoff(store, w)
    bad = dataclasses.replace(spec(), max_attempts=0)  # violates a check constraint (validate.py never lets it through)
    with pytest.raises(StoreError, match="check constraint"):
        await h.insert([bad])
    assert w.credit == 2 and w.delivered == []


def _claims() -> float:
    return metrics.REGISTRY.get_sample_value("faultline_db_statements_total", {"query": "claim_jobs"}) or 0.0


# Submits to try: one lands inside a dispatch round (the fallback poll's, say) only by a rare coincidence.
HANDOFF_TRIES = 3


async def test_submit_to_an_idle_worker_answers_running(coordinator: Coordinator, addr: str) -> None:
    """A submit while a worker waits with credit is inserted leased, and its answer says RUNNING.

    A dispatch round holds the credit it offers while its claim runs, and a submit that lands inside one is
    queued and then claimed: right, but not the hand-off. The credit frame starts such a round, so the test
    waits for it to end (a claim ran and the credit is back); a submit that still meets a round is retried.
    """
    w = await RawWorker(addr, "w", kinds=("echo",)).connect()
    assert coordinator.registry is not None
    registry = coordinator.registry
    claims_before = _claims()
    w.credit(1)
    await eventually(lambda: _claims() > claims_before and any(s.credit == 1 for s in registry),
                     message="the dispatch round that the credit started ended, and the credit is back")
    states = []
    async with Client(addr) as client:
        for _ in range(HANDOFF_TRIES):
            job = await client.submit("echo", b"x")
            states.append(job.state)
            grant = await w.next_grant()
            assert grant.job.id == job.id
            assert (await w.complete(grant, b"done")).status == wpb.REPLY_STATUS_ACCEPTED
            done = await eventually(lambda job_id=job.id: _succeeded(client, job_id), message="job succeeded")
            assert done.result == b"done"
            if job.state is SdkJobState.RUNNING:
                assert job.attempts == 1 and grant.fencing_token == 1
                break
            assert job.state is SdkJobState.QUEUED, states  # a dispatch round held the credit: claimed instead
            w.credit(1)  # a finished lease does not give its credit back
            await eventually(lambda: any(s.credit == 1 for s in registry), message="credit registered")
        else:
            pytest.fail(f"no submit to an idle worker was handed off in {HANDOFF_TRIES} tries: {states}")
    await w.close()


async def _succeeded(client: Client, job_id: str) -> Any:
    job = await client.get(job_id)
    return job if job.state is SdkJobState.SUCCEEDED else None


async def test_undeliverable_grant_ends_its_attempt_span(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """A session that closed part-way through a batch opened attempt spans; releasing the leases ends them."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import StatusCode

    import coordinator.tracing as tracing

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(tracing, "_tracer", provider.get_tracer("test"))
    monkeypatch.setattr(tracing, "_recording", lambda: True)  # a provider local to this test, not the global one
    tracer = tracing.JobTracer()

    class HalfOpen(FakeSession):
        def deliver(self, jobs: Sequence[Job]) -> bool:
            for job in jobs:
                tracer.attempt_started(job, worker_id=self.worker_id)
            return False  # the stream closed while the grants were being written

    await store.insert_jobs([spec()])
    [(job, _)] = await store.claim_jobs(queue="default", kinds=["k"], slots=["worker-a"], lease_ttl_ms=TTL_MS)
    released = await deliver(store, DispatchSignal(), [(job, HalfOpen("a", 0))], path="claim",
                             on_released=tracer.attempt_closed)
    assert released == 1
    [attempt] = [s for s in exporter.get_finished_spans() if s.name.startswith("faultline.attempt")]
    assert attempt.attributes is not None and attempt.attributes["faultline.outcome"] == "released"
    assert attempt.status.status_code is not StatusCode.ERROR
