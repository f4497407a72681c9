"""Conversion between generated faultline.v1 messages and the SDK's dataclasses; no I/O.

With _stream.py and _client.py, the only module that imports generated code.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from google.protobuf import duration_pb2, timestamp_pb2
from google.protobuf.internal.containers import RepeatedCompositeFieldContainer

from worker_sdk._errors import ProtocolError
from worker_sdk._frames import (
    Abandon,
    CancelLease,
    Complete,
    Drain,
    Fail,
    GetStep,
    Heartbeat,
    Hello,
    LeaseGrant,
    LeaseRef,
    LeaseRevoked,
    LeaseStatus,
    Progress,
    RecordStep,
    Release,
    Reply,
    ReplyStatus,
    RequestFrame,
    Welcome,
)
from worker_sdk._proto.faultline.v1 import job_pb2, job_service_pb2, worker_service_pb2
from worker_sdk._types import (
    AttemptAudit,
    Job,
    JobSpec,
    JobState,
    JobTimeouts,
    QueueMinute,
    QueueSettings,
    QueueStats,
    RetryPolicy,
    Schedule,
    SubmitResult,
    WorkerInfo,
)

_JOB_STATE_FROM_PB: dict[job_pb2.JobState, JobState] = {
    job_pb2.JOB_STATE_QUEUED: JobState.QUEUED,
    job_pb2.JOB_STATE_RUNNING: JobState.RUNNING,
    job_pb2.JOB_STATE_RETRYING: JobState.RETRYING,
    job_pb2.JOB_STATE_SUCCEEDED: JobState.SUCCEEDED,
    job_pb2.JOB_STATE_DEAD_LETTERED: JobState.DEAD_LETTERED,
    job_pb2.JOB_STATE_CANCELLED: JobState.CANCELLED,
    job_pb2.JOB_STATE_SCHEDULED: JobState.SCHEDULED,
}
_JOB_STATE_TO_PB: dict[JobState, job_pb2.JobState] = {v: k for k, v in _JOB_STATE_FROM_PB.items()}

_REPLY_STATUS_FROM_PB: dict[int, ReplyStatus] = {
    worker_service_pb2.REPLY_STATUS_UNSPECIFIED: ReplyStatus.UNSPECIFIED,
    worker_service_pb2.REPLY_STATUS_ACCEPTED: ReplyStatus.ACCEPTED,
    worker_service_pb2.REPLY_STATUS_DUPLICATE: ReplyStatus.DUPLICATE,
    worker_service_pb2.REPLY_STATUS_STALE_LEASE: ReplyStatus.STALE_LEASE,
    worker_service_pb2.REPLY_STATUS_CANCELLED: ReplyStatus.CANCELLED,
    worker_service_pb2.REPLY_STATUS_NOT_FOUND: ReplyStatus.NOT_FOUND,
    worker_service_pb2.REPLY_STATUS_INVALID: ReplyStatus.INVALID,
    worker_service_pb2.REPLY_STATUS_UNAVAILABLE: ReplyStatus.UNAVAILABLE,
}
_REPLY_STATUS_TO_PB: dict[ReplyStatus, int] = {v: k for k, v in _REPLY_STATUS_FROM_PB.items()}


# ---- scalars ----------------------------------------------------------------------------------


# Timestamp.ToDatetime/Duration.ToTimedelta build a timedelta from keyword arguments, validate, and
# (aware) call astimezone: about 0.85 us each, and a lease grant carries six. The arithmetic below
# gives the same values in well under half that; anything outside the valid Timestamp range goes
# through ToDatetime, which raises as before.
_EPOCH_UTC = datetime(1970, 1, 1, tzinfo=UTC)
_ZERO = timedelta(0)
_TIMESTAMP_SECONDS_MIN = -62_135_596_800  # 0001-01-01T00:00:00Z
_TIMESTAMP_SECONDS_MAX = 253_402_300_799  # 9999-12-31T23:59:59Z
_NANOS_PER_SECOND = 1_000_000_000
_NANOS_PER_MICRO = 1_000


def timestamp_to_datetime(ts: timestamp_pb2.Timestamp) -> datetime:
    seconds, nanos = ts.seconds, ts.nanos
    if _TIMESTAMP_SECONDS_MIN <= seconds <= _TIMESTAMP_SECONDS_MAX and 0 <= nanos < _NANOS_PER_SECOND:
        return _EPOCH_UTC + timedelta(0, seconds, nanos // _NANOS_PER_MICRO)
    return ts.ToDatetime(tzinfo=UTC)


def datetime_to_timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    if value.tzinfo is None:
        raise ValueError("datetimes sent to the coordinator must be timezone-aware")
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


def duration_to_timedelta(d: duration_pb2.Duration) -> timedelta:
    nanos = d.nanos  # has the sign of seconds; rounded toward zero, as ToTimedelta does
    micros = nanos // _NANOS_PER_MICRO if nanos >= 0 else -(-nanos // _NANOS_PER_MICRO)
    return timedelta(0, d.seconds, micros)


def timedelta_to_duration(value: timedelta) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromTimedelta(value)
    return d


def job_state_from_pb(value: int) -> JobState:
    try:
        return _JOB_STATE_FROM_PB[value]  # type: ignore[index]  # protoc's pyi types enum values as the enum
    except KeyError:
        raise ProtocolError(f"unknown job state {value}") from None


def job_state_to_pb(value: JobState | None) -> job_pb2.JobState:
    return job_pb2.JOB_STATE_UNSPECIFIED if value is None else _JOB_STATE_TO_PB[value]


def reply_status_from_pb(value: int) -> ReplyStatus:
    # An enum value added after this SDK was built reads as UNSPECIFIED, which callers treat as INVALID.
    return _REPLY_STATUS_FROM_PB.get(value, ReplyStatus.UNSPECIFIED)


def reply_status_to_pb(value: ReplyStatus) -> int:
    return _REPLY_STATUS_TO_PB[value]


# ---- jobs -------------------------------------------------------------------------------------


def retry_policy_from_pb(msg: job_pb2.RetryPolicy) -> RetryPolicy:
    return RetryPolicy(
        initial_backoff=duration_to_timedelta(msg.initial_backoff) if msg.HasField("initial_backoff") else None,
        max_backoff=duration_to_timedelta(msg.max_backoff) if msg.HasField("max_backoff") else None,
        multiplier=msg.multiplier or None,
        jitter=msg.jitter or None,
    )


def retry_policy_to_pb(policy: RetryPolicy) -> job_pb2.RetryPolicy:
    msg = job_pb2.RetryPolicy(multiplier=policy.multiplier or 0.0, jitter=policy.jitter or 0.0)
    if policy.initial_backoff is not None:
        msg.initial_backoff.CopyFrom(timedelta_to_duration(policy.initial_backoff))
    if policy.max_backoff is not None:
        msg.max_backoff.CopyFrom(timedelta_to_duration(policy.max_backoff))
    return msg


def timeouts_from_pb(msg: job_pb2.JobTimeouts) -> JobTimeouts:
    return JobTimeouts(
        execution=duration_to_timedelta(msg.execution) if msg.HasField("execution") else None,
        heartbeat=duration_to_timedelta(msg.heartbeat) if msg.HasField("heartbeat") else None,
        schedule_to_start=(duration_to_timedelta(msg.schedule_to_start) if msg.HasField("schedule_to_start") else None),
    )


def timeouts_to_pb(timeouts: JobTimeouts) -> job_pb2.JobTimeouts:
    msg = job_pb2.JobTimeouts()
    if timeouts.execution is not None:
        msg.execution.CopyFrom(timedelta_to_duration(timeouts.execution))
    if timeouts.heartbeat is not None:
        msg.heartbeat.CopyFrom(timedelta_to_duration(timeouts.heartbeat))
    if timeouts.schedule_to_start is not None:
        msg.schedule_to_start.CopyFrom(timedelta_to_duration(timeouts.schedule_to_start))
    return msg


def job_from_pb(msg: job_pb2.Job) -> Job:
    has = msg.HasField
    progress = msg.progress
    return Job(
        id=msg.id,
        kind=msg.kind,
        queue=msg.queue,
        state=job_state_from_pb(msg.state),
        payload=msg.payload,
        result=msg.result,
        last_error=msg.last_error,
        attempts=msg.attempts,
        max_attempts=msg.max_attempts,
        priority=msg.priority,
        idempotency_key=msg.idempotency_key or None,
        progress_fraction=progress.fraction,
        progress_message=progress.message,
        progress_details=progress.details,
        # An empty map's truth test is far cheaper than dict() of it, and most jobs have no labels.
        labels=dict(msg.labels) if msg.labels else {},
        cancel_requested=msg.cancel_requested,
        retry_policy=retry_policy_from_pb(msg.retry_policy) if has("retry_policy") else None,
        timeouts=timeouts_from_pb(msg.timeouts) if has("timeouts") else None,
        created_at=timestamp_to_datetime(msg.created_at) if has("created_at") else None,
        run_at=timestamp_to_datetime(msg.run_at) if has("run_at") else None,
        started_at=timestamp_to_datetime(msg.started_at) if has("started_at") else None,
        finished_at=timestamp_to_datetime(msg.finished_at) if has("finished_at") else None,
        updated_at=timestamp_to_datetime(msg.updated_at) if has("updated_at") else None,
        concurrency_key=msg.concurrency_key or None,
        required_labels=dict(msg.required_labels) if msg.required_labels else {},
    )


def submit_request_to_pb(spec: JobSpec) -> job_service_pb2.SubmitRequest:
    msg = job_service_pb2.SubmitRequest()
    fill_submit_request(msg, spec)
    return msg


def fill_submit_request(msg: job_service_pb2.SubmitRequest, spec: JobSpec) -> None:
    """Fill an empty SubmitRequest, e.g. one just added to a SubmitBatchRequest's jobs.

    Filled in place so that a batch is not built twice (passing messages to SubmitBatchRequest(jobs=...)
    copies each). Unset optional values keep the proto defaults, as the constructor wrote them.
    """
    if not isinstance(spec.payload, bytes | bytearray | memoryview):
        raise TypeError(f"payload must be bytes, not {type(spec.payload).__name__}")
    msg.kind = spec.kind
    msg.queue = spec.queue
    msg.payload = bytes(spec.payload)
    if spec.idempotency_key:
        msg.idempotency_key = spec.idempotency_key
    if spec.max_attempts:
        msg.max_attempts = spec.max_attempts
    msg.priority = spec.priority
    if spec.labels:
        msg.labels.update(spec.labels)
    if spec.concurrency_key:
        msg.concurrency_key = spec.concurrency_key
    if spec.required_labels:
        msg.required_labels.update(spec.required_labels)
    if spec.run_at is not None:
        msg.run_at.CopyFrom(datetime_to_timestamp(spec.run_at))
    if spec.retry_policy is not None:
        msg.retry_policy.CopyFrom(retry_policy_to_pb(spec.retry_policy))
    if spec.timeouts is not None:
        msg.timeouts.CopyFrom(timeouts_to_pb(spec.timeouts))
    if spec.dedup_period is not None:
        msg.dedup_window = job_service_pb2.DEDUP_WINDOW_PERIOD
        msg.dedup_period.CopyFrom(timedelta_to_duration(spec.dedup_period))
    elif spec.dedup_while_unfinished:
        msg.dedup_window = job_service_pb2.DEDUP_WINDOW_UNFINISHED


_OUTCOME_NAMES = {
    job_service_pb2.SUBMIT_OUTCOME_CREATED: "created",
    job_service_pb2.SUBMIT_OUTCOME_DUPLICATE_KEY: "duplicate_key",
    job_service_pb2.SUBMIT_OUTCOME_DUPLICATE_IN_PERIOD: "duplicate_in_period",
    job_service_pb2.SUBMIT_OUTCOME_DUPLICATE_UNFINISHED: "duplicate_unfinished",
}


def submit_result_from_pb(msg: job_service_pb2.SubmitResponse) -> SubmitResult:
    outcome = _OUTCOME_NAMES.get(msg.outcome) or ("created" if msg.created else "duplicate_key")
    return SubmitResult(job=job_from_pb(msg.job), created=msg.created, outcome=outcome, detail=msg.outcome_detail)


def _state_key(name: str) -> JobState | str:
    try:
        return JobState(name)
    except ValueError:
        return name


def queue_stats_from_pb(msg: job_service_pb2.QueueStats) -> QueueStats:
    return QueueStats(
        name=msg.name,
        depth={_state_key(k): v for k, v in msg.depth.items()},
        oldest_ready_age=duration_to_timedelta(msg.oldest_ready_age),
        finished_last_minute=msg.finished_last_minute,
        settings=queue_settings_from_pb(msg.settings) if msg.HasField("settings") else None,
        waiting_on_key=msg.waiting_on_key,
        requiring_labels=msg.requiring_labels,
        sampled_at=timestamp_to_datetime(msg.sampled_at) if msg.HasField("sampled_at") else None,
        workers_connected=msg.workers_connected,
        history=tuple(queue_minute_from_pb(m) for m in msg.history),
    )


def _optional_duration(msg: job_service_pb2.QueueMinute, name: str) -> timedelta | None:
    return duration_to_timedelta(getattr(msg, name)) if msg.HasField(name) else None


def queue_minute_from_pb(msg: job_service_pb2.QueueMinute) -> QueueMinute:
    return QueueMinute(
        start=timestamp_to_datetime(msg.start), succeeded=msg.succeeded, failed=msg.failed,
        wait_p50=_optional_duration(msg, "wait_p50"), wait_p95=_optional_duration(msg, "wait_p95"),
        run_p50=_optional_duration(msg, "run_p50"), run_p95=_optional_duration(msg, "run_p95"))


def attempt_audit_from_pb(msg: job_service_pb2.AttemptAudit) -> AttemptAudit:
    return AttemptAudit(
        attempt=msg.attempt, worker_id=msg.worker_id, outcome=msg.outcome, fencing_token=msg.fencing_token,
        started_at=timestamp_to_datetime(msg.started_at) if msg.HasField("started_at") else None,
        ended_at=timestamp_to_datetime(msg.ended_at) if msg.HasField("ended_at") else None, error=msg.error)


def queue_settings_from_pb(msg: job_service_pb2.QueueSettings) -> QueueSettings:
    return QueueSettings(
        name=msg.name, paused=msg.paused, per_key_concurrency=msg.per_key_concurrency or None,
        max_running=msg.max_running or None, rate_per_second=msg.rate_per_second or None, burst=msg.burst or None)


def worker_info_from_pb(msg: job_service_pb2.WorkerInfo) -> WorkerInfo:
    return WorkerInfo(
        worker_id=msg.worker_id,
        session_id=msg.session_id,
        queues=tuple(msg.queues),
        kinds=tuple(msg.kinds),
        capacity=msg.capacity,
        lease_ids=tuple(msg.lease_ids),
        credit=msg.credit,
        sdk=msg.sdk,
        connected_at=timestamp_to_datetime(msg.connected_at) if msg.HasField("connected_at") else None,
        draining=msg.draining,
        labels=dict(msg.labels),
        since_heartbeat=duration_to_timedelta(msg.since_heartbeat) if msg.HasField("since_heartbeat") else None,
    )


# ---- worker stream frames ---------------------------------------------------------------------


def lease_ref_to_pb(ref: LeaseRef) -> worker_service_pb2.LeaseRef:
    return worker_service_pb2.LeaseRef(lease_id=ref.lease_id, fencing_token=ref.fencing_token)


def lease_ref_from_pb(msg: worker_service_pb2.LeaseRef) -> LeaseRef:
    return LeaseRef(msg.lease_id, msg.fencing_token)


def hello_to_pb(hello: Hello) -> worker_service_pb2.WorkerFrame:
    return worker_service_pb2.WorkerFrame(
        hello=worker_service_pb2.Hello(
            worker_id=hello.worker_id,
            queues=list(hello.queues),
            kinds=list(hello.kinds),
            capacity=hello.capacity,
            labels=dict(hello.labels),
            sdk_name=hello.sdk_name,
            sdk_version=hello.sdk_version,
            held_leases=[lease_ref_to_pb(r) for r in hello.held_leases],
        )
    )


def _set_lease(msg: worker_service_pb2.LeaseRef, ref: LeaseRef) -> None:
    msg.lease_id = ref.lease_id
    msg.fencing_token = ref.fencing_token


def add_credit(frames: RepeatedCompositeFieldContainer[worker_service_pb2.WorkerFrame], count: int) -> None:
    """Append a Credit frame to a ConnectRequest's frames."""
    frames.add().credit.count = count


