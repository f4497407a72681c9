"""Public value types of the SDK: jobs, their states, submit options and operator views.

All are frozen slots dataclasses built by _convert.py from the wire; none holds a pb2 object.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum


class JobState(StrEnum):
    """Where a job is in its lifecycle.

    ::

        SCHEDULED -> QUEUED -> RUNNING -> SUCCEEDED
                       ^          |  \\-> CANCELLED
                       |          |-> RETRYING -> QUEUED
                       |          \\-> DEAD_LETTERED
                       \\------ requeue -----/
    """

    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    DEAD_LETTERED = "dead_lettered"
    CANCELLED = "cancelled"
    SCHEDULED = "scheduled"

    @property
    def terminal(self) -> bool:
        """True for states a job leaves only by an operator's requeue."""
        return self in _TERMINAL_STATES


_TERMINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.DEAD_LETTERED, JobState.CANCELLED})


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """Backoff between attempts after retryable failures; None fields take the coordinator's defaults."""

    #: Delay before the second attempt.
    initial_backoff: timedelta | None = None
    #: Upper bound on any delay.
    max_backoff: timedelta | None = None
    #: Growth factor per attempt, in [1, 100].
    multiplier: float | None = None
    #: Relative jitter in [0, 1].
    jitter: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class JobTimeouts:
    """Per-attempt limits; None means no limit (heartbeat then defaults to the coordinator's lease TTL)."""

    #: Longest time from the start of an attempt to its completion.
    execution: timedelta | None = None
    #: Longest silence between two heartbeats of a running attempt.
    heartbeat: timedelta | None = None
    #: Longest time the job may wait in the queue before an attempt starts.
    schedule_to_start: timedelta | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Job:
    """One job as the coordinator stored it when the answer was built."""

    id: str
    kind: str
    queue: str
    state: JobState
    payload: bytes = b""
    result: bytes = b""
    last_error: str = ""
    #: Attempts started so far, including a running one.
    attempts: int = 0
    max_attempts: int = 0
    priority: int = 0
    idempotency_key: str | None = None
    #: Completed fraction in [0, 1] of the running or last attempt.
    progress_fraction: float = 0.0
    progress_message: str = ""
    progress_details: bytes = b""
    labels: Mapping[str, str] = field(default_factory=dict)
    cancel_requested: bool = False
    retry_policy: RetryPolicy | None = None
    timeouts: JobTimeouts | None = None
    created_at: datetime | None = None
    run_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    updated_at: datetime | None = None
    #: Who acted on the job (identities such as key:NAME; None when anonymous or never): filled by Client.get().
    submitted_by: str | None = None
    cancelled_by: str | None = None
    requeued_by: str | None = None
    #: (attempt, holder, outcome) of every attempt, the holder qualified with its identity; by Client.get().
    attempt_holders: tuple[tuple[int, str, str], ...] = ()
    #: Every attempt in full (fencing token, times, error), oldest first; filled by Client.get().
    attempt_audit: tuple[AttemptAudit, ...] = ()
    #: The job's trace id (32 hex digits) from the trace context it was submitted in; by Client.get().
    trace_id: str | None = None
    #: Key the queue's per-key concurrency cap counts this job under; None when none.
    concurrency_key: str | None = None
    #: Labels a worker must have (hello labels) to be granted this job; empty when any worker may.
    required_labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class JobSpec:
    """One job to submit; the fields mean what Client.submit's arguments mean."""

    kind: str
    payload: bytes = b""
    queue: str = "default"
    idempotency_key: str | None = None
    #: Attempts allowed, 1-1000; None means the coordinator's default.
    max_attempts: int | None = None
    #: Higher runs first within a queue, in [-1000, 1000].
    priority: int = 0
    #: Earliest start (timezone-aware); None or past means now.
    run_at: datetime | None = None
    retry_policy: RetryPolicy | None = None
    timeouts: JobTimeouts | None = None
    labels: Mapping[str, str] | None = None
    #: Optional key (a customer id, say) that the queue's per-key concurrency cap counts running jobs by.
    concurrency_key: str | None = None
    #: Only a worker whose labels include all of these (same values) is granted the job.
    required_labels: Mapping[str, str] | None = None
    #: The idempotency key names its job only this long after that job's submit (1 s to 366 days); None: for ever.
    dedup_period: timedelta | None = None
    #: The idempotency key names its job only while the job is unfinished.
    dedup_while_unfinished: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueSettings:
    """A queue's flow limits, enforced by every coordinator on the database; None means no limit."""

    name: str
    paused: bool = False
    per_key_concurrency: int | None = None
    max_running: int | None = None
    #: Grants per second, cluster-wide.
    rate_per_second: float | None = None
    #: Most grants at once after a quiet spell; None with a rate means max(1, rate / 10).
    burst: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SubmitResult:
    """A submit's answer: the job it returned, and why that one."""

    job: Job
    created: bool
    #: "created", or which window of the idempotency key matched an existing job: "duplicate_key" (the
    #: default, for as long as the job exists), "duplicate_in_period" or "duplicate_unfinished".
    outcome: str
    #: One line naming the job that holds the key and until when (empty when created).
    detail: str


