"""Domain value types shared by actors and the API edge: jobs, states, leases, submit specs."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, NamedTuple


class JobState(StrEnum):
    """A job's lifecycle state, spelled as in the faultline_job_state enum."""

    SCHEDULED = "scheduled"
    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    DEAD_LETTERED = "dead_lettered"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.DEAD_LETTERED, JobState.CANCELLED)


class Outcome(StrEnum):
    """How a fenced write ended, as answered to the worker."""

    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    STALE_LEASE = "stale_lease"
    CANCELLED = "cancelled"
    NOT_FOUND = "not_found"
    UNAVAILABLE = "unavailable"
    # The frame's values do not fit the store (a number out of a column's range, text Postgres refuses).
    INVALID = "invalid"


#: Largest value of a Postgres bigint: the bound of every job id and fencing token.
BIGINT_MAX = 2**63 - 1
# A positive decimal integer in ASCII digits, no sign, no leading zero, nothing around it (fullmatch).
_POSITIVE_DECIMAL = re.compile(r"[1-9][0-9]{0,18}", re.ASCII)


def positive_bigint(text: str) -> int | None:
    """`text` as a job id or token: ASCII digits only ("1\\n", " 1", "²" and "+1" are not), 1..BIGINT_MAX."""
    if not _POSITIVE_DECIMAL.fullmatch(text):
        return None
    value = int(text)
    return value if value <= BIGINT_MAX else None


class LeaseKey(NamedTuple):
    """A lease: the job and the fencing token it was granted with.

    A NamedTuple, not a frozen dataclass: several are made, hashed and compared per job on the grant and
    completion paths, and a tuple does each in C (construction twice and hashing four times as fast here).
    """

    job_id: int
    token: int

    @property
    def lease_id(self) -> str:
        return f"{self.job_id}.{self.token}"

    @classmethod
    def parse(cls, lease_id: str, token: int) -> LeaseKey | None:
        """The lease named by a worker, or None when the id is malformed or disagrees with the token.

        Both parts must be positive bigints (the columns' type): a wire token is a uint64, and one at
        2^63 or above would make every batch statement it joins fail, so it is refused here, at the edge.
        """
        job, _, tok = lease_id.partition(".")
        job_id, token_in_id = positive_bigint(job), positive_bigint(tok)
        if job_id is None or token_in_id is None or token_in_id != token:
            return None
        return cls(job_id, token)