def add_request(
    frames: RepeatedCompositeFieldContainer[worker_service_pb2.WorkerFrame], seq: int, frame: RequestFrame
) -> worker_service_pb2.WorkerFrame:
    """Append one frame that expects a reply, tagged with its per-session seq, and return it.

    Filled in place: building each message on its own and passing it to its parent's constructor
    copies it again at every level (WorkerFrame, then ConnectRequest), three times the cost.
    SetInParent() selects the oneof even when every field keeps its default (an empty heartbeat).
    """
    out = frames.add()
    out.seq = seq
    match frame:
        case Heartbeat(leases=leases):
            heartbeat = out.heartbeat
            heartbeat.SetInParent()
            add = heartbeat.leases.add
            for ref in leases:
                _set_lease(add(), ref)
        case Progress():
            progress = out.progress
            progress.SetInParent()
            _set_lease(progress.lease, frame.lease)
            progress.fraction = frame.fraction
            progress.message = frame.message
            progress.details = frame.details
        case Complete(lease=lease, result=result):
            complete = out.complete
            complete.SetInParent()
            _set_lease(complete.lease, lease)
            complete.result = result
        case Fail():
            fail = out.fail
            fail.SetInParent()
            _set_lease(fail.lease, frame.lease)
            fail.error = frame.error
            fail.retryable = frame.retryable
            if frame.retry_delay is not None:
                fail.retry_delay.FromTimedelta(frame.retry_delay)
        case Release(lease=lease, reason=reason):
            release = out.release
            release.SetInParent()
            _set_lease(release.lease, lease)
            release.reason = reason
        case Abandon(lease=lease, reason=reason):
            abandon = out.abandon
            abandon.SetInParent()
            _set_lease(abandon.lease, lease)
            abandon.reason = reason
        case GetStep(lease=lease, key=key):
            get_step = out.get_step
            get_step.SetInParent()
            _set_lease(get_step.lease, lease)
            get_step.key = key
        case RecordStep(lease=lease, key=key, result=result):
            record_step = out.record_step
            record_step.SetInParent()
            _set_lease(record_step.lease, lease)
            record_step.key = key
            record_step.result = result
        case _:
            del frames[-1]
            raise TypeError(f"not a request frame: {frame!r}")
    return out


