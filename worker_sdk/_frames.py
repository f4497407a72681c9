"""Internal, pb2-free mirrors of the WorkerService frames exchanged with the coordinator.

_stream.py converts them to and from the wire through _convert.py; _worker.py and _context.py
speak only these types, so generated code never reaches the worker or a handler.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from worker_sdk._types import Job, JobState


@dataclass(frozen=True, slots=True)
class LeaseRef:
    """A lease and the fencing token it was granted with."""

    lease_id: str
    fencing_token: int


# ---- worker -> coordinator ------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Hello:
    """Opens a session; held_leases are filled in by the stream for each session."""

    worker_id: str
    queues: tuple[str, ...]
    kinds: tuple[str, ...]
    capacity: int
    labels: Mapping[str, str]
    sdk_name: str
    sdk_version: str
    held_leases: tuple[LeaseRef, ...] = ()


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Liveness for every lease the worker holds."""

    leases: tuple[LeaseRef, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Progress:
    """Progress of one lease's job."""

    lease: LeaseRef
    fraction: float
    message: str = ""
    details: bytes = b""


@dataclass(frozen=True, slots=True)
class Complete:
    """Successful end of a lease."""

    lease: LeaseRef
    result: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class Fail:
    """Failed end of a lease."""

    lease: LeaseRef
    error: str
    retryable: bool
    retry_delay: timedelta | None = None


@dataclass(frozen=True, slots=True)
class Release:
    """Hands back a lease whose handler never started: the job is queued again, the attempt not counted."""

    lease: LeaseRef
    reason: str


@dataclass(frozen=True, slots=True)
class Abandon:
    """Gives up a lease the worker will not finish (its trust window ran out); the attempt ends as a retryable fail."""

    lease: LeaseRef
    reason: str


@dataclass(frozen=True, slots=True)
class GetStep:
    """Asks for a step guard's stored result."""

    lease: LeaseRef
    key: str


@dataclass(frozen=True, slots=True)
class RecordStep:
    """Stores a step guard's result; the first write wins."""

    lease: LeaseRef
    key: str
    result: bytes


#: Frames that get exactly one Reply with the same seq.
RequestFrame = Heartbeat | Progress | Complete | Fail | Release | Abandon | GetStep | RecordStep
#: Frames that end a lease; they are idempotent per fencing token, so they are always re-sent.
CompletionFrame = Complete | Fail | Release


def lease_of(frame: RequestFrame) -> LeaseRef | None:
    """The single lease a frame is about; None for a heartbeat."""
    if isinstance(frame, Heartbeat):
        return None
    return frame.lease


# ---- coordinator -> worker ------------------------------------------------------------------


class ReplyStatus(StrEnum):
    """What became of a worker frame (mirrors faultline.v1.ReplyStatus)."""

    UNSPECIFIED = "unspecified"
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    STALE_LEASE = "stale_lease"
    CANCELLED = "cancelled"
    NOT_FOUND = "not_found"
    INVALID = "invalid"
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True, slots=True, kw_only=True)
class Welcome:
    """Answer to hello: the session's timing and the held leases it adopted."""

    session_id: str
    heartbeat_interval: timedelta
    lease_ttl: timedelta
    resumed_leases: tuple[LeaseRef, ...]
    #: The coordinator understands Release; older ones do not, and get a Fail instead.
    accepts_release: bool = False
    #: The coordinator understands Abandon; to older ones an abandoned lease is left to expire.
    accepts_abandon: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class LeaseGrant:
    """A job leased to this worker."""

    lease: LeaseRef
    job: Job
    attempt: int
    lease_deadline: datetime | None
    #: Longest silence between accepted heartbeats; None means the session's lease TTL.
    heartbeat_timeout: timedelta | None
    #: Longest run of this attempt; None means no limit.
    execution_timeout: timedelta | None
    trace_context: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class LeaseStatus:
    """The verdict on one lease of a heartbeat."""

    lease: LeaseRef
    status: ReplyStatus
    message: str = ""
    lease_deadline: datetime | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Reply:
    """Answer to one request frame."""

    seq: int
    status: ReplyStatus
    message: str = ""
    result: bytes = b""
    step_found: bool = False
    leases: tuple[LeaseStatus, ...] = ()
    job_state: JobState | None = None


@dataclass(frozen=True, slots=True)
class CancelLease:
    """Stop running a lease's job, then fail it."""

    lease: LeaseRef
    reason: str


@dataclass(frozen=True, slots=True)
class LeaseRevoked:
    """The coordinator took the lease back: stop its handler, report nothing, free its slot."""

    lease: LeaseRef
    reason: str


@dataclass(frozen=True, slots=True)
class Drain:
    """Finish held leases; no more grants will come on this session."""

    grace: timedelta | None
