"""Throughput's per-minute history: counts, percentiles, the 15-minute window and its memory bounds."""

from __future__ import annotations

from datetime import timedelta

from coordinator import metrics
from coordinator.throughput import HISTORY_MINUTES, MINUTE_S, RESERVOIR_SAMPLES, Throughput

T0 = 1_800_000_000.0 - (1_800_000_000 % MINUTE_S)  # the start of a minute


def test_history_counts_and_percentiles_per_minute_oldest_first_with_gaps_as_zeros() -> None:
    t = Throughput(seed=1)
    for i in range(100):
        t.ended("q", succeeded=True, failed=False, run_s=(i + 1) / 100, now=T0 + 1)
        t.started("q", wait_s=i / 1000, now=T0 + 2)
    t.ended("q", succeeded=False, failed=True, run_s=5.0, now=T0 + 2 * MINUTE_S + 3)
    t.ended("q", succeeded=False, failed=False, run_s=None, now=T0 + 2 * MINUTE_S + 4)  # cancelled
    h = t.history("q", now=T0 + 2 * MINUTE_S + 10)
    assert [m.start.timestamp() for m in h] == [T0, T0 + MINUTE_S, T0 + 2 * MINUTE_S]
    assert [(m.succeeded, m.failed) for m in h] == [(100, 0), (0, 0), (0, 1)]
    assert h[0].run_p50 == timedelta(seconds=0.5) and h[0].run_p95 == timedelta(seconds=0.95)
    assert h[0].wait_p50 == timedelta(seconds=0.049) and h[0].wait_p95 == timedelta(seconds=0.094)
    assert h[1].run_p50 is None and h[1].wait_p50 is None
    assert h[2].run_p50 == timedelta(seconds=5) and h[2].wait_p50 is None
    assert t.history("never") == []


def test_history_keeps_15_minutes_and_bounded_samples() -> None:
    t = Throughput(seed=2)
    for minute in range(40):
        for i in range(RESERVOIR_SAMPLES * 3):
            t.started("q", wait_s=float(i), now=T0 + minute * MINUTE_S)
    kept = t._minutes["q"]
    assert len(kept) == HISTORY_MINUTES
    assert all(len(m.waits.values) == RESERVOIR_SAMPLES and m.waits.seen == RESERVOIR_SAMPLES * 3 for m in kept)
    h = t.history("q", now=T0 + 39 * MINUTE_S)
    assert len(h) == HISTORY_MINUTES and h[-1].start.timestamp() == T0 + 39 * MINUTE_S
    # A uniform sample of 0..1535: its median is near the middle.
    assert h[-1].wait_p50 is not None and 500 < h[-1].wait_p50.total_seconds() < 1040
    assert t.history("q", now=T0 + 100 * MINUTE_S) == []  # idle for an hour: nothing in the window


def test_queues_past_the_label_budget_share_one_untold_history() -> None:
    metrics.limit_label_values(3)
    try:
        t = Throughput()
        names = [f"budget-q{i}" for i in range(10)]
        for q in names:
            t.ended(q, succeeded=True, failed=False, run_s=1.0, now=T0)
        tracked = [q for q in names if t.history(q, now=T0)]
        assert len(t._minutes) <= 4 and len(tracked) <= 3
        assert metrics.OTHER_LABEL not in t.queues()
    finally:
        metrics.limit_label_values(100)


def test_batch_records_match_one_at_a_time() -> None:
    """What the completer and grants.deliver record per batch reads the same as per job."""
    one, many = Throughput(seed=3), Throughput(seed=3)
    runs = [(i + 1) / 100 for i in range(100)]
    waits = [i / 1000 for i in range(100)]
    for run_s, wait_s in zip(runs, waits, strict=True):
        one.ended("q", succeeded=True, failed=False, run_s=run_s, now=T0 + 1)
        one.started("q", wait_s=wait_s, now=T0 + 2)
    one.ended("q", succeeded=True, failed=False, run_s=None, now=T0 + 3)  # never started: counted, no run time
    many.succeeded_many("q", 101, runs, now=T0 + 1)
    many.started_many("q", waits, now=T0 + 2)
    assert one.history("q", now=T0 + 10) == many.history("q", now=T0 + 10)
    assert many.history("q", now=T0 + 10)[0].succeeded == 101
