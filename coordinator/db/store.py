"""Store: one typed async method per named query; turns connection failures into DatabaseUnavailableError."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, ClassVar

import asyncpg

from coordinator import metrics
from coordinator.auth.keys import KeyRecord
from coordinator.config import RetryDefaults
from coordinator.db.pool import APPLICATION_NAME
from coordinator.db.queries import QUERIES, run
from coordinator.errors import DatabaseUnavailableError, FaultlineError
from coordinator.model import (
    UNCHANGED,
    BulkRow,
    BulkTarget,
    DueSchedule,
    Job,
    JobSpec,
    JobState,
    LeaseKey,
    Outcome,
    QueueSettings,
    ScheduleRow,
    SettingsChange,
)

logger = logging.getLogger(__name__)

# One counter child per named query, looked up once: `faultline bench` reads statements per job from them.
_STATEMENTS = {name: metrics.DB_STATEMENTS.labels(name) for name in QUERIES}

# How long a caller waits for a pooled connection before the coordinator answers UNAVAILABLE
# (back-pressure instead of an unbounded queue of waiters when Postgres refuses connections).
POOL_ACQUIRE_TIMEOUT_S = 5.0

# How often a limited claim that found its snapshot stale (another claim of the queue committed while it
# waited for the queue's lock) is run again at once; past it, the dispatcher claims again after the pause.
STALE_CLAIM_RETRIES = 8
STALE_CLAIM_PAUSE = timedelta(milliseconds=5)

# The most bytes of an attempt's error that GetJob's audit carries (the SQL reads at most as many characters).
ATTEMPT_ERROR_MAX_BYTES = 4096

# How often a statement that Postgres chose as a deadlock victim is run again before it is an error.
DEADLOCK_RETRIES = 3

# Errors that mean "Postgres is not reachable right now", as opposed to a bug in a statement.
_UNAVAILABLE = (
    OSError,
    asyncpg.InternalClientError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.ConnectionFailureError,
)


class StoreError(FaultlineError):
    """A statement failed."""


class StoreDataError(StoreError):
    """A statement refused one of its values (SQLSTATE class 22: out of a column's range, bad text, ...).

    The edge validates every value before it reaches a statement, so this is the second line of
    defence: a batching actor that sees it writes the batch's items one by one (actors/batching.py).
    """


@dataclass(frozen=True, slots=True)
class Completion:
    """A worker's successful end of a lease."""

    key: LeaseKey
    worker_id: str
    result: bytes


@dataclass(frozen=True, slots=True)
class Failure:
    """A worker's failed end of a lease."""

    key: LeaseKey
    worker_id: str
    error: str
    retryable: bool
    delay_ms: int | None


@dataclass(frozen=True, slots=True)
class ProgressUpdate:
    """A worker's latest progress for a lease."""

    key: LeaseKey
    worker_id: str
    fraction: float
    message: str
    details: bytes


@dataclass(frozen=True, slots=True)
class Verdict:
    """Why a fenced write matched nothing, or that it was accepted."""

    outcome: Outcome
    message: str = ""
    result: bytes | None = None
    state: JobState | None = None
    # True when another lease took the job over (a newer token, or another holder): the frame came from
    # a zombie. False for the benign race of a heartbeat naming a lease whose own completion just landed.
    superseded: bool = False


@dataclass(frozen=True, slots=True)
class LimitedClaim:
    """What claim_jobs_limited leased, and why it leased no more."""

    jobs: list[tuple[Job, int]]
    paused: bool
    # Cut short by the rate limit: the queue is not empty, and its next token is due in retry_in.
    throttled: bool
    # When to claim again although nothing else may wake the dispatcher (a token due; a claim that stayed
    # stale under contention); None: wait for a wake-up.
    retry_in: timedelta | None


def _unset(value: object) -> object:
    return None if value is UNCHANGED else value


def _bulk_args(target: BulkTarget) -> tuple[Any, ...]:
    """$1-$5 of the bulk queries: ids, or the filter's queue, kind, state and labels."""
    f = target.filter
    if f is None:
        return list(target.ids or ()), None, None, None, None
    return None, f.queue, f.kind, f.state.value if f.state else None, f.labels_dict


def _job_of(item: LeaseKey | Completion | Failure | ProgressUpdate) -> int:
    """Sort key of batched lease writes: every batch locks its job rows in id order, so two batches over the
    same leases (a heartbeat and a completion of one worker, say) cannot deadlock each other."""
    return item.job_id if isinstance(item, LeaseKey) else item.key.job_id


class Store:
    """The coordinator's only door to Postgres."""

    def __init__(self, pool: asyncpg.Pool[Any]) -> None:
        self._pool = pool

    @property
    def pool(self) -> asyncpg.Pool[Any]:
        return self._pool

    async def _run(self, name: str, *args: Any) -> Any:
        q = QUERIES[name]
        counter = _STATEMENTS[name]
        attempt = 0
        while True:
            counter.inc()
            try:
                async with self._pool.acquire(timeout=POOL_ACQUIRE_TIMEOUT_S) as con:
                    try:
                        return await run(con, q, *args)
                    except (asyncpg.InternalClientError, asyncpg.InterfaceError):
                        # The connection's protocol state is broken (a query cancelled mid-flight while
                        # Postgres went away, say): never hand it out again; the pool opens a new one.
                        con.terminate()
                        raise
            except asyncpg.DeadlockDetectedError as exc:
                # Every statement is one autocommit transaction, so the victim of a deadlock had no
                # effect and is safe to run again; batches lock in job-id order (_by_job), so this is
                # the fallback for plans that do not, not the common path.
                attempt += 1
                if attempt > DEADLOCK_RETRIES:
                    raise StoreError(f"{name} failed: {exc}") from exc
                logger.warning("statement retried after a deadlock", extra={"query": name, "attempt": attempt})
            except _UNAVAILABLE as exc:
                raise DatabaseUnavailableError(f"{name}: {type(exc).__name__}: {exc}") from exc
            except asyncpg.DataError as exc:
                raise StoreDataError(f"{name} refused a value: {exc}") from exc
            except asyncpg.PostgresError as exc:
                raise StoreError(f"{name} failed: {exc}") from exc

    async def ping(self) -> None:
        await self._run("ping")

    # -- producers -----------------------------------------------------------------------------

    async def insert_jobs(
        self, specs: Sequence[JobSpec], *, holders: Sequence[str | None] | None = None, lease_ttl_ms: int = 0,
        submitted_by: str | None = None,
        holder_labels: Sequence[dict[str, str] | None] | None = None,
    ) -> list[tuple[Job, bool]]:
        """Insert in one statement; an existing idempotency key yields the stored job with created=False.

        holders[i], when given and not None, offers job i to that worker (direct hand-off), whose hello
        labels are holder_labels[i]: it comes back running under fencing token 1 if nothing queued in its
        queue would be dispatched before it and the grant policy allows it (the queue is not limited, the
        worker has the job's required labels), and queued (or scheduled) as usual otherwise.
        lease_ttl_ms is the lease of jobs without a heartbeat timeout.
        """
        cols: list[list[Any]] = [[] for _ in range(16)]
        for s in specs:
            for i, v in enumerate((
                s.queue, s.kind, s.payload, s.idempotency_key, s.max_attempts, s.priority, s.run_at,
                s.backoff_initial_ms, s.backoff_max_ms, s.backoff_multiplier, s.backoff_jitter,
                s.execution_timeout_ms, s.heartbeat_timeout_ms, s.schedule_to_start_ms, s.labels, s.trace_context,
            )):
                cols[i].append(v)
        offered = list(holders) if holders is not None else [None] * len(specs)
        if len(offered) != len(specs):
            raise ValueError("holders must name one worker (or None) per spec")
        offered_labels = list(holder_labels) if holder_labels is not None else [None] * len(specs)
        rows = await self._run("insert_jobs", *cols, offered, lease_ttl_ms,
                               [s.concurrency_key for s in specs], [s.required_labels for s in specs],
                               offered_labels, submitted_by,
                               [s.dedup_period_ms for s in specs], [s.dedup_unfinished for s in specs])
        out: list[tuple[Job, bool] | None] = [None] * len(specs)
        missing: dict[tuple[str, str], list[int]] = {}  # (queue, idempotency key) -> indexes
        for row in rows:
            idx = row["ord"] - 1
            if row["id"] is None:
                key = specs[idx].idempotency_key
                assert key is not None, "only keyed rows can conflict"
                missing.setdefault((specs[idx].queue, key), []).append(idx)
            else:
                out[idx] = (Job.inserted(specs[idx], row), True)
        if missing and await self.release_dedup_keys(list(missing)):
            # Some keys named jobs whose dedup window is over (queries.sql release_dedup_keys): those keys are
            # free now, so the rows that hit them are inserted again (a first row of each key creates its job).
            retry = sorted(i for idxs in missing.values() for i in idxs)
            again = await self.insert_jobs([specs[i] for i in retry],
                                           holders=[offered[i] for i in retry], lease_ttl_ms=lease_ttl_ms)
            for i, result in zip(retry, again, strict=True):
                out[i] = result
            return [o for o in out if o is not None]
        if missing:
            # Rows that lost the race to an earlier submit (or to an earlier row of this batch).
            pairs = list(missing)
            existing = {(r["queue"], r["idempotency_key"]): Job.from_record(r) for r in await self._run(
                "get_jobs_by_keys", [q for q, _ in pairs], [k for _, k in pairs])}
            for key, idxs in missing.items():
                job = existing.get(key)
                if job is None:
                    raise StoreError(f"idempotency key {key!r} conflicted but no job holds it")
                for idx in idxs:
                    out[idx] = (job, False)
            # Within one batch, the first row with a key created the job; later ones did not.
        return [o for o in out if o is not None]

    async def get_job(self, job_id: int) -> Job | None:
        row = await self._run("get_job", job_id)
        return None if row is None else Job.from_record(row)

    async def list_jobs(
        self, *, queue: str | None, kind: str | None, state: JobState | None, before_id: int | None, limit: int,
        full: bool = False, budget_bytes: int = 0, labels: dict[str, str] | None = None,
        idempotency_key: str | None = None,
    ) -> list[Job]:
        """A page, newest first. full=False (BASIC) never reads payload, result or progress details (they come
        back empty). full=True stops after the first job that brings the page's bytes to budget_bytes.
        labels: only jobs carrying all of them (None or empty: no filter)."""
        args = (queue, kind, state.value if state else None, before_id, limit)
        wanted = labels or None
        if full:
            rows = await self._run("list_jobs", *args, budget_bytes, wanted, idempotency_key)
        else:
            rows = await self._run("list_jobs_basic", *args, wanted, idempotency_key)
        return [Job.from_record(r) for r in rows]

    async def cancel_job(self, job_id: int) -> Job | None:
        row = await self._run("cancel_job", job_id)
        return None if row is None else Job.from_record(row)

    async def requeue_job(self, job_id: int, extra_attempts: int) -> Job | None:
        row = await self._run("requeue_job", job_id, extra_attempts)
        return None if row is None else Job.from_record(row)

    async def bulk_cancel_jobs(self, target: BulkTarget, *, identity: str | None, before_id: int | None,
                               limit: int) -> list[BulkRow]:
        """Cancel one chunk (newest first, below before_id, at most limit jobs) in one short statement."""
        rows = await self._run("bulk_cancel_jobs", *_bulk_args(target), identity, before_id, limit)
        return [BulkRow(id=r["id"], changed=r["changed"], queue=r["queue"],
                        state=JobState(r["state"]) if r["state"] is not None else None,
                        cancel_requested=bool(r["cancel_requested"]), lease_token=r["lease_token"] or 0)
                for r in rows]

    async def bulk_requeue_jobs(self, target: BulkTarget, *, identity: str | None, extra_attempts: int,
                                before_id: int | None, limit: int) -> list[BulkRow]:
        """Requeue one chunk (newest first, below before_id, at most limit jobs) in one short statement."""
        rows = await self._run("bulk_requeue_jobs", *_bulk_args(target), identity, extra_attempts, before_id, limit)
        return [BulkRow(id=r["id"], changed=r["changed"], queue=r["queue"],
                        state=JobState.QUEUED if r["changed"] else None) for r in rows]

    async def job_queues(self, ids: Sequence[int]) -> dict[int, str]:
        """The queue of each named job that exists."""
        return {r["id"]: r["queue"] for r in await self._run("job_queues", list(ids))}

    # -- leases --------------------------------------------------------------------------------

    async def claim_jobs(
        self, *, queue: str, kinds: Sequence[str], slots: Sequence[str], lease_ttl_ms: int,
        labels: dict[str, str] | None = None,
    ) -> list[tuple[Job, int]]:
        """Lease up to len(slots) jobs of a queue that is not limited, for workers with these labels;
        returns each job with its 0-based slot index."""
        rows = await self._run("claim_jobs", queue, list(kinds), len(slots), list(slots), lease_ttl_ms, labels or {})
        return [(Job.claimed(r), r["slot"] - 1) for r in rows]

    async def claim_jobs_limited(
        self, *, queue: str, kinds: Sequence[str], slots: Sequence[str], lease_ttl_ms: int,
        labels: dict[str, str] | None = None,
    ) -> LimitedClaim:
        """Lease up to len(slots) jobs of a limited queue under its settings row's lock (see queries.sql).

        A claim whose snapshot predated another limited claim of the queue leases nothing and says so
        (stale); it is run again at once, up to STALE_CLAIM_RETRIES times (each retry follows a claim that
        committed, so under contention they converge)."""
        for _ in range(STALE_CLAIM_RETRIES):
            rows = await self._run("claim_jobs_limited", queue, list(kinds), len(slots), list(slots), lease_ttl_ms,
                                   labels or {})
            head = rows[0]
            if not head["stale"]:
                break
        return LimitedClaim(
            jobs=[(Job.claimed(r), r["slot"] - 1) for r in rows if r["id"] is not None],
            paused=head["paused"], throttled=head["throttled"],
            retry_in=timedelta(milliseconds=head["refill_ms"]) if head["refill_ms"] is not None
            else (STALE_CLAIM_PAUSE if head["stale"] else None),
        )

    # -- flow control settings -------------------------------------------------------------------

    async def queue_settings(self) -> list[QueueSettings]:
        return [QueueSettings.from_record(r) for r in await self._run("queue_settings_all")]

    async def pause_queue(self, queue: str, *, paused: bool) -> QueueSettings:
        return QueueSettings.from_record(await self._run("pause_queue", queue, paused))

    async def set_queue_settings(self, queue: str, change: SettingsChange) -> QueueSettings:
        return QueueSettings.from_record(await self._run(
            "set_queue_settings", queue,
            change.per_key_concurrency is not UNCHANGED, _unset(change.per_key_concurrency),
            change.max_running is not UNCHANGED, _unset(change.max_running),
            change.rate_per_s is not UNCHANGED, _unset(change.rate_per_s),
            change.burst is not UNCHANGED, _unset(change.burst),
        ))

    async def queue_flow_waiting(self) -> list[Any]:
        """Per queue: ready jobs waiting on a key at its cap, and ready jobs requiring worker labels."""
        return list(await self._run("queue_flow_waiting"))

    async def release_leases(self, keys: Sequence[LeaseKey], *, holder: str | None = None) -> list[Any]:
        """Put leases whose handler never ran back in the queue, uncounted; returns (id, queue) of each released.

        holder=None: the coordinator's own undo of a grant that never reached its worker. A worker's
        Release passes itself as holder, so it can only hand back what it holds.
        """
        keys = sorted(keys, key=_job_of)
        return list(await self._run("release_leases", [k.job_id for k in keys], [k.token for k in keys],
                                    [holder] * len(keys)))

    async def resume_leases(
        self, keys: Sequence[LeaseKey], *, worker_id: str, lease_ttl_ms: int
    ) -> list[Any]:
        keys = sorted(keys, key=_job_of)
        return list(await self._run(
            "resume_leases", [k.job_id for k in keys], [k.token for k in keys], worker_id, lease_ttl_ms
        ))

    async def extend_leases(
        self, keys: Sequence[tuple[LeaseKey, str]], *, lease_ttl_ms: int
    ) -> dict[LeaseKey, Any]:
        """Extend (lease, holder) pairs; returns the rows of those still current."""
        keys = sorted(keys, key=lambda kw: kw[0].job_id)
        rows = await self._run(
            "extend_leases", [k.job_id for k, _ in keys], [k.token for k, _ in keys], [w for _, w in keys],
            lease_ttl_ms,
        )
        return {LeaseKey(r["id"], r["lease_token"]): r for r in rows}

    async def record_progress(self, items: Sequence[ProgressUpdate], *, lease_ttl_ms: int) -> dict[LeaseKey, Any]:
        items = sorted(items, key=_job_of)
        rows = await self._run(
            "record_progress",
            [p.key.job_id for p in items], [p.key.token for p in items], [p.worker_id for p in items],
            [p.fraction for p in items],
            [p.message for p in items], [p.details for p in items], lease_ttl_ms,
        )
        return {LeaseKey(r["id"], r["lease_token"]): r for r in rows}

    async def complete_jobs(self, items: Sequence[Completion]) -> list[Any]:
        items = sorted(items, key=_job_of)
        return list(await self._run(
            "complete_jobs", [c.key.job_id for c in items], [c.key.token for c in items],
            [c.worker_id for c in items], [c.result for c in items],
        ))

    async def fail_jobs(self, items: Sequence[Failure], retry: RetryDefaults) -> list[Any]:
        items = sorted(items, key=_job_of)
        return list(await self._run(
            "fail_jobs",
            [f.key.job_id for f in items], [f.key.token for f in items], [f.worker_id for f in items],
            [f.error for f in items],
            [f.retryable for f in items], [f.delay_ms for f in items],
            retry.base_ms, retry.max_ms, retry.multiplier, retry.jitter,
        ))

    async def classify(self, keys: Sequence[LeaseKey], *, closing_outcome: str | None) -> dict[LeaseKey, Verdict]:
        """Explain fenced writes that matched nothing. closing_outcome is the attempt outcome that
        the frame would have written ('succeeded', 'failed'); finding it means the frame is a repeat."""
        rows = await self._run("classify_leases", [k.job_id for k in keys], [k.token for k in keys])
        verdicts: dict[LeaseKey, Verdict] = {}
        for r in rows:
            key = LeaseKey(r["id"], r["token"])
            state = JobState(r["state"]) if r["state"] is not None else None
            if state is None:
                verdicts[key] = Verdict(Outcome.NOT_FOUND, f"job {key.job_id} does not exist")
            elif closing_outcome is not None and r["outcome"] in (closing_outcome, "cancelled"):
                verdicts[key] = Verdict(
                    Outcome.DUPLICATE, f"attempt with token {key.token} already ended {r['outcome']}",
                    result=r["result"] if r["outcome"] == "succeeded" else None, state=state,
                )
            elif state is JobState.CANCELLED:
                verdicts[key] = Verdict(Outcome.CANCELLED, f"job {key.job_id} was cancelled", state=state)
            elif r["current_token"] == key.token and state is JobState.RUNNING:
                verdicts[key] = Verdict(
                    Outcome.STALE_LEASE, f"lease {key.lease_id} is held by another worker", state=state,
                    superseded=True,
                )
            elif r["current_token"] != key.token:
                verdicts[key] = Verdict(
                    Outcome.STALE_LEASE,
                    f"stale lease: token {key.token} is not the job's current token {r['current_token']}"
                    + (f"; that attempt ended {r['outcome']}" if r["outcome"] else ""),
                    state=state,
                    superseded=True,
                )
            else:
                verdicts[key] = Verdict(
                    Outcome.STALE_LEASE, f"stale lease: job is {state.value}, not running", state=state
                )
        return verdicts

    async def leases_not_held(self, held: Sequence[tuple[LeaseKey, str]]) -> list[tuple[LeaseKey, str]]:
        """Of (lease, holder) pairs, those that are not the job's current running lease held by that holder."""
        rows = await self._run(
            "leases_not_held", [k.job_id for k, _ in held], [k.token for k, _ in held], [w for _, w in held]
        )
        return [(LeaseKey(r["id"], r["token"]), r["holder"]) for r in rows]

    async def expire_leases(self, *, limit: int, retry: RetryDefaults) -> list[Any]:
        return list(await self._run(
            "expire_leases", limit, retry.base_ms, retry.max_ms, retry.multiplier, retry.jitter
        ))

    async def expire_start_deadlines(self, *, limit: int) -> list[Any]:
        return list(await self._run("expire_start_deadlines", limit))

    async def promote_due(self, *, limit: int) -> list[Any]:
        return list(await self._run("promote_due", limit))

    async def next_due_in(self) -> float | None:
        """Seconds until the next scheduled or retrying job is due, by Postgres' clock."""
        value: float | None = await self._run("next_due_in")
        return value

    # -- step guards ---------------------------------------------------------------------------

    async def get_step(self, key: LeaseKey, worker_id: str, step: str) -> tuple[bool, bool, bytes | None] | None:
        """(lease current, step found, result), or None when the job does not exist."""
        row = await self._run("get_step", key.job_id, key.token, step, worker_id)
        return None if row is None else (bool(row["current"]), bool(row["found"]), row["result"])

    async def record_step(self, key: LeaseKey, worker_id: str, step: str, result: bytes) -> tuple[bool, bytes | None]:
        """(lease current, stored result); the first write for a step wins."""
        row = await self._run("record_step", key.job_id, key.token, step, result, worker_id)
        if not row["current"]:
            return False, None
        if row["inserted"] is not None:
            return True, bytes(row["inserted"])
        stored: bytes | None = await self._run("get_step_result", key.job_id, step)
        return True, stored

    async def notify_ready(self, payload: str) -> None:
        """Announce ready work to every listening coordinator (payload format: actors/peers.py)."""
        await self._run("notify_ready", payload)

    # -- operators -----------------------------------------------------------------------------

    async def queue_depths(self) -> list[Any]:
        return list(await self._run("queue_depths"))

    async def oldest_ready(self) -> list[Any]:
        return list(await self._run("oldest_ready"))

    # -- bench only (scripts/console_bench.py) -----------------------------------------------

    async def bench_fill_jobs(self, first: int, count: int, queues: int) -> int:
        """BENCH ONLY: insert `count` synthetic jobs (see queries.sql); never called by the coordinator."""
        return int(await self._run("bench_fill_jobs", first, count, queues))

    async def bench_analyze_jobs(self) -> None:
        """BENCH ONLY: ANALYZE the jobs table after a fill."""
        await self._run("bench_analyze_jobs")

    # -- maintenance ---------------------------------------------------------------------------

    async def table_stats(self) -> list[TableStats]:
        """Row counts of the job tables, read on a pooled connection (one short statement)."""
        return [TableStats.of(r) for r in await self._run("maintenance_table_stats")]

    # -- time: watches, schedules, retention ------------------------------------------------------

    async def watch_jobs(self, ids: Sequence[int]) -> list[Job]:
        """The jobs among ids that still exist, without their bytes (view BASIC)."""
        return [Job.from_record(r) for r in await self._run("watch_jobs", list(ids))]

    async def db_now(self) -> datetime:
        value: datetime = await self._run("db_now")
        return value

    async def insert_schedule(self, row: ScheduleRow, *, first_tick: datetime | None, created_at: datetime
                              ) -> ScheduleRow | None:
        """Store a new schedule; None when its name is taken."""
        r = await self._run(
            "insert_schedule", row.name, row.cron, row.time_zone, row.every_ms, row.kind, row.queue, row.payload,
            row.priority, row.max_attempts, row.labels, row.catchup, row.overlap, first_tick, created_at)
        return None if r is None else ScheduleRow.of(r)

    async def list_schedules(self) -> list[ScheduleRow]:
        return [ScheduleRow.of(r) for r in await self._run("list_schedules")]

    async def get_schedule(self, name: str) -> ScheduleRow | None:
        r = await self._run("get_schedule", name)
        return None if r is None else ScheduleRow.of(r)

    async def pause_schedule(self, name: str) -> ScheduleRow | None:
        r = await self._run("pause_schedule", name)
        return None if r is None else ScheduleRow.of(r)

    async def resume_schedule(self, name: str, next_run_at: datetime) -> ScheduleRow | None:
        r = await self._run("resume_schedule", name, next_run_at)
        return None if r is None else ScheduleRow.of(r)

    async def delete_schedule(self, name: str) -> bool:
        return await self._run("delete_schedule", name) is not None

    async def record_schedule_run(self, schedule_id: int, job_id: int, at: datetime) -> ScheduleRow | None:
        r = await self._run("record_schedule_run", schedule_id, job_id, at)
        return None if r is None else ScheduleRow.of(r)

    async def next_schedule_due_in(self) -> float | None:
        """Seconds until the earliest tick of any schedule, by Postgres' clock (None when none)."""
        value: float | None = await self._run("next_schedule_due_in")
        return value

    @contextlib.asynccontextmanager
    async def schedule_claim(self, limit: int) -> AsyncIterator[ScheduleClaim]:
        """A transaction that locks up to `limit` due schedules no other coordinator holds (SKIP LOCKED).

        The rows stay locked until the block ends (commit) or fails (rollback): the holder submits each tick's
        job (on another connection) and advances the schedule. Killed mid-way, its connection ends, the locks
        go with it, and another coordinator redoes the tick under the same idempotency key.
        """
        try:
            async with self._pool.acquire(timeout=POOL_ACQUIRE_TIMEOUT_S) as con, con.transaction():
                rows = await run(con, QUERIES["claim_due_schedules"], limit)
                yield ScheduleClaim(con, [DueSchedule.of(r) for r in rows])
        except _UNAVAILABLE as exc:
            raise DatabaseUnavailableError(f"schedule_claim: {type(exc).__name__}: {exc}") from exc
        except asyncpg.PostgresError as exc:
            raise StoreError(f"schedule_claim failed: {exc}") from exc

    @staticmethod
    async def advance_schedule(con: Any, due: DueSchedule, *, next_run_at: datetime | None, fired_job_id: int | None,
                               fired_tick: datetime | None, skipped: int) -> bool:
        """advance_schedule on the claim's own connection (inside its transaction); see ScheduleClaim.advance."""
        try:
            r = await run(con, QUERIES["advance_schedule"], due.row.id, due.row.next_run_at, next_run_at,
                          fired_job_id, fired_tick, skipped)
        except _UNAVAILABLE as exc:
            raise DatabaseUnavailableError(f"advance_schedule: {type(exc).__name__}: {exc}") from exc
        except asyncpg.PostgresError as exc:
            raise StoreError(f"advance_schedule failed: {exc}") from exc
        return r is not None

    async def prune_finished(self, state: JobState, *, age_ms: int, keyed_age_ms: int | None, limit: int
                             ) -> tuple[bool, int]:
        """(got the pruner's lock, jobs deleted): one bounded batch of one finished state, in one short statement."""
        r = await self._run("prune_finished", state.value, age_ms, limit, keyed_age_ms)
        return bool(r["locked"]), int(r["deleted"])

    async def release_dedup_keys(self, pairs: Sequence[tuple[str, str]]) -> int:
        """Free the (queue, key) pairs whose job's dedup window is over; how many were freed."""
        rows = await self._run("release_dedup_keys", [q for q, _ in pairs], [k for _, k in pairs])
        return len(rows)


    # -- security: API keys and audit -----------------------------------------------------------

    async def api_key_insert(self, key: KeyRecord) -> KeyInfo:
        """Store a new key; StoreError (a unique violation) when its name is already active."""
        row = await self._run("api_key_insert", key.key_id, key.name, key.salt, key.secret_hash,
                              sorted(key.scopes), list(key.queues), key.rate_per_s, key.burst)
        return KeyInfo.of(row)

    async def api_keys_active(self) -> list[KeyRecord]:
        return [KeyRecord.of(r) for r in await self._run("api_keys_active")]

    async def api_keys_list(self) -> list[KeyInfo]:
        return [KeyInfo.of(r) for r in await self._run("api_keys_list")]

    async def api_key_revoke(self, name: str) -> list[KeyInfo]:
        """Revoke the active key named name; empty when there is none."""
        return [KeyInfo(key_id=r["id"], name=r["name"], revoked_at=r["revoked_at"])
                for r in await self._run("api_key_revoke", name)]

    async def audit_cancelled(self, job_id: int, identity: str) -> None:
        await self._run("audit_cancelled", job_id, identity)

    async def audit_requeued(self, job_id: int, identity: str) -> None:
        await self._run("audit_requeued", job_id, identity)

    async def audit_of(self, job_id: int) -> JobAudit | None:
        row = await self._run("audit_of", job_id)
        if row is None:
            return None
        rows = await self._run("audit_attempts", job_id, ATTEMPT_ERROR_MAX_BYTES)
        attempts = tuple(AttemptRecord(
            attempt=r["attempt"], worker_id=r["worker_id"], outcome=r["outcome"], fencing_token=r["lease_token"],
            started_at=r["started_at"], ended_at=r["finished_at"], error=_truncate_utf8(r["error"] or "",
                                                                                       ATTEMPT_ERROR_MAX_BYTES),
        ) for r in rows)
        return JobAudit(submitted_by=row["submitted_by"], cancelled_by=row["cancelled_by"],
                        requeued_by=row["requeued_by"], attempts=attempts)


def _truncate_utf8(text: str, max_bytes: int) -> str:
    """text cut to at most max_bytes of UTF-8, never inside a character."""
    raw = text.encode("utf-8")
    if len(raw) <= max_bytes:
        return text
    return raw[:max_bytes].decode("utf-8", "ignore")


@dataclass(frozen=True, slots=True, kw_only=True)
class AttemptRecord:
    """One attempt of a job as faultline_attempts records it."""

    attempt: int
    worker_id: str  # "" when none held it (a schedule-to-start timeout)
    outcome: str  # "" while it runs
    fencing_token: int
    started_at: datetime
    ended_at: datetime | None
    error: str  # "" when none; at most ATTEMPT_ERROR_MAX_BYTES of UTF-8


@dataclass(frozen=True, slots=True, kw_only=True)
class JobAudit:
    """Who submitted, last cancelled and last requeued a job (identities; None: anonymous, or never)."""

    submitted_by: str | None
    cancelled_by: str | None
    requeued_by: str | None
    # Every attempt, in order.
    attempts: tuple[AttemptRecord, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyInfo:
    """An API key as `faultline keys ls` shows it: never its hash or salt."""

    key_id: str
    name: str
    scopes: tuple[str, ...] = ()
    queues: tuple[str, ...] = ()
    rate_per_s: float | None = None
    burst: int | None = None
    created_at: datetime | None = None
    revoked_at: datetime | None = None

    @classmethod
    def of(cls, r: Any) -> KeyInfo:
        return cls(key_id=r["id"], name=r["name"], scopes=tuple(r["scopes"]), queues=tuple(r["queues"]),
                   rate_per_s=r["rate_per_s"], burst=r["burst"], created_at=r["created_at"],
                   revoked_at=r["revoked_at"])


class MaintenanceOp(StrEnum):
    """What the maintenance actor runs on a table."""

    VACUUM = "vacuum"  # VACUUM (ANALYZE): dead row versions and their index entries out, statistics refreshed
    ANALYZE = "analyze"


@dataclass(frozen=True, slots=True, kw_only=True)
class TableStats:
    """One job table's row counts, from pg_stat_user_tables (they trail writes by up to a second) and pg_class."""

    table: str
    live_rows: int
    dead_rows: int
    # Rows inserted, updated or deleted since the table's last ANALYZE.
    modified_rows: int
    # The planner's estimate of the table's rows (reltuples); 0 before the first VACUUM or ANALYZE.
    planned_rows: int

    @classmethod
    def of(cls, row: Any) -> TableStats:
        return cls(table=row["table_name"], live_rows=row["live_rows"], dead_rows=row["dead_rows"],
                   modified_rows=row["modified_rows"], planned_rows=row["planned_rows"])


MAINTENANCE_APPLICATION_NAME = "faultline-maintenance"
# How long to wait for Postgres to accept a maintenance connection, and for one to close cleanly.
MAINTENANCE_CONNECT_TIMEOUT_S = 5.0
MAINTENANCE_CLOSE_TIMEOUT_S = 5.0


class MaintenanceSession:
    """VACUUM and ANALYZE of the job tables, on a connection of their own outside the pool.

    Not a pooled connection: VACUUM cannot run in a transaction block, so SET LOCAL cannot lift the pool's
    statement timeout (pool.STATEMENT_TIMEOUT_MS, 30 s) for it, and a session-level SET would have to be
    undone before the connection went back. The pool's reset hook (pool._reset) undoes neither session
    settings nor advisory locks, so an error or a cancellation between SET and RESET would leave a pooled
    connection with no timeout, or holding the maintenance lock. And a VACUUM of a large table takes
    minutes, for which the hot path would have one pooled connection fewer (FAULTLINE_DB_POOL_MAX, 10 by
    default). This connection gets its own timeouts when it opens, and whatever it holds goes when it
    closes. Open one with maintenance_session().
    """

    # A table name cannot be a bound parameter, and SQL is never built from strings: one named
    # statement per (table, op).
    STATEMENTS: ClassVar[dict[tuple[str, MaintenanceOp], str]] = {
        ("faultline_jobs", MaintenanceOp.VACUUM): "vacuum_jobs",
        ("faultline_jobs", MaintenanceOp.ANALYZE): "analyze_jobs",
        ("faultline_attempts", MaintenanceOp.VACUUM): "vacuum_attempts",
        ("faultline_attempts", MaintenanceOp.ANALYZE): "analyze_attempts",
    }

    def __init__(self, con: asyncpg.Connection[Any]) -> None:
        self._con = con

    async def _run(self, name: str) -> Any:
        _STATEMENTS[name].inc()
        try:
            return await run(self._con, QUERIES[name])
        except _UNAVAILABLE as exc:
            raise DatabaseUnavailableError(f"{name}: {type(exc).__name__}: {exc}") from exc
        except asyncpg.PostgresError as exc:
            raise StoreError(f"{name} failed: {exc}") from exc

    async def try_lock(self) -> bool:
        """Take the database's maintenance lock for this session; False when another session holds it."""
        return bool(await self._run("maintenance_try_lock"))

    async def unlock(self) -> None:
        await self._run("maintenance_unlock")

    async def table_stats(self) -> list[TableStats]:
        return [TableStats.of(r) for r in await self._run("maintenance_table_stats")]

    async def maintain(self, table: str, op: MaintenanceOp) -> bool:
        """Run op on table; False (nothing done) when another session held a conflicting table lock
        (a manual VACUUM, a migration) past the lock timeout."""
        try:
            await self._run(self.STATEMENTS[(table, op)])
        except StoreError as exc:
            if isinstance(exc.__cause__, asyncpg.LockNotAvailableError):
                return False
            raise
        return True


@contextlib.asynccontextmanager
async def maintenance_session(
    dsn: str, *, statement_timeout: timedelta, lock_timeout: timedelta
) -> AsyncIterator[MaintenanceSession]:
    """Open a maintenance connection, and close it on the way out; after an error or a cancellation it is
    terminated instead. A VACUUM that was running then may still finish on the server (Postgres notices a
    closed client only when it next writes); the session, and with it the maintenance lock, ends after it."""
    try:
        con = await asyncpg.connect(dsn, timeout=MAINTENANCE_CONNECT_TIMEOUT_S, server_settings={
            "application_name": MAINTENANCE_APPLICATION_NAME,
            "statement_timeout": str(int(statement_timeout.total_seconds() * 1000)),
            "lock_timeout": str(int(lock_timeout.total_seconds() * 1000)),
        })
    except _UNAVAILABLE as exc:
        raise DatabaseUnavailableError(f"maintenance connect: {type(exc).__name__}: {exc}") from exc
    except asyncpg.PostgresError as exc:
        raise StoreError(f"maintenance connect failed: {exc}") from exc
    clean = False
    try:
        yield MaintenanceSession(con)
        clean = True
    finally:
        if clean:
            try:
                await con.close(timeout=MAINTENANCE_CLOSE_TIMEOUT_S)
            except _UNAVAILABLE:
                con.terminate()
        else:
            con.terminate()


class ProbeSession:
    """Postgres reachability on a connection of its own, outside the pool: a pool busy with load is not an outage.

    The health actor's probe used the pool, and behind 200 concurrent 1 MiB Submits its ping waited longer
    than the probe timeout for a connection while Postgres answered every statement: health flipped to
    NOT_SERVING under load. This connection is opened on first use and again after any failure, under the
    pool's application_name: whatever ends or refuses the coordinator's sessions ends or refuses it too.
    """

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._con: asyncpg.Connection[Any] | None = None

    async def ping(self, timeout_s: float) -> None:
        try:
            if self._con is None or self._con.is_closed():
                self._con = await asyncpg.connect(self._dsn, timeout=timeout_s,
                                                  server_settings={"application_name": APPLICATION_NAME})
            await run(self._con, QUERIES["ping"])
        except (*_UNAVAILABLE, asyncpg.PostgresError, TimeoutError) as exc:
            self.close()
            raise DatabaseUnavailableError(f"probe: {type(exc).__name__}: {exc}") from exc
        except BaseException:
            self.close()  # cancelled mid-statement (the probe's timeout): the connection's state is unknown
            raise

    def close(self) -> None:
        if self._con is not None:
            self._con.terminate()
            self._con = None


class ScheduleClaim:
    """Due schedules locked by one scheduler transaction (Store.schedule_claim); advance() each before it ends."""

    def __init__(self, con: Any, due: list[DueSchedule]) -> None:
        self._con = con
        self.due = due

    async def advance(self, due: DueSchedule, *, next_run_at: datetime | None, fired_job_id: int | None,
                      fired_tick: datetime | None, skipped: int) -> bool:
        """Move the schedule to its next tick; False when it changed meanwhile (paused, deleted)."""
        return await Store.advance_schedule(self._con, due, next_run_at=next_run_at, fired_job_id=fired_job_id,
                                            fired_tick=fired_tick, skipped=skipped)
