"""Validates every request field before anything is stored; errors name the field (INVALID_ARGUMENT)."""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from google.protobuf.duration_pb2 import Duration

from coordinator.api.convert import PB_TO_STATE
from coordinator.config import (
    BURST_MAX,
    MAX_RUNNING_MAX,
    PER_KEY_CONCURRENCY_MAX,
    RATE_PER_S_MAX,
    SCHEDULE_EVERY_MAX,
    SCHEDULE_EVERY_MIN,
)
from coordinator.errors import InvalidArgumentError
from coordinator.model import (
    BulkTarget,
    JobFilter,
    JobSpec,
    ScheduleCatchup,
    ScheduleOverlap,
    ScheduleRow,
    SettingsChange,
    positive_bigint,
)
from worker_sdk._proto.faultline.v1 import job_pb2, job_service_pb2

# The alphabets of names a client chooses (docs: README "Names"). Every pattern is matched with
# fullmatch (a `$` would let "echo\n" through) and re.ASCII (no Unicode digits or letters).
#   kind, queue:     [A-Za-z0-9][A-Za-z0-9_.:-]{0,127}  (starts with a letter or digit)
#   label key:       [A-Za-z0-9][A-Za-z0-9_.:/-]{0,63}  (room for "app.example.com/team")
#   label value:     0-256 printable characters, no control characters
#   worker id:       1-128 printable ASCII characters, no spaces (hostname-pid-hex by default)
#   idempotency key: 1-256 printable ASCII characters, no spaces (a UUID, "order-42:charge", ...)
NAME_MAX = 128
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}", re.ASCII)
LABEL_KEY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/\-]{0,63}", re.ASCII)
TOKEN_RE = re.compile(r"[\x21-\x7e]+", re.ASCII)  # printable ASCII without space
QUEUE_DEFAULT = "default"
IDEMPOTENCY_KEY_MAX = 256  # as documented since v1; narrowing it would break keys already in use
WORKER_ID_MAX = 128
PRIORITY_MIN, PRIORITY_MAX = -1000, 1000
MAX_ATTEMPTS_LIMIT = 1000
LABELS_MAX = 64
LABEL_KEY_MAX = 64
LABEL_VALUE_MAX = 256
LABEL_FILTER_MAX = 8  # label pairs a ListJobs or bulk filter may require (all must match)
BULK_IDS_MAX = 1000  # job ids one bulk call may name
REQUEUE_EXTRA_MAX = 1000
DURATION_MAX_MS = 7 * 24 * 3600 * 1000
MULTIPLIER_MIN, MULTIPLIER_MAX = 1.0, 100.0
BATCH_MAX = 10_000
PAGE_SIZE_DEFAULT = 100
PAGE_SIZE_MAX = 1000
RUN_AT_MAX_YEARS = 10
RUN_AT_MIN_YEAR = 1970


def name(value: str, field: str, *, default: str | None = None) -> str:
    """A kind or queue name (NAME_RE); empty gives `default` when there is one."""
    if not value:
        if default is not None:
            return default
        raise InvalidArgumentError(field, "is required")
    if not NAME_RE.fullmatch(value):
        raise InvalidArgumentError(
            field, f"{value[:40]!r} is not a name: 1-{NAME_MAX} characters of [A-Za-z0-9_.:-], "
                   "starting with a letter or digit")
    return value


def job_id(value: str, field: str = "id") -> int:
    """A job id as the API spells it: a positive decimal bigint in ASCII digits, nothing around it."""
    if not value:
        raise InvalidArgumentError(field, "is required")
    parsed = positive_bigint(value)
    if parsed is None:
        raise InvalidArgumentError(
            field, f"malformed job id {value[:40]!r}: expected a positive decimal integer below 2^63")
    return parsed


def worker_id(value: str, field: str) -> str:
    if not value or len(value) > WORKER_ID_MAX or not TOKEN_RE.fullmatch(value):
        raise InvalidArgumentError(field, f"must be 1-{WORKER_ID_MAX} printable ASCII characters without spaces")
    return value


