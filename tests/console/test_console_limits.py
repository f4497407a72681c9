"""The console's bounds and failure pages: shared pollers, stream and body limits, sessions, dead coordinators."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import aiohttp
from playwright.async_api import Browser, Page, expect

from coordinator.app import Coordinator
from coordinator.console.config import REQUEST_BODY_MAX_BYTES, SSE_PER_SESSION_MAX
from tests.console.conftest import VIEWPORT, login
from tests.helpers.procs import free_port
from tests.helpers.wait import eventually
from tests.security.conftest import MakeKey


async def test_browsers_on_one_key_share_one_poller(coordinator: Coordinator, console_factory: Any,
                                                    browser: Browser) -> None:
    c = await console_factory(coordinator, poll_interval=timedelta(milliseconds=200))
    contexts = [await browser.new_context(viewport=VIEWPORT) for _ in range(3)]  # type: ignore[arg-type]
    try:
        for ctx in contexts:
            p = await ctx.new_page()
            await p.goto(c.url + "/")
            await expect(p.locator("#sampled")).to_be_visible()
        await eventually(lambda: c.console.hub.pollers == 1, message="one poller for the three browsers")
    finally:
        for ctx in contexts:
            await ctx.close()
    await eventually(lambda: c.console.hub.pollers == 0, timeout=20, message="no poller once they left")


async def test_streams_per_session_and_request_bodies_are_bounded(coordinator: Coordinator,
                                                                  console_factory: Any) -> None:
    c = await console_factory(coordinator)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        async with http.get(c.url + "/") as r:
            assert r.status == 200
        streams = []
        try:
            for _ in range(SSE_PER_SESSION_MAX):
                s = await http.get(c.url + "/events?topic=overview")
                assert s.status == 200
                streams.append(s)
            async with http.get(c.url + "/events?topic=overview") as r:
                assert r.status == 429
        finally:
            for s in streams:
                s.close()
        async with http.get(c.url + "/events?topic=<script>") as r:
            assert r.status == 400
        async with http.post(c.url + "/jobs/bulk", data={"csrf": "x", "id": "1" * REQUEST_BODY_MAX_BYTES},
                             headers={"Origin": c.url}) as r:
            assert r.status == 413


async def test_sessions_are_bounded_and_logout_forgets_the_key(auth_coordinator: Coordinator, make_key: MakeKey,
                                                               console_factory: Any, browser: Browser) -> None:
    read = await make_key("viewer", "read")
    c = await console_factory(auth_coordinator, sessions_max=2)
    pages: list[Page] = []
    for _ in range(3):
        ctx = await browser.new_context()
        pages.append(await ctx.new_page())
        await login(pages[-1], c.url, read)
    assert len(c.console.sessions) == 2
    await pages[0].goto(c.url + "/")  # the least recently used was evicted
    await expect(pages[0]).to_have_url(c.url + "/login")
    await pages[2].get_by_role("button", name="Log out").click()
    await expect(pages[2]).to_have_url(c.url + "/login")
    assert len(c.console.sessions) == 1
    for p in pages:
        await p.context.close()


async def test_an_unreachable_coordinator_is_a_clear_page_and_the_next_one_answers(
        coordinator: Coordinator, console_factory: Any, page: Page) -> None:
    dead = f"127.0.0.1:{free_port()}"
    lone = await console_factory(dead)
    resp = await page.goto(lone.url + "/jobs")
    assert resp is not None and resp.status == 503
    await expect(page.locator(".error")).to_contain_text("No coordinator answered")
    assert "Traceback" not in await page.content()
    both = await console_factory(dead, coordinator)
    resp = await page.goto(both.url + "/jobs")
    assert resp is not None and resp.status == 200
    resp = await page.goto(both.url + "/jobs/424242")
    assert resp is not None and resp.status == 404
    await expect(page.locator(".error")).to_contain_text("Not found")
    resp = await page.goto(both.url + "/jobs?state=bogus")
    assert resp is not None and resp.status == 400


async def test_a_coordinator_without_the_rpcs_is_named_not_a_crash(console_factory: Any, page: Page) -> None:
    import grpc

    server = grpc.aio.server()  # serves no JobService at all: every call is UNIMPLEMENTED
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        c = await console_factory(f"127.0.0.1:{port}")
        resp = await page.goto(c.url + "/")
        assert resp is not None and resp.status == 501
        await expect(page.locator(".error")).to_contain_text("does not implement")
        assert "Traceback" not in await page.content()
    finally:
        await server.stop(None)
