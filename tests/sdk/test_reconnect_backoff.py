"""The SDK's reconnect backoff starts again after a healthy session, so coordinator restarts cost one short delay."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import grpc.aio
import pytest

from worker_sdk import _stream
from worker_sdk._frames import Hello, LeaseRef
from worker_sdk._stream import LeaseStream, _SessionEnd

SESSIONS = 6


class _Listener:
    def __init__(self, held: tuple[LeaseRef, ...] = ()) -> None:
        self.held = held

    def held_leases(self) -> tuple[LeaseRef, ...]:
        return self.held


async def _attempts(monkeypatch: pytest.MonkeyPatch, *, welcomed: bool, lived_s: float,
                    held: tuple[LeaseRef, ...] = ()) -> list[tuple[int, timedelta]]:
    """Run LeaseStream.run over SESSIONS sessions that each live lived_s (a fake clock); return (attempt, cap) seen."""
    seen: list[tuple[int, timedelta]] = []

    def jitter(attempt: int, *, base: timedelta, cap: timedelta, rand: Any) -> timedelta:
        seen.append((attempt, cap))
        return timedelta(0)

    monkeypatch.setattr(_stream, "full_jitter", jitter)
    now = [0.0]
    channel = grpc.aio.insecure_channel("127.0.0.1:1")  # never used: the sessions are simulated
    stream = LeaseStream(channel=channel, hello=Hello(
        worker_id="w", queues=("q",), kinds=("k",), capacity=1, labels={}, sdk_name="t", sdk_version="0"),
        listener=_Listener(held), clock=lambda: now[0])  # type: ignore[arg-type]
    stream._lease_ttl_s = 3.0
    runs = 0

    async def session() -> _SessionEnd:
        nonlocal runs
        runs += 1
        if runs > SESSIONS:
            stream._closing.set()
            return _SessionEnd.CLOSED
        stream._welcomed = welcomed
        now[0] += lived_s
        return _SessionEnd.EOF

    monkeypatch.setattr(stream, "_run_session", session)
    await asyncio.wait_for(stream.run(), 10)
    await channel.close()
    return seen


async def test_a_welcomed_session_that_lived_resets_the_attempt_counter(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = await _attempts(monkeypatch, welcomed=True, lived_s=2.0)
    assert [a for a, _ in seen] == [0] * SESSIONS


async def test_failed_connects_still_back_off(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = await _attempts(monkeypatch, welcomed=False, lived_s=0.01)
    assert [a for a, _ in seen] == list(range(SESSIONS))


async def test_while_leases_are_held_no_delay_exceeds_a_tenth_of_the_ttl(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = await _attempts(monkeypatch, welcomed=False, lived_s=0.01, held=(LeaseRef("1.1", 1),))
    assert {cap for _, cap in seen} == {timedelta(seconds=0.3)}
