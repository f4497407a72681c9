"""A private PostgreSQL cluster for the drills that stop Postgres or exhaust its connections.

Never the shared server: the cluster lives in its own temporary directory on its own port, started
with the Debian binaries (/usr/lib/postgresql/N/bin, as user postgres via runuser when we are root)
or, when those are missing, with the binaries of the pgserver wheel. stop()/start() are the fault.
The port is a stack.PortHold for the cluster's whole life (Postgres binds with SO_REUSEADDR).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from coordinator.drills.stack import DrillError, PortHold

DEBIAN_BIN_GLOB = "/usr/lib/postgresql/*/bin"
START_TIMEOUT_S = 60
SUPERUSER = "postgres"


def _bin_dir() -> Path:
    def version(p: str) -> int:
        name = Path(p).parent.name
        return int(name) if name.isdigit() else 0

    found = sorted(glob.glob(DEBIAN_BIN_GLOB), key=version)
    if found and Path(found[-1], "pg_ctl").exists():
        return Path(found[-1])
    try:
        import pgserver
    except ImportError:
        raise DrillError("no PostgreSQL binaries: install postgresql or the 'embedded' extra (pgserver)") from None
    return Path(pgserver.__file__).parent / "pginstall" / "bin"


class PrivateCluster:
    """initdb + pg_ctl on a free port; dsn is the superuser's."""

    def __init__(self, *, max_connections: int = 100) -> None:
        self.bin = _bin_dir()
        # Held until destroy(): nobody else gets the port, not even while the cluster is stopped (an outage).
        self._port_hold = PortHold()
        self.port = self._port_hold.port
        self.max_connections = max_connections
        self.root = Path(tempfile.mkdtemp(prefix="faultline-drill-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            shutil.chown(self.root, SUPERUSER, SUPERUSER)

    @property
    def dsn(self) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        cmd = [str(self.bin / args[0]), *args[1:]]
        if self._as_postgres:
            cmd = ["runuser", "-u", SUPERUSER, "--", *cmd]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=START_TIMEOUT_S)
        if out.returncode != 0:
            raise DrillError(f"{' '.join(args[:2])} failed ({out.returncode}): {out.stderr.strip()[-2000:]}")

    def init(self) -> PrivateCluster:
        self._run("initdb", "-D", str(self.data), "-U", SUPERUSER, "--auth=trust", "--no-sync", "-E", "UTF8")
        conf = self.data / "postgresql.conf"
        with open(conf, "a") as f:
            f.write(
                f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{self.root}'\n"
                f"max_connections = {self.max_connections}\nfsync = off\nsynchronous_commit = off\n"
                "full_page_writes = off\nshared_buffers = 32MB\nlog_connections = on\nlog_disconnections = on\n"
            )
        return self

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", str(START_TIMEOUT_S), "start")

    def stop(self) -> None:
        """Fast shutdown: open connections are cut, as in a crash or a failover."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def destroy(self, keep_log_in: Path | None = None) -> None:
        try:
            self.stop()
        except DrillError:
            pass
        if keep_log_in is not None and self.log.exists():
            shutil.copy(self.log, keep_log_in / "postgres.log")
        shutil.rmtree(self.root, ignore_errors=True)
        self._port_hold.close()
