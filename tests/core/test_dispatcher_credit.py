"""A claim that fails (Postgres unreachable) must not leak the credit it reserved.

Found by the postgres-restart drill: after an outage every session had lost the credit reserved by
the claims that failed, so nothing was dispatched again although workers were idle and jobs ready.
"""

from __future__ import annotations

from typing import Any

import pytest

from coordinator.actors.dispatcher import Dispatcher, DispatcherConfig
from coordinator.errors import DatabaseUnavailableError
from coordinator.policy import GrantPolicy
from coordinator.sessions import DispatchSignal, SessionRegistry
from tests.helpers.sessions import FakeSession


class DownStore:
    def __init__(self) -> None:
        self.claims = 0

    async def queue_settings(self) -> list[Any]:
        raise DatabaseUnavailableError("queue_settings_all: ConnectionRefusedError")

    async def claim_jobs(self, **kw: Any) -> list[Any]:
        self.claims += 1
        raise DatabaseUnavailableError("claim_jobs: ConnectionRefusedError")


@pytest.fixture
def unavailable_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    import coordinator.actors.dispatcher as d

    monkeypatch.setattr(d, "UNAVAILABLE_PAUSE_S", 0)


async def test_failed_claim_returns_the_reserved_credit(unavailable_pause: None) -> None:
    signal = DispatchSignal()
    registry = SessionRegistry(signal)
    a, b = FakeSession("a", 8), FakeSession("b", 3)
    registry.add(a)
    registry.add(b)
    store = DownStore()
    dispatcher = Dispatcher(config=DispatcherConfig(lease_ttl_ms=1000, claim_batch_max=500), store=store,  # type: ignore[arg-type]
                            registry=registry, signal=signal, policy=GrantPolicy(store=store))  # type: ignore[arg-type]
    for _ in range(3):
        result = await dispatcher.run_once()
        assert result.claimed == 0
    assert store.claims == 3
    assert (a.credit, b.credit) == (8, 3), "credit reserved for a failed claim must go back to its sessions"