def idempotency_key(value: str, field: str) -> str | None:
    """None when empty; otherwise 1-256 printable ASCII characters without spaces."""
    if not value:
        return None
    if len(value) > IDEMPOTENCY_KEY_MAX or not TOKEN_RE.fullmatch(value):
        raise InvalidArgumentError(
            field, f"must be at most {IDEMPOTENCY_KEY_MAX} printable ASCII characters without spaces")
    return value


def token(value: str, field: str) -> str | None:
    """A key a client chooses (concurrency key): None when empty; else 1-256 printable ASCII, no spaces."""
    if not value:
        return None
    if len(value) > IDEMPOTENCY_KEY_MAX or not TOKEN_RE.fullmatch(value):
        raise InvalidArgumentError(
            field, f"must be at most {IDEMPOTENCY_KEY_MAX} printable ASCII characters without spaces")
    return value


def _limit(req: Any, field: str, hi: int) -> int | None:
    """A set int32 limit: 0 clears it (None); anything else must be in [1, hi]."""
    value = int(getattr(req, field))
    if value == 0:
        return None
    if not 1 <= value <= hi:
        raise InvalidArgumentError(field, f"must be in [1, {hi}] (0 clears it), got {value}")
    return value


def queue_settings(req: job_service_pb2.SetQueueSettingsRequest) -> SettingsChange:
    """The limits a SetQueueSettingsRequest changes; a field it does not set stays as it is."""
    change: dict[str, Any] = {}
    if req.HasField("per_key_concurrency"):
        change["per_key_concurrency"] = _limit(req, "per_key_concurrency", PER_KEY_CONCURRENCY_MAX)
    if req.HasField("max_running"):
        change["max_running"] = _limit(req, "max_running", MAX_RUNNING_MAX)
    if req.HasField("rate_per_second"):
        rate = req.rate_per_second
        if rate == 0:
            change["rate_per_s"] = None
            change["burst"] = None
        elif not 0 < rate <= RATE_PER_S_MAX:  # also refuses NaN and infinities
            raise InvalidArgumentError("rate_per_second", f"must be in (0, {RATE_PER_S_MAX:.0f}] (0 clears it), "
                                                          f"got {rate}")
        else:
            change["rate_per_s"] = float(rate)
    if req.HasField("burst"):
        change["burst"] = _limit(req, "burst", BURST_MAX)
    if not change:
        raise InvalidArgumentError("per_key_concurrency", "no setting given: set at least one of "
                                   "per_key_concurrency, max_running, rate_per_second, burst")
    return SettingsChange(**change)


def labels(value: Mapping[str, str], field: str) -> dict[str, str]:
    """Labels of a job or a worker: at most LABELS_MAX, keys LABEL_KEY_RE, values printable and bounded."""
    if len(value) > LABELS_MAX:
        raise InvalidArgumentError(field, f"at most {LABELS_MAX} labels, got {len(value)}")
    out = dict(value)
    for k, v in out.items():
        if not LABEL_KEY_RE.fullmatch(k):
            raise InvalidArgumentError(
                field, f"key {k[:40]!r} must be 1-{LABEL_KEY_MAX} characters of [A-Za-z0-9_.:/-], "
                       "starting with a letter or digit")
        if len(v) > LABEL_VALUE_MAX or not v.isprintable():
            raise InvalidArgumentError(
                f"{field}[{k}]", f"values must be at most {LABEL_VALUE_MAX} printable characters")
    return out


def label_filter(value: Mapping[str, str], field: str) -> dict[str, str] | None:
    """A labels filter (ListJobs, JobFilter): at most LABEL_FILTER_MAX pairs, each as Submit's labels; None if empty."""
    if len(value) > LABEL_FILTER_MAX:
        raise InvalidArgumentError(field, f"at most {LABEL_FILTER_MAX} label pairs in a filter, got {len(value)}")
    return labels(value, field) or None


