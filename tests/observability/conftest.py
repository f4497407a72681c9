"""Fixtures for the observability suite: the real `faultline` CLI and grpcurl as subprocesses, promtool."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.procs import ROOT

# Each subprocess gets this long; a hang is a failure, not a stuck suite.
SUBPROCESS_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Ran:
    """A finished subprocess."""

    code: int
    out: str
    err: str


def faultline_cli() -> list[str]:
    """The installed console script next to this interpreter (what an operator runs)."""
    script = Path(sys.executable).with_name("faultline")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from coordinator.cli import main; sys.exit(main())"]


async def run(args: list[str], *, env: dict[str, str] | None = None, stdin: bytes | None = None) -> Ran:
    proc = await asyncio.create_subprocess_exec(
        *args, cwd=ROOT, env={**os.environ, **(env or {})}, stdin=subprocess.PIPE if stdin is not None else None,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), SUBPROCESS_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"{args} did not finish within {SUBPROCESS_TIMEOUT_S}s") from None
    assert proc.returncode is not None
    return Ran(proc.returncode, out.decode(), err.decode())


async def cli(*args: str, env: dict[str, str] | None = None, stdin: bytes | None = None) -> Ran:
    return await run([*faultline_cli(), *args], env=env, stdin=stdin)


def promtool() -> str:
    """promtool's path; missing is a failure (scripts/test installs it as root), never a skip."""
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is required: install the Debian package 'prometheus' (scripts/test does, as root)")
    return path


def promtool_check(text: str) -> None:
    """`promtool check metrics` must accept the exposition with no lint complaint."""
    out = subprocess.run([promtool(), "check", "metrics"], input=text.encode(), capture_output=True,
                         timeout=SUBPROCESS_TIMEOUT_S)
    assert out.returncode == 0 and not out.stdout.strip() and not out.stderr.strip(), (
        f"promtool check metrics failed ({out.returncode}):\n{out.stdout.decode()}{out.stderr.decode()}")