@dataclass(frozen=True, slots=True, kw_only=True)
class AttemptAudit:
    """One attempt of a job, as GetJob reports it."""

    attempt: int
    #: The holder, qualified with its identity (key:NAME/worker); "" when none held it.
    worker_id: str
    #: How it ended (succeeded, failed, lease_expired, cancelled, ...); "" while it runs.
    outcome: str
    fencing_token: int
    started_at: datetime | None
    #: None while it runs.
    ended_at: datetime | None
    #: The error it ended with (at most 4096 bytes); "" when none.
    error: str


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueMinute:
    """One minute of a queue's activity as one coordinator saw it; a percentile is None with nothing measured."""

    start: datetime
    succeeded: int
    #: Attempts that failed (to be retried or dead-lettered).
    failed: int
    #: Time from ready to start of the jobs granted in the minute.
    wait_p50: timedelta | None
    wait_p95: timedelta | None
    #: Run time (start to end) of the attempts that ended in the minute.
    run_p50: timedelta | None
    run_p95: timedelta | None


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueStats:
    """One queue's depth by state and the age of its oldest ready job, as of sampled_at."""

    name: str
    depth: Mapping[JobState | str, int]
    oldest_ready_age: timedelta
    finished_last_minute: int
    settings: QueueSettings | None = None
    #: Ready jobs held back because their concurrency key is at the per-key cap.
    waiting_on_key: int = 0
    #: Ready jobs that wait for a worker with their required labels.
    requiring_labels: int = 0
    #: When the coordinator's metrics sampler counted depth, oldest_ready_age and the flow figures.
    sampled_at: datetime | None = None
    #: Workers connected to the answering coordinator that take work from this queue.
    workers_connected: int = 0
    #: The last minutes (up to 15), oldest first, as the answering coordinator saw them.
    history: tuple[QueueMinute, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Identity:
    """Who the coordinator takes the caller for (Client.whoami())."""

    #: The audit identity (key:NAME, cn:SUBJECT); None when auth is off.
    identity: str | None
    name: str
    #: Scopes held: submit, read, payloads, work, admin.
    scopes: frozenset[str]
    #: Queue names or prefixes (ending in *) the caller is limited to; empty: every queue.
    queues: tuple[str, ...]
    auth_enabled: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class BulkResult:
    """What Client.bulk_cancel() or bulk_requeue() did, summed over every call it took."""

    #: Waiting jobs cancelled at once (bulk_cancel).
    cancelled: int = 0
    #: Running jobs marked cancel_requested, their workers told (bulk_cancel).
    cancel_requested: int = 0
    #: Jobs brought back to queued (bulk_requeue).
    requeued: int = 0
    #: Jobs that matched but were in no state to change, and named ids that name no job.
    skipped: int = 0
    #: How many calls it took (each within the coordinator's time budget).
    calls: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerInfo:
    """One connected worker session as the coordinator sees it."""

    worker_id: str
    session_id: str
    queues: tuple[str, ...]
    kinds: tuple[str, ...]
    capacity: int
    lease_ids: tuple[str, ...]
    credit: int
    sdk: str
    connected_at: datetime | None
    draining: bool
    labels: Mapping[str, str]
    since_heartbeat: timedelta | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Schedule:
    """A stored schedule: what it submits, when (cron in a time zone, or every interval), and where it is."""

    name: str
    id: str
    kind: str
    queue: str
    #: The cron expression (5 fields, or 6 with seconds first), or None for an interval schedule.
    cron: str | None
    #: IANA time zone of the cron expression ("UTC" when none was given); None for an interval schedule.
    time_zone: str | None
    #: Interval between ticks, or None for a cron schedule.
    every: timedelta | None
    payload: bytes = b""
    priority: int = 0
    max_attempts: int = 0
    labels: Mapping[str, str] = field(default_factory=dict)
    #: What missed ticks do: "skip" (nothing) or "run_once" (one job for all of them).
    catchup: str = "skip"
    #: What a tick does while the previous job is unfinished: "skip" or "allow".
    overlap: str = "skip"
    paused: bool = False
    #: The next tick; None while paused.
    next_run_at: datetime | None = None
    #: The tick (or trigger) that last submitted a job, and that job's id.
    last_run_at: datetime | None = None
    last_job_id: str | None = None
    #: Ticks that submitted a job, and ticks skipped (missed, or overlapping an unfinished job).
    fired: int = 0
    skipped: int = 0
    created_at: datetime | None = None
