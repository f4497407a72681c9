"""`faultline coordinator` as a real process: configuration errors, fatal database errors, a taken port and a
signal during the start-up wait each end it within seconds with one clear line and the right exit code."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

import pytest

from tests.helpers.procs import ROOT, free_port

# The bar is 5 s; the process start (imports) on a loaded 2-core machine is part of it.
END_WITHIN_S = 5.0
START_IMPORT_GRACE_S = 20.0


def _cmd() -> list[str]:
    script = Path(sys.executable).with_name("faultline")
    return [str(script), "coordinator"] if script.exists() else [sys.executable, "-m", "coordinator"]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env.update(FAULTLINE_GRPC_ADDR=f"127.0.0.1:{free_port()}", FAULTLINE_METRICS_ADDR="off")
    env.update(extra)
    return env


async def _run(env: dict[str, str]) -> tuple[int, list[str]]:
    proc = await asyncio.create_subprocess_exec(*_cmd(), cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    try:
        _, err = await asyncio.wait_for(proc.communicate(), START_IMPORT_GRACE_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError("the coordinator did not exit") from None
    assert proc.returncode is not None
    return proc.returncode, err.decode().strip().splitlines()


def _one_line(lines: list[str], *needles: str) -> str:
    assert len(lines) == 1, lines
    assert not any("Traceback" in line for line in lines), lines
    for needle in needles:
        assert needle in lines[0], (needle, lines)
    return lines[0]


@pytest.mark.parametrize("dsn,needle", [
    ("localhost/foo", "DATABASE_URL"),
    ("postgresql://u@127.0.0.1:5432/db?sslmode=sometimes", "sslmode"),
    ("postgresql://u@127.0.0.1:99999/db", "port"),
])
async def test_malformed_database_url_is_a_config_error(dsn: str, needle: str) -> None:
    code, lines = await _run(_env(DATABASE_URL=dsn))
    assert code == 2
    _one_line(lines, "DATABASE_URL", needle)


async def test_missing_database_and_role_are_one_line_not_a_retry(dsn: str) -> None:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(dsn)
    no_db = urlunsplit((parts.scheme, parts.netloc, "/faultline_no_such_db_for_startup_test", "", ""))
    host = parts.netloc.rpartition("@")[2]
    no_role = urlunsplit((parts.scheme, f"faultline_no_such_role@{host}", parts.path, "", ""))
    (c1, l1), (c2, l2) = await asyncio.gather(_run(_env(DATABASE_URL=no_db)), _run(_env(DATABASE_URL=no_role)))
    assert c1 == 1 and c2 == 1
    _one_line(l1, "does not exist", "faultline_no_such_db_for_startup_test")
    _one_line(l2, "faultline_no_such_role")


async def test_a_taken_port_refuses_to_start(dsn: str) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = f"127.0.0.1:{holder.getsockname()[1]}"
        code, lines = await _run(_env(DATABASE_URL=dsn, FAULTLINE_GRPC_ADDR=taken))
        assert code == 1
        _one_line(lines, "cannot listen on", taken, "FAULTLINE_GRPC_ADDR")
        code, lines = await _run(_env(DATABASE_URL=dsn, FAULTLINE_METRICS_ADDR=taken))
        assert code == 1
        _one_line(lines, "cannot listen on", taken, "FAULTLINE_METRICS_ADDR")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_a_signal_ends_the_wait_for_postgres(sig: signal.Signals) -> None:
    closed = free_port()  # nothing listens: Postgres "not reachable yet", retried with backoff
    proc = await asyncio.create_subprocess_exec(
        *_cmd(), cwd=ROOT, env=_env(DATABASE_URL=f"postgresql://postgres@127.0.0.1:{closed}/postgres"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert proc.stderr is not None
    try:
        # Wait for the first retry line: it names the host and port it waits for.
        line = await asyncio.wait_for(proc.stderr.readline(), START_IMPORT_GRACE_S)
        assert b"Postgres not reachable yet" in line and f"127.0.0.1:{closed}".encode() in line, line
        proc.send_signal(sig)
        await asyncio.wait_for(proc.wait(), END_WITHIN_S)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0
