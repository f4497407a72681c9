"""Pure pieces of the SDK: backoff, error formatting, conversions, the public surface."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

import worker_sdk
from worker_sdk import JobState, RetryJob, WorkerSDKError
from worker_sdk._backoff import full_jitter
from worker_sdk._context import CancelReason, JobContext, to_result_bytes
from worker_sdk._convert import job_from_pb, job_state_from_pb, job_state_to_pb
from worker_sdk._frames import LeaseGrant, LeaseRef
from worker_sdk._proto.faultline.v1 import job_pb2
from worker_sdk._types import Job
from worker_sdk._worker import FAIL_ERROR_MAX_BYTES, format_error


def test_full_jitter_stays_under_the_capped_exponential_bound() -> None:
    base, cap = timedelta(milliseconds=100), timedelta(seconds=5)
    assert full_jitter(0, base=base, cap=cap, rand=lambda: 0.999) < base
    assert full_jitter(3, base=base, cap=cap, rand=lambda: 1.0) == timedelta(milliseconds=800)
    assert full_jitter(1000, base=base, cap=cap, rand=lambda: 1.0) == cap
    assert full_jitter(2, base=base, cap=cap, rand=lambda: 0.0) == timedelta(0)


def test_format_error_is_type_and_message_cut_to_8_kib() -> None:
    assert format_error(ValueError("bad")) == "ValueError: bad"
    assert format_error(KeyError()) == "KeyError"
    long = format_error(RuntimeError("ü" * 9000))
    assert len(long.encode()) <= FAIL_ERROR_MAX_BYTES and long.startswith("RuntimeError: ü")


def test_errors_default_to_their_docstring_and_keep_structured_fields() -> None:
    assert str(WorkerSDKError()) == "Unexpected Faultline worker SDK error."
    retry = RetryJob(timedelta(seconds=3))
    assert retry.delay == timedelta(seconds=3) and str(retry) == "The attempt failed and should be retried."
    with pytest.raises(TypeError):
        RetryJob("soon")  # type: ignore[arg-type]


def test_handler_results_become_bytes() -> None:
    assert to_result_bytes(None) == b""
    assert to_result_bytes("é") == "é".encode()
    assert to_result_bytes(bytearray(b"x")) == b"x"
    with pytest.raises(TypeError):
        to_result_bytes(42)


def test_job_states_round_trip_and_unset_timestamps_are_none() -> None:
    for state in JobState:
        assert job_state_from_pb(job_state_to_pb(state)) is state
    job = job_from_pb(job_pb2.Job(id="7", kind="k", queue="q", state=job_pb2.JOB_STATE_SUCCEEDED, result=b"r"))
    assert job.state is JobState.SUCCEEDED and job.state.terminal and job.result == b"r"
    assert job.created_at is None and job.idempotency_key is None and job.retry_policy is None


def test_public_surface_is_sorted_and_importable() -> None:
    assert worker_sdk.__all__ == sorted(worker_sdk.__all__)
    for name in worker_sdk.__all__:
        assert hasattr(worker_sdk, name)


def _context() -> JobContext:
    grant = LeaseGrant(
        lease=LeaseRef("7.1", 1),
        job=Job(id="7", kind="k", queue="q", state=JobState.RUNNING),
        attempt=1,
        lease_deadline=None,
        heartbeat_timeout=None,
        execution_timeout=None,
    )
    return JobContext(grant=grant, link=None, loop=None)  # type: ignore[arg-type]  # neither is used here


def test_job_context_events_made_after_the_cancel_are_already_set() -> None:
    ctx = _context()
    assert not ctx.cancelled and not ctx.wait_cancelled(0)  # the thread-side flag exists before the cancel
    ctx._mark_cancelled(CancelReason.TIMEOUT)
    ctx._mark_cancelled(CancelReason.LEASE_LOST)
    assert ctx.cancelled and ctx.wait_cancelled(0) and ctx.cancel_event.is_set()
    assert ctx.cancel_reason is CancelReason.LEASE_LOST
    later = _context()
    later._mark_cancelled(CancelReason.CANCELLED)  # no event or flag made yet
    assert later.cancelled and later.cancel_event.is_set() and later.wait_cancelled(0)
    assert later.logger.extra == {"job_id": "7", "kind": "k", "attempt": 1, "lease_id": "7.1", "fencing_token": 1}


def test_job_context_flag_made_in_a_thread_sees_a_concurrent_cancel() -> None:
    for _ in range(200):
        ctx = _context()
        waited: list[bool] = []
        thread = threading.Thread(target=lambda c=ctx, w=waited: w.append(c.wait_cancelled(5)))
        thread.start()
        ctx._mark_cancelled(CancelReason.SHUTDOWN)
        thread.join()
        assert waited == [True]
