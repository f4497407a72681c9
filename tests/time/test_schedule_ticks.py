"""Tick arithmetic and the due-tick plan with a fixed clock: cron across DST, intervals, catch-up and overlap."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from coordinator.model import DueSchedule, JobState, ScheduleCatchup, ScheduleOverlap, ScheduleRow
from coordinator.schedules import ScheduleSpecError, check_cron, next_tick, plan, tick_key, ticks_after

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
GRACE = timedelta(seconds=5)


def row(*, cron: str | None = None, tz: str = "UTC", every_s: int | None = None,
        created: datetime = datetime(2026, 1, 1, tzinfo=UTC), catchup: ScheduleCatchup = ScheduleCatchup.SKIP,
        overlap: ScheduleOverlap = ScheduleOverlap.SKIP, next_run_at: datetime | None = None) -> ScheduleRow:
    return ScheduleRow(name="s", cron=cron, time_zone=tz, every_ms=every_s * 1000 if every_s else None, kind="k",
                       queue="default", payload=b"", priority=0, max_attempts=1, labels={}, catchup=catchup,
                       overlap=overlap, id=7, created_at=created, next_run_at=next_run_at)


def take(r: ScheduleRow, after: datetime, n: int) -> list[datetime]:
    it = iter(ticks_after(r, after))
    return [next(it) for _ in range(n)]


def local(ts: list[datetime], tz: ZoneInfo) -> list[str]:
    return [t.astimezone(tz).strftime("%m-%d %H:%M%z") for t in ts]


def test_daily_cron_in_the_spring_forward_gap_runs_once_right_after_it() -> None:
    # Berlin skips 02:00-03:00 on 2026-03-29: the 02:30 job runs at 03:00 that day, at 02:30 on the others.
    r = row(cron="30 2 * * *", tz="Europe/Berlin")
    got = take(r, datetime(2026, 3, 27, 12, tzinfo=UTC), 3)
    assert local(got, BERLIN) == ["03-28 02:30+0100", "03-29 03:00+0200", "03-30 02:30+0200"]
    assert [t.astimezone(UTC).hour for t in got] == [1, 1, 0]


def test_daily_cron_in_the_repeated_hour_runs_once_and_hourly_runs_in_each_real_hour() -> None:
    # Berlin repeats 02:00-03:00 on 2026-10-25.
    daily = take(row(cron="30 2 * * *", tz="Europe/Berlin"), datetime(2026, 10, 24, 12, tzinfo=UTC), 2)
    assert local(daily, BERLIN) == ["10-25 02:30+0200", "10-26 02:30+0100"]
    hourly = take(row(cron="0 * * * *", tz="Europe/Berlin"), datetime(2026, 10, 24, 23, 30, tzinfo=UTC), 4)
    assert local(hourly, BERLIN) == ["10-25 02:00+0200", "10-25 02:00+0100", "10-25 03:00+0100", "10-25 04:00+0100"]
    assert [b - a for a, b in itertools.pairwise(hourly)] == [timedelta(hours=1)] * 3


def test_cron_is_read_in_its_time_zone_across_a_us_dst_change() -> None:
    # 09:00 New York is 14:00 UTC in winter and 13:00 UTC from 2026-03-08 (the change is at 02:00 that day).
    got = take(row(cron="0 9 * * *", tz="America/New_York"), datetime(2026, 3, 6, 15, tzinfo=UTC), 3)
    assert [t.astimezone(UTC).hour for t in got] == [14, 13, 13]
    assert all(t.astimezone(NEW_YORK).hour == 9 for t in got)


def test_six_fields_put_seconds_first_and_ticks_are_strictly_after() -> None:
    r = row(cron="*/15 * * * * *")
    start = datetime(2026, 5, 1, 0, 0, 0, tzinfo=UTC)
    assert take(r, start, 3) == [start + timedelta(seconds=s) for s in (15, 30, 45)]
    assert next_tick(row(cron="0 0 * * *"), datetime(2026, 5, 1, tzinfo=UTC)) == datetime(2026, 5, 2, tzinfo=UTC)


def test_interval_ticks_are_anchored_on_creation() -> None:
    created = datetime(2026, 1, 1, 0, 0, 0, 250_000, tzinfo=UTC)
    r = row(every_s=90, created=created)
    assert next_tick(r, created) == created + timedelta(seconds=90)
    assert next_tick(r, created + timedelta(seconds=90)) == created + timedelta(seconds=180)
    assert next_tick(r, created + timedelta(seconds=100)) == created + timedelta(seconds=180)


@pytest.mark.parametrize("expr,message", [
    ("* * * *", "5 fields"), ("61 * * * *", "minute"), ("* * * * * * *", "5 fields"), ("0 0 30 2 *", "day-of-month"),
])
def test_bad_cron_is_refused_with_the_reason(expr: str, message: str) -> None:
    with pytest.raises(ScheduleSpecError, match=message):
        check_cron(expr, "UTC")


def due(r: ScheduleRow, now: datetime, last: JobState | None = None) -> DueSchedule:
    return DueSchedule(row=r, db_now=now, last_job_state=last)


T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def test_an_on_time_tick_fires_and_the_next_is_the_following_one() -> None:
    p = plan(due(row(every_s=60, created=T0 - timedelta(minutes=1), next_run_at=T0), T0 + timedelta(seconds=1)),
             grace=GRACE)
    assert p.fire == T0 and p.skipped_missed == 0 and p.next_run_at == T0 + timedelta(minutes=1)


def test_missed_ticks_with_skip_submit_nothing_and_count_as_skipped() -> None:
    r = row(every_s=60, created=T0 - timedelta(minutes=1), next_run_at=T0)
    p = plan(due(r, T0 + timedelta(minutes=10, seconds=30)), grace=GRACE)
    assert p.fire is None and p.skipped_missed == 11 and p.next_run_at == T0 + timedelta(minutes=11)


def test_missed_ticks_with_run_once_submit_one_job_for_the_latest() -> None:
    r = row(every_s=60, created=T0 - timedelta(minutes=1), next_run_at=T0, catchup=ScheduleCatchup.RUN_ONCE)
    p = plan(due(r, T0 + timedelta(minutes=10, seconds=30)), grace=GRACE)
    assert p.fire == T0 + timedelta(minutes=10) and p.skipped_missed == 10
    assert p.next_run_at == T0 + timedelta(minutes=11)


def test_overlap_skip_waits_for_the_previous_job_and_allow_does_not() -> None:
    base = dict(every_s=60, created=T0 - timedelta(minutes=1), next_run_at=T0)
    skip = plan(due(row(**base), T0, last=JobState.RUNNING), grace=GRACE)  # type: ignore[arg-type]
    assert skip.fire is None and skip.skipped_overlap == 1
    done = plan(due(row(**base), T0, last=JobState.SUCCEEDED), grace=GRACE)  # type: ignore[arg-type]
    assert done.fire == T0
    allow = plan(due(row(**base, overlap=ScheduleOverlap.ALLOW), T0, last=JobState.QUEUED),  # type: ignore[arg-type]
                 grace=GRACE)
    assert allow.fire == T0


def test_a_tick_key_is_the_same_everywhere_and_differs_per_tick() -> None:
    assert tick_key(7, T0) == tick_key(7, T0.astimezone(BERLIN)) == "schedule:7:1780315200000"
    assert tick_key(7, T0) != tick_key(7, T0 + timedelta(seconds=1)) != tick_key(8, T0)
