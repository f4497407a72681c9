"""The console's door in a real browser: login with API keys, scopes, CSRF and Origin checks, escaping, payloads."""

from __future__ import annotations

from typing import Any

import aiohttp
import asyncpg
from playwright.async_api import Page, expect

from coordinator.app import Coordinator
from tests.console.conftest import login, paused
from tests.helpers.wait import eventually
from tests.security.conftest import TEST_KEY_REFRESH, MakeKey, Pki, revoke
from worker_sdk import Client

HOSTILE = '<script>alert(1)</script>"><img src=x onerror=alert(2)>'


async def test_a_read_key_logs_in_and_sees_the_overview(auth_coordinator: Coordinator, make_key: MakeKey,
                                                         console_factory: Any, page: Page) -> None:
    read = await make_key("viewer", "read")
    submit = await make_key("producer", "submit")
    async with Client(f"127.0.0.1:{auth_coordinator.port}", api_key=submit) as client:
        await client.submit("echo", queue="emails")
    c = await console_factory(auth_coordinator)
    await page.goto(c.url + "/")
    await expect(page).to_have_url(c.url + "/login")  # no session: the login page
    await login(page, c.url, read)
    await expect(page.locator("h1")).to_have_text("Queues")
    await expect(page.locator('tr[data-queue="emails"] .depth-queued')).to_have_text("1")
    await expect(page.locator(".who")).to_contain_text("viewer")
    # The key never reaches the browser: only an opaque, HttpOnly, SameSite=Strict session cookie.
    cookies = await page.context.cookies()
    assert len(cookies) == 1 and cookies[0]["httpOnly"] and cookies[0]["sameSite"] == "Strict"
    assert read not in cookies[0]["value"] and read not in await page.content()
    # Pages with data are never cached, and the CSP forbids inline script and framing.
    resp = await page.request.get(c.url + "/")
    assert resp.headers["cache-control"] == "no-store"
    assert "script-src 'self'" in resp.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in resp.headers["content-security-policy"]
    assert resp.headers["x-frame-options"] == "DENY"


async def test_a_wrong_key_is_refused_at_login(auth_coordinator: Coordinator, console_factory: Any,
                                               page: Page) -> None:
    c = await console_factory(auth_coordinator)
    await page.goto(c.url + "/login")
    await page.fill("#key", "fl_0123456789ab_nope")
    await page.click("button[type=submit]")
    await expect(page.locator(".error")).to_contain_text("does not accept this key")
    assert len(c.console.sessions) == 0


async def test_admin_actions_are_absent_for_a_read_key_and_a_forged_post_is_refused(
        auth_coordinator: Coordinator, make_key: MakeKey, console_factory: Any, page: Page) -> None:
    read = await make_key("viewer", "read")
    submit = await make_key("producer", "submit")
    async with Client(f"127.0.0.1:{auth_coordinator.port}", api_key=submit) as client:
        job = await client.submit("echo", queue="emails")
    c = await console_factory(auth_coordinator)
    await login(page, c.url, read)
    await expect(page.locator('tr[data-queue="emails"]')).to_be_visible()
    await expect(page.get_by_role("button", name="Pause")).to_have_count(0)
    await page.goto(f"{c.url}/jobs/{job.id}")
    await expect(page.locator(".job")).to_be_visible()
    await expect(page.get_by_role("button", name="Cancel job")).to_have_count(0)
    await page.goto(f"{c.url}/jobs")
    await expect(page.get_by_role("button", name="Cancel selected")).to_have_count(0)
    # A forged POST with this session's cookie and a valid CSRF token: the console refuses it (and so would the
    # coordinator).
    csrf = await page.locator('meta[name="csrf-token"]').get_attribute("content")
    resp = await page.request.post(f"{c.url}/jobs/{job.id}/cancel", form={"csrf": csrf or ""},
                                   headers={"Origin": c.url})
    assert resp.status == 403 and "admin" in await resp.text()
    resp = await page.request.post(f"{c.url}/queues/emails/pause", form={"csrf": csrf or ""},
                                   headers={"Origin": c.url})
    assert resp.status == 403
    async with Client(f"127.0.0.1:{auth_coordinator.port}", api_key=read) as client:
        assert (await client.get(job.id)).state == "queued"
        assert not await paused(client, "emails")


