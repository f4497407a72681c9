"""LISTEN/NOTIFY between coordinators: work submitted to one wakes another's dispatcher at once, not at its poll."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import Any

from coordinator.actors.peers import CHANNEL, Listener, Notifier
from coordinator.sessions import DispatchSignal
from tests.helpers.raw_worker import RawWorker
from tests.helpers.wait import eventually
from worker_sdk import Client


async def test_submit_on_one_coordinator_reaches_a_worker_on_another_before_its_poll(
    coordinator_factory: Any,
) -> None:
    poll = timedelta(seconds=30)  # so slow that only NOTIFY can explain a quick grant
    a = await coordinator_factory(dispatch_poll=poll)
    b = await coordinator_factory(dispatch_poll=poll)
    worker = await RawWorker(f"127.0.0.1:{b.port}", "on-b").connect()
    worker.credit(1)
    # Let B's dispatcher settle into its long wait with the queue known to be empty.
    async with Client(f"127.0.0.1:{b.port}") as client_b:
        await client_b.list_queues()
    async with Client(f"127.0.0.1:{a.port}") as client_a:
        t0 = time.monotonic()
        job = await client_a.submit("echo", b"via A")
        grant = await worker.next_grant(timeout=10)
    assert grant.job.id == job.id
    assert time.monotonic() - t0 < 5, "B learned of A's submit by NOTIFY, not by its 30 s poll"
    await worker.close()


class _RecordingStore:
    def __init__(self) -> None:
        self.payloads: list[str] = []

    async def notify_ready(self, payload: str) -> None:
        self.payloads.append(payload)


async def test_notifier_coalesces_a_burst_into_one_notification_per_interval() -> None:
    """A busy coordinator must not send one NOTIFY statement per Submit: a burst goes out as one."""
    store = _RecordingStore()
    notifier = Notifier(store=store, sender="c1", min_interval_s=0.3)  # type: ignore[arg-type]
    task = asyncio.create_task(notifier.run())
    try:
        notifier.announce("first")
        await eventually(lambda: store.payloads == ["c1 first"], message="the first announcement goes out at once")
        for q in ("b", "a", "b", "c"):
            notifier.announce(q)
        await eventually(lambda: len(store.payloads) == 2, message="the burst is flushed after the interval")
        assert store.payloads[1] == "c1 a,b,c"
    finally:
        task.cancel()


def test_listener_drops_its_own_coordinators_notifications() -> None:
    signal = DispatchSignal()
    listener = Listener(dsn="unused", signal=signal, sender="me")
    listener._on_notify(None, 1, CHANNEL, "me q1,q2")
    assert signal.take() == (False, set())
    listener._on_notify(None, 1, CHANNEL, "other q1,q2")
    assert signal.take() == (False, {"q1", "q2"})
