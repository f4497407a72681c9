"""A step's idempotency key is what makes a downstream effect happen once, through the crash window steps cannot close.

A worker process sends its step's effect to a downstream (a ledger file standing in for a payment API that
dedupes on a key) and is SIGKILLed before the step is recorded. The job's next attempt runs on another worker
process, runs the step function again (at-least-once: nothing can tell it the effect happened) and sends the
same key, so a downstream that dedupes on it applies the effect once. The key is the documented formula of
job id and step key, the same on both attempts and both workers.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.helpers.wait import eventually
from worker_sdk import Client, JobState, step_idempotency_key


async def test_step_key_is_stable_across_attempts_and_workers_so_the_downstream_applies_once(
        addr: str, worker_procs: Callable[..., Any], tmp_path: Path) -> None:
    ledger = tmp_path / "downstream.ledger"
    ledger.touch()
    env = {"FL_LEDGER": str(ledger)}
    first = await worker_procs(addr, "pay-a", env=env)
    async with Client(addr) as client:
        job = await client.submit("charge", b"hang-after-effect-on:pay-a")
        await eventually(lambda: "effect sent" in first.output(), timeout=30, message="pay-a sent the effect")
        first.kill()  # after the effect, before the step is recorded
        await worker_procs(addr, "pay-b", env=env)

        async def finished() -> Any:
            got = await client.get(job.id)
            return got if got.state is JobState.SUCCEEDED else None

        done = await eventually(finished, timeout=60, message="the charge job succeeded on pay-b")
    calls = [line.split() for line in ledger.read_text().splitlines()]
    expected = step_idempotency_key(job.id, "charge")
    assert [(w, a) for _, w, a in calls] == [("pay-a", "1"), ("pay-b", "2")], calls
    assert {k for k, _, _ in calls} == {expected}, calls  # one key: the downstream applies the charge once
    assert done.result == expected.encode() and done.attempts == 2
    assert re.fullmatch(r"faultline-\d+-[0-9a-f]{32}", expected)
    assert step_idempotency_key(job.id, "refund") != expected
    assert step_idempotency_key(str(int(job.id) + 1), "charge") != expected
