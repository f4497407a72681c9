"""Applies migrations/NNNN_*.sql in order, each in its own transaction, under an advisory lock.

The files live in the top-level migrations/ (the one source). The package reaches them as the package data
`coordinator/migrations`, which in a checkout is a symlink to ../migrations and in a built wheel or sdist holds
copies that the build made, so an installed coordinator finds them without a checkout.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from coordinator.db.queries import QUERIES
from coordinator.errors import StartupError

logger = logging.getLogger(__name__)

MIGRATIONS_DIR_DEFAULT = Path(__file__).resolve().parents[1] / "migrations"
MIGRATIONS_DIR_ENV = "FAULTLINE_MIGRATIONS_DIR"
_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


def migrations_dir() -> Path:
    return Path(os.environ.get(MIGRATIONS_DIR_ENV) or MIGRATIONS_DIR_DEFAULT)


def discover(directory: Path | None = None) -> list[Path]:
    """Migration files in order; refuses gaps and stray names so a typo cannot skip a step.

    A missing or empty directory is a StartupError (a broken install), never something to wait out.
    """
    directory = directory or migrations_dir()
    try:
        files = sorted(p for p in directory.iterdir() if p.suffix == ".sql")
    except OSError as exc:
        raise StartupError(f"cannot read the migrations in {directory}: {exc.strerror or exc}") from None
    if not files:
        raise StartupError(f"no migrations in {directory}: the installation is incomplete")
    for n, path in enumerate(files, start=1):
        m = _NAME.match(path.name)
        if not m:
            raise ValueError(f"migration {path.name} does not match NNNN_description.sql")
        if int(m[1]) != n:
            raise ValueError(f"migration {path.name} is out of sequence: expected {n:04d}")
    return files


async def migrate(
    con: asyncpg.Connection[Any] | PoolConnectionProxy[Any], directory: Path | None = None
) -> list[str]:
    """Apply what is missing; safe to run from many processes at once. Returns applied versions."""
    files = discover(directory)
    await con.execute(QUERIES["migrations_lock"].sql)
    try:
        await con.execute(QUERIES["migrations_bootstrap"].sql)
        done = {r["version"] for r in await con.fetch(QUERIES["migrations_applied"].sql)}
        applied: list[str] = []
        for path in files:
            version = path.stem
            if version in done:
                continue
            async with con.transaction():
                await con.execute(path.read_text())
                await con.execute(QUERIES["migrations_record"].sql, version)
            logger.info("migration applied", extra={"version": version})
            applied.append(version)
        return applied
    finally:
        await con.execute(QUERIES["migrations_unlock"].sql)
