"""Flow control across two coordinators on one database: pause, per-key and queue caps, rate limits, affinity.

Every limit lives in Postgres, so each test runs two in-process coordinators on the test's database with
workers on both, and submits through both: a limit that held only per coordinator would fail here. The
dispatchers' fallback poll is set far beyond each test's run time, so whatever gets claimed is claimed
because a wake-up said so (a Submit, a freed slot, a token refill, a resume), never by polling.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import asyncpg
import grpc
import pytest

from coordinator import metrics
from coordinator.app import Coordinator
from tests.helpers.wait import eventually
from worker_sdk import Client, InvalidArgumentError, JobContext, JobSpec, JobState, Worker
from worker_sdk._proto.faultline.v1 import job_service_pb2 as jpb
from worker_sdk._proto.faultline.v1 import job_service_pb2_grpc

NO_POLL = timedelta(seconds=600)  # far beyond any test: only wake-ups dispatch
Factory = Callable[..., Awaitable[Coordinator]]


def addr_of(c: Coordinator) -> str:
    return f"127.0.0.1:{c.port}"


@dataclass
class Runs:
    """Handler start and end times (monotonic) by job id, and the worker that ran it."""

    start: dict[str, float] = field(default_factory=dict)
    end: dict[str, float] = field(default_factory=dict)
    worker: dict[str, str] = field(default_factory=dict)
    key: dict[str, str | None] = field(default_factory=dict)


@asynccontextmanager
async def workers(specs: list[tuple[str, str, int, dict[str, str] | None]], runs: Runs, *,
                  queue: str, hold: float = 0.0, gate: asyncio.Event | None = None) -> AsyncIterator[list[Worker]]:
    """SDK workers (address, worker id, concurrency, labels) serving `queue`, recording into `runs`.

    A handler takes `hold` seconds (the job's work, so that runs overlap), or waits for `gate`.
    """
    started: list[tuple[Worker, asyncio.Task[None]]] = []
    for target, worker_id, concurrency, labels in specs:
        w = Worker(target, queues=[queue], concurrency=concurrency, prefetch=0, worker_id=worker_id, labels=labels,
                   handle_signals=False)

        @w.handler("work")
        async def work(ctx: JobContext, worker_id: str = worker_id) -> bytes:
            runs.start[ctx.job_id] = time.monotonic()
            runs.worker[ctx.job_id] = worker_id
            runs.key[ctx.job_id] = ctx.job.concurrency_key
            if gate is not None:
                await gate.wait()
            elif hold:
                await asyncio.sleep(hold)
            runs.end[ctx.job_id] = time.monotonic()
            return b""

        started.append((w, asyncio.create_task(w.run())))
    try:
        yield [w for w, _ in started]
    finally:
        for w, t in started:
            await w.stop()
            await t


async def connected(c: Coordinator, n: int) -> None:
    assert c.registry is not None
    registry = c.registry

    def ready() -> bool:
        return sum(1 for s in registry if s.accepting and s.credit > 0) >= n

    await eventually(ready, timeout=30, message=f"{n} workers with credit")


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    now = most = 0
    for _, d in events:
        now += d
        most = max(most, now)
    return most


async def states(db: asyncpg.Connection[Any], queue: str) -> dict[str, int]:
    return dict(await db.fetch("SELECT state::text, count(*) FROM faultline_jobs WHERE queue = $1 GROUP BY 1", queue))


async def test_paused_queue_grants_nothing_on_either_path_or_coordinator_and_survives_a_restart(
        coordinator_factory: Factory, db: asyncpg.Connection[Any]) -> None:
    a = await coordinator_factory(dispatch_poll=NO_POLL)
    b = await coordinator_factory(dispatch_poll=NO_POLL)
    runs = Runs()
    gate = asyncio.Event()
    async with workers([(addr_of(a), "wa", 4, None), (addr_of(b), "wb", 4, None)], runs, queue="q", gate=gate):
        await connected(a, 1)
        await connected(b, 1)
        async with Client(addr_of(a)) as ca, Client(addr_of(b)) as cb:
            running = await ca.submit("work", queue="q")  # handed off to an idle worker: it is running
            await eventually(lambda: running.id in runs.start, timeout=30, message="the job before the pause started")
            paused = await cb.pause_queue("q")
            assert paused.paused
            # Both workers wait with credit, so without the pause each Submit would be handed off (RUNNING).
            jobs = [await c.submit("work", queue="q") for c in (ca, cb) for _ in range(5)]
            assert {j.state for j in jobs} == {JobState.QUEUED}, "a paused queue hands nothing off"
            # A sentinel in another queue, submitted afterwards through each coordinator, shows both
            # dispatchers have run a round since the paused queue's jobs were woken for.
            async with workers([(addr_of(a), "sa", 1, None), (addr_of(b), "sb", 1, None)], runs, queue="other"):
                sentinels = [await c.submit("work", queue="other") for c in (ca, cb)]
                await eventually(lambda: all(s.id in runs.end for s in sentinels), timeout=30, message="sentinels ran")
            assert (await states(db, "q")).get("queued") == 10, "a paused queue grants nothing through the claim"
            gate.set()  # the job that was running when the pause came finishes
            await eventually(lambda: running.id in runs.end, timeout=30, message="the running job finished")
            assert await db.fetchval("SELECT state::text FROM faultline_jobs WHERE id = $1", int(running.id)) == \
                "succeeded"
            [stats] = [q for q in await ca.list_queues() if q.name == "q"]
            assert stats.settings is not None and stats.settings.paused
            assert metrics.QUEUE_PAUSED.labels("q")._value.get() == 1
        # Restart coordinator A: the pause is a row in Postgres, not process state.
        await a.stop()
        a2 = await coordinator_factory(dispatch_poll=NO_POLL)
        async with Client(addr_of(a2)) as c2:
            late = await c2.submit("work", queue="q")
            assert late.state is JobState.QUEUED, "still paused after a restart"
            assert (await states(db, "q")).get("queued") == 11
            assert metrics.QUEUE_PAUSED.labels("q")._value.get() == 1
            resumed = await c2.resume_queue("q")
            assert not resumed.paused
            # Resumed through a2, which has no worker: b's dispatcher hears it by NOTIFY (there is no poll).
            await eventually(lambda: len(runs.end) == 1 + 2 + 11, timeout=30, message="every job ran after resume")
        assert {runs.worker[j.id] for j in [*jobs, late]} == {"wb"}


async def test_per_key_concurrency_caps_each_key_without_holding_back_the_other(
        coordinator_factory: Factory, db: asyncpg.Connection[Any]) -> None:
    a = await coordinator_factory(dispatch_poll=NO_POLL)
    b = await coordinator_factory(dispatch_poll=NO_POLL)
    runs = Runs()
    async with Client(addr_of(a)) as ca, Client(addr_of(b)) as cb:
        await cb.set_queue_settings("keyed", per_key_concurrency=2)
        # All of key A first, then key B: B must not wait behind A's backlog (no head-of-line blocking).
        await ca.submit_batch([JobSpec(kind="work", queue="keyed", concurrency_key="A") for _ in range(20)])
        await cb.submit_batch([JobSpec(kind="work", queue="keyed", concurrency_key="B") for _ in range(20)])
        async with workers([(addr_of(a), "w16", 16, None)], runs, queue="keyed", hold=0.05):
            await eventually(lambda: len(runs.end) == 40, timeout=60, message="40 keyed jobs done")
        [stats] = [q for q in await ca.list_queues() if q.name == "keyed"]
        assert stats.settings is not None and stats.settings.per_key_concurrency == 2
    by_key: dict[str, list[tuple[float, float]]] = {"A": [], "B": []}
    for job_id, key in runs.key.items():
        assert key is not None
        by_key[key].append((runs.start[job_id], runs.end[job_id]))
    assert max_overlap(by_key["A"]) <= 2 and max_overlap(by_key["B"]) <= 2, "never more than 2 of a key at once"
    assert max_overlap(by_key["A"] + by_key["B"]) >= 3, "both keys ran side by side"
    last_a_start = max(s for s, _ in by_key["A"])
    first_b_start = min(s for s, _ in by_key["B"])
    assert first_b_start < last_a_start, "key B started while key A still had jobs waiting"


async def test_max_running_caps_the_queue_across_coordinators(
        coordinator_factory: Factory, db: asyncpg.Connection[Any]) -> None:
    a = await coordinator_factory(dispatch_poll=NO_POLL)
    b = await coordinator_factory(dispatch_poll=NO_POLL)
    runs = Runs()
    async with Client(addr_of(a)) as ca:
        await ca.set_queue_settings("capped", max_running=3)
        async with workers([(addr_of(a), "wa", 8, None), (addr_of(b), "wb", 8, None)], runs, queue="capped",
                           hold=0.05):
            await connected(a, 1)
            await connected(b, 1)
            await ca.submit_batch([JobSpec(kind="work", queue="capped") for _ in range(24)])
            await eventually(lambda: len(runs.end) == 24, timeout=60, message="24 capped jobs done")
    assert max_overlap([(runs.start[j], runs.end[j]) for j in runs.end]) <= 3
    assert set(runs.worker.values()) == {"wa", "wb"}, "both coordinators' workers took part"


async def test_rate_limit_holds_across_two_coordinators(
        coordinator_factory: Factory, db: asyncpg.Connection[Any]) -> None:
    a = await coordinator_factory(dispatch_poll=NO_POLL)
    b = await coordinator_factory(dispatch_poll=NO_POLL)
    runs = Runs()
    throttled_before = metrics.CLAIMS_THROTTLED.labels("rated")._value.get()
    async with Client(addr_of(a)) as ca, Client(addr_of(b)) as cb:
        settings = await cb.set_queue_settings("rated", rate_per_second=20)
        assert settings.rate_per_second == 20
        async with workers([(addr_of(a), "wa", 16, None), (addr_of(b), "wb", 16, None)], runs, queue="rated"):
            await connected(a, 1)
            await connected(b, 1)
            await ca.submit_batch([JobSpec(kind="work", queue="rated") for _ in range(50)])
            await cb.submit_batch([JobSpec(kind="work", queue="rated") for _ in range(50)])
            await eventually(lambda: len(runs.end) == 100, timeout=60, message="100 rated jobs done")
    # Grant times from Postgres: one clock for both coordinators.
    starts = sorted(r["started_at"] for r in await db.fetch(
        "SELECT a.started_at FROM faultline_attempts a JOIN faultline_jobs j ON j.id = a.job_id "
        "WHERE j.queue = 'rated'"))
    assert len(starts) == 100
    span = (starts[-1] - starts[0]).total_seconds()
    assert span >= 4.5, f"100 jobs at 20/s took only {span:.2f} s"
    for i, t in enumerate(starts):  # no one-second window holds more than rate + burst grants
        assert sum(1 for u in starts[i:] if (u - t).total_seconds() < 1.0) <= 22
    assert set(runs.worker.values()) == {"wa", "wb"}
    assert metrics.CLAIMS_THROTTLED.labels("rated")._value.get() > throttled_before


async def test_job_with_required_labels_waits_for_a_matching_worker_and_runs_on_it(
        coordinator_factory: Factory, db: asyncpg.Connection[Any]) -> None:
    a = await coordinator_factory(dispatch_poll=NO_POLL)
    b = await coordinator_factory(dispatch_poll=NO_POLL)
    runs = Runs()
    async with Client(addr_of(a)) as ca, workers([(addr_of(a), "cpu", 4, {"gpu": "none"})], runs, queue="ml"):
        await connected(a, 1)
        gpu_job = await ca.submit("work", queue="ml", required_labels={"gpu": "a100"})
        assert gpu_job.state is JobState.QUEUED, "not handed off to a worker without the label"
        plain = await ca.submit("work", queue="ml")  # behind the gpu job, but the cpu worker can take it
        await eventually(lambda: plain.id in runs.end, timeout=30, message="the plain job ran past the waiting gpu job")

        async def sampled() -> bool:  # ListQueues serves the last metrics sample: wait for one after the run
            [stats] = [q for q in await ca.list_queues() if q.name == "ml"]
            return stats.requiring_labels == 1 and stats.depth.get(JobState.QUEUED) == 1

        await eventually(sampled, timeout=10, message="a sample with the gpu job waiting on labels")
        assert gpu_job.id not in runs.start
        stored = await ca.get(gpu_job.id)
        assert stored.required_labels == {"gpu": "a100"}
        # The matching worker connects to the other coordinator; it gets the job.
        async with workers([(addr_of(b), "gpu", 1, {"gpu": "a100", "zone": "x"})], runs, queue="ml"):
            await eventually(lambda: gpu_job.id in runs.end, timeout=30, message="the gpu job ran")
    assert runs.worker[gpu_job.id] == "gpu"


async def test_flow_settings_are_validated_at_the_edge(coordinator: Coordinator) -> None:
    async with grpc.aio.insecure_channel(addr_of(coordinator)) as channel:
        stub: Any = job_service_pb2_grpc.JobServiceStub(channel)  # type: ignore[no-untyped-call]
        cases: list[tuple[Any, Any, str]] = [
            (stub.SetQueueSettings, jpb.SetQueueSettingsRequest(queue="q", per_key_concurrency=-1),
             "per_key_concurrency"),
            (stub.SetQueueSettings, jpb.SetQueueSettingsRequest(queue="q", max_running=2_000_000), "max_running"),
            (stub.SetQueueSettings, jpb.SetQueueSettingsRequest(queue="q", rate_per_second=float("nan")),
             "rate_per_second"),
            (stub.SetQueueSettings, jpb.SetQueueSettingsRequest(queue="q", burst=-5), "burst"),
            (stub.SetQueueSettings, jpb.SetQueueSettingsRequest(queue="q"), "per_key_concurrency"),
            (stub.SetQueueSettings, jpb.SetQueueSettingsRequest(queue="", max_running=1), "queue"),
            (stub.PauseQueue, jpb.PauseQueueRequest(queue="bad queue"), "queue"),
            (stub.ResumeQueue, jpb.ResumeQueueRequest(), "queue"),
            (stub.Submit, jpb.SubmitRequest(kind="k", concurrency_key="has space"), "concurrency_key"),
            (stub.Submit, jpb.SubmitRequest(kind="k", required_labels={"-bad": "x"}), "required_labels"),
        ]
        for call, request, name in cases:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call(request)
            assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT, (request, err.value)
            assert name in (err.value.details() or ""), (name, err.value.details())
    async with Client(addr_of(coordinator)) as client:
        with pytest.raises(InvalidArgumentError):
            await client.set_queue_settings("q", rate_per_second=-1)
