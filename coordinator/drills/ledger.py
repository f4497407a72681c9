"""The effects ledger: the drills' stand-in for a user's downstream system (statements in ledger.sql).

Drill handlers call register() when an attempt starts and apply() when it does its side effect,
both with the attempt's fencing token. The ledger refuses a token below the highest it has seen
(stale), and applies a job's effect at most once (idempotent by job id), logging every write.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from coordinator.db import queries
from coordinator.db.queries import Query, parse

LEDGER_PATH = Path(__file__).with_name("ledger.sql")
LEDGER: dict[str, Query] = parse(LEDGER_PATH.read_text())


class LedgerVerdict(StrEnum):
    """What the downstream did with one write."""

    APPLIED = "applied"
    ALREADY_APPLIED = "already_applied"
    STALE = "stale"
    REGISTERED = "registered"


@dataclass(frozen=True, slots=True)
class LedgerAnswer:
    """The verdict, and the token of the attempt whose effect is applied (None: not yet)."""

    verdict: LedgerVerdict
    applied_token: int | None


async def run(con: Any, name: str, *args: Any) -> Any:
    """Run one ledger statement on an asyncpg connection or pool."""
    return await queries.run(con, LEDGER[name], *args)


async def install(con: Any) -> None:
    await run(con, "ledger_schema")


async def register(con: Any, job_id: int, token: int, worker_id: str) -> LedgerAnswer:
    row = await run(con, "ledger_register", job_id, token, worker_id)
    return LedgerAnswer(LedgerVerdict(row["verdict"]), row["applied_token"])


async def apply(con: Any, job_id: int, token: int, worker_id: str) -> LedgerAnswer:
    row = await run(con, "ledger_apply", job_id, token, worker_id)
    return LedgerAnswer(LedgerVerdict(row["verdict"]), row["applied_token"])
