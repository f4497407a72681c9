"""Screenshots of the console's main pages for docs/console/, taken by Playwright in Debian's chromium.

    .venv/bin/python scripts/console_screenshots.py   (needs FAULTLINE_TEST_DSN's server; makes its own DB)

A coordinator and the console run in-process on a fresh database with a worker, a few hundred jobs (some
failing to the dead-letter queue, one reporting progress) and a schedule; the pages are shot at 1280x800.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiohttp import web
from playwright.async_api import async_playwright

from coordinator.app import Coordinator
from coordinator.bench.runner import fresh_database
from coordinator.config import Config
from coordinator.console.app import build_app
from coordinator.console.config import ConsoleConfig, loopback_hosts
from worker_sdk import Client, JobContext, JobSpec, NonRetryableError, Worker

ADMIN = os.environ.get("FAULTLINE_TEST_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
OUT = Path(__file__).resolve().parents[1] / "docs" / "console"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def main() -> None:
    async with fresh_database(ADMIN, "faultline_console_shots") as dsn:
        import asyncpg

        from coordinator.db.migrate import migrate

        con = await asyncpg.connect(dsn)
        try:
            await migrate(con)
        finally:
            await con.close()
        coordinator = Coordinator(Config(database_url=dsn, grpc_addr="127.0.0.1:0", metrics_addr=None,
                                         metrics_sample_interval=timedelta(seconds=1)))
        await coordinator.start()
        addr = f"127.0.0.1:{coordinator.port}"
        release = asyncio.Event()
        worker = Worker(addr, queues=["emails", "reports", "imports"], labels={"zone": "eu-1"},
                        worker_id="worker-eu-1", handle_signals=False)

        @worker.handler("send_email")
        async def send(ctx: JobContext) -> bytes:
            return b'{"delivered": true}'

        @worker.handler("import_csv")
        async def imp(ctx: JobContext) -> bytes:
            raise NonRetryableError("row 17: invalid date '2026-13-01'")

        @worker.handler("render_report")
        async def render(ctx: JobContext) -> bytes:
            await ctx.progress(0.6, "page 12 of 20")
            await release.wait()
            return b"%PDF-1.7 ..."

        task = asyncio.create_task(worker.run())
        port = _free_port()
        runner = web.AppRunner(build_app(ConsoleConfig(coordinators=(addr,), allowed_hosts=loopback_hosts(port),
                                                       jaeger_url="http://127.0.0.1:16686")))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        base = f"http://127.0.0.1:{port}"
        try:
            async with Client(addr) as client:
                await client.submit_batch([JobSpec(kind="send_email", queue="emails",
                                                   payload=b'{"to": "ada@example.com"}') for _ in range(120)])
                await client.submit_batch([JobSpec(kind="import_csv", queue="imports", max_attempts=1,
                                                   payload=b"id,date\n17,2026-13-01\n") for _ in range(40)])
                report = await client.submit("render_report", queue="reports", labels={"customer": "acme"})
                await client.pause_queue("reports")
                await client.submit_batch([JobSpec(kind="render_report", queue="reports") for _ in range(25)])
                await client.create_schedule("nightly-digest", kind="send_email", cron="0 6 * * *",
                                             queue="emails")
                await asyncio.sleep(3)  # the sampler's next figures (a script, not a test)
            OUT.mkdir(parents=True, exist_ok=True)
            async with async_playwright() as pw:
                browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                page = await browser.new_page(viewport={"width": 1280, "height": 800})
                for name, path in (("overview", "/"), ("jobs", "/jobs?queue=emails"), ("dead-letters", "/dlq"),
                                   ("job", f"/jobs/{report.id}"), ("workers", "/workers")):
                    await page.goto(base + path)
                    await page.wait_for_load_state("load")
                    await page.screenshot(path=str(OUT / f"{name}.png"))
                    print(f"wrote {OUT / f'{name}.png'}")
                await page.set_viewport_size({"width": 420, "height": 800})
                await page.goto(base + "/")
                await page.screenshot(path=str(OUT / "overview-narrow.png"))
                await browser.close()
        finally:
            release.set()
            await worker.stop()
            await task
            await runner.cleanup()
            await coordinator.stop()


if __name__ == "__main__":
    asyncio.run(main())
