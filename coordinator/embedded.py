"""Starts an embedded PostgreSQL (pgserver) in a per-user data directory when no DATABASE_URL is given."""

from __future__ import annotations

import logging
from pathlib import Path

from coordinator.errors import ConfigError

logger = logging.getLogger(__name__)


def start(data_dir: Path) -> str:
    """Start (or reuse) the embedded server and return its DSN; it stops when the last user process exits."""
    try:
        # get_server from its defining module: pgserver re-exports it without `__all__`, which mypy rejects.
        from pgserver.postgres_server import get_server
    except ImportError:
        raise ConfigError(
            "DATABASE_URL is not set and the embedded Postgres is not installed: "
            "pip install 'faultline-jobs[coordinator,embedded]' or set DATABASE_URL"
        ) from None
    data_dir.mkdir(parents=True, exist_ok=True)
    server = get_server(data_dir, cleanup_mode="stop")
    dsn: str = server.get_uri()
    logger.warning("DATABASE_URL not set: using embedded Postgres", extra={"data_dir": str(data_dir), "dsn": dsn})
    return dsn
