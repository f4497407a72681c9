"""Bulk actions' mechanics: the chunked, time-boxed walk over matching jobs and its resume tokens.

A bulk call (BulkCancelJobs, BulkRequeueJobs) never holds one long transaction. It walks the matching
jobs newest first, CHUNK_JOBS at a time, each chunk one short statement (its rows locked in id order,
see queries.sql); the cursor is the lowest id seen (the next chunk takes id < cursor). After TIME_BUDGET_S
of wall time it stops between chunks and answers with a resume token:

    call 1: chunk, chunk, ... (budget spent) -> counts, resume_token(cursor, fingerprint)
    call 2 (same filter, that token): chunk, ... (a short chunk: nothing older) -> counts, ""

The token carries the cursor and a fingerprint of the action and its target (ids or filter), so it
cannot be replayed against another filter. Jobs that start to match after the walk passed them (newer
ids, or jobs that changed state) are not revisited: a call acts on what it sees, as CancelJob does.
A client that gives up mid-call (deadline, disconnect) leaves the chunks done so far done; it may call
again without the token (the finished jobs are then counted as skipped).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from coordinator.errors import InvalidArgumentError
from coordinator.model import BulkRow, BulkTarget, positive_bigint

# Jobs per chunk: one short statement each (and at most this many rows locked at once).
CHUNK_JOBS = 500
# Wall time one call spends before it answers with a resume token (between chunks, so a call may run one
# chunk past it); well inside any client's deadline.
TIME_BUDGET_S = 3.0
TOKEN_VERSION = "b1"
FINGERPRINT_HEX = 16

# One chunk: (cursor: only ids below it, None for the top; limit) -> the rows it looked at, newest first.
Chunk = Callable[[int | None, int], Awaitable[list[BulkRow]]]


def fingerprint(action: str, target: BulkTarget) -> str:
    """A short digest of what a token may resume: the action (with its parameters, such as a requeue's extra
    attempts), and the ids or every field of the filter."""
    f = target.filter
    canonical = {
        "action": action,
        "ids": list(target.ids) if target.ids is not None else None,
        "filter": None if f is None else {
            "queue": f.queue, "kind": f.kind, "state": f.state.value if f.state else None,
            "labels": [list(p) for p in f.labels]},
    }
    digest = hashlib.sha256(json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    return digest[:FINGERPRINT_HEX]


def encode_token(cursor: int, fp: str) -> str:
    return base64.urlsafe_b64encode(f"{TOKEN_VERSION}:{cursor}:{fp}".encode()).decode()


def decode_token(token: str, fp: str, field: str = "resume_token") -> int | None:
    """The cursor a token carries (None for ""); INVALID_ARGUMENT naming field when malformed or for another filter."""
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token.encode("ascii")).decode("ascii")
    except (ValueError, UnicodeError, binascii.Error):
        raise InvalidArgumentError(field, "is not a token this server issued") from None
    version, _, rest = raw.partition(":")
    cursor_text, _, token_fp = rest.partition(":")
    cursor = positive_bigint(cursor_text)
    if version != TOKEN_VERSION or cursor is None or len(token_fp) != FINGERPRINT_HEX:
        raise InvalidArgumentError(field, "is not a token this server issued")
    if token_fp != fp:
        raise InvalidArgumentError(field, "was issued for another action, filter or list of ids: "
                                          "resume with the request that returned it")
    return cursor


async def _step(chunk: Chunk, cursor: int | None, limit: int, on_chunk: Callable[[list[BulkRow]], None]
                ) -> list[BulkRow]:
    """One chunk and its follow-up together: shielded by the caller, so a call cancelled by its client
    mid-chunk still tells the workers of the jobs that chunk committed (as grants.Handoff shields its insert)."""
    rows = await chunk(cursor, limit)
    on_chunk(rows)
    return rows


@dataclass(frozen=True, slots=True)
class Walk:
    """What one call's walk saw: the rows of every chunk, ids named that name no job, and where to resume."""

    rows: list[BulkRow]
    missing: int
    next_cursor: int | None  # None: done


async def walk(target: BulkTarget, cursor: int | None, chunk: Chunk,
               on_chunk: Callable[[list[BulkRow]], None]) -> Walk:
    """Run chunks from cursor until the matching jobs run out or TIME_BUDGET_S is spent.

    on_chunk sees each chunk's rows as soon as its statement returns (to tell workers, wake queues).
    The module constants are read per call, so a test may shrink them.
    """
    limit = CHUNK_JOBS
    deadline = time.monotonic() + TIME_BUDGET_S
    seen: list[BulkRow] = []
    missing = 0
    while True:
        rows = await asyncio.shield(_step(chunk, cursor, limit, on_chunk))
        seen.extend(rows)
        final = len(rows) < limit
        low = rows[-1].id if rows else None
        if target.ids is not None:
            # Named ids in this chunk's range that no row came back for name no job.
            in_range = sum(1 for i in target.ids
                           if (cursor is None or i < cursor) and (final or low is None or i >= low))
            missing += in_range - len(rows)
        if final or low is None:
            return Walk(seen, missing, None)
        cursor = low
        if time.monotonic() >= deadline:
            return Walk(seen, missing, cursor)