def bulk_target(request: Any, *, states: frozenset[int] | None = None) -> BulkTarget:
    """The ids or the filter of a BulkCancelJobs/BulkRequeueJobs request (exactly one of the two).

    states: the JobFilter.state values the action accepts (None: any); another is refused naming filter.state.
    """
    has_filter = request.HasField("filter")
    if request.ids and has_filter:
        raise InvalidArgumentError("ids", "give ids or filter, not both")
    if not request.ids and not has_filter:
        raise InvalidArgumentError("ids", "give ids (at most 1000) or a filter")
    if request.ids:
        if len(request.ids) > BULK_IDS_MAX:
            raise InvalidArgumentError("ids", f"at most {BULK_IDS_MAX} ids per call, got {len(request.ids)}")
        ids = {job_id(v, f"ids[{i}]") for i, v in enumerate(request.ids)}
        return BulkTarget(ids=tuple(sorted(ids, reverse=True)))
    f = request.filter
    queue = name(f.queue, "filter.queue") if f.queue else None
    kind = name(f.kind, "filter.kind") if f.kind else None
    state_pb = state(f.state, "filter.state")
    if state_pb is not None and states is not None and state_pb not in states:
        allowed = ", ".join(job_pb2.JobState.Name(s) for s in sorted(states))
        raise InvalidArgumentError("filter.state", f"must be one of {allowed} (or unset), got "
                                                   f"{job_pb2.JobState.Name(state_pb)}")
    wanted = label_filter(f.labels, "filter.labels") or {}
    if queue is None and kind is None and state_pb is None and not wanted:
        raise InvalidArgumentError("filter", "set at least one of queue, kind, state, labels")
    return BulkTarget(filter=JobFilter(
        queue=queue, kind=kind, state=PB_TO_STATE[state_pb] if state_pb is not None else None,
        labels=tuple(sorted(wanted.items()))))


def extra_attempts(value: int) -> int:
    """RequeueJob's and BulkRequeueJobs' extra attempts: 0 means 1, else 1-REQUEUE_EXTRA_MAX."""
    if not 0 <= value <= REQUEUE_EXTRA_MAX:
        raise InvalidArgumentError("extra_attempts", f"must be in [1, {REQUEUE_EXTRA_MAX}] (0 for 1), "
                                                     f"got {value}")
    return value or 1


def _duration_ms(d: Duration, field: str, *, positive: bool = False) -> int | None:
    if d.seconds == 0 and d.nanos == 0:
        return None
    if d.seconds < 0 or d.nanos < 0:
        raise InvalidArgumentError(field, "must not be negative")
    if d.nanos >= 1_000_000_000:
        raise InvalidArgumentError(field, "nanos must be below 1e9")
    ms = d.seconds * 1000 + d.nanos // 1_000_000
    if ms == 0 and positive:
        raise InvalidArgumentError(field, "must be at least 1 ms")
    if ms > DURATION_MAX_MS:
        raise InvalidArgumentError(field, "must be at most 7 days")
    return ms


SDK_TEXT_MAX = 128


def hello(h: Any) -> None:
    """A worker's Hello, beyond what the session checks itself: worker id, labels, SDK name and version."""
    worker_id(h.worker_id, "hello.worker_id")
    labels(h.labels, "hello.labels")
    for f in ("sdk_name", "sdk_version"):
        text = getattr(h, f)
        if len(text) > SDK_TEXT_MAX or not text.isprintable():
            raise InvalidArgumentError(f"hello.{f}", f"must be at most {SDK_TEXT_MAX} printable characters")


