"""`faultline console` as a process: off means off, the address is printed, a page answers, SIGTERM stops it."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import aiohttp

from coordinator.app import Coordinator
from tests.helpers.procs import ROOT, free_port

CLI = [sys.executable, "-c", "import sys; from coordinator.cli import main; sys.exit(main())", "console"]
STOP_TIMEOUT_S = 10.0


async def test_addr_off_disables_the_console() -> None:
    proc = await asyncio.create_subprocess_exec(*CLI, "--addr", "off", cwd=ROOT, stdout=asyncio.subprocess.PIPE,
                                                env=dict(os.environ, PYTHONPATH=str(ROOT)))
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0 and b"disabled" in out


async def test_the_console_prints_its_address_serves_and_stops_on_sigterm(coordinator: Coordinator) -> None:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        *CLI, "--coordinator", f"127.0.0.1:{coordinator.port}", cwd=ROOT, stdout=asyncio.subprocess.PIPE,
        env=dict(os.environ, PYTHONPATH=str(ROOT), FAULTLINE_CONSOLE_ADDR=f"127.0.0.1:{port}"))
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        assert f"serving on http://127.0.0.1:{port}".encode() in line, line
        # A browser with a live stream open must not hold the stop up.
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            async with http.get(f"http://127.0.0.1:{port}/healthz") as r:
                assert r.status == 200 and await r.text() == "ok\n"
            async with http.get(f"http://127.0.0.1:{port}/") as r:
                assert r.status == 200 and "Queues" in await r.text()
            async with http.get(f"http://127.0.0.1:{port}/events?topic=overview") as stream:
                assert stream.status == 200
                assert (await stream.content.readline()).startswith(b"event: update")
                proc.send_signal(signal.SIGTERM)
                assert await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