async def test_cross_site_posts_are_refused(auth_coordinator: Coordinator, make_key: MakeKey,
                                            console_factory: Any, page: Page) -> None:
    admin = await make_key("ops", "read,admin")
    c = await console_factory(auth_coordinator)
    await login(page, c.url, admin)
    csrf = await page.locator('meta[name="csrf-token"]').get_attribute("content")
    assert csrf
    # Another site's page posting with the user's cookie: wrong Origin.
    resp = await page.request.post(f"{c.url}/queues/emails/pause", form={"csrf": csrf},
                                   headers={"Origin": "http://evil.example"})
    assert resp.status == 403 and "Cross-site" in await resp.text()
    # Right Origin, no token or a wrong one.
    for form in ({}, {"csrf": "wrong"}):
        resp = await page.request.post(f"{c.url}/queues/emails/pause", form=form, headers={"Origin": c.url})
        assert resp.status == 403 and "CSRF" in await resp.text()
    # A rebinding page names another Host: refused before anything else.
    async with aiohttp.ClientSession() as http, http.get(c.url + "/login", headers={"Host": "evil.example:80"}) as r:
        assert r.status == 421
    async with Client(f"127.0.0.1:{auth_coordinator.port}", api_key=admin) as client:
        assert not await paused(client, "emails")
    # With the token and the Origin, the same action works.
    resp = await page.request.post(f"{c.url}/queues/emails/pause", form={"csrf": csrf}, headers={"Origin": c.url})
    assert resp.ok
    async with Client(f"127.0.0.1:{auth_coordinator.port}", api_key=admin) as client:
        assert await paused(client, "emails")


async def test_hostile_kind_labels_and_payload_render_as_text(auth_coordinator: Coordinator, make_key: MakeKey,
                                                              console_factory: Any, page: Page,
                                                              db: asyncpg.Connection[Any]) -> None:
    admin = await make_key("ops", "read,admin,payloads,submit")
    async with Client(f"127.0.0.1:{auth_coordinator.port}", api_key=admin) as client:
        job = await client.submit("echo", queue="emails", payload=HOSTILE.encode(),
                                  labels={"team": HOSTILE[:200]})
    # The API's alphabet refuses such a kind; the page must not rely on that (an older row, a direct insert).
    await db.execute("UPDATE faultline_jobs SET kind = $1, last_error = $1 WHERE id = $2", HOSTILE, int(job.id))
    dialogs: list[str] = []
    page.on("dialog", lambda d: dialogs.append(d.message))
    c = await console_factory(auth_coordinator)
    await login(page, c.url, admin)
    await page.goto(f"{c.url}/jobs/{job.id}")
    await expect(page.locator(".job .kind")).to_have_text(HOSTILE)
    await expect(page.locator(".job .label")).to_have_text("team=" + HOSTILE[:60])
    await expect(page.locator("#payload pre")).to_have_text(HOSTILE)
    await page.goto(f"{c.url}/jobs?queue=emails")
    await expect(page.locator(f'tr[data-job="{job.id}"] .kind')).to_have_text(HOSTILE)
    await page.goto(f"{c.url}/dlq")
    await page.goto(f"{c.url}/jobs/{job.id}")
    await expect(page.locator(".job .kind")).to_have_text(HOSTILE)
    assert dialogs == []
    assert await page.locator("main img").count() == 0
    assert await page.locator("main script").count() == 0


