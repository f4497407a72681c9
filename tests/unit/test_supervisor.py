"""Supervisor: restarts a crashed actor with growing delays, leaves healthy siblings alone, escalates past the limit."""

from __future__ import annotations

import asyncio
import itertools
import random
from datetime import timedelta

import pytest

from coordinator import backoff
from coordinator.errors import RestartIntensityExceeded
from coordinator.supervisor import ChildSpec, Supervisor, SupervisorConfig

FAST = SupervisorConfig(intensity=3, window=timedelta(seconds=30), backoff_base=timedelta(milliseconds=10),
                        backoff_max=timedelta(milliseconds=80), healthy_after=timedelta(seconds=30))


class Crashy:
    name = "crashy"

    def __init__(self, log: list[float], crash_times: int, done: asyncio.Event) -> None:
        self.log, self.crash_times, self.done = log, crash_times, done

    async def run(self) -> None:
        self.log.append(asyncio.get_running_loop().time())
        if len(self.log) <= self.crash_times:
            raise RuntimeError("boom")
        self.done.set()
        await asyncio.Event().wait()


class Steady:
    name = "steady"

    def __init__(self, starts: list[int]) -> None:
        self.starts = starts

    async def run(self) -> None:
        self.starts.append(1)
        await asyncio.Event().wait()


async def test_crashed_actor_restarts_with_growing_delay_and_sibling_untouched() -> None:
    log: list[float] = []
    steady_starts: list[int] = []
    done = asyncio.Event()
    restarts: list[str] = []
    children = [ChildSpec("crashy", lambda: Crashy(log, 3, done)), ChildSpec("steady", lambda: Steady(steady_starts))]
    sup = Supervisor(children, config=FAST, on_restart=restarts.append)
    task = asyncio.create_task(sup.run())
    await asyncio.wait_for(done.wait(), 5)
    gaps = [b - a for a, b in itertools.pairwise(log)]
    assert len(log) == 4 and restarts == ["crashy"] * 3
    assert gaps[2] > gaps[0], f"delays must grow: {gaps}"
    assert steady_starts == [1], "one-for-one: the healthy sibling was never restarted"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_restart_intensity_exceeded_escalates() -> None:
    log: list[float] = []
    sup = Supervisor([ChildSpec("crashy", lambda: Crashy(log, 1000, asyncio.Event()))], config=FAST)
    with pytest.raises(ExceptionGroup) as err:
        await asyncio.wait_for(sup.run(), 10)
    assert err.group_contains(RestartIntensityExceeded)
    assert len(log) == FAST.intensity + 1


def test_exponential_backoff_is_capped_and_jittered() -> None:
    rng = random.Random(7)
    base, cap = timedelta(milliseconds=100), timedelta(seconds=1)
    delays = [backoff.exponential(n, base=base, cap=cap, jitter=0.1, rng=rng).total_seconds() for n in range(1, 10)]
    assert 0.09 <= delays[0] <= 0.11 and 0.18 <= delays[1] <= 0.22
    assert all(d <= 1.0 for d in delays) and delays[-1] >= 0.9
    with pytest.raises(ValueError):
        backoff.exponential(0, base=base, cap=cap)
