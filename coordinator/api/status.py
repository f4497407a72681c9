"""The one table that maps Faultline errors to gRPC status codes."""

from __future__ import annotations

import grpc

from coordinator.errors import (
    DatabaseUnavailableError,
    FailedPreconditionError,
    FaultlineError,
    InvalidArgumentError,
    JobNotFoundError,
    OverloadedError,
)

STATUS_BY_ERROR: tuple[tuple[type[FaultlineError], grpc.StatusCode], ...] = (
    (InvalidArgumentError, grpc.StatusCode.INVALID_ARGUMENT),
    (JobNotFoundError, grpc.StatusCode.NOT_FOUND),
    (FailedPreconditionError, grpc.StatusCode.FAILED_PRECONDITION),
    (DatabaseUnavailableError, grpc.StatusCode.UNAVAILABLE),
    (OverloadedError, grpc.StatusCode.RESOURCE_EXHAUSTED),
)


def code_for(exc: FaultlineError) -> grpc.StatusCode:
    for cls, code in STATUS_BY_ERROR:
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.INTERNAL
