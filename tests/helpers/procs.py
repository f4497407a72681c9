"""Real processes for tests: a coordinator or worker as a child, waited on by health or output, killed for real."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Proc:
    """A child process whose output goes to a log file that tests can read."""

    args: list[str]
    env: dict[str, str]
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None
    extra: dict[str, object] = field(default_factory=dict)

    def start(self) -> Proc:
        self.log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(self.args, env=self.env, stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT)
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        assert self.popen is not None
        os.kill(self.popen.pid, sig)

    def kill(self) -> None:
        if self.alive():
            self.signal(signal.SIGKILL)
            assert self.popen is not None
            self.popen.wait(10)

    def terminate(self, timeout: float = 30) -> int:
        assert self.popen is not None
        if self.alive():
            try:
                self.signal(signal.SIGCONT)
            except ProcessLookupError:
                pass
            self.signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return -9

    def stop(self) -> None:
        if self.popen is not None and self.alive():
            self.terminate(10)
        if hasattr(self, "log"):
            self.log.close()


def coordinator_proc(*, dsn: str, port: int, tmp: Path, env: dict[str, str] | None = None) -> Proc:
    e = dict(os.environ)
    e.update({
        "DATABASE_URL": dsn,
        "FAULTLINE_GRPC_ADDR": f"127.0.0.1:{port}",
        "FAULTLINE_METRICS_ADDR": "off",
        "FAULTLINE_LOG_LEVEL": "INFO",
    })
    e.update(env or {})
    return Proc([sys.executable, "-m", "coordinator"], e, tmp / f"coordinator-{port}-{time.time_ns()}.log")


def python_proc(
    script: str | Path, *args: str, tmp: Path, env: dict[str, str] | None = None, name: str = "proc"
) -> Proc:
    e = dict(os.environ)
    e.update(env or {})
    return Proc([sys.executable, str(script), *args], e, tmp / f"{name}-{time.time_ns()}.log")
