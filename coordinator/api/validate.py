"""Validates every request field before anything is stored; errors name the field (INVALID_ARGUMENT)."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from google.protobuf.duration_pb2 import Duration

from coordinator.errors import InvalidArgumentError
from coordinator.model import JobSpec
from worker_sdk._proto.faultline.v1 import job_pb2, job_service_pb2

NAME_RE = re.compile(r"^[A-Za-z0-9_.:\-]{1,128}$")
QUEUE_DEFAULT = "default"
IDEMPOTENCY_KEY_MAX = 256
PRIORITY_MIN, PRIORITY_MAX = -1000, 1000
MAX_ATTEMPTS_LIMIT = 1000
LABELS_MAX = 64
LABEL_KEY_MAX = 64
LABEL_VALUE_MAX = 256
DURATION_MAX_MS = 7 * 24 * 3600 * 1000
MULTIPLIER_MIN, MULTIPLIER_MAX = 1.0, 100.0
BATCH_MAX = 10_000
PAGE_SIZE_DEFAULT = 100
PAGE_SIZE_MAX = 1000
JOB_ID_RE = re.compile(r"^[1-9][0-9]{0,18}$")
RUN_AT_MAX_YEARS = 10


def name(value: str, field: str, *, default: str | None = None) -> str:
    if not value:
        if default is not None:
            return default
        raise InvalidArgumentError(field, "is required")
    if not NAME_RE.match(value):
        raise InvalidArgumentError(field, "must be 1-128 characters of [A-Za-z0-9_.:-]")
    return value


def job_id(value: str, field: str = "id") -> int:
    if not value:
        raise InvalidArgumentError(field, "is required")
    if not JOB_ID_RE.match(value) or int(value) > 2**63 - 1:
        raise InvalidArgumentError(field, f"malformed job id {value[:40]!r}: expected a positive decimal integer")
    return int(value)


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


def submit(req: job_service_pb2.SubmitRequest, *, field: str, max_payload: int, max_attempts_default: int,
           trace_context: dict[str, str] | None) -> JobSpec:
    """One SubmitRequest -> JobSpec; `field` prefixes field names (e.g. "jobs[3].")."""
    kind = name(req.kind, f"{field}kind")
    queue = name(req.queue, f"{field}queue", default=QUEUE_DEFAULT)
    if len(req.payload) > max_payload:
        raise InvalidArgumentError(f"{field}payload", f"is {len(req.payload)} bytes; the limit is {max_payload}")
    key = req.idempotency_key or None
    if key is not None and (len(key) > IDEMPOTENCY_KEY_MAX or not key.isprintable()):
        raise InvalidArgumentError(
            f"{field}idempotency_key", f"must be at most {IDEMPOTENCY_KEY_MAX} printable characters"
        )
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
        if run_at.year > datetime.now(UTC).year + RUN_AT_MAX_YEARS:
            raise InvalidArgumentError(f"{field}run_at", f"must be within {RUN_AT_MAX_YEARS} years")
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
    labels = dict(req.labels)
    if len(labels) > LABELS_MAX:
        raise InvalidArgumentError(f"{field}labels", f"at most {LABELS_MAX} labels")
    for k, v in labels.items():
        if not k or len(k) > LABEL_KEY_MAX:
            raise InvalidArgumentError(f"{field}labels", f"keys must be 1-{LABEL_KEY_MAX} characters")
        if len(v) > LABEL_VALUE_MAX:
            raise InvalidArgumentError(
                f"{field}labels[{k[:64]}]", f"values must be at most {LABEL_VALUE_MAX} characters"
            )
        if "\x00" in k or "\x00" in v:
            raise InvalidArgumentError(f"{field}labels", "must not contain NUL characters")
    return JobSpec(
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
        labels=labels,
        trace_context=trace_context,
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
