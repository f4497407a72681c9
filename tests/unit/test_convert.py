"""The job on the wire: every stored field reaches a grant and a Submit reply, read back as a client reads it.

coordinator/api/convert.py builds these frames from nested dicts for speed (job_fields); this reads the
encoded bytes back with the generated classes, field by field, for a job with every optional field set,
one with none, and randomised mixes of the two."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from coordinator.api import convert
from coordinator.model import Job, JobState
from worker_sdk._proto.faultline.v1 import job_pb2

T0 = datetime(2026, 12, 7, 23, 30, 1, 123456, tzinfo=UTC)

FULL: dict[str, Any] = {
    "id": 2**63 - 1, "queue": "q.1", "kind": "k:v", "state": JobState.RUNNING, "priority": -5,
    "payload": b"\x00payload", "result": b"res", "last_error": "boom", "attempts": 3, "max_attempts": 7,
    "idempotency_key": "key-1", "labels": {"a": "1", "b/c": "2"}, "backoff_initial_ms": 1500,
    "backoff_max_ms": 60_001, "backoff_multiplier": 2.5, "backoff_jitter": 0.25, "execution_timeout_ms": 999,
    "heartbeat_timeout_ms": 10_000, "schedule_to_start_ms": 0, "trace_context": {"traceparent": "00-x"},
    "lease_token": 9, "worker_id": "w", "lease_expires_at": T0 + timedelta(seconds=30), "cancel_requested": True,
    "progress_fraction": 0.5, "progress_message": "half", "progress_details": b"det", "created_at": T0,
    "run_at": T0 + timedelta(microseconds=1), "started_at": T0 + timedelta(seconds=1),
    "finished_at": T0 + timedelta(seconds=2), "updated_at": T0 + timedelta(seconds=3),
    "concurrency_key": "tenant-9", "required_labels": {"gpu": "yes"},
}
EMPTY = {**FULL, "priority": 0, "result": None, "last_error": None, "idempotency_key": None, "labels": {},
         "backoff_initial_ms": None, "backoff_max_ms": None, "backoff_multiplier": None, "backoff_jitter": None,
         "execution_timeout_ms": None, "heartbeat_timeout_ms": None, "schedule_to_start_ms": None,
         "cancel_requested": False, "progress_fraction": None, "progress_message": None, "progress_details": None,
         "started_at": None, "finished_at": None, "concurrency_key": None, "required_labels": None}


def _ts(m: Any) -> datetime:
    return m.ToDatetime(tzinfo=UTC)


def _ms(m: Any) -> int:
    return m.seconds * 1000 + m.nanos // 1_000_000


def _check(job: Job, *, full: bool) -> None:
    m = job_pb2.Job.FromString(convert.job_to_pb(job, full=full).SerializeToString())
    assert (m.id, m.queue, m.kind, m.state) == (str(job.id), job.queue, job.kind, convert.STATE_TO_PB[job.state])
    assert (m.priority, m.attempts, m.max_attempts) == (job.priority, job.attempts, job.max_attempts)
    assert m.payload == (job.payload if full else b"")
    assert m.result == ((job.result or b"") if full else b"")
    assert (m.last_error, m.idempotency_key) == (job.last_error or "", job.idempotency_key or "")
    assert dict(m.labels) == job.labels and dict(m.required_labels) == (job.required_labels or {})
    assert (m.cancel_requested, m.concurrency_key) == (job.cancel_requested, job.concurrency_key or "")
    assert (_ts(m.created_at), _ts(m.run_at), _ts(m.updated_at)) == (job.created_at, job.run_at, job.updated_at)
    assert (_ts(m.started_at) if m.HasField("started_at") else None) == job.started_at
    assert (_ts(m.finished_at) if m.HasField("finished_at") else None) == job.finished_at
    has_progress = job.progress_fraction is not None or bool(job.progress_message)
    assert m.HasField("progress") == has_progress
    if has_progress:
        assert (m.progress.fraction, m.progress.message) == (job.progress_fraction or 0.0, job.progress_message or "")
        assert m.progress.details == ((job.progress_details or b"") if full else b"")
    rp, to = m.retry_policy, m.timeouts
    assert (_ms(rp.initial_backoff) if rp.HasField("initial_backoff") else None) == job.backoff_initial_ms
    assert (_ms(rp.max_backoff) if rp.HasField("max_backoff") else None) == job.backoff_max_ms
    assert (rp.multiplier or None, rp.jitter or None) == (job.backoff_multiplier, job.backoff_jitter)
    assert (_ms(to.execution) if to.HasField("execution") else None) == job.execution_timeout_ms
    assert (_ms(to.heartbeat) if to.HasField("heartbeat") else None) == job.heartbeat_timeout_ms
    assert (_ms(to.schedule_to_start) if to.HasField("schedule_to_start") else None) == job.schedule_to_start_ms


@pytest.mark.parametrize("full", [True, False])
@pytest.mark.parametrize("base", [FULL, EMPTY], ids=["every-field", "no-optional-field"])
def test_every_field_reaches_the_wire(base: dict[str, Any], full: bool) -> None:
    _check(Job(**base), full=full)


def test_mixed_fields_reach_the_wire() -> None:
    rng = random.Random(7)
    for _ in range(500):
        fields = {k: (FULL[k] if rng.random() < 0.5 else EMPTY[k]) for k in FULL}
        _check(Job(**fields), full=rng.random() < 0.5)
