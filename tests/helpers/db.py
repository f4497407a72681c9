"""Databases for tests: one migrated template per session, a fresh clone per test."""

from __future__ import annotations

import os
import uuid
from urllib.parse import urlsplit, urlunsplit

import asyncpg

ADMIN_DSN_DEFAULT = "postgresql://postgres@127.0.0.1:5432/postgres"


def admin_dsn() -> str:
    return os.environ.get("FAULTLINE_TEST_DSN") or ADMIN_DSN_DEFAULT


def with_database(dsn: str, name: str) -> str:
    """The same server, another database (works for host:port and unix-socket DSNs)."""
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


async def create_database(admin: str, *, template: str | None = None, prefix: str = "faultline_t") -> str:
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    con = await asyncpg.connect(admin)
    try:
        if template:
            await con.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        else:
            await con.execute(f'CREATE DATABASE "{name}"')
    finally:
        await con.close()
    return name


async def drop_database(admin: str, name: str) -> None:
    con = await asyncpg.connect(admin)
    try:
        await con.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await con.close()
