"""Applies migrations/NNNN_*.sql in order, each in its own transaction, under an advisory lock."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from coordinator.db.queries import QUERIES

logger = logging.getLogger(__name__)

MIGRATIONS_DIR_DEFAULT = Path(__file__).resolve().parents[2] / "migrations"
_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


def migrations_dir() -> Path:
    return Path(os.environ.get("FAULTLINE_MIGRATIONS_DIR") or MIGRATIONS_DIR_DEFAULT)


def discover(directory: Path | None = None) -> list[Path]:
    """Migration files in order; refuses gaps and stray names so a typo cannot skip a step."""
    directory = directory or migrations_dir()
    files = sorted(p for p in directory.iterdir() if p.suffix == ".sql")
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
