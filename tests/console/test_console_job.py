"""One job's page in a real browser: attempts with worker, fencing token, times, outcome and error; trace link."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from playwright.async_api import Page, expect

from coordinator.app import Coordinator
from worker_sdk import Client, JobContext, Worker
from worker_sdk._proto.faultline.v1 import job_service_pb2 as jpb
from worker_sdk._proto.faultline.v1 import job_service_pb2_grpc

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
JAEGER = "http://jaeger.example:16686"


async def test_the_job_page_shows_each_attempt_and_links_the_trace(coordinator: Coordinator, console_factory: Any,
                                                                   page: Page) -> None:
    addr = f"127.0.0.1:{coordinator.port}"
    async with grpc.aio.insecure_channel(addr) as ch:
        resp = await job_service_pb2_grpc.JobServiceStub(ch).Submit(  # type: ignore[no-untyped-call]
            jpb.SubmitRequest(kind="flaky", queue="reports", max_attempts=3), timeout=10,
            metadata=(("traceparent", TRACEPARENT),))
    job_id = resp.job.id
    w = Worker(addr, queues=["reports"], worker_id="flaky-worker", handle_signals=False)

    @w.handler("flaky")
    async def flaky(ctx: JobContext) -> bytes:
        if ctx.attempt == 1:
            raise RuntimeError("upstream said <503>")
        return b"fine"

    task = asyncio.create_task(w.run())
    try:
        async with Client(addr) as client:
            done = await client.wait(job_id)
        assert done.state == "succeeded"
    finally:
        await w.stop()
        await task
    c = await console_factory(coordinator, jaeger_url=JAEGER)
    await page.goto(f"{c.url}/jobs/{job_id}")
    rows = page.locator(".attempts tbody tr")
    await expect(rows).to_have_count(2)
    await expect(rows.nth(0)).to_contain_text("flaky-worker")
    await expect(rows.nth(0)).to_contain_text("failed")
    await expect(rows.nth(0)).to_contain_text("upstream said <503>")
    await expect(rows.nth(1)).to_contain_text("succeeded")
    tokens = [int(await rows.nth(i).locator("td").nth(2).inner_text()) for i in range(2)]
    assert tokens[1] > tokens[0] > 0
    await expect(page.get_by_role("link", name=f"Trace {TRACE_ID}")).to_have_attribute(
        "href", f"{JAEGER}/trace/{TRACE_ID}")
    await expect(page.locator("#result pre")).to_have_text("fine")
    await expect(page.locator(".job")).to_have_attribute("data-state", "succeeded")