@dataclass(frozen=True, slots=True, kw_only=True)
class JobSpec:
    """One validated job to insert."""

    queue: str
    kind: str
    payload: bytes
    idempotency_key: str | None
    max_attempts: int
    priority: int
    run_at: datetime | None
    backoff_initial_ms: int | None
    backoff_max_ms: int | None
    backoff_multiplier: float | None
    backoff_jitter: float | None
    execution_timeout_ms: int | None
    heartbeat_timeout_ms: int | None
    schedule_to_start_ms: int | None
    labels: dict[str, str] = field(default_factory=dict)
    trace_context: dict[str, str] | None = None
    # Flow control (coordinator/policy.py): the key a per-key cap counts, the worker labels the job needs.
    concurrency_key: str | None = None
    required_labels: dict[str, str] | None = None
    # Dedup window of the idempotency key: it names this job for dedup_period_ms after the submit, or while
    # the job is unfinished (dedup_unfinished); neither means for as long as the job exists.
    dedup_period_ms: int | None = None
    dedup_unfinished: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Job:
    """A job row as read from Postgres."""

    id: int
    queue: str
    kind: str
    state: JobState
    priority: int
    payload: bytes
    result: bytes | None
    last_error: str | None
    attempts: int
    max_attempts: int
    idempotency_key: str | None
    labels: dict[str, str]
    backoff_initial_ms: int | None
    backoff_max_ms: int | None
    backoff_multiplier: float | None
    backoff_jitter: float | None
    execution_timeout_ms: int | None
    heartbeat_timeout_ms: int | None
    schedule_to_start_ms: int | None
    trace_context: dict[str, str] | None
    lease_token: int
    worker_id: str | None
    lease_expires_at: datetime | None
    cancel_requested: bool
    progress_fraction: float | None
    progress_message: str | None
    progress_details: bytes | None
    created_at: datetime
    run_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    concurrency_key: str | None = None
    required_labels: dict[str, str] | None = None
    # The idempotency key's window (migration 0005): until when it names this job, or only while unfinished.
    dedup_until: datetime | None = None
    dedup_unfinished: bool = False

    @classmethod
    def inserted(cls, spec: JobSpec, r: Any) -> Job:
        """The job just inserted from `spec`, with the columns Postgres chose (id, state, run_at, timestamps).

        Every other column holds its insert default (see insert_jobs and the table's defaults), so
        reading the whole row back would only send the payload round again. A job handed off at insert
        comes back running: attempt 1 under fencing token 1, held by r["worker_id"].
        """
        state = JobState(r["state"])
        leased = state is JobState.RUNNING
        return cls(
            id=r["id"],
            queue=spec.queue,
            kind=spec.kind,
            state=state,
            priority=spec.priority,
            payload=spec.payload,
            result=None,
            last_error=None,
            attempts=1 if leased else 0,
            max_attempts=spec.max_attempts,
            idempotency_key=spec.idempotency_key,
            labels=spec.labels,
            backoff_initial_ms=spec.backoff_initial_ms,
            backoff_max_ms=spec.backoff_max_ms,
            backoff_multiplier=spec.backoff_multiplier,
            backoff_jitter=spec.backoff_jitter,
            execution_timeout_ms=spec.execution_timeout_ms,
            heartbeat_timeout_ms=spec.heartbeat_timeout_ms,
            schedule_to_start_ms=spec.schedule_to_start_ms,
            trace_context=spec.trace_context,
            lease_token=1 if leased else 0,
            worker_id=r["worker_id"] if leased else None,
            lease_expires_at=r["lease_expires_at"] if leased else None,
            cancel_requested=False,
            progress_fraction=None,
            progress_message=None,
            progress_details=None,
            created_at=r["created_at"],
            run_at=r["run_at"],
            started_at=r["started_at"] if leased else None,
            finished_at=None,
            updated_at=r["updated_at"],
            concurrency_key=spec.concurrency_key,
            required_labels=spec.required_labels,
            dedup_until=r["dedup_until"],
            dedup_unfinished=spec.dedup_unfinished,
        )

    @classmethod
    def claimed(cls, r: Any) -> Job:
        """A job as claim_jobs returns it: running, and the columns that the claim itself resets are not read back."""
        labels = r["labels"]
        trace_context = r["trace_context"]
        return cls(
            id=r["id"],
            queue=r["queue"],
            kind=r["kind"],
            state=JobState.RUNNING,
            priority=r["priority"],
            payload=r["payload"],
            result=r["result"],
            last_error=r["last_error"],
            attempts=r["attempts"],
            max_attempts=r["max_attempts"],
            idempotency_key=r["idempotency_key"],
            labels=labels if type(labels) is dict else (_json_obj(labels) or {}),
            backoff_initial_ms=r["backoff_initial_ms"],
            backoff_max_ms=r["backoff_max_ms"],
            backoff_multiplier=r["backoff_multiplier"],
            backoff_jitter=r["backoff_jitter"],
            execution_timeout_ms=r["execution_timeout_ms"],
            heartbeat_timeout_ms=r["heartbeat_timeout_ms"],
            schedule_to_start_ms=r["schedule_to_start_ms"],
            trace_context=trace_context if trace_context is None or type(trace_context) is dict
            else _json_obj(trace_context),
            lease_token=r["lease_token"],
            worker_id=r["worker_id"],
            lease_expires_at=r["lease_expires_at"],
            cancel_requested=False,
            progress_fraction=None,
            progress_message=None,
            progress_details=None,
            created_at=r["created_at"],
            run_at=r["run_at"],
            started_at=r["started_at"],
            finished_at=None,
            updated_at=r["updated_at"],
            concurrency_key=r["concurrency_key"],
            required_labels=_json_obj(r["required_labels"]),
        )

    @classmethod
    def from_record(cls, r: Any) -> Job:
        return cls(
            id=r["id"],
            queue=r["queue"],
            kind=r["kind"],
            state=JobState(r["state"]),
            priority=r["priority"],
            payload=r["payload"],
            result=r["result"],
            last_error=r["last_error"],
            attempts=r["attempts"],
            max_attempts=r["max_attempts"],
            idempotency_key=r["idempotency_key"],
            labels=_json_obj(r["labels"]) or {},
            backoff_initial_ms=r["backoff_initial_ms"],
            backoff_max_ms=r["backoff_max_ms"],
            backoff_multiplier=r["backoff_multiplier"],
            backoff_jitter=r["backoff_jitter"],
            execution_timeout_ms=r["execution_timeout_ms"],
            heartbeat_timeout_ms=r["heartbeat_timeout_ms"],
            schedule_to_start_ms=r["schedule_to_start_ms"],
            trace_context=_json_obj(r["trace_context"]),
            lease_token=r["lease_token"],
            worker_id=r["worker_id"],
            lease_expires_at=r["lease_expires_at"],
            cancel_requested=r["cancel_requested"],
            progress_fraction=r["progress_fraction"],
            progress_message=r["progress_message"],
            progress_details=r["progress_details"],
            created_at=r["created_at"],
            run_at=r["run_at"],
            started_at=r["started_at"],
            finished_at=r["finished_at"],
            updated_at=r["updated_at"],
            concurrency_key=r.get("concurrency_key"),
            required_labels=_json_obj(r.get("required_labels")),
            # Absent from the explicit column lists of list_jobs_basic and watch_jobs.
            dedup_until=r.get("dedup_until"),
            dedup_unfinished=bool(r.get("dedup_unfinished", False)),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class JobFilter:
    """Which jobs a bulk action takes (every field set must match; labels: all of them). Not all None."""

    queue: str | None = None
    kind: str | None = None
    state: JobState | None = None
    labels: tuple[tuple[str, str], ...] = ()  # sorted (key, value) pairs

    @property
    def labels_dict(self) -> dict[str, str] | None:
        return dict(self.labels) or None


@dataclass(frozen=True, slots=True, kw_only=True)
class BulkTarget:
    """The jobs of one bulk call: named ids (sorted, distinct) or a filter, exactly one of the two."""

    ids: tuple[int, ...] | None = None
    filter: JobFilter | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class BulkRow:
    """One job a bulk chunk looked at: whether it changed and, when it did, what it is now."""

    id: int
    changed: bool
    queue: str | None = None
    state: JobState | None = None
    cancel_requested: bool = False
    lease_token: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueSettings:
    """A queue's flow limits as stored in faultline_queues; None is "no limit"."""

    queue: str
    paused: bool = False
    per_key_concurrency: int | None = None
    max_running: int | None = None
    rate_per_s: float | None = None
    burst: int | None = None

    @property
    def limited(self) -> bool:
        """Whether only the limited claim may grant this queue's jobs (the `limited` column)."""
        return (self.paused or self.per_key_concurrency is not None or self.max_running is not None
                or self.rate_per_s is not None)

    @classmethod
    def from_record(cls, r: Any) -> QueueSettings:
        return cls(queue=r["queue"], paused=r["paused"], per_key_concurrency=r["per_key_concurrency"],
                   max_running=r["max_running"], rate_per_s=r["rate_per_s"], burst=r["burst"])


class _Unchanged:
    """The marker of a setting that a SettingsChange leaves as it is."""

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED = _Unchanged()


@dataclass(frozen=True, slots=True, kw_only=True)
class SettingsChange:
    """Limits to change: UNCHANGED keeps one, None clears it."""

    per_key_concurrency: int | _Unchanged | None = UNCHANGED
    max_running: int | _Unchanged | None = UNCHANGED
    rate_per_s: float | _Unchanged | None = UNCHANGED
    burst: int | _Unchanged | None = UNCHANGED


def labels_match(required: dict[str, str] | None, offered: dict[str, str]) -> bool:
    """The grant policy's label rule, as SQL spells it (`required_labels <@ worker labels`)."""
    return not required or all(offered.get(k) == v for k, v in required.items())


def _json_obj(value: Any) -> dict[str, str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        parsed = json.loads(value)
        return parsed if isinstance(parsed, dict) else None
    return dict(value)


class ScheduleCatchup(StrEnum):
    """What a schedule does with ticks it missed, spelled as in faultline_schedules.catchup."""

    SKIP = "skip"
    RUN_ONCE = "run_once"


class ScheduleOverlap(StrEnum):
    """Whether a tick submits while the previous tick's job is unfinished (faultline_schedules.overlap)."""

    SKIP = "skip"
    ALLOW = "allow"


@dataclass(frozen=True, slots=True, kw_only=True)
class ScheduleRow:
    """A schedule as stored (faultline_schedules); exactly one of cron and every_ms is set."""

    name: str
    cron: str | None
    time_zone: str
    every_ms: int | None
    kind: str
    queue: str
    payload: bytes
    priority: int
    max_attempts: int
    labels: dict[str, str]
    catchup: ScheduleCatchup
    overlap: ScheduleOverlap
    id: int = 0
    paused: bool = False
    next_run_at: datetime | None = None
    last_run_at: datetime | None = None
    last_job_id: int | None = None
    fired: int = 0
    skipped: int = 0
    created_at: datetime | None = None

    @classmethod
    def of(cls, r: Any) -> ScheduleRow:
        return cls(
            id=r["id"], name=r["name"], cron=r["cron"], time_zone=r["time_zone"], every_ms=r["every_ms"],
            kind=r["kind"], queue=r["queue"], payload=bytes(r["payload"]), priority=r["priority"],
            max_attempts=r["max_attempts"], labels=_json_obj(r["labels"]) or {},
            catchup=ScheduleCatchup(r["catchup"]), overlap=ScheduleOverlap(r["overlap"]), paused=r["paused"],
            next_run_at=r["next_run_at"], last_run_at=r["last_run_at"], last_job_id=r["last_job_id"],
            fired=r["fired"], skipped=r["skipped"], created_at=r["created_at"],
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class DueSchedule:
    """A schedule whose tick has come, as the scheduler locked it: with Postgres' clock and its last job's state."""

    row: ScheduleRow
    db_now: datetime
    # None when it never fired, or its last job was pruned.
    last_job_state: JobState | None

    @classmethod
    def of(cls, r: Any) -> DueSchedule:
        state = r["last_job_state"]
        return cls(row=ScheduleRow.of(r), db_now=r["db_now"], last_job_state=JobState(state) if state else None)
