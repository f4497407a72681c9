"""The coordinator's Prometheus metric families, in one registry; actors update them, /metrics serves them.

Clients name queues and kinds, so those label values are bounded: each of the two labels gets series
of its own for the first N distinct values this process sees (FAULTLINE_METRIC_LABEL_VALUES_MAX, default
config.METRIC_LABEL_VALUES_MAX_DEFAULT),
and every later value is counted under OTHER_LABEL. Every family with a queue or kind label applies the
budget inside labels(), so no caller can bypass it.
"""

from __future__ import annotations

from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from coordinator.config import METRIC_LABEL_VALUES_MAX_DEFAULT

REGISTRY = CollectorRegistry(auto_describe=True)

OTHER_LABEL = "other"
BOUNDED_LABELS = ("queue", "kind")


class LabelBudget:
    """The first `limit` distinct values of one label keep their name; the rest read OTHER_LABEL."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        # Only touched on the event loop (metric updates); the /metrics thread reads the families, not this.
        self._kept: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self._kept:
            return value
        if len(self._kept) < self.limit:
            self._kept.add(value)
            return value
        return OTHER_LABEL


BUDGETS: dict[str, LabelBudget] = {name: LabelBudget(METRIC_LABEL_VALUES_MAX_DEFAULT) for name in BOUNDED_LABELS}


def limit_label_values(limit: int) -> None:
    """Set how many distinct values of each bounded label get series of their own (values kept stay kept)."""
    for budget in BUDGETS.values():
        budget.limit = limit


def queue_label(queue: str) -> str:
    return BUDGETS["queue"](queue)


M = TypeVar("M")


def _bounded_labels(self: Any, parent: Any, values: tuple[Any, ...], kw: dict[str, Any]) -> Any:
    names = self._labelnames
    if kw:
        kw = {k: BUDGETS[k](str(v)) if k in BUDGETS else v for k, v in kw.items()}
    else:
        values = tuple(BUDGETS[n](str(v)) if n in BUDGETS else v for n, v in zip(names, values, strict=False))
    return parent.labels(self, *values, **kw)


# Cached children per raw label values start over past this many entries (clients name queues and kinds).
CHILDREN_MAX = 10_000


class Children:
    """A family's labelled children, looked up once per raw label values instead of on every update.

    labels() takes a lock, runs the label budget and builds a tuple on every call; the hot paths (submit,
    grant, completion) update a handful of series thousands of times a second. The budget still decides each
    value's series on its first look-up. Owned by the one actor or component that made it (not thread-safe).
    """

    __slots__ = ("_cache", "_family")

    def __init__(self, family: Any) -> None:
        self._family = family
        self._cache: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        child = self._cache.get(values)
        if child is None:
            if len(self._cache) >= CHILDREN_MAX:
                self._cache.clear()
            child = self._cache[values] = self._family.labels(*values)
        return child


class BoundedCounter(Counter):
    """A Counter whose queue and kind label values pass through BUDGETS."""

    def labels(self: M, *labelvalues: Any, **labelkwargs: Any) -> M:
        return _bounded_labels(self, Counter, labelvalues, labelkwargs)  # type: ignore[no-any-return]


class BoundedHistogram(Histogram):
    """A Histogram whose queue and kind label values pass through BUDGETS."""

    def labels(self: M, *labelvalues: Any, **labelkwargs: Any) -> M:
        return _bounded_labels(self, Histogram, labelvalues, labelkwargs)  # type: ignore[no-any-return]


class BoundedGauge(Gauge):
    """A Gauge whose queue label values pass through BUDGETS (sum or max what shares a series yourself)."""

    def labels(self: M, *labelvalues: Any, **labelkwargs: Any) -> M:
        return _bounded_labels(self, Gauge, labelvalues, labelkwargs)  # type: ignore[no-any-return]


# Buckets from 1 ms to ~5 min: job waits and runs span sub-millisecond no-ops to long batch work.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

JOBS_SUBMITTED = BoundedCounter(
    "faultline_jobs_submitted", "Jobs created by Submit and SubmitBatch (idempotent repeats excluded).",
    ["queue", "kind"], registry=REGISTRY,
)
JOBS_COMPLETED = BoundedCounter(
    "faultline_jobs_completed", "Attempts that ended, by outcome (succeeded, failed, dead_lettered, cancelled, "
    "lease_expired, heartbeat_timeout, execution_timeout, schedule_to_start_timeout).",
    ["queue", "kind", "outcome"], registry=REGISTRY,
)
JOB_DURATION = BoundedHistogram(
    "faultline_job_duration_seconds", "Execution time of an attempt, from lease to completion.",
    ["queue", "kind"], buckets=_LATENCY_BUCKETS, registry=REGISTRY,
)
JOB_WAIT = BoundedHistogram(
    "faultline_job_wait_seconds", "Time from becoming ready (submit or run_at) to the start of an attempt.",
    ["queue"], buckets=_LATENCY_BUCKETS, registry=REGISTRY,
)
QUEUE_DEPTH = BoundedGauge(
    "faultline_queue_depth", "Jobs per queue and non-finished state (sampled).", ["queue", "state"], registry=REGISTRY,
)
OLDEST_READY_AGE = BoundedGauge(
    "faultline_oldest_ready_job_age_seconds", "Age of the oldest job ready to run, per queue (sampled).",
    ["queue"], registry=REGISTRY,
)
RETRIES = BoundedCounter(
    "faultline_retries", "Attempts that failed and were scheduled to retry.", ["queue", "kind"], registry=REGISTRY,
)
LEASE_EXPIRATIONS = Counter(
    "faultline_lease_expirations", "Leases reaped by the coordinator, by reason.", ["reason"], registry=REGISTRY,
)
STALE_REJECTED = Counter(
    "faultline_stale_completions_rejected", "Frames refused because their fencing token was stale, by frame type.",
    ["frame"], registry=REGISTRY,
)
RECOVERIES = Counter(
    "faultline_recoveries", "Jobs recovered without human action: expired leases re-queued or dead-lettered, "
    "undeliverable grants released.", ["kind"], registry=REGISTRY,
)
WORKERS_CONNECTED = Gauge(
    "faultline_workers_connected", "Open worker sessions.", registry=REGISTRY,
)
LEASES_GRANTED = Counter(
    "faultline_leases_granted", "Leases sent to workers, by path: claimed by the dispatcher, or handed off at Submit.",
    ["path"], registry=REGISTRY,
)
LEASES_ACTIVE = Gauge(
    "faultline_leases_active", "Leases held by connected workers.", registry=REGISTRY,
)
ACTOR_RESTARTS = Counter(
    "faultline_actor_restarts", "Actor restarts by the supervisor.", ["actor"], registry=REGISTRY,
)
DB_POOL_SIZE = Gauge(
    "faultline_db_pool_connections", "Postgres pool connections by use.", ["use"], registry=REGISTRY,
)
DB_POOL_MAX = Gauge(
    "faultline_db_pool_max_connections", "Postgres pool capacity.", registry=REGISTRY,
)
DB_UP = Gauge(
    "faultline_db_up", "1 when the last Postgres probe answered.", registry=REGISTRY,
)
DB_BATCH_SIZE = Histogram(
    "faultline_db_batch_size", "Items per batched statement, by operation.", ["op"],
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000), registry=REGISTRY,
)
FRAMES_REFUSED = Counter(
    "faultline_frames_refused", "Worker frames answered other than accepted, by reason.", ["frame", "reason"],
    registry=REGISTRY,
)
SUBMITS_REFUSED = Counter(
    "faultline_submits_refused", "Submit and SubmitBatch calls answered RESOURCE_EXHAUSTED because the work in "
    "flight was at its bound, by the bound reached (requests or bytes).", ["reason"], registry=REGISTRY,
)
SESSIONS_ABORTED = Counter(
    "faultline_sessions_aborted", "Worker streams the coordinator ended because the worker did not read them: "
    "reason=slow_reader (its unsent frames stayed past the soft mark), outbox_full (they reached the hard cap).",
    ["reason"], registry=REGISTRY,
)
SESSION_READER_PAUSES = Counter(
    "faultline_session_reader_pauses", "Times a worker stream's reader stopped reading because the session's share "
    "was used up: cause=inflight (too many of its frames unanswered), outbox (its worker is not reading).",
    ["cause"], registry=REGISTRY,
)
MAINTENANCE_RUNS = Counter(
    "faultline_maintenance_runs", "VACUUM (op=vacuum, which analyzes too) and ANALYZE (op=analyze) of a job table "
    "by the coordinator's maintenance actor.", ["table", "op"], registry=REGISTRY,
)
MAINTENANCE_DURATION = Histogram(
    "faultline_maintenance_duration_seconds", "How long one VACUUM or ANALYZE of a job table took.",
    ["table", "op"], buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 1800), registry=REGISTRY,
)
# -- flow control (coordinator/policy.py) --
QUEUE_PAUSED = BoundedGauge(
    "faultline_queue_paused", "1 while the queue is paused (PauseQueue), else 0 (sampled, and set at once by this "
    "coordinator's own pause and resume).", ["queue"], registry=REGISTRY,
)
CLAIMS_THROTTLED = BoundedCounter(
    "faultline_claims_throttled", "Claims of a queue cut short by its rate limit (the queue had more ready jobs).",
    ["queue"], registry=REGISTRY,
)
JOBS_WAITING_ON_KEY = BoundedGauge(
    "faultline_jobs_waiting_on_key", "Ready jobs held back because their concurrency key is at the queue's "
    "per-key cap (sampled).", ["queue"], registry=REGISTRY,
)
JOBS_REQUIRING_LABELS = BoundedGauge(
    "faultline_jobs_requiring_labels", "Ready jobs that wait for a worker with their required labels (sampled).",
    ["queue"], registry=REGISTRY,
)

# === work per job (issue 13): what `faultline bench` divides by the jobs of a run ===
GRPC_MESSAGES = Counter(
    "faultline_grpc_messages", "gRPC messages this coordinator received from and sent to clients, by RPC "
    "(Connect counts stream messages, each a batch of frames; a unary RPC is one of each).",
    ["rpc", "direction"], registry=REGISTRY,
)
DB_STATEMENTS = Counter(
    "faultline_db_statements", "Statements the Store sent to Postgres, by named query (each is its own "
    "autocommit transaction; a deadlock retry counts again).", ["query"], registry=REGISTRY,
)

# Label values known up front get their series at import, so they read 0 from the first scrape:
# rate() and alert rules need the series to exist before the first event, not only after it.
LEASE_EXPIRATION_REASONS = ("lease_expired", "heartbeat_timeout", "execution_timeout")  # expire_leases in queries.sql
STALE_FRAMES = ("complete", "fail", "release", "heartbeat", "get_step", "record_step")
RECOVERY_KINDS = ("lease_expired", "released_undelivered")
for _reason in LEASE_EXPIRATION_REASONS:
    LEASE_EXPIRATIONS.labels(_reason)
for _frame in STALE_FRAMES:
    STALE_REJECTED.labels(_frame)
for _kind in RECOVERY_KINDS:
    RECOVERIES.labels(_kind)
for _reason in ("requests", "bytes"):
    SUBMITS_REFUSED.labels(_reason)
for _reason in ("slow_reader", "outbox_full"):
    SESSIONS_ABORTED.labels(_reason)
for _cause in ("inflight", "outbox"):
    SESSION_READER_PAUSES.labels(_cause)
MAINTENANCE_TABLES = ("faultline_jobs", "faultline_attempts")  # db/store.py MaintenanceSession.STATEMENTS
MAINTENANCE_OPS = ("vacuum", "analyze")
for _table in MAINTENANCE_TABLES:
    for _op in MAINTENANCE_OPS:
        MAINTENANCE_RUNS.labels(_table, _op)
        MAINTENANCE_DURATION.labels(_table, _op)

# === time: schedules, retention, watches ===
SCHEDULE_TICKS = Counter(
    "faultline_schedule_ticks", "Schedule ticks by outcome: fired (a job was created for it), skipped_missed "
    "(late past the misfire grace, or folded into one catch-up run), skipped_overlap (its previous job was "
    "unfinished).", ["outcome"], registry=REGISTRY,
)
JOBS_PRUNED = Counter(
    "faultline_jobs_pruned", "Finished jobs the retention pruner deleted (with their attempts and steps), by state.",
    ["state"], registry=REGISTRY,
)
WATCHERS = Gauge(
    "faultline_watchers", "WatchJob streams open on this coordinator.", registry=REGISTRY,
)
SCHEDULE_OUTCOMES = ("fired", "skipped_missed", "skipped_overlap")
PRUNED_STATES = ("succeeded", "dead_lettered", "cancelled")
for _outcome in SCHEDULE_OUTCOMES:
    SCHEDULE_TICKS.labels(_outcome)
for _state in PRUNED_STATES:
    JOBS_PRUNED.labels(_state)
