"""Live pages and controls in a real browser: overview depth, a running job's progress, workers, schedules, queues."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from playwright.async_api import Page, expect

from coordinator.app import Coordinator
from tests.console.conftest import paused
from tests.helpers.wait import eventually
from worker_sdk import Client, JobContext, Worker

# The metrics sampler's period in these tests: ListQueues serves its last sample.
SAMPLE_INTERVAL = timedelta(milliseconds=200)


def _addr(c: Coordinator) -> str:
    return f"127.0.0.1:{c.port}"


async def test_the_overview_updates_live_without_a_reload(coordinator_factory: Any, console_factory: Any,
                                                          page: Page) -> None:
    coordinator = await coordinator_factory(metrics_sample_interval=SAMPLE_INTERVAL)
    c = await console_factory(coordinator, poll_interval=timedelta(milliseconds=300))
    async with Client(_addr(coordinator)) as client:
        await client.submit("echo", queue="reports")
        await page.goto(c.url + "/")  # auth off: no login
        cell = page.locator('tr[data-queue="reports"] .depth-queued')
        await expect(cell).to_have_text("1")
        loads = 0

        def loaded(_: Any) -> None:
            nonlocal loads
            loads += 1

        page.on("load", loaded)
        for _ in range(4):
            await client.submit("echo", queue="reports")
        await expect(cell).to_have_text("5")
        await expect(page.locator("#sampled")).to_contain_text("Sampled")
        assert loads == 0  # no reload: the stream brought it
    # One poller for the page's key, and none once nobody listens.
    assert c.console.hub.pollers == 1
    await page.goto("about:blank")
    await eventually(lambda: c.console.hub.pollers == 0, timeout=20, message="poller stopped after the last listener")


async def test_a_running_jobs_page_shows_its_progress_live(coordinator: Coordinator, console_factory: Any,
                                                           page: Page) -> None:
    c = await console_factory(coordinator, poll_interval=timedelta(milliseconds=300))
    step = asyncio.Event()
    advanced = asyncio.Event()
    w = Worker(_addr(coordinator), queues=["reports"], handle_signals=False)

    @w.handler("render")
    async def render(ctx: JobContext) -> bytes:
        await ctx.progress(0.25, "a quarter")
        advanced.set()
        await step.wait()
        await ctx.progress(0.75, "three quarters")
        advanced.set()
        step.clear()
        await step.wait()
        return b"done"

    task = asyncio.create_task(w.run())
    try:
        async with Client(_addr(coordinator)) as client:
            job = await client.submit("render", queue="reports")
            await asyncio.wait_for(advanced.wait(), 20)
            advanced.clear()
            await page.goto(f"{c.url}/jobs/{job.id}")
            await expect(page.locator("#progress-msg")).to_have_text("a quarter")
            await expect(page.locator(".attempts")).to_contain_text("running")
            step.set()
            await expect(page.locator("#progress-msg")).to_have_text("three quarters")
            await expect(page.locator("#progress-pct")).to_have_text("75%")
            step.set()
            await expect(page.locator(".job")).to_have_attribute("data-state", "succeeded")
            await expect(page.locator(".attempts")).to_contain_text("succeeded")
    finally:
        step.set()
        await w.stop()
        await task


async def test_the_workers_page_shows_a_connected_worker(coordinator_factory: Any, console_factory: Any,
                                                         page: Page) -> None:
    a = await coordinator_factory()
    b = await coordinator_factory()
    c = await console_factory(a, b)
    w = Worker(_addr(b), queues=["reports", "emails"], labels={"zone": "eu-1"}, worker_id="render-7",
               handle_signals=False)
    w.register("render", lambda ctx: b"")
    task = asyncio.create_task(w.run())
    try:
        async def connected() -> bool:
            async with Client(_addr(b)) as client:
                return bool(await client.list_workers())

        await eventually(connected, timeout=20, message="worker connected")
        await page.goto(c.url + "/workers")
        row = page.locator('tr[data-worker="render-7"]')
        await expect(row).to_contain_text("emails, reports")
        await expect(row).to_contain_text("zone=eu-1")
        await expect(row).to_contain_text(_addr(b))  # found on the second coordinator
    finally:
        await w.stop()
        await task


async def test_schedule_pause_resume_and_trigger(coordinator: Coordinator, console_factory: Any, page: Page) -> None:
    c = await console_factory(coordinator)
    async with Client(_addr(coordinator)) as client:
        await client.create_schedule("nightly", kind="report", every=timedelta(hours=1), queue="reports")
        await page.goto(c.url + "/schedules")
        row = page.locator('tr[data-schedule="nightly"]')
        await row.get_by_role("button", name="Pause").click()
        await expect(page.locator(".flash")).to_contain_text("nightly paused")
        await expect(row.locator(".sched-state")).to_have_text("paused")
        assert (await client.get_schedule("nightly")).paused
        await row.get_by_role("button", name="Resume").click()
        await expect(row.locator(".sched-state")).to_have_text("active")
        assert not (await client.get_schedule("nightly")).paused
        await row.get_by_role("button", name="Trigger now").click()
        await expect(page.locator(".flash")).to_contain_text("triggered: job")
        jobs, _ = await client.list(queue="reports")
        assert [j.kind for j in jobs] == ["report"]


async def test_queue_pause_and_resume_show_in_the_overview(coordinator_factory: Any, console_factory: Any,
                                                           page: Page) -> None:
    coordinator = await coordinator_factory(metrics_sample_interval=SAMPLE_INTERVAL)
    c = await console_factory(coordinator, poll_interval=timedelta(milliseconds=300))
    async with Client(_addr(coordinator)) as client:
        await client.submit("echo", queue="emails")
        await page.goto(c.url + "/")
        row = page.locator('tr[data-queue="emails"]')
        await row.get_by_role("button", name="Pause").click()
        await expect(page.locator(".flash")).to_contain_text("emails paused")
        await expect(row.locator(".flow")).to_contain_text("paused")
        assert await paused(client, "emails")
        # By keyboard this time: live swaps of the table keep the focus on the same button.
        await row.get_by_role("button", name="Resume").focus()
        await expect(row.get_by_role("button", name="Resume")).to_be_focused()
        await page.keyboard.press("Enter")
        await expect(page.locator(".flash")).to_contain_text("emails resumed")
        await expect(row.locator(".flow")).not_to_contain_text("paused")
        assert not await paused(client, "emails")
        # Limits through the queue page.
        await page.goto(c.url + "/queues/emails")
        await page.fill('input[name="max_running"]', "3")
        await page.fill('input[name="rate_per_second"]', "5")
        await page.click("text=Save limits")
        await expect(page.locator(".flash")).to_contain_text("limits saved")
        settings = next(q.settings for q in await client.list_queues() if q.name == "emails")
        assert settings is not None and settings.max_running == 3 and settings.rate_per_second == 5
        await page.goto(c.url + "/")
        await expect(row.locator(".flow")).to_contain_text("max running 3")
