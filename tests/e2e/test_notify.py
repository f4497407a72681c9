"""LISTEN/NOTIFY between coordinators: work submitted to one wakes another's dispatcher at once, not at its poll."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from tests.helpers.raw_worker import RawWorker
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