def submit(req: job_service_pb2.SubmitRequest, *, field: str, max_payload: int, max_attempts_default: int,
           trace_context: dict[str, str] | None) -> JobSpec:
    """One SubmitRequest -> JobSpec; `field` prefixes field names (e.g. "jobs[3].")."""
    kind = name(req.kind, f"{field}kind")
    queue = name(req.queue, f"{field}queue", default=QUEUE_DEFAULT)
    if len(req.payload) > max_payload:
        raise InvalidArgumentError(f"{field}payload", f"is {len(req.payload)} bytes; the limit is {max_payload}")
    key = idempotency_key(req.idempotency_key, f"{field}idempotency_key")
    if req.max_attempts < 0 or req.max_attempts > MAX_ATTEMPTS_LIMIT:
        raise InvalidArgumentError(
            f"{field}max_attempts",
            f"must be in [1, {MAX_ATTEMPTS_LIMIT}] (0 for the default), got {req.max_attempts}",
        )
    if not PRIORITY_MIN <= req.priority <= PRIORITY_MAX:
        raise InvalidArgumentError(
            f"{field}priority", f"must be in [{PRIORITY_MIN}, {PRIORITY_MAX}], got {req.priority}"
        )
    run_at: datetime | None = None
    if req.HasField("run_at"):
        if req.run_at.nanos < 0 or req.run_at.nanos >= 1_000_000_000:
            raise InvalidArgumentError(f"{field}run_at", "nanos out of range")
        try:
            run_at = req.run_at.ToDatetime(tzinfo=UTC)
        except (ValueError, OverflowError):
            raise InvalidArgumentError(f"{field}run_at", "is not a valid timestamp") from None
        if not RUN_AT_MIN_YEAR <= run_at.year <= datetime.now(UTC).year + RUN_AT_MAX_YEARS:
            raise InvalidArgumentError(
                f"{field}run_at", f"must be after {RUN_AT_MIN_YEAR} and within {RUN_AT_MAX_YEARS} years")
    rp = req.retry_policy
    initial = _duration_ms(rp.initial_backoff, f"{field}retry_policy.initial_backoff", positive=True)
    maximum = _duration_ms(rp.max_backoff, f"{field}retry_policy.max_backoff", positive=True)
    if initial is not None and maximum is not None and maximum < initial:
        raise InvalidArgumentError(f"{field}retry_policy.max_backoff", "must be at least initial_backoff")
    multiplier: float | None = None
    if rp.multiplier != 0:
        if not MULTIPLIER_MIN <= rp.multiplier <= MULTIPLIER_MAX:  # also rejects NaN
            raise InvalidArgumentError(
                f"{field}retry_policy.multiplier", f"must be in [{MULTIPLIER_MIN}, {MULTIPLIER_MAX}]"
            )
        multiplier = rp.multiplier
    jitter: float | None = None
    if rp.jitter != 0:
        if not 0.0 <= rp.jitter <= 1.0:
            raise InvalidArgumentError(f"{field}retry_policy.jitter", "must be in [0, 1]")
        jitter = rp.jitter
    to = req.timeouts
    job_labels = labels(req.labels, f"{field}labels")
    concurrency_key = token(req.concurrency_key, f"{field}concurrency_key")
    required = labels(req.required_labels, f"{field}required_labels") or None
    period_ms, unfinished = dedup_window(req, field, keyed=key is not None)
    return JobSpec(
        dedup_period_ms=period_ms,
        dedup_unfinished=unfinished,
        queue=queue,
        kind=kind,
        payload=req.payload,
        idempotency_key=key,
        max_attempts=req.max_attempts or max_attempts_default,
        priority=req.priority,
        run_at=run_at,
        backoff_initial_ms=initial,
        backoff_max_ms=maximum,
        backoff_multiplier=multiplier,
        backoff_jitter=jitter,
        execution_timeout_ms=_duration_ms(to.execution, f"{field}timeouts.execution"),
        heartbeat_timeout_ms=_duration_ms(to.heartbeat, f"{field}timeouts.heartbeat", positive=True),
        schedule_to_start_ms=_duration_ms(to.schedule_to_start, f"{field}timeouts.schedule_to_start"),
        labels=job_labels,
        trace_context=trace_context,
        concurrency_key=concurrency_key,
        required_labels=required,
    )


def state(value: int, field: str = "state") -> int | None:
    if value == job_pb2.JOB_STATE_UNSPECIFIED:
        return None
    if value not in job_pb2.JobState.values():
        raise InvalidArgumentError(field, f"unknown value {value}")
    return value


def page_size(value: int) -> int:
    if value == 0:
        return PAGE_SIZE_DEFAULT
    if not 1 <= value <= PAGE_SIZE_MAX:
        raise InvalidArgumentError("page_size", f"must be in [1, {PAGE_SIZE_MAX}], got {value}")
    return value


