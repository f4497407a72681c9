import datetime

from worker_sdk._proto.faultline.v1 import job_pb2 as _job_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ReplyStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REPLY_STATUS_UNSPECIFIED: _ClassVar[ReplyStatus]
    REPLY_STATUS_ACCEPTED: _ClassVar[ReplyStatus]
    REPLY_STATUS_DUPLICATE: _ClassVar[ReplyStatus]
    REPLY_STATUS_STALE_LEASE: _ClassVar[ReplyStatus]
    REPLY_STATUS_CANCELLED: _ClassVar[ReplyStatus]
    REPLY_STATUS_NOT_FOUND: _ClassVar[ReplyStatus]
    REPLY_STATUS_INVALID: _ClassVar[ReplyStatus]
    REPLY_STATUS_UNAVAILABLE: _ClassVar[ReplyStatus]
REPLY_STATUS_UNSPECIFIED: ReplyStatus
REPLY_STATUS_ACCEPTED: ReplyStatus
REPLY_STATUS_DUPLICATE: ReplyStatus
REPLY_STATUS_STALE_LEASE: ReplyStatus
REPLY_STATUS_CANCELLED: ReplyStatus
REPLY_STATUS_NOT_FOUND: ReplyStatus
REPLY_STATUS_INVALID: ReplyStatus
REPLY_STATUS_UNAVAILABLE: ReplyStatus

class ConnectRequest(_message.Message):
    __slots__ = ("frames",)
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    frames: _containers.RepeatedCompositeFieldContainer[WorkerFrame]
    def __init__(self, frames: _Optional[_Iterable[_Union[WorkerFrame, _Mapping]]] = ...) -> None: ...

class ConnectResponse(_message.Message):
    __slots__ = ("frames",)
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    frames: _containers.RepeatedCompositeFieldContainer[CoordinatorFrame]
    def __init__(self, frames: _Optional[_Iterable[_Union[CoordinatorFrame, _Mapping]]] = ...) -> None: ...

