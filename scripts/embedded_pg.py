"""Start (or reuse) an embedded PostgreSQL from the pgserver wheel and print its admin DSN.

scripts/test falls back to this when no DATABASE_URL is given and no system Postgres answers.

    python scripts/embedded_pg.py [start] [--data-dir DIR]   # prints the DSN on stdout, logs on stderr
    python scripts/embedded_pg.py stop    [--data-dir DIR]   # fast shutdown; no-op when not running

The server outlives this process (pgserver cleanup_mode=None) so that a later pytest run can use it;
`stop` ends it. It listens on a Unix socket only (pgserver never opens a TCP port), so the DSN has the
form postgresql://postgres:@/postgres?host=<socket dir>, which asyncpg and libpq both accept.

Running as root: postgres refuses to run as root. pgserver handles that itself: it creates a system
user `pgserver` (useradd), chowns the data directory to it, opens read/traverse permissions on the
path to the data directory and to its bundled binaries, and runs initdb/pg_ctl as that user.
`stop` therefore runs pg_ctl as the owner of the data directory.
"""

from __future__ import annotations

import argparse
import logging
import os
import pwd
import subprocess
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA_DIR_DEFAULT = ROOT / ".faultline" / "pgdata"
# Seconds pg_ctl waits for a fast shutdown before giving up.
STOP_TIMEOUT_S = 30
# `pg_ctl status` exit code when no server runs in the data directory (a stale postmaster.pid included).
PG_CTL_STATUS_NOT_RUNNING = 3

logger = logging.getLogger("embedded_pg")


def start(data_dir: Path) -> str:
    import pgserver

    data_dir.parent.mkdir(parents=True, exist_ok=True)
    pid_file = data_dir / "postmaster.pid"
    if pid_file.exists() and not _running(data_dir):
        # Left by a killed server (e.g. a machine reboot); pgserver chokes on a truncated one.
        logger.info("removing stale %s", pid_file)
        pid_file.unlink()
    server = pgserver.get_server(data_dir, cleanup_mode=None)
    return str(server.get_uri())


def stop(data_dir: Path) -> int:
    if not _running(data_dir):
        logger.info("embedded postgres not running in %s", data_dir)
        return 0
    _pg_ctl(data_dir, "-w", "-t", str(STOP_TIMEOUT_S), "-m", "fast", "stop")
    logger.info("embedded postgres stopped in %s", data_dir)
    return 0


def _running(data_dir: Path) -> bool:
    if not (data_dir / "PG_VERSION").exists():
        return False
    rc = _pg_ctl(data_dir, "status", check=False)
    if rc not in (0, PG_CTL_STATUS_NOT_RUNNING):
        raise RuntimeError(f"pg_ctl status failed for {data_dir} with exit code {rc}")
    return rc == 0


def _pg_ctl(data_dir: Path, *args: str, check: bool = True) -> int:
    from pgserver._commands import POSTGRES_BIN_PATH

    # As root, pgserver made the data directory belong to its own system user; pg_ctl must run as that user.
    owner = data_dir.stat().st_uid
    user = pwd.getpwuid(owner).pw_name if os.geteuid() == 0 and owner != 0 else None
    cmd = [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(data_dir), *args]
    return subprocess.run(cmd, check=check, user=user, stdout=subprocess.DEVNULL).returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", nargs="?", choices=["start", "stop"], default="start")
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR_DEFAULT)
    args = parser.parse_args(argv)
    # platformdirs warns when XDG_RUNTIME_DIR is unset (typical under root in CI); its fallback is fine.
    warnings.filterwarnings("ignore", module="platformdirs")
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="embedded_pg: %(message)s")
    logger.setLevel(logging.INFO)
    data_dir = args.data_dir.expanduser().resolve()
    if args.action == "stop":
        return stop(data_dir)
    print(start(data_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
