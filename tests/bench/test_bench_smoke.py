"""`faultline bench` end to end on a tiny load: the output format holds and every job completed (not timed)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from tests.helpers.db import admin_dsn
from tests.helpers.procs import ROOT

CLI = "import sys; from coordinator.cli import main; sys.exit(main())"
LAST_LINE = re.compile(r"^jobs_per_s=(\d+) p50_ms=(\d+(?:\.\d+)?) p99_ms=(\d+(?:\.\d+)?)$")


def test_bench_runs_every_job_and_ends_with_the_summary_line(pg_admin: str, tmp_path: Path) -> None:
    env = {**os.environ, "DATABASE_URL": admin_dsn()}
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-c", CLI, "bench", "--jobs", "500", "--idle-jobs", "20",
         "--workers", "2", "--coordinators", "2", "--concurrency", "10", "--producers", "2", "--batch", "10",
         "--stats-wait-s", "1", "--json", str(out)],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = proc.stdout.strip().splitlines()
    m = LAST_LINE.match(lines[-1])
    assert m, f"last line is {lines[-1]!r}"
    assert int(m[1]) > 0 and float(m[2]) > 0 and float(m[3]) >= float(m[2])
    assert "INCOMPLETE" not in proc.stdout
    assert re.search(r"end-to-end\s+[\d,]+ jobs/s", proc.stdout)
    assert re.search(r"idle submit->start\s+p50 [\d.]+ ms\s+p95 [\d.]+ ms\s+p99 [\d.]+ ms\s+\(n=20\)", proc.stdout)
    assert re.search(r"load submit->start .*\(n=500\)", proc.stdout)
    assert re.search(r"coordinator\(s\)\s+[\d.]+", proc.stdout)
    assert re.search(r"PROJECTION, not a measurement: [\d,]+ jobs/s per dedicated Postgres core", proc.stdout)
    # Where the work goes, from both coordinators' counters: 500 jobs in SubmitBatch calls of 10 are 50
    # calls, one message each way; the workers' streams carry messages both ways; every job took statements.
    (run,) = json.loads(out.read_text())["runs"]["faultline"]
    work = run["extra"]
    assert work["msg_producer_in"] == 0.1 and work["msg_producer_out"] == 0.1
    assert work["producer_calls"] == 0.1
    assert work["msg_worker_in"] > 0 and work["msg_worker_out"] > 0
    assert work["statements"] >= work["statements insert_jobs"] == 0.1
    assert work["statements complete_jobs"] > 0 and work["commits"] > 0 and work["cpu_postgres"] > 0
    assert work["cpu_coordinator_0"] > 0 and work["cpu_coordinator_1"] > 0
    assert "progress" not in proc.stdout  # progress goes to stderr
    assert re.search(r"load: [\d,]+/[\d,]+ finished|idle phase done", proc.stderr)
