"""End-to-end fixtures: real worker processes against the test's coordinator."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.procs import Proc, python_proc
from tests.helpers.wait import eventually
from worker_sdk import Client

WORKER_MAIN = Path(__file__).with_name("worker_main.py")


async def connected_workers(addr: str) -> set[str]:
    async with Client(addr) as c:
        return {w.worker_id for w in await c.list_workers()}


@pytest.fixture
async def worker_procs(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """Start worker processes; each start waits until the coordinator lists the worker."""
    procs: list[Proc] = []

    async def start(addr: str, worker_id: str, *, concurrency: int = 4, queues: str = "default",
                    drain_grace_s: float = 10, wait: bool = True, env: dict[str, str] | None = None) -> Proc:
        p = python_proc(WORKER_MAIN, tmp=tmp_path, name=worker_id, env={
            "FL_ADDR": addr, "FL_WORKER_ID": worker_id, "FL_CONCURRENCY": str(concurrency),
            "FL_QUEUES": queues, "FL_DRAIN_GRACE_S": str(drain_grace_s), **(env or {})})
        p.start()
        procs.append(p)
        if wait:
            async def listed() -> bool:
                if not p.alive():
                    raise AssertionError(f"worker {worker_id} died:\n{p.output()[-3000:]}")
                return worker_id in await connected_workers(addr)

            await eventually(listed, timeout=30, message=f"worker {worker_id} connected")
        return p

    yield start
    for p in procs:
        p.stop()
