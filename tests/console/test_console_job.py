"""Job pages in a real browser: attempts, trace link, find by id or key, label filter, paging by token."""

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


async def test_find_by_id_opens_the_job_and_by_idempotency_key_lists_it(coordinator: Coordinator,
                                                                        console_factory: Any, page: Page) -> None:
    async with Client(f"127.0.0.1:{coordinator.port}") as client:
        keyed = await client.submit("mail", queue="emails", idempotency_key="order-42")
        await client.submit("mail", queue="emails", labels={"tenant": "acme"})
        tagged = await client.submit("mail", queue="emails", labels={"tenant": "globex"})
    c = await console_factory(coordinator)
    await page.goto(c.url + "/jobs")
    await page.fill('input[name="find"]', keyed.id)
    await page.keyboard.press("Enter")
    await expect(page).to_have_url(f"{c.url}/jobs/{keyed.id}")
    await page.goto(c.url + "/jobs")
    await page.fill('input[name="find"]', "order-42")
    await page.keyboard.press("Enter")
    await expect(page.locator("tr[data-job]")).to_have_count(1)
    await expect(page.locator(f'tr[data-job="{keyed.id}"]')).to_be_visible()
    await page.goto(c.url + "/jobs")
    await page.fill('input[name="label"]', "tenant=globex")
    await page.get_by_role("button", name="Apply").click()
    await expect(page.locator("tr[data-job]")).to_have_count(1)
    await expect(page.locator(f'tr[data-job="{tagged.id}"]')).to_be_visible()


async def test_the_jobs_list_pages_with_the_apis_tokens(coordinator: Coordinator, console_factory: Any,
                                                        page: Page) -> None:
    from worker_sdk import JobSpec

    async with Client(f"127.0.0.1:{coordinator.port}") as client:
        await client.submit_batch([JobSpec(kind="mail", queue="emails") for _ in range(60)])
    c = await console_factory(coordinator)
    await page.goto(c.url + "/jobs?queue=emails")
    await expect(page.locator("tr[data-job]")).to_have_count(50)
    await page.get_by_role("link", name="Next page").click()
    await expect(page.locator("tr[data-job]")).to_have_count(10)
    await expect(page.get_by_role("link", name="Next page")).to_have_count(0)
    assert "queue=emails" in page.url
    await page.get_by_role("link", name="First page").click()
    await expect(page.locator("tr[data-job]")).to_have_count(50)