async def test_payloads_are_hidden_without_the_payloads_scope(auth_coordinator: Coordinator, make_key: MakeKey,
                                                              console_factory: Any, page: Page) -> None:
    read = await make_key("viewer", "read")
    reader = await make_key("auditor", "read,payloads")
    submit = await make_key("producer", "submit")
    async with Client(f"127.0.0.1:{auth_coordinator.port}", api_key=submit) as client:
        job = await client.submit("echo", queue="emails", payload=b"secret-customer-data")
        binary = await client.submit("echo", queue="emails", payload=bytes(range(256)) * 40)
    c = await console_factory(auth_coordinator)
    await login(page, c.url, read)
    await page.goto(f"{c.url}/jobs/{job.id}")
    await expect(page.locator("#payload")).to_contain_text("lacks the payloads scope")
    assert "secret-customer-data" not in await page.content()
    await page.context.clear_cookies()
    await login(page, c.url, reader)
    await page.goto(f"{c.url}/jobs/{job.id}")
    await expect(page.locator("#payload pre.text")).to_have_text("secret-customer-data")
    await page.goto(f"{c.url}/jobs/{binary.id}")
    await expect(page.locator("#payload pre.hex")).to_contain_text("00000000  00 01 02 03")
    await expect(page.locator("#payload")).to_contain_text("10,240 bytes, first 4,096 shown")


async def test_a_key_limited_to_some_queues_gets_a_clear_permission_page(
        auth_coordinator: Coordinator, make_key: MakeKey, console_factory: Any, page: Page) -> None:
    team = await make_key("team-a", "read,admin", queues=("team-a.*",))
    submit = await make_key("producer", "submit")
    async with Client(f"127.0.0.1:{auth_coordinator.port}", api_key=submit) as client:
        other = await client.submit("echo", queue="billing")
        await client.submit("echo", queue="team-a.mail")
    c = await console_factory(auth_coordinator)
    await login(page, c.url, team)
    await expect(page.locator('tr[data-queue="team-a.mail"]')).to_be_visible()
    await expect(page.locator('tr[data-queue="billing"]')).to_have_count(0)
    resp = await page.goto(f"{c.url}/jobs/{other.id}")
    assert resp is not None and resp.status == 403
    await expect(page.locator(".error")).to_contain_text("Permission denied")
    assert "Traceback" not in await page.content()
    # An out-of-range limit: the coordinator's INVALID_ARGUMENT, named, as a 400 page.
    csrf = await page.locator('meta[name="csrf-token"]').get_attribute("content")
    r = await page.request.post(f"{c.url}/queues/team-a.mail/settings",
                                form={"csrf": csrf or "", "max_running": "99999999"}, headers={"Origin": c.url})
    assert r.status == 400 and "max_running" in await r.text()


async def test_a_revoked_key_ends_its_sessions(auth_coordinator: Coordinator, make_key: MakeKey,
                                               console_factory: Any, page: Page, dsn: str) -> None:
    read = await make_key("viewer", "read")
    c = await console_factory(auth_coordinator)
    await login(page, c.url, read)
    await revoke(dsn, "viewer")

    async def sent_to_login() -> bool:
        await page.goto(c.url + "/jobs")
        return "/login" in page.url

    await eventually(sent_to_login, timeout=20, message="revoked key's session sent to the login page")
    await expect(page.locator(".error")).to_contain_text("no longer accepted")
    assert len(c.console.sessions) == 0


async def test_the_console_reaches_a_tls_coordinator_with_the_cas_certificate(
        coordinator_factory: Any, make_key: MakeKey, console_factory: Any, page: Page, pki: Pki) -> None:
    from worker_sdk._channel import tls_credentials

    tls = await coordinator_factory(auth="required", key_refresh_interval=TEST_KEY_REFRESH,
                                    tls_cert=pki.server_cert, tls_key=pki.server_key)
    read = await make_key("viewer", "read")
    c = await console_factory(tls, credentials=tls_credentials(ca_cert=pki.ca))
    await login(page, c.url, read)
    await expect(page.locator("h1")).to_have_text("Queues")
