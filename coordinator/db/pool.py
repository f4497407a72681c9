"""Creates the asyncpg pool: JSON codecs, statement timeout, application name."""

from __future__ import annotations

import json
from typing import Any

import asyncpg

APPLICATION_NAME = "faultline-coordinator"
STATEMENT_TIMEOUT_MS = 30_000
# Statements are prepared once per connection and cached; the hot queries stay prepared.
STATEMENT_CACHE_SIZE = 256


async def _init(con: asyncpg.Connection[Any]) -> None:
    await con.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _reset(con: asyncpg.Connection[Any]) -> None:
    """On release to the pool: undo session state only when some is left (an open transaction).

    asyncpg's default reset sends RESET ALL / UNLISTEN / advisory-unlock on every release, which is a
    second round trip for every Store call. Store runs single autocommit statements and keeps no
    session state (migrate() unlocks its advisory lock itself), so only a transaction left open by an
    error needs undoing.
    """
    if con.is_in_transaction():
        await con.reset()


async def create_pool(dsn: str, *, max_size: int) -> asyncpg.Pool[Any]:
    """A pool that starts empty, so the coordinator can come up before Postgres does."""
    return await asyncpg.create_pool(
        dsn,
        min_size=0,
        max_size=max_size,
        init=_init,
        reset=_reset,
        statement_cache_size=STATEMENT_CACHE_SIZE,
        max_inactive_connection_lifetime=300.0,
        server_settings={
            "application_name": APPLICATION_NAME,
            "statement_timeout": str(STATEMENT_TIMEOUT_MS),
        },
    )