def _opt_duration(msg: worker_service_pb2.LeaseGrant, name: str) -> timedelta | None:
    if not msg.HasField(name):
        return None
    value = duration_to_timedelta(getattr(msg, name))
    return value if value > _ZERO else None


def welcome_from_pb(msg: worker_service_pb2.Welcome) -> Welcome:
    return Welcome(
        session_id=msg.session_id,
        heartbeat_interval=duration_to_timedelta(msg.heartbeat_interval),
        lease_ttl=duration_to_timedelta(msg.lease_ttl),
        resumed_leases=tuple(lease_ref_from_pb(r) for r in msg.resumed_leases),
        accepts_release=msg.accepts_release,
        accepts_abandon=msg.accepts_abandon,
    )


def lease_grant_from_pb(msg: worker_service_pb2.LeaseGrant) -> LeaseGrant:
    return LeaseGrant(
        lease=LeaseRef(msg.lease_id, msg.fencing_token),
        job=job_from_pb(msg.job),
        attempt=msg.attempt,
        lease_deadline=timestamp_to_datetime(msg.lease_deadline) if msg.HasField("lease_deadline") else None,
        heartbeat_timeout=_opt_duration(msg, "heartbeat_timeout"),
        execution_timeout=_opt_duration(msg, "execution_timeout"),
        trace_context=dict(msg.trace_context) if msg.trace_context else {},
    )


