"""Fixtures for the console suite: the console in-process on a free port, against real coordinators, and Chromium.

The browser is Debian's chromium (apt package `chromium`) driven by Playwright; a missing browser fails the
suite loudly, never skips it (scripts/test and .ci/run install it).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from playwright.async_api import Browser, BrowserContext, Page, async_playwright, expect

from coordinator.app import Coordinator
from coordinator.console.app import CONSOLE, Console, build_app
from coordinator.console.config import ConsoleConfig, loopback_hosts
from tests.helpers.procs import free_port
from tests.security.conftest import TEST_KEY_REFRESH, make_key, pki  # noqa: F401  (fixture re-exports)
from worker_sdk import Client

CHROMIUM = os.environ.get("FAULTLINE_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
# Playwright's own waits (expect, locators), in milliseconds.
EXPECT_TIMEOUT_MS = 20_000
VIEWPORT = {"width": 1280, "height": 800}
expect.set_options(timeout=EXPECT_TIMEOUT_MS)


@dataclass
class RunningConsole:
    url: str
    console: Console
    runner: web.AppRunner


def _require_chromium() -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"the console tests need Chromium at {CHROMIUM}: apt-get install chromium (scripts/test does)")


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    _require_chromium()
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        await b.close()


@pytest.fixture
async def context(browser: Browser) -> AsyncIterator[BrowserContext]:
    ctx = await browser.new_context(viewport=VIEWPORT)  # type: ignore[arg-type]
    ctx.set_default_timeout(EXPECT_TIMEOUT_MS)
    yield ctx
    await ctx.close()


@pytest.fixture
async def page(context: BrowserContext) -> AsyncIterator[Page]:
    """A page whose console errors (a CSP violation, a script error) fail the test."""
    p = await context.new_page()
    errors: list[str] = []
    p.on("console", lambda m: errors.append(m.text) if m.type == "error" and not _expected(m.text) else None)
    p.on("pageerror", lambda e: errors.append(str(e)))
    yield p
    assert errors == [], f"browser console errors: {errors}"


def _expected(text: str) -> bool:
    # Pages a test asks for on purpose with an error status (403, 404, 503...).
    return "Failed to load resource" in text


@pytest.fixture
async def console_factory() -> AsyncIterator[Callable[..., Awaitable[RunningConsole]]]:
    """start(*coordinators, **ConsoleConfig overrides) -> a console serving on a free loopback port."""
    started: list[RunningConsole] = []

    async def start(*coordinators: Coordinator | str, **overrides: Any) -> RunningConsole:
        port = free_port()
        targets = tuple(c if isinstance(c, str) else f"127.0.0.1:{c.port}" for c in coordinators)
        cfg = replace(ConsoleConfig(coordinators=targets, allowed_hosts=loopback_hosts(port)), **overrides)
        app = build_app(cfg)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        rc = RunningConsole(url=f"http://127.0.0.1:{port}", console=app[CONSOLE], runner=runner)
        started.append(rc)
        return rc

    yield start
    for rc in reversed(started):
        await rc.runner.cleanup()


@pytest.fixture
async def auth_coordinator(coordinator_factory: Callable[..., Awaitable[Coordinator]]) -> Coordinator:
    return await coordinator_factory(auth="required", key_refresh_interval=TEST_KEY_REFRESH)


async def login(page: Page, url: str, key: str) -> None:
    await page.goto(url + "/login")
    await page.fill("#key", key)
    await page.click("button[type=submit]")
    await page.wait_for_url(url + "/")


async def paused(client: Client, queue: str) -> bool:
    """Whether the API says the queue is paused."""
    return any(q.settings is not None and q.settings.paused for q in await client.list_queues() if q.name == queue)
