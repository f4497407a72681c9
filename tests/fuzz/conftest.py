"""Shared pieces of the bad-input tests: the statuses a bad request may get, and the DB audit after it."""

from __future__ import annotations

from typing import Any

import grpc

from coordinator.drills.checker import _q

# A bad request is refused with one of these; INTERNAL or UNKNOWN would be a bug.
CLIENT_ERRORS = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                           grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.OUT_OF_RANGE})


async def assert_no_bad_rows(db: Any) -> None:
    """The checker's row-level invariants hold (no stored row contradicts another)."""
    for name in ("check_attempts_over_max", "check_succeeded_completions", "check_attempt_history"):
        assert await _q(db, name) == [], name
    assert await _q(db, "check_running_without_live_lease", 60_000) == []
    bad = await db.fetch(
        "SELECT id, kind, queue FROM faultline_jobs WHERE kind !~ '^[A-Za-z0-9_.:-]{1,128}$' "
        "OR queue !~ '^[A-Za-z0-9_.:-]{1,128}$' OR priority NOT BETWEEN -1000 AND 1000 "
        "OR max_attempts NOT BETWEEN 1 AND 1000")
    assert bad == [], bad
