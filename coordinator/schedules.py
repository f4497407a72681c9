"""Schedules: tick arithmetic (cron in a time zone, or a fixed interval), the plan for a due tick, and the one
function through which a tick's job is submitted.

Ticks are instants (UTC in the database). A cron schedule's next tick is the next match of its expression,
read as wall time in its time zone by cronsim, which follows Debian cron across DST: in a spring-forward gap
a job set for the missing time runs once right after the gap, and in the repeated hour of a fall-back a
once-a-day job runs once while an hourly one runs in each real hour. An interval schedule ticks at
created_at + k x every. All arithmetic uses Postgres' clock (claim_due_schedules returns it).

Each tick submits at most one job, whatever the number of coordinators and whoever crashes: the job's
idempotency key is "schedule:<id>:<tick in epoch ms>" in the schedule's queue, so a coordinator that redoes a
tick another one submitted and died before recording gets the stored job back (created = False).

A due tick (plan()):
    ticks t with next_run_at <= t <= now, latest L; next_run_at becomes the first tick after now
    catch-up RUN_ONCE: L fires, the earlier ones are skipped
    catch-up SKIP:     L fires if now - L <= misfire grace, else it is skipped too
    overlap SKIP:      a tick that would fire while the last job is unfinished is skipped instead
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from coordinator.config import SCHEDULE_MISSED_COUNT_MAX
from coordinator.model import DueSchedule, Job, JobSpec, ScheduleCatchup, ScheduleOverlap, ScheduleRow
from coordinator.submit import Submitter

#: Labels every scheduled job carries: the schedule's name and the tick (ISO 8601, UTC).
LABEL_SCHEDULE = "faultline.schedule"
LABEL_TICK = "faultline.tick"
KEY_PREFIX = "schedule"

#: Submits one job and says whether it was created; the scheduler and TriggerSchedule call only this.
SubmitJob = Callable[[JobSpec], Awaitable[tuple[Job, bool]]]


class ScheduleSpecError(ValueError):
    """A cron expression or time zone that cannot be used; the message says why."""


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ScheduleSpecError(f"unknown time zone {name[:64]!r}") from exc


def check_cron(expr: str, time_zone: str) -> None:
    """Raise ScheduleSpecError unless expr is 5 fields (or 6, seconds first) that cronsim accepts, in a known zone."""
    fields = expr.split()
    if len(fields) not in (5, 6):
        raise ScheduleSpecError(f"a cron expression has 5 fields (or 6 with seconds first), got {len(fields)}")
    try:
        next(iter(CronSim(expr, datetime(2000, 1, 1, tzinfo=zone(time_zone)))))
    except CronSimError as exc:
        raise ScheduleSpecError(f"bad cron expression: {exc}") from None
    except StopIteration:
        raise ScheduleSpecError("the cron expression never matches") from None


def ticks_after(row: ScheduleRow, after: datetime) -> Iterator[datetime]:
    """The schedule's ticks strictly after `after`, in order, as UTC instants."""
    if row.every_ms is not None:
        anchor = row.created_at or after
        every = timedelta(milliseconds=row.every_ms)
        k = max(math.floor((after - anchor) / every) + 1, 0)
        return (anchor + (k + i) * every for i in itertools.count())
    assert row.cron is not None
    local = after.astimezone(zone(row.time_zone))
    return (t.astimezone(UTC) for t in CronSim(row.cron, local) if t.astimezone(UTC) > after)



def next_tick(row: ScheduleRow, after: datetime) -> datetime | None:
    """The first tick strictly after `after` (None when a cron expression never matches again)."""
    return next(iter(ticks_after(row, after)), None)


def tick_key(schedule_id: int, tick: datetime) -> str:
    """The idempotency key of a tick's job: the same on every coordinator, for ever."""
    return f"{KEY_PREFIX}:{schedule_id}:{round(tick.timestamp() * 1000)}"


@dataclass(frozen=True, slots=True)
class TickPlan:
    """What to do with a due schedule: fire one tick (or none), how many ticks are skipped, the next tick."""

    fire: datetime | None
    skipped_missed: int
    skipped_overlap: int
    next_run_at: datetime | None


def plan(due: DueSchedule, *, grace: timedelta) -> TickPlan:
    """See the module docstring; pure (the tests drive it with a fixed clock)."""
    row = due.row
    assert row.next_run_at is not None
    now = due.db_now
    latest = row.next_run_at
    missed = 0
    for t in ticks_after(row, latest):
        if t > now:
            break
        missed += 1
        latest = t
        if missed >= SCHEDULE_MISSED_COUNT_MAX:  # a long outage of a fast cron: stop counting one by one
            break
    nxt = next_tick(row, max(latest, now))
    fire: datetime | None = latest
    if row.catchup is ScheduleCatchup.SKIP and now - latest > grace:
        fire, missed = None, missed + 1
    overlap = 0
    unfinished = due.last_job_state is not None and not due.last_job_state.terminal
    if fire is not None and row.overlap is ScheduleOverlap.SKIP and unfinished:
        fire, overlap = None, 1
    return TickPlan(fire=fire, skipped_missed=missed, skipped_overlap=overlap, next_run_at=nxt)


def tick_spec(row: ScheduleRow, tick: datetime, *, key: str | None) -> JobSpec:
    """The job a tick (or a trigger, at `tick` = now) submits."""
    labels = dict(row.labels)
    labels[LABEL_SCHEDULE] = row.name
    labels[LABEL_TICK] = tick.astimezone(UTC).isoformat(timespec="milliseconds")
    return JobSpec(
        queue=row.queue, kind=row.kind, payload=row.payload, idempotency_key=key, max_attempts=row.max_attempts,
        priority=row.priority, run_at=None, backoff_initial_ms=None, backoff_max_ms=None, backoff_multiplier=None,
        backoff_jitter=None, execution_timeout_ms=None, heartbeat_timeout_ms=None, schedule_to_start_ms=None,
        labels=labels,
    )


def make_submit(submitter: Submitter) -> SubmitJob:
    """THE submit path of schedules (ticks and triggers): the one entry point every producer of jobs uses
    (coordinator/submit.py: span, direct hand-off under the grant policy, metric, wake-ups)."""

    async def submit(spec: JobSpec) -> tuple[Job, bool]:
        [(job, created)] = await submitter.submit([spec], origin="Schedule")
        return job, created

    return submit
