"""Fixtures for every suite: a real Postgres (fail loudly when absent), a database per test, real coordinators."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest

from coordinator.app import Coordinator
from coordinator.config import Config, RetryDefaults
from coordinator.db.migrate import migrate
from tests.helpers.db import admin_dsn, create_database, drop_database, with_database
from tests.helpers.procs import TEST_METRICS_SAMPLE_MS, Proc, coordinator_proc, free_port
from tests.helpers.wait import eventually

# Test defaults: short leases and backoffs so that failure paths finish in seconds.
TEST_LEASE_TTL_MS = 2_000
TEST_RETRY = RetryDefaults(base_ms=50, max_ms=500, multiplier=2.0, jitter=0.1)


@pytest.fixture(scope="session")
def pg_admin() -> str:
    """The admin DSN; a missing Postgres is an error, never a skip."""
    dsn = admin_dsn()

    async def probe() -> None:
        con = await asyncpg.connect(dsn, timeout=10)
        await con.close()

    try:
        asyncio.run(probe())
    except Exception as exc:  # re-raised as a loud failure with the cause
        pytest.exit(f"PostgreSQL is required for the tests and did not answer at {dsn}: {exc!r}", returncode=3)
    return dsn


@pytest.fixture(scope="session")
def template_db(pg_admin: str) -> Any:
    """One migrated database per session; tests clone it (CREATE DATABASE ... TEMPLATE)."""

    async def make() -> str:
        name = await create_database(pg_admin, prefix="faultline_tpl")
        con = await asyncpg.connect(with_database(pg_admin, name))
        try:
            await migrate(con)
        finally:
            await con.close()
        return name

    name = asyncio.run(make())
    yield name
    asyncio.run(drop_database(pg_admin, name))


@pytest.fixture
async def dsn(pg_admin: str, template_db: str) -> AsyncIterator[str]:
    """A fresh migrated database for this test."""
    name = await create_database(pg_admin, template=template_db)
    yield with_database(pg_admin, name)
    await drop_database(pg_admin, name)


@pytest.fixture
async def db(dsn: str) -> AsyncIterator[asyncpg.Connection[Any]]:
    """A raw connection for setup and assertions."""
    con = await asyncpg.connect(dsn)
    yield con
    await con.close()


def test_config(dsn: str, **overrides: Any) -> Config:
    base = Config(
        database_url=dsn,
        grpc_addr="127.0.0.1:0",
        metrics_addr=None,
        retry=TEST_RETRY,
        lease_ttl_ms=TEST_LEASE_TTL_MS,
        drain_grace=__import__("datetime").timedelta(seconds=2),
        reaper_interval=__import__("datetime").timedelta(milliseconds=100),
        # ListQueues serves the sampler's last sample: tests wait for a fresh one (tests.helpers.wait).
        metrics_sample_interval=__import__("datetime").timedelta(milliseconds=TEST_METRICS_SAMPLE_MS),
    )
    return replace(base, **overrides)


@pytest.fixture
async def coordinator_factory(dsn: str) -> AsyncIterator[Callable[..., Awaitable[Coordinator]]]:
    """Start in-process coordinators on this test's database (config overrides as keyword arguments)."""
    started: list[Coordinator] = []

    async def start(**overrides: Any) -> Coordinator:
        c = Coordinator(test_config(dsn, **overrides))
        await c.start()
        started.append(c)
        return c

    yield start
    for c in reversed(started):
        await bounded(c.stop(), "coordinator.stop()")


async def bounded(aw: Awaitable[Any], what: str, timeout: float = 30.0) -> Any:
    """Await a teardown step; if it hangs, fail with every task's stack instead of hanging the run."""
    try:
        return await asyncio.wait_for(aw, timeout)
    except TimeoutError:
        import io

        buf = io.StringIO()
        for task in asyncio.all_tasks():
            task.print_stack(file=buf)
        raise AssertionError(f"{what} did not finish within {timeout}s; tasks:\n{buf.getvalue()}") from None


@pytest.fixture
async def coordinator(coordinator_factory: Callable[..., Awaitable[Coordinator]]) -> Coordinator:
    return await coordinator_factory()


@pytest.fixture
def addr(coordinator: Coordinator) -> str:
    return f"127.0.0.1:{coordinator.port}"


async def wait_serving(target: str, timeout: float = 30.0) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async def serving() -> bool:
        try:
            async with grpc.aio.insecure_channel(target) as ch:
                resp = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=1)
                return resp.status == health_pb2.HealthCheckResponse.SERVING
        except grpc.aio.AioRpcError:
            return False

    await eventually(serving, timeout=timeout, message=f"coordinator at {target} SERVING")


@pytest.fixture
async def coordinator_proc_factory(dsn: str, tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Proc]]]:
    """Start real coordinator processes (python -m coordinator) that tests can SIGKILL."""
    procs: list[Proc] = []

    async def start(
        *, port: int | None = None, env: dict[str, str] | None = None, target_dsn: str | None = None
    ) -> Proc:
        p = coordinator_proc(dsn=target_dsn or dsn, port=port or free_port(), tmp=tmp_path, env={
            "FAULTLINE_LEASE_TTL_MS": str(TEST_LEASE_TTL_MS),
            "FAULTLINE_BACKOFF_BASE_MS": str(TEST_RETRY.base_ms),
            "FAULTLINE_BACKOFF_MAX_MS": str(TEST_RETRY.max_ms),
            "FAULTLINE_REAPER_INTERVAL_MS": "100",
            "FAULTLINE_DRAIN_GRACE_MS": "2000",
            **(env or {}),
        })
        p.start()
        procs.append(p)
        p.extra["addr"] = p.env["FAULTLINE_GRPC_ADDR"]
        try:
            await wait_serving(str(p.extra["addr"]))
        except AssertionError:
            raise AssertionError(f"coordinator did not start:\n{p.output()[-4000:]}") from None
        return p

    yield start
    for p in procs:
        p.stop()


if os.environ.get("FAULTLINE_TEST_DEBUG"):
    import logging

    from coordinator import logs

    logs.setup("DEBUG")
    logging.getLogger("asyncio").setLevel(logging.INFO)
