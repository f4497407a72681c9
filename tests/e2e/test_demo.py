"""The README's first command: `faultline demo` runs a coordinator, the example worker and producer to the end."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from tests.helpers.procs import ROOT, free_port


async def test_demo_runs_example_jobs_to_completion(dsn: str, db: object) -> None:
    env = dict(os.environ, DATABASE_URL=dsn, FAULTLINE_GRPC_ADDR=f"127.0.0.1:{free_port()}",
               FAULTLINE_METRICS_ADDR="off", FAULTLINE_BACKOFF_BASE_MS="50", FAULTLINE_BACKOFF_MAX_MS="200")
    out = await asyncio.to_thread(
        subprocess.run, [str(Path(sys.executable).parent / "faultline"), "demo", "--once", "--jobs", "30"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "30/30 jobs finished" in out.stdout
    counts = dict(await db.fetch("SELECT state::text, count(*) FROM faultline_jobs GROUP BY state"))  # type: ignore[attr-defined]
    assert sum(counts.values()) == 30
    assert set(counts) <= {"succeeded", "dead_lettered"}, counts
