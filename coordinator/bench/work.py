"""Where a run's work goes: counters read before and after the load phase, divided by its jobs.

Three sources, each read the same way for every system:

* Postgres (`PostgresProbe`): `pg_stat_database.xact_commit` of the run's own database (so other
  databases on a shared server do not count), its size on disk, the WAL position (`pg_current_wal_lsn()`, cluster-wide:
  other databases' writes do count), and the CPU of the server processes that did the run's work: the
  backends connected to the run's database plus the shared background processes (WAL writer,
  checkpointer, background writer). A PostgreSQL 15 backend flushes its statistics when it goes idle,
  but one that flushed less than a second before waits for its 10 s idle timeout instead, so the probe
  waits STATS_FLUSH_S_DEFAULT (--stats-wait-s) before reading the counters at either end, outside the
  timed window; a shorter wait can miss a backend's last second of commits.
* The coordinator's own counters (`scrape`), from its /metrics: gRPC messages by RPC and direction
  (`faultline_grpc_messages_total`) and statements by query (`faultline_db_statements_total`).
* /proc, for every process the run started (runner.py).
"""

from __future__ import annotations

import asyncio
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from coordinator.bench.stats import cpu_seconds

# Longest an idle backend keeps its statistics before pg_stat_database sees them (PostgreSQL 15's
# PGSTAT_IDLE_INTERVAL, 10 s), plus a margin.
STATS_FLUSH_S_DEFAULT = 10.5
SCRAPE_TIMEOUT_S = 5.0
# Server processes whose work is every database's (WAL, checkpoints): counted with each run's backends.
SHARED_BACKEND_TYPES = ("walwriter", "checkpointer", "background writer")

_PIDS_SQL = """
SELECT pid, datname IS NOT NULL AS own FROM pg_stat_activity
WHERE (datname = current_database() AND pid <> pg_backend_pid()) OR backend_type = ANY($1::text[])
"""
_COUNTERS_SQL = """
SELECT xact_commit, xact_rollback, pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::float8 AS wal,
       pg_database_size(current_database())::float8 AS size
FROM pg_stat_database WHERE datname = current_database()
"""


@dataclass(slots=True)
class PgSnapshot:
    """Postgres counters at one moment of a run."""

    commits: float = 0.0
    rollbacks: float = 0.0
    wal_bytes: float = 0.0
    size_bytes: float = 0.0  # the database on disk: tables, indexes, their free space
    cpu: dict[int, float] = field(default_factory=dict)  # server pid -> CPU seconds so far


class PostgresProbe:
    """One connection to the run's database, opened before the load phase; reads PgSnapshots."""

    # Transactions the probe's own reads add between two snapshots (the counters read, the pid list).
    OWN_COMMITS_PER_SNAPSHOT = 2

    def __init__(self, dsn: str, *, flush_wait_s: float = STATS_FLUSH_S_DEFAULT) -> None:
        self._dsn = dsn
        self._flush_wait_s = flush_wait_s
        self._con: Any = None

    async def __aenter__(self) -> PostgresProbe:
        import asyncpg

        self._con = await asyncpg.connect(self._dsn)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._con is not None:
            await self._con.close()

    async def pids(self) -> tuple[list[int], int]:
        """The server pids doing the run's work, and how many of them are connections to its database."""
        rows = await self._con.fetch(_PIDS_SQL, list(SHARED_BACKEND_TYPES))
        return [int(r["pid"]) for r in rows], sum(1 for r in rows if r["own"])

    async def cpu(self, pids: list[int]) -> dict[int, float]:
        out: dict[int, float] = {}
        for pid in pids:
            try:
                out[pid] = cpu_seconds(pid)
            except (OSError, ValueError, IndexError):
                continue  # the backend exited
        return out

    async def counters(self, snap: PgSnapshot) -> None:
        """Fill in the statistics counters (after the flush wait, so every backend's last work is in them)."""
        await asyncio.sleep(self._flush_wait_s)
        row = await self._con.fetchrow(_COUNTERS_SQL)
        snap.commits, snap.rollbacks, snap.wal_bytes, snap.size_bytes = (float(v) for v in row)

    @staticmethod
    def cpu_between(before: PgSnapshot, after: PgSnapshot) -> float:
        """CPU seconds of the run's server processes between two snapshots (a backend new since counts whole)."""
        return sum(v - before.cpu.get(pid, 0.0) for pid, v in after.cpu.items())


def scrape(metrics_addr: str) -> dict[str, float]:
    """The coordinator's counters from its /metrics: {"messages <rpc> <direction>": n, "statements <query>": n}."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://{metrics_addr}/metrics", timeout=SCRAPE_TIMEOUT_S) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "faultline_grpc_messages_total":
                out[f"messages {sample.labels['rpc']} {sample.labels['direction']}"] = sample.value
            elif sample.name == "faultline_db_statements_total":
                out[f"statements {sample.labels['query']}"] = sample.value
    return out


def add_counters(total: dict[str, float], part: dict[str, float]) -> None:
    for k, v in part.items():
        total[k] = total.get(k, 0.0) + v
