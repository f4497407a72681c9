"""Schedules against real coordinators: one job per tick across three processes with one SIGKILLed, a redo after a
crash between submit and advance, overlap, the RPCs and their validation."""

from __future__ import annotations

import signal
from collections import Counter
from datetime import timedelta
from typing import Any

import grpc
import pytest

from coordinator.actors.scheduler import Scheduler
from coordinator.app import Coordinator
from coordinator.model import Job, JobSpec
from coordinator.schedules import make_submit
from tests.helpers.wait import eventually
from worker_sdk import Client, FailedPreconditionError, JobNotFoundError
from worker_sdk._proto.faultline.v1 import job_service_pb2 as jpb
from worker_sdk._proto.faultline.v1 import job_service_pb2_grpc


async def tick_counts(db: Any) -> Counter[str]:
    rows = await db.fetch("SELECT labels->>'faultline.tick' AS tick FROM faultline_jobs")
    return Counter(r["tick"] for r in rows)


@pytest.mark.timeout(120)
async def test_every_second_on_three_coordinators_one_killed_makes_one_job_per_tick(
    coordinator_proc_factory: Any, db: Any
) -> None:
    procs = [await coordinator_proc_factory() for _ in range(3)]
    async with Client(str(procs[1].extra["addr"])) as client:
        s = await client.create_schedule("beat", "noop", every=timedelta(seconds=1), overlap="allow")
    assert s.next_run_at is not None
    first = s.next_run_at
    window_end = first + timedelta(seconds=10)

    await eventually(lambda: _at_least(db, 5), timeout=30, message="five ticks fired")
    procs[0].signal(signal.SIGKILL)  # whichever tick it was firing, another coordinator takes over

    async def window_done() -> bool:
        nxt = await db.fetchval("SELECT next_run_at FROM faultline_schedules WHERE name = 'beat'")
        return bool(nxt is not None and nxt > window_end)

    await eventually(window_done, timeout=40, message="the ten ticks of the window passed")
    counts = await tick_counts(db)
    in_window = [t for t in counts if first.isoformat(timespec="milliseconds").replace("+00:00", "") <= t[:23]
                 < window_end.isoformat(timespec="milliseconds").replace("+00:00", "")]
    assert all(n == 1 for n in counts.values()), f"a tick made two jobs: {counts}"
    assert 9 <= len(in_window) <= 11, f"{len(in_window)} jobs in the 10 s window: {sorted(counts)}"
    keys = await db.fetch("SELECT idempotency_key FROM faultline_jobs")
    assert all(k["idempotency_key"].startswith("schedule:") for k in keys)


async def _at_least(db: Any, n: int) -> bool:
    return int(await db.fetchval("SELECT count(*) FROM faultline_jobs")) >= n


async def test_a_tick_redone_after_a_crash_between_submit_and_advance_makes_no_second_job(
    coordinator_factory: Any, db: Any
) -> None:
    c: Coordinator = await coordinator_factory(scheduler=False)
    assert c.store is not None and c.submitter is not None
    async with Client(f"127.0.0.1:{c.port}") as client:
        await client.create_schedule("once", "noop", every=timedelta(seconds=1), overlap="allow")
    await eventually(lambda: _due(db), timeout=10, message="the first tick is due")

    real = make_submit(c.submitter)
    submitted: list[tuple[Job, bool]] = []

    async def submit_then_die(spec: JobSpec) -> tuple[Job, bool]:
        submitted.append(await real(spec))
        raise RuntimeError("killed after submitting, before advancing")

    with pytest.raises(RuntimeError):
        await Scheduler(store=c.store, submit=submit_then_die).run_once()
    # Its transaction rolled back: the tick is still due, and the next scheduler redoes it.
    async def record(spec: JobSpec) -> tuple[Job, bool]:
        submitted.append(await real(spec))
        return submitted[-1]

    result = await Scheduler(store=c.store, submit=record).run_once()
    assert [created for _, created in submitted] == [True, False]
    assert submitted[0][0].id == submitted[1][0].id
    assert result.fired == 0 and result.duplicates == 1
    assert await db.fetchval("SELECT count(*) FROM faultline_jobs") == 1
    row = await db.fetchrow("SELECT last_job_id, fired FROM faultline_schedules")
    assert row["last_job_id"] == submitted[0][0].id and row["fired"] == 1


async def _due(db: Any) -> bool:
    return bool(await db.fetchval("SELECT next_run_at <= now() FROM faultline_schedules"))


async def test_overlap_skip_waits_for_the_unfinished_job(addr: str, db: Any) -> None:
    async with Client(addr) as client:
        await client.create_schedule("slow", "nobody-runs-this", every=timedelta(seconds=1))

        async def skipped_two() -> bool:
            return (await client.get_schedule("slow")).skipped >= 2

        await eventually(skipped_two, timeout=20, message="two ticks skipped for overlap")
        s = await client.get_schedule("slow")
    assert s.fired == 1 and s.last_job_id is not None
    assert await db.fetchval("SELECT count(*) FROM faultline_jobs") == 1