def page_token(token: str, prefix: str) -> int | None:
    """The last job id a ListJobs page token carries (None: the first page); anything else is refused."""
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token.encode("ascii")).decode("ascii")
    except (ValueError, UnicodeError):
        raise InvalidArgumentError("page_token", "is not a token this server issued") from None
    last = positive_bigint(raw[len(prefix):]) if raw.startswith(prefix) else None
    if last is None:
        raise InvalidArgumentError("page_token", "is not a token this server issued")
    return last


def view(value: int, field: str = "view") -> bool:
    """True for JOB_VIEW_FULL; BASIC and UNSPECIFIED (the default) are False; anything else is refused."""
    if value in (job_pb2.JOB_VIEW_UNSPECIFIED, job_pb2.JOB_VIEW_BASIC):
        return False
    if value == job_pb2.JOB_VIEW_FULL:
        return True
    raise InvalidArgumentError(field, f"unknown view {value}")


# === time: schedules ===
SCHEDULE_CRON_MAX = 256
SCHEDULE_TIME_ZONE_MAX = 64
# Two labels are the scheduler's own (schedules.LABEL_SCHEDULE, LABEL_TICK).
SCHEDULE_LABELS_MAX = LABELS_MAX - 2


def schedule_spec(spec: job_service_pb2.ScheduleSpec, *, max_payload: int, max_attempts_default: int
                  ) -> ScheduleRow:
    """A CreateSchedule spec -> ScheduleRow (no id or ticks yet); every field is checked and named."""
    from coordinator.schedules import ScheduleSpecError, check_cron, zone

    nm = name(spec.name, "spec.name")
    kind = name(spec.kind, "spec.kind")
    queue = name(spec.queue, "spec.queue", default=QUEUE_DEFAULT)
    has_every = spec.HasField("every") and (spec.every.seconds or spec.every.nanos)
    if bool(spec.cron) == bool(has_every):
        raise InvalidArgumentError("spec.cron", "exactly one of cron and every must be set")
    cron: str | None = None
    every_ms: int | None = None
    time_zone = spec.time_zone or "UTC"
    if len(spec.time_zone) > SCHEDULE_TIME_ZONE_MAX or not spec.time_zone.isprintable():
        raise InvalidArgumentError("spec.time_zone", f"must be an IANA zone name of at most {SCHEDULE_TIME_ZONE_MAX} "
                                                     "characters")
    if spec.cron:
        if len(spec.cron) > SCHEDULE_CRON_MAX or not spec.cron.isprintable():
            raise InvalidArgumentError("spec.cron", f"must be at most {SCHEDULE_CRON_MAX} printable characters")
        try:
            zone(time_zone)
        except ScheduleSpecError as exc:
            raise InvalidArgumentError("spec.time_zone", str(exc)) from None
        try:
            check_cron(spec.cron, time_zone)
        except ScheduleSpecError as exc:
            raise InvalidArgumentError("spec.cron", str(exc)) from None
        cron = " ".join(spec.cron.split())
    else:
        if spec.time_zone:
            raise InvalidArgumentError("spec.time_zone", "applies to cron schedules only")
        d = spec.every
        if d.seconds < 0 or d.nanos != 0:
            raise InvalidArgumentError("spec.every", "must be a positive whole number of seconds")
        if not SCHEDULE_EVERY_MIN.total_seconds() <= d.seconds <= SCHEDULE_EVERY_MAX.total_seconds():
            raise InvalidArgumentError("spec.every", f"must be from {int(SCHEDULE_EVERY_MIN.total_seconds())} s to "
                                                     f"{SCHEDULE_EVERY_MAX.days} days")
        every_ms = d.seconds * 1000
    if len(spec.payload) > max_payload:
        raise InvalidArgumentError("spec.payload", f"is {len(spec.payload)} bytes; the limit is {max_payload}")
    if not PRIORITY_MIN <= spec.priority <= PRIORITY_MAX:
        raise InvalidArgumentError("spec.priority", f"must be in [{PRIORITY_MIN}, {PRIORITY_MAX}], got {spec.priority}")
    if not 0 <= spec.max_attempts <= MAX_ATTEMPTS_LIMIT:
        raise InvalidArgumentError("spec.max_attempts", f"must be in [1, {MAX_ATTEMPTS_LIMIT}] (0 for the default), "
                                                        f"got {spec.max_attempts}")
    if len(spec.labels) > SCHEDULE_LABELS_MAX:
        raise InvalidArgumentError("spec.labels", f"at most {SCHEDULE_LABELS_MAX} labels, got {len(spec.labels)}")
    job_labels = labels(spec.labels, "spec.labels")
    for reserved in ("faultline.schedule", "faultline.tick"):
        if reserved in job_labels:
            raise InvalidArgumentError("spec.labels", f"{reserved} is set by the scheduler")
    catchup = {job_service_pb2.SCHEDULE_CATCHUP_UNSPECIFIED: ScheduleCatchup.SKIP,
               job_service_pb2.SCHEDULE_CATCHUP_SKIP: ScheduleCatchup.SKIP,
               job_service_pb2.SCHEDULE_CATCHUP_RUN_ONCE: ScheduleCatchup.RUN_ONCE}.get(spec.catchup)
    if catchup is None:
        raise InvalidArgumentError("spec.catchup", f"unknown value {spec.catchup}")
    overlap = {job_service_pb2.SCHEDULE_OVERLAP_UNSPECIFIED: ScheduleOverlap.SKIP,
               job_service_pb2.SCHEDULE_OVERLAP_SKIP: ScheduleOverlap.SKIP,
               job_service_pb2.SCHEDULE_OVERLAP_ALLOW: ScheduleOverlap.ALLOW}.get(spec.overlap)
    if overlap is None:
        raise InvalidArgumentError("spec.overlap", f"unknown value {spec.overlap}")
    return ScheduleRow(name=nm, cron=cron, time_zone=time_zone if cron else "UTC", every_ms=every_ms, kind=kind,
                       queue=queue, payload=spec.payload, priority=spec.priority,
                       max_attempts=spec.max_attempts or max_attempts_default, labels=job_labels,
                       catchup=catchup, overlap=overlap)


