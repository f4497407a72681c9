"""Per-queue activity this coordinator saw: jobs finished in the last minute (one-second buckets) and the last
HISTORY_MINUTES minutes (succeeded jobs, failed attempts, wait and run time percentiles), in bounded memory.

Who records: the completer (an attempt's end: succeeded or failed, with its run time from start to
completion) and grants.deliver (a lease granted: the wait from ready to start), the one place both grant
paths (dispatcher claims, the direct hand-off) go through. ListQueues reads.

Bounds: queues are keyed by their metrics label (metrics.queue_label), so at most the label budget of
queues is tracked, the rest sharing metrics.OTHER_LABEL (whose history ListQueues does not report as any one
queue's); each minute keeps at most RESERVOIR_SAMPLES wait and run samples (reservoir sampling: a uniform
sample of however many there were), and minutes older than HISTORY_MINUTES are dropped.
"""

from __future__ import annotations

import math
import random
import time
from array import array
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from coordinator import metrics

WINDOW_S = 60
HISTORY_MINUTES = 15
MINUTE_S = 60
# Samples kept per minute and measure (wait, run): percentiles of a uniform sample of at most this many.
RESERVOIR_SAMPLES = 512


@dataclass(frozen=True, slots=True, kw_only=True)
class MinuteStats:
    """One minute of one queue's activity; percentiles are None when nothing was measured in it."""

    start: datetime
    succeeded: int
    failed: int
    wait_p50: timedelta | None
    wait_p95: timedelta | None
    run_p50: timedelta | None
    run_p95: timedelta | None


class _Reservoir:
    """A uniform sample of at most RESERVOIR_SAMPLES values (Vitter's algorithm R)."""

    __slots__ = ("seen", "values")

    def __init__(self) -> None:
        self.values = array("d")
        self.seen = 0

    def add(self, value: float, rng: random.Random) -> None:
        self.seen += 1
        if len(self.values) < RESERVOIR_SAMPLES:
            self.values.append(value)
            return
        # int(random() * n), not randrange(n): uniform to within 2^-53 for any n here, and one C call instead of
        # randrange's Python checks (this runs once per job, twice: its wait and its run).
        i = int(rng.random() * self.seen)
        if i < RESERVOIR_SAMPLES:
            self.values[i] = value

    def percentiles(self) -> tuple[timedelta | None, timedelta | None]:
        if not self.values:
            return None, None
        ordered = sorted(self.values)
        return _rank(ordered, 0.50), _rank(ordered, 0.95)


def _rank(ordered: list[float], q: float) -> timedelta:
    """Nearest-rank percentile of sorted values (seconds) as a timedelta."""
    i = max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))
    return timedelta(seconds=ordered[i])


class _Minute:
    """One minute being recorded (mutable; owned by Throughput); frozen into MinuteStats once it is over."""

    __slots__ = ("done", "failed", "index", "runs", "succeeded", "waits")

    def __init__(self, index: int) -> None:
        self.index = index  # minutes since the epoch
        self.succeeded = 0
        self.failed = 0
        self.waits = _Reservoir()
        self.runs = _Reservoir()
        self.done: MinuteStats | None = None  # cached once the minute is over: its figures no longer change

    def stats(self, *, over: bool) -> MinuteStats:
        if self.done is not None:
            return self.done
        wait50, wait95 = self.waits.percentiles()
        run50, run95 = self.runs.percentiles()
        out = MinuteStats(start=datetime.fromtimestamp(self.index * MINUTE_S, UTC), succeeded=self.succeeded,
                          failed=self.failed, wait_p50=wait50, wait_p95=wait95, run_p50=run50, run_p95=run95)
        if over:
            self.done = out
        return out


