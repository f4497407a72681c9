"""A pooled connection whose protocol state broke is answered as unavailability and never handed out again."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from coordinator.db.pool import create_pool
from coordinator.db.store import Store
from coordinator.errors import DatabaseUnavailableError


async def test_internal_client_error_is_unavailable_and_the_connection_is_replaced(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = await create_pool(dsn, max_size=1)
    store = Store(pool)
    await store.ping()
    async with pool.acquire() as con:
        broken = con._con  # the one connection of this pool
    real_fetchval = asyncpg.connection.Connection.fetchval

    async def fetchval(self: asyncpg.Connection[Any], *args: Any, **kwargs: Any) -> Any:
        if self is broken:  # what asyncpg raises when a cancelled query left the protocol mid-operation
            raise asyncpg.InternalClientError("cannot switch to state 12; another operation (2) is in progress")
        return await real_fetchval(self, *args, **kwargs)

    monkeypatch.setattr(asyncpg.connection.Connection, "fetchval", fetchval)
    with pytest.raises(DatabaseUnavailableError):
        await store.ping()
    assert broken.is_closed(), "the broken connection was terminated, not returned to the pool"
    await store.ping()  # the pool opened a fresh connection
    async with pool.acquire() as con:
        assert con._con is not broken
    await pool.close()