def schedule_name(value: str, field: str = "name") -> str:
    return name(value, field)


# === time: dedup windows ===
DEDUP_PERIOD_MIN_MS = 1_000
DEDUP_PERIOD_MAX_MS = 366 * 86_400_000


def dedup_window(req: job_service_pb2.SubmitRequest, field: str, *, keyed: bool) -> tuple[int | None, bool]:
    """(period in ms or None, while-unfinished) of a submit's idempotency key."""
    mode = req.dedup_window
    has_period = req.HasField("dedup_period")
    if mode == job_service_pb2.DEDUP_WINDOW_UNSPECIFIED:
        if has_period:
            raise InvalidArgumentError(f"{field}dedup_period", "needs dedup_window DEDUP_WINDOW_PERIOD")
        return None, False
    if mode not in (job_service_pb2.DEDUP_WINDOW_PERIOD, job_service_pb2.DEDUP_WINDOW_UNFINISHED):
        raise InvalidArgumentError(f"{field}dedup_window", f"unknown value {mode}")
    if not keyed:
        raise InvalidArgumentError(f"{field}dedup_window", "needs an idempotency_key: the window is the key's")
    if mode == job_service_pb2.DEDUP_WINDOW_UNFINISHED:
        if has_period:
            raise InvalidArgumentError(f"{field}dedup_period", "applies to DEDUP_WINDOW_PERIOD only")
        return None, True
    d = req.dedup_period
    if not has_period or d.seconds < 0 or d.nanos < 0 or d.nanos >= 1_000_000_000:
        raise InvalidArgumentError(f"{field}dedup_period", "is required with DEDUP_WINDOW_PERIOD: 1 s to 366 days")
    ms = d.seconds * 1000 + d.nanos // 1_000_000
    if not DEDUP_PERIOD_MIN_MS <= ms <= DEDUP_PERIOD_MAX_MS:
        raise InvalidArgumentError(f"{field}dedup_period", f"must be from 1 s to 366 days, got {ms} ms")
    return ms, False