class Throughput:
    """Owned by the event loop; the completer and grants.deliver record, ListQueues reads."""

    def __init__(self, *, seed: int | None = None) -> None:
        self._buckets: dict[str, list[int]] = defaultdict(lambda: [0] * WINDOW_S)
        self._stamps: dict[str, list[int]] = defaultdict(lambda: [0] * WINDOW_S)
        # Per queue label: the recorded minutes, oldest first (at most HISTORY_MINUTES of them).
        self._minutes: dict[str, list[_Minute]] = {}
        self._rng = random.Random(seed)

    # -- finished in the last minute (monotonic seconds) --

    def add(self, queue: str, n: int = 1, now: float | None = None) -> None:
        queue = metrics.queue_label(queue)
        sec = int(now if now is not None else time.monotonic())
        i = sec % WINDOW_S
        if self._stamps[queue][i] != sec:
            self._stamps[queue][i] = sec
            self._buckets[queue][i] = 0
        self._buckets[queue][i] += n

    def last_minute(self, queue: str, now: float | None = None) -> int:
        sec = int(now if now is not None else time.monotonic())
        # Read by the queue's own name: one past the label budget was recorded under OTHER_LABEL, so it reads 0.
        stamps, buckets = self._stamps.get(queue), self._buckets.get(queue)
        if stamps is None or buckets is None:
            return 0
        return sum(b for s, b in zip(stamps, buckets, strict=True) if sec - s < WINDOW_S)

    def queues(self) -> list[str]:
        return [q for q in {*self._buckets, *self._minutes} if q != metrics.OTHER_LABEL]

    # -- per-minute history (wall clock: the minutes are reported with their start) --

    def ended(self, queue: str, *, succeeded: bool, failed: bool, run_s: float | None,
              now: float | None = None) -> None:
        """An attempt ended: succeeded, failed (to be retried or dead-lettered), or neither (cancelled)."""
        minute = self._minute(queue, now)
        if succeeded:
            minute.succeeded += 1
        elif failed:
            minute.failed += 1
        if run_s is not None:
            minute.runs.add(max(run_s, 0.0), self._rng)

    def started(self, queue: str, wait_s: float, now: float | None = None) -> None:
        """A lease was granted after the job waited wait_s seconds since it was ready."""
        self.started_many(queue, (wait_s,), now)

    def started_many(self, queue: str, waits: Iterable[float], now: float | None = None) -> None:
        """started() for several grants of one queue: the minute is looked up once."""
        reservoir, rng = self._minute(queue, now).waits, self._rng
        for wait_s in waits:
            reservoir.add(max(wait_s, 0.0), rng)

    def succeeded_many(self, queue: str, n: int, runs: Iterable[float], now: float | None = None) -> None:
        """ended(succeeded=True) for n attempts of one queue, with the run times of those that have one (now is
        wall-clock seconds, as for ended; add() keeps its own monotonic count)."""
        minute, rng = self._minute(queue, now), self._rng
        minute.succeeded += n
        for run_s in runs:
            minute.runs.add(max(run_s, 0.0), rng)

    def history(self, queue: str, now: float | None = None) -> list[MinuteStats]:
        """The last HISTORY_MINUTES minutes of the queue, oldest first, from the first one recorded to now
        (minutes without activity in between come as zeros); empty for a queue with nothing in the window."""
        kept = self._minutes.get(queue)  # by its own name, as last_minute reads
        if not kept or queue == metrics.OTHER_LABEL:
            return []
        current = int((now if now is not None else time.time()) // MINUTE_S)
        first = max(kept[0].index, current - HISTORY_MINUTES + 1)
        if kept[-1].index < first:
            return []  # nothing in the window: an idle queue has no history, not fifteen empty minutes
        by_index = {m.index: m for m in kept}
        out = []
        for index in range(first, current + 1):
            m = by_index.get(index)
            out.append(m.stats(over=index < current) if m is not None else _Minute(index).stats(over=False))
        return out

    def _minute(self, queue: str, now: float | None) -> _Minute:
        key = metrics.queue_label(queue)
        index = int((now if now is not None else time.time()) // MINUTE_S)
        kept = self._minutes.get(key)
        if kept is None:
            kept = self._minutes[key] = []
        if kept and kept[-1].index == index:
            return kept[-1]
        if kept and kept[-1].index > index:  # the wall clock stepped back: keep counting in the newest minute
            return kept[-1]
        minute = _Minute(index)
        kept.append(minute)
        while kept and kept[0].index <= index - HISTORY_MINUTES:
            kept.pop(0)
        return minute