def reply_from_pb(msg: worker_service_pb2.Reply) -> Reply:
    return Reply(
        seq=msg.seq,
        status=reply_status_from_pb(msg.status),
        message=msg.message,
        result=msg.result,
        step_found=msg.step_found,
        # Only heartbeat replies carry verdicts; skip the generator for the rest.
        leases=tuple(_lease_status_from_pb(s) for s in msg.leases) if msg.leases else (),
        job_state=_JOB_STATE_FROM_PB.get(msg.job_state),
    )


def _lease_status_from_pb(msg: worker_service_pb2.LeaseStatus) -> LeaseStatus:
    return LeaseStatus(
        lease=lease_ref_from_pb(msg.lease),
        status=reply_status_from_pb(msg.status),
        message=msg.message,
        lease_deadline=timestamp_to_datetime(msg.lease_deadline) if msg.HasField("lease_deadline") else None,
    )


def cancel_from_pb(msg: worker_service_pb2.CancelLease) -> CancelLease:
    return CancelLease(lease_ref_from_pb(msg.lease), msg.reason)


def drain_from_pb(msg: worker_service_pb2.Drain) -> Drain:
    return Drain(duration_to_timedelta(msg.grace) if msg.HasField("grace") else None)


def coordinator_frame_from_pb(
    msg: worker_service_pb2.CoordinatorFrame,
) -> Welcome | LeaseGrant | Reply | CancelLease | LeaseRevoked | Drain | None:
    """Decode one coordinator frame; None for a frame kind this SDK does not know (skipped)."""
    which = msg.WhichOneof("frame")
    if which == "lease":
        return lease_grant_from_pb(msg.lease)
    if which == "reply":
        return reply_from_pb(msg.reply)
    if which == "welcome":
        return welcome_from_pb(msg.welcome)
    if which == "cancel":
        return cancel_from_pb(msg.cancel)
    if which == "drain":
        return drain_from_pb(msg.drain)
    if which == "lease_revoked":
        return LeaseRevoked(lease_ref_from_pb(msg.lease_revoked.lease), msg.lease_revoked.reason)
    return None


