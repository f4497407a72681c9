"""Coordinator log lines about a job carry job_id and lease_token, and worker_id whenever a worker holds it."""

from __future__ import annotations

import asyncio
import logging
import uuid

import pytest

from coordinator.app import Coordinator
from coordinator.logs import LogfmtFormatter
from tests.helpers.wait import eventually
from worker_sdk import Client, JobContext, JobState, Worker

WORKER_ID = "log-worker-1"


async def test_job_log_lines_carry_job_id_lease_token_and_worker_id(
    coordinator: Coordinator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="coordinator")
    addr = f"127.0.0.1:{coordinator.port}"
    queue = f"logs-{uuid.uuid4().hex[:8]}"
    worker = Worker(addr, queues=[queue], worker_id=WORKER_ID, handle_signals=False)

    @worker.handler("wait-for-cancel")
    async def wait_for_cancel(ctx: JobContext) -> bytes:
        await asyncio.Event().wait()  # until the CancelLease cancels this task
        return b""

    running = asyncio.create_task(worker.run())
    try:
        async with Client(addr) as client:
            job = await client.submit("wait-for-cancel", queue=queue)

            async def state_is(state: JobState) -> bool:
                return (await client.get(job.id)).state is state

            await eventually(lambda: state_is(JobState.RUNNING), message="job running")
            await client.cancel(job.id)
            await eventually(lambda: state_is(JobState.CANCELLED), message="job cancelled")
            await client.requeue(job.id)
            await eventually(lambda: state_is(JobState.RUNNING), message="requeued job running again")
            await client.cancel(job.id)
    finally:
        await worker.stop()
        await running

    about_job = [r for r in caplog.records if str(getattr(r, "job_id", "")) == job.id]
    assert {"lease granted", "job cancel", "job requeued"} <= {r.getMessage() for r in about_job}
    for r in about_job:
        assert hasattr(r, "lease_token"), f"{r.getMessage()!r} has no lease_token"
    held = [r for r in about_job if r.getMessage() in ("lease granted", "job cancel")]
    assert len(held) == 4
    for r in held:
        assert getattr(r, "worker_id", None) == WORKER_ID, f"{r.getMessage()!r} has no worker_id"
    line = LogfmtFormatter().format(next(r for r in held if r.getMessage() == "job cancel"))
    assert f"job_id={job.id} " in line and " lease_token=" in line and f" worker_id={WORKER_ID}" in line, line
