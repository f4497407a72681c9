"""Bulk actions in a real browser: every dead-lettered job matching a filter, and selected rows, checked via the API."""

from __future__ import annotations

import re
from typing import Any

import asyncpg
from playwright.async_api import Page, expect

from coordinator.app import Coordinator
from worker_sdk import Client, JobSpec

# More than one bulk call's worth: the console must loop the resume token.
DEAD_JOBS = 2_100
BATCH = 700


def _addr(c: Coordinator) -> str:
    return f"127.0.0.1:{c.port}"


async def _count(client: Client, *, queue: str, state: str) -> int:
    n, token = 0, None
    while True:
        jobs, token = await client.list(queue=queue, state=state, page_size=1000, page_token=token)
        n += len(jobs)
        if not token:
            return n


async def _dead_letter(db: asyncpg.Connection[Any], queue: str) -> None:
    # Setup only: putting thousands of jobs through real failures would take minutes.
    await db.execute("UPDATE faultline_jobs SET state = 'dead_lettered', attempts = max_attempts, "
                     "finished_at = now(), last_error = 'boom' WHERE queue = $1", queue)


async def test_requeue_every_matching_dead_lettered_job_runs_in_the_background(
        coordinator: Coordinator, console_factory: Any, page: Page, db: asyncpg.Connection[Any]) -> None:
    async with Client(_addr(coordinator)) as client:
        for start in range(0, DEAD_JOBS, BATCH):
            await client.submit_batch([JobSpec(kind="import", queue="imports") for _ in range(start, start + BATCH)])
        await client.submit_batch([JobSpec(kind="import", queue="other") for _ in range(5)])
        await _dead_letter(db, "imports")
        await _dead_letter(db, "other")
        c = await console_factory(coordinator)
        await page.goto(c.url + "/dlq?queue=imports")
        await expect(page.locator("tr[data-job]")).to_have_count(50)  # one page of them
        await page.get_by_role("button", name="Requeue every matching job").click()
        await expect(page.locator("h1")).to_have_text("Confirm bulk action")
        await expect(page.locator("main")).to_contain_text("queue=imports, state=dead_lettered")
        await expect(page.locator("main")).to_contain_text(f"About {DEAD_JOBS:,} job(s)")  # the sampler's estimate
        await expect(page.get_by_role("link", name="No, go back")).to_have_attribute(
            "href", "/jobs?queue=imports&state=dead_lettered")
        await page.get_by_role("button", name="Yes, requeue them").click()
        await expect(page).to_have_url(re.compile(r".*/ops/.+"))
        await expect(page.locator(".op-state")).to_have_text("done", timeout=120_000)
        await expect(page.locator(".op-count")).to_have_text(f"{DEAD_JOBS:,}")
        assert await _count(client, queue="imports", state="queued") == DEAD_JOBS
        assert await _count(client, queue="imports", state="dead_lettered") == 0
        assert await _count(client, queue="other", state="dead_lettered") == 5  # outside the filter


async def test_cancel_and_requeue_selected_rows(coordinator: Coordinator, console_factory: Any, page: Page) -> None:
    async with Client(_addr(coordinator)) as client:
        jobs = await client.submit_batch([JobSpec(kind="mail", queue="emails") for _ in range(3)])
        c = await console_factory(coordinator)
        await page.goto(c.url + "/jobs?queue=emails")
        for j in jobs[:2]:
            await page.check(f'tr[data-job="{j.id}"] input[type=checkbox]')
        await page.get_by_role("button", name="Cancel selected").click()
        await expect(page.locator(".op-state")).to_have_text("done")
        await expect(page.locator(".op-count")).to_have_text("2")
        assert [(await client.get(j.id)).state for j in jobs] == ["cancelled", "cancelled", "queued"]
        # One job back through its own page.
        await page.goto(f"{c.url}/jobs/{jobs[0].id}")
        await page.get_by_role("button", name="Requeue job").click()
        await expect(page.locator(".flash")).to_contain_text("requeued")
        assert (await client.get(jobs[0].id)).state == "queued"
        await page.get_by_role("button", name="Cancel job").click()
        await expect(page.locator(".flash")).to_contain_text("cancelled")
        assert (await client.get(jobs[0].id)).state == "cancelled"
