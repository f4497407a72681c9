"""Faultline worker SDK: the public API. Everything else in this package is private.

Producers use Client; workers register handlers on a Worker and run it::

    async with Client("127.0.0.1:50051") as client:
        job = await client.submit("resize", b"...")

    worker = Worker("127.0.0.1:50051", queues=["default"], concurrency=16)

    @worker.handler("resize")
    async def resize(ctx: JobContext) -> bytes:
        await ctx.progress(0.5, "half way")
        return b"result"

    await worker.run()
"""

from __future__ import annotations

from worker_sdk._client import Client
from worker_sdk._context import CancelReason, JobContext, step_idempotency_key
from worker_sdk._errors import (
    AuthError,
    FailedPreconditionError,
    InvalidArgumentError,
    JobCancelledError,
    JobNotFoundError,
    LeaseLostError,
    NonRetryableError,
    PermissionDeniedError,
    ProtocolError,
    RateLimitedError,
    RetryJob,
    SubmitOutcomeUnknownError,
    UnauthenticatedError,
    UnavailableError,
    WaitTimeoutError,
    WorkerSDKError,
)
from worker_sdk._stream import ConnState
from worker_sdk._types import (
    AttemptAudit,
    BulkResult,
    Identity,
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
from worker_sdk._version import SDK_VERSION as __version__
from worker_sdk._worker import Worker, WorkerObserver, WorkerState

__all__ = [
    "AttemptAudit",
    "AuthError",
    "BulkResult",
    "CancelReason",
    "Client",
    "ConnState",
    "FailedPreconditionError",
    "Identity",
    "InvalidArgumentError",
    "Job",
    "JobCancelledError",
    "JobContext",
    "JobNotFoundError",
    "JobSpec",
    "JobState",
    "JobTimeouts",
    "LeaseLostError",
    "NonRetryableError",
    "PermissionDeniedError",
    "ProtocolError",
    "QueueMinute",
    "QueueSettings",
    "QueueStats",
    "RateLimitedError",
    "RetryJob",
    "RetryPolicy",
    "Schedule",
    "SubmitOutcomeUnknownError",
    "SubmitResult",
    "UnauthenticatedError",
    "UnavailableError",
    "WaitTimeoutError",
    "Worker",
    "WorkerInfo",
    "WorkerObserver",
    "WorkerSDKError",
    "WorkerState",
    "__version__",
    "step_idempotency_key",
]
