"""Dispatch order and shutdown: priority first, fair across queues, drain before the coordinator stops."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from coordinator.app import Coordinator
from tests.helpers.raw_worker import RawWorker
from worker_sdk import Client, JobSpec
from worker_sdk._proto.faultline.v1 import worker_service_pb2 as wpb


async def test_higher_priority_leases_first(coordinator: Coordinator, addr: str) -> None:
    async with Client(addr) as client:
        low = [await client.submit("echo", b"low", priority=-5) for _ in range(3)]
        high = await client.submit("echo", b"high", priority=10)
        mid = await client.submit("echo", b"mid", priority=0)
    w = await RawWorker(addr, "w").connect()
    w.credit(1)
    assert (await w.next_grant()).job.id == high.id
    w.credit(1)
    assert (await w.next_grant()).job.id == mid.id
    w.credit(3)
    assert {(await w.next_grant()).job.id for _ in range(3)} == {j.id for j in low}
    await w.close()


async def test_credit_is_shared_fairly_across_queues(coordinator: Coordinator, addr: str) -> None:
    async with Client(addr) as client:
        # The busy queue was filled first: FIFO alone would starve the quiet one.
        await client.submit_batch([JobSpec(kind="echo", queue="busy") for _ in range(200)])
        await client.submit_batch([JobSpec(kind="echo", queue="quiet") for _ in range(200)])
    w = await RawWorker(addr, "w", queues=("busy", "quiet"), capacity=100).connect()
    w.credit(40)
    grants = [await w.next_grant() for _ in range(40)]
    per_queue = Counter(g.job.queue for g in grants)
    assert per_queue["busy"] == per_queue["quiet"] == 20, per_queue
    await w.close()


async def test_coordinator_sends_drain_and_waits_for_in_flight_completion(
    coordinator_factory: Any,
) -> None:
    c: Coordinator = await coordinator_factory()
    addr = f"127.0.0.1:{c.port}"
    async with Client(addr) as client:
        await client.submit("echo", b"x")
        await client.submit("echo", b"y")
    w = await RawWorker(addr, "w").connect()
    w.credit(1)
    g = await w.next_grant()
    stopping = asyncio.create_task(c.stop())
    drain = await asyncio.wait_for(w.others.get(), 10)
    assert isinstance(drain, wpb.Drain) and drain.grace.ToMilliseconds() > 0
    w.credit(1)  # credit during drain must not produce a grant
    assert (await w.complete(g, b"done")).status == wpb.REPLY_STATUS_ACCEPTED
    await asyncio.wait_for(stopping, 30)
    assert w.grants.empty()
    await w.close()