_CATCHUP_NAMES = {job_service_pb2.SCHEDULE_CATCHUP_RUN_ONCE: "run_once"}
_OVERLAP_NAMES = {job_service_pb2.SCHEDULE_OVERLAP_ALLOW: "allow"}
CATCHUP_TO_PB = {"skip": job_service_pb2.SCHEDULE_CATCHUP_SKIP, "run_once": job_service_pb2.SCHEDULE_CATCHUP_RUN_ONCE}
OVERLAP_TO_PB = {"skip": job_service_pb2.SCHEDULE_OVERLAP_SKIP, "allow": job_service_pb2.SCHEDULE_OVERLAP_ALLOW}


def schedule_from_pb(msg: job_service_pb2.Schedule) -> Schedule:
    spec = msg.spec
    has = msg.HasField
    every = duration_to_timedelta(spec.every) if spec.HasField("every") and not spec.cron else None
    return Schedule(
        name=spec.name, id=msg.id, kind=spec.kind, queue=spec.queue, cron=spec.cron or None,
        time_zone=(spec.time_zone or "UTC") if spec.cron else None, every=every, payload=spec.payload,
        priority=spec.priority, max_attempts=spec.max_attempts, labels=dict(spec.labels),
        catchup=_CATCHUP_NAMES.get(spec.catchup, "skip"), overlap=_OVERLAP_NAMES.get(spec.overlap, "skip"),
        paused=msg.paused,
        next_run_at=timestamp_to_datetime(msg.next_run_at) if has("next_run_at") else None,
        last_run_at=timestamp_to_datetime(msg.last_run_at) if has("last_run_at") else None,
        last_job_id=msg.last_job_id or None, fired=msg.fired, skipped=msg.skipped,
        created_at=timestamp_to_datetime(msg.created_at) if has("created_at") else None,
    )