async def test_schedule_rpcs_pause_resume_trigger_delete(addr: str, db: Any) -> None:
    async with Client(addr) as client:
        s = await client.create_schedule("nightly", "backup", cron="30 2 * * *", time_zone="Europe/Berlin",
                                         catchup="run_once", labels={"team": "ops"})
        assert s.cron == "30 2 * * *" and s.time_zone == "Europe/Berlin" and s.catchup == "run_once"
        with pytest.raises(FailedPreconditionError, match="exists"):
            await client.create_schedule("nightly", "backup", every=timedelta(seconds=5))
        paused = await client.pause_schedule("nightly")
        assert paused.paused and paused.next_run_at is None
        resumed = await client.resume_schedule("nightly")
        assert not resumed.paused and resumed.next_run_at == s.next_run_at
        job, after = await client.trigger_schedule("nightly")
        assert job.labels["faultline.schedule"] == "nightly" and job.labels["team"] == "ops"
        assert after.last_job_id == job.id and after.fired == 1
        assert [x.name for x in await client.list_schedules()] == ["nightly"]
        await client.delete_schedule("nightly")
        assert await client.list_schedules() == []
        with pytest.raises(JobNotFoundError):
            await client.get_schedule("nightly")
        with pytest.raises(JobNotFoundError):
            await client.trigger_schedule("nightly")


def _spec(**f: Any) -> jpb.ScheduleSpec:
    base: dict[str, Any] = {"name": "s", "kind": "k", "cron": "* * * * *"}
    base.update(f)
    return jpb.ScheduleSpec(**base)


def _every(seconds: int, nanos: int = 0) -> Any:
    from google.protobuf.duration_pb2 import Duration

    return Duration(seconds=seconds, nanos=nanos)


BAD = [
    ("no name", _spec(name=""), "spec.name"),
    ("bad name", _spec(name="a b"), "spec.name"),
    ("no kind", _spec(kind=""), "spec.kind"),
    ("neither cron nor every", _spec(cron=""), "spec.cron"),
    ("both cron and every", _spec(every=_every(5)), "spec.cron"),
    ("cron 4 fields", _spec(cron="* * * *"), "spec.cron"),
    ("cron bad minute", _spec(cron="61 * * * *"), "spec.cron"),
    ("cron too long", _spec(cron="*" * 300), "spec.cron"),
    ("unknown zone", _spec(time_zone="Mars/Base"), "spec.time_zone"),
    ("zone path", _spec(time_zone="../../etc/passwd"), "spec.time_zone"),
    ("zone with every", _spec(cron="", every=_every(5), time_zone="UTC"), "spec.time_zone"),
    ("every below 1 s", _spec(cron="", every=_every(0, 500_000_000)), "spec.every"),
    ("every fractional", _spec(cron="", every=_every(1, 500_000_000)), "spec.every"),
    ("every over 366 days", _spec(cron="", every=_every(367 * 86400)), "spec.every"),
    ("every negative", _spec(cron="", every=_every(-5)), "spec.every"),
    ("priority", _spec(priority=5000), "spec.priority"),
    ("max_attempts", _spec(max_attempts=1001), "spec.max_attempts"),
    ("payload", _spec(payload=b"x" * (2 << 20)), "spec.payload"),
    ("reserved label", _spec(labels={"faultline.schedule": "x"}), "spec.labels"),
    ("catchup enum", _spec(catchup=9), "spec.catchup"),
    ("overlap enum", _spec(overlap=9), "spec.overlap"),
]


async def test_schedule_rpcs_refuse_bad_fields_naming_them(addr: str, db: Any) -> None:
    """One coordinator for the whole table (each row would otherwise pay a database and a start-up)."""
    async with grpc.aio.insecure_channel(addr) as ch:
        stub = job_service_pb2_grpc.JobServiceStub(ch)  # type: ignore[no-untyped-call]
        for case, spec, field in BAD:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.CreateSchedule(jpb.CreateScheduleRequest(spec=spec), timeout=30)
            assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT, (case, err.value.details())
            assert (err.value.details() or "").startswith(field), (case, err.value.details())
        for rpc, req in (("GetSchedule", jpb.GetScheduleRequest(name="a b")),
                         ("PauseSchedule", jpb.PauseScheduleRequest(name="")),
                         ("TriggerSchedule", jpb.TriggerScheduleRequest(name="\x00"))):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await getattr(stub, rpc)(req, timeout=30)
            assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT and "name" in (err.value.details() or "")
    assert await db.fetchval("SELECT count(*) FROM faultline_schedules") == 0
