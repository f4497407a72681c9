"""Migrations apply from empty, concurrently without harm, and every named query prepares against the result."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

from coordinator.db.migrate import discover, migrate
from coordinator.db.queries import QUERIES, Cardinality, parse
from coordinator.db.store import MaintenanceSession, Store
from tests.helpers.db import create_database, drop_database, with_database


async def test_migrations_from_empty_concurrently(pg_admin: str) -> None:
    name = await create_database(pg_admin)
    try:
        dsn = with_database(pg_admin, name)
        cons = [await asyncpg.connect(dsn) for _ in range(4)]
        results = await asyncio.gather(*(migrate(c) for c in cons))
        applied = [r for r in results if r]
        assert len(applied) == 1, "exactly one migrator applies; the others see it done"
        assert applied[0] == [p.stem for p in discover()]
        rows = await cons[0].fetch("SELECT version FROM faultline_schema_migrations")
        assert [r["version"] for r in rows] == applied[0]
        assert await migrate(cons[0]) == []
        for c in cons:
            await c.close()
    finally:
        await drop_database(pg_admin, name)


async def test_every_query_prepares_and_is_used(db: Any) -> None:
    for q in QUERIES.values():
        if q.name.startswith("migrations_"):
            continue
        await db.prepare(q.sql)
    import inspect

    import coordinator.db.migrate as migrate_mod
    import coordinator.drills.checker as checker_mod

    # The drill checker (check_* queries) is the one caller outside Store and migrate; MaintenanceSession runs
    # VACUUM and ANALYZE on a connection of its own.
    source = (inspect.getsource(Store) + inspect.getsource(MaintenanceSession) + inspect.getsource(migrate_mod)
              + inspect.getsource(checker_mod))
    unused = [name for name in QUERIES if f'"{name}"' not in source]
    assert unused == [], f"queries defined but never called: {unused}"


def test_query_file_format_is_enforced() -> None:
    assert parse("-- name: a :one\n-- purpose\nSELECT 1;")["a"].cardinality is Cardinality.ONE
    for bad in (
        "-- name: a :one\nSELECT 1;",
        "-- name: a :one\n-- p\n",
        "-- name: a :one\n-- p\nSELECT 1;\n-- name: a :one\n-- p\nSELECT 2;",
    ):
        try:
            parse(bad)
        except Exception as exc:
            assert "query a" in str(exc)
        else:
            raise AssertionError(f"accepted {bad!r}")


async def test_claim_uses_partial_index_at_scale(db: Any) -> None:
    await db.execute("""
        INSERT INTO faultline_jobs (queue, kind, state, payload, max_attempts, attempts, finished_at)
        SELECT 'q', 'k', 'succeeded', '', 1, 1, now() FROM generate_series(1, 50000)""")
    await db.execute("INSERT INTO faultline_jobs (queue, kind, state, payload, max_attempts) "
                     "SELECT 'q', 'k', 'queued', '', 1 FROM generate_series(1, 100)")
    await db.execute("ANALYZE faultline_jobs")
    plan = "\n".join(r[0] for r in await db.fetch(
        "EXPLAIN SELECT id FROM faultline_jobs WHERE state = 'queued' AND queue = 'q' AND kind = ANY('{k}') "
        "ORDER BY priority DESC, id LIMIT 10 FOR UPDATE SKIP LOCKED"))
    assert "faultline_jobs_ready" in plan, plan
