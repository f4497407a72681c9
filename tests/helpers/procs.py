"""Real processes for tests: a coordinator or worker as a child (the drills' Proc), killed for real."""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path

from coordinator.drills.stack import ROOT, Proc

__all__ = ["ROOT", "Proc", "coordinator_proc", "free_port", "python_proc"]


# The metrics sampler's interval in tests (ListQueues' figures are at most this old).
TEST_METRICS_SAMPLE_MS = 200


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def coordinator_proc(*, dsn: str, port: int, tmp: Path, env: dict[str, str] | None = None) -> Proc:
    e = dict(os.environ)
    e.update({
        "DATABASE_URL": dsn,
        "FAULTLINE_GRPC_ADDR": f"127.0.0.1:{port}",
        "FAULTLINE_METRICS_ADDR": "off",
        "FAULTLINE_LOG_LEVEL": "INFO",
        # ListQueues serves the sampler's last sample: tests wait for a fresh one, so sample often.
        "FAULTLINE_METRICS_SAMPLE_MS": str(TEST_METRICS_SAMPLE_MS),
    })
    e.update(env or {})
    log = tmp / f"coordinator-{port}-{time.time_ns()}.log"
    return Proc("coordinator", [sys.executable, "-m", "coordinator"], e, log)


def python_proc(
    script: str | Path, *args: str, tmp: Path, env: dict[str, str] | None = None, name: str = "proc"
) -> Proc:
    e = dict(os.environ)
    e.update(env or {})
    return Proc(name, [sys.executable, str(script), *args], e, tmp / f"{name}-{time.time_ns()}.log")