class WorkerFrame(_message.Message):
    __slots__ = ("seq", "hello", "credit", "heartbeat", "progress", "complete", "fail", "get_step", "record_step", "release", "abandon")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    HELLO_FIELD_NUMBER: _ClassVar[int]
    CREDIT_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    FAIL_FIELD_NUMBER: _ClassVar[int]
    GET_STEP_FIELD_NUMBER: _ClassVar[int]
    RECORD_STEP_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    ABANDON_FIELD_NUMBER: _ClassVar[int]
    seq: int
    hello: Hello
    credit: Credit
    heartbeat: Heartbeat
    progress: Progress
    complete: Complete
    fail: Fail
    get_step: GetStep
    record_step: RecordStep
    release: Release
    abandon: Abandon
    def __init__(self, seq: _Optional[int] = ..., hello: _Optional[_Union[Hello, _Mapping]] = ..., credit: _Optional[_Union[Credit, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., progress: _Optional[_Union[Progress, _Mapping]] = ..., complete: _Optional[_Union[Complete, _Mapping]] = ..., fail: _Optional[_Union[Fail, _Mapping]] = ..., get_step: _Optional[_Union[GetStep, _Mapping]] = ..., record_step: _Optional[_Union[RecordStep, _Mapping]] = ..., release: _Optional[_Union[Release, _Mapping]] = ..., abandon: _Optional[_Union[Abandon, _Mapping]] = ...) -> None: ...

class CoordinatorFrame(_message.Message):
    __slots__ = ("welcome", "lease", "reply", "cancel", "drain", "lease_revoked")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    LEASE_FIELD_NUMBER: _ClassVar[int]
    REPLY_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    DRAIN_FIELD_NUMBER: _ClassVar[int]
    LEASE_REVOKED_FIELD_NUMBER: _ClassVar[int]
    welcome: Welcome
    lease: LeaseGrant
    reply: Reply
    cancel: CancelLease
    drain: Drain
    lease_revoked: LeaseRevoked
    def __init__(self, welcome: _Optional[_Union[Welcome, _Mapping]] = ..., lease: _Optional[_Union[LeaseGrant, _Mapping]] = ..., reply: _Optional[_Union[Reply, _Mapping]] = ..., cancel: _Optional[_Union[CancelLease, _Mapping]] = ..., drain: _Optional[_Union[Drain, _Mapping]] = ..., lease_revoked: _Optional[_Union[LeaseRevoked, _Mapping]] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("worker_id", "queues", "kinds", "capacity", "labels", "sdk_name", "sdk_version", "held_leases")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    QUEUES_FIELD_NUMBER: _ClassVar[int]
    KINDS_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    SDK_NAME_FIELD_NUMBER: _ClassVar[int]
    SDK_VERSION_FIELD_NUMBER: _ClassVar[int]
    HELD_LEASES_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    queues: _containers.RepeatedScalarFieldContainer[str]
    kinds: _containers.RepeatedScalarFieldContainer[str]
    capacity: int
    labels: _containers.ScalarMap[str, str]
    sdk_name: str
    sdk_version: str
    held_leases: _containers.RepeatedCompositeFieldContainer[LeaseRef]
    def __init__(self, worker_id: _Optional[str] = ..., queues: _Optional[_Iterable[str]] = ..., kinds: _Optional[_Iterable[str]] = ..., capacity: _Optional[int] = ..., labels: _Optional[_Mapping[str, str]] = ..., sdk_name: _Optional[str] = ..., sdk_version: _Optional[str] = ..., held_leases: _Optional[_Iterable[_Union[LeaseRef, _Mapping]]] = ...) -> None: ...

class LeaseRef(_message.Message):
    __slots__ = ("lease_id", "fencing_token")
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    FENCING_TOKEN_FIELD_NUMBER: _ClassVar[int]
    lease_id: str
    fencing_token: int
    def __init__(self, lease_id: _Optional[str] = ..., fencing_token: _Optional[int] = ...) -> None: ...

class Credit(_message.Message):
    __slots__ = ("count",)
    COUNT_FIELD_NUMBER: _ClassVar[int]
    count: int
    def __init__(self, count: _Optional[int] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("leases",)
    LEASES_FIELD_NUMBER: _ClassVar[int]
    leases: _containers.RepeatedCompositeFieldContainer[LeaseRef]
    def __init__(self, leases: _Optional[_Iterable[_Union[LeaseRef, _Mapping]]] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("lease", "fraction", "message", "details")
    LEASE_FIELD_NUMBER: _ClassVar[int]
    FRACTION_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    lease: LeaseRef
    fraction: float
    message: str
    details: bytes
    def __init__(self, lease: _Optional[_Union[LeaseRef, _Mapping]] = ..., fraction: _Optional[float] = ..., message: _Optional[str] = ..., details: _Optional[bytes] = ...) -> None: ...

class Complete(_message.Message):
    __slots__ = ("lease", "result")
    LEASE_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    lease: LeaseRef
    result: bytes
    def __init__(self, lease: _Optional[_Union[LeaseRef, _Mapping]] = ..., result: _Optional[bytes] = ...) -> None: ...

class Fail(_message.Message):
    __slots__ = ("lease", "error", "retryable", "retry_delay")
    LEASE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    RETRYABLE_FIELD_NUMBER: _ClassVar[int]
    RETRY_DELAY_FIELD_NUMBER: _ClassVar[int]
    lease: LeaseRef
    error: str
    retryable: bool
    retry_delay: _duration_pb2.Duration
    def __init__(self, lease: _Optional[_Union[LeaseRef, _Mapping]] = ..., error: _Optional[str] = ..., retryable: _Optional[bool] = ..., retry_delay: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class Release(_message.Message):
    __slots__ = ("lease", "reason")
    LEASE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    lease: LeaseRef
    reason: str
    def __init__(self, lease: _Optional[_Union[LeaseRef, _Mapping]] = ..., reason: _Optional[str] = ...) -> None: ...

class GetStep(_message.Message):
    __slots__ = ("lease", "key")
    LEASE_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    lease: LeaseRef
    key: str
    def __init__(self, lease: _Optional[_Union[LeaseRef, _Mapping]] = ..., key: _Optional[str] = ...) -> None: ...

class RecordStep(_message.Message):
    __slots__ = ("lease", "key", "result")
    LEASE_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    lease: LeaseRef
    key: str
    result: bytes
    def __init__(self, lease: _Optional[_Union[LeaseRef, _Mapping]] = ..., key: _Optional[str] = ..., result: _Optional[bytes] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("session_id", "heartbeat_interval", "lease_ttl", "resumed_leases", "accepts_release", "accepts_abandon")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    LEASE_TTL_FIELD_NUMBER: _ClassVar[int]
    RESUMED_LEASES_FIELD_NUMBER: _ClassVar[int]
    ACCEPTS_RELEASE_FIELD_NUMBER: _ClassVar[int]
    ACCEPTS_ABANDON_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    heartbeat_interval: _duration_pb2.Duration
    lease_ttl: _duration_pb2.Duration
    resumed_leases: _containers.RepeatedCompositeFieldContainer[LeaseRef]
    accepts_release: bool
    accepts_abandon: bool
    def __init__(self, session_id: _Optional[str] = ..., heartbeat_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., lease_ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., resumed_leases: _Optional[_Iterable[_Union[LeaseRef, _Mapping]]] = ..., accepts_release: _Optional[bool] = ..., accepts_abandon: _Optional[bool] = ...) -> None: ...

class LeaseGrant(_message.Message):
    __slots__ = ("lease_id", "fencing_token", "job", "attempt", "lease_deadline", "heartbeat_timeout", "execution_timeout", "trace_context")
    class TraceContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    FENCING_TOKEN_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    LEASE_DEADLINE_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    TRACE_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    lease_id: str
    fencing_token: int
    job: _job_pb2.Job
    attempt: int
    lease_deadline: _timestamp_pb2.Timestamp
    heartbeat_timeout: _duration_pb2.Duration
    execution_timeout: _duration_pb2.Duration
    trace_context: _containers.ScalarMap[str, str]
    def __init__(self, lease_id: _Optional[str] = ..., fencing_token: _Optional[int] = ..., job: _Optional[_Union[_job_pb2.Job, _Mapping]] = ..., attempt: _Optional[int] = ..., lease_deadline: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., heartbeat_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., execution_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., trace_context: _Optional[_Mapping[str, str]] = ...) -> None: ...

class LeaseStatus(_message.Message):
    __slots__ = ("lease", "status", "message", "lease_deadline")
    LEASE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    LEASE_DEADLINE_FIELD_NUMBER: _ClassVar[int]
    lease: LeaseRef
    status: ReplyStatus
    message: str
    lease_deadline: _timestamp_pb2.Timestamp
    def __init__(self, lease: _Optional[_Union[LeaseRef, _Mapping]] = ..., status: _Optional[_Union[ReplyStatus, str]] = ..., message: _Optional[str] = ..., lease_deadline: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Reply(_message.Message):
    __slots__ = ("seq", "status", "message", "result", "step_found", "leases", "job_state")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    STEP_FOUND_FIELD_NUMBER: _ClassVar[int]
    LEASES_FIELD_NUMBER: _ClassVar[int]
    JOB_STATE_FIELD_NUMBER: _ClassVar[int]
    seq: int
    status: ReplyStatus
    message: str
    result: bytes
    step_found: bool
    leases: _containers.RepeatedCompositeFieldContainer[LeaseStatus]
    job_state: _job_pb2.JobState
    def __init__(self, seq: _Optional[int] = ..., status: _Optional[_Union[ReplyStatus, str]] = ..., message: _Optional[str] = ..., result: _Optional[bytes] = ..., step_found: _Optional[bool] = ..., leases: _Optional[_Iterable[_Union[LeaseStatus, _Mapping]]] = ..., job_state: _Optional[_Union[_job_pb2.JobState, str]] = ...) -> None: ...

class CancelLease(_message.Message):
    __slots__ = ("lease", "reason")
    LEASE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    lease: LeaseRef
    reason: str
    def __init__(self, lease: _Optional[_Union[LeaseRef, _Mapping]] = ..., reason: _Optional[str] = ...) -> None: ...

class Abandon(_message.Message):
    __slots__ = ("lease", "reason")
    LEASE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    lease: LeaseRef
    reason: str
    def __init__(self, lease: _Optional[_Union[LeaseRef, _Mapping]] = ..., reason: _Optional[str] = ...) -> None: ...

class LeaseRevoked(_message.Message):
    __slots__ = ("lease", "reason")
    LEASE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    lease: LeaseRef
    reason: str
    def __init__(self, lease: _Optional[_Union[LeaseRef, _Mapping]] = ..., reason: _Optional[str] = ...) -> None: ...

class Drain(_message.Message):
    __slots__ = ("grace",)
    GRACE_FIELD_NUMBER: _ClassVar[int]
    grace: _duration_pb2.Duration
    def __init__(self, grace: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...
