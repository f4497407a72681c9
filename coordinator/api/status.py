"""The one table that maps Faultline errors to gRPC status codes."""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from coordinator.errors import (
    AlreadyExistsError,
    DatabaseUnavailableError,
    FailedPreconditionError,
    FaultlineError,
    InvalidArgumentError,
    JobNotFoundError,
    OverloadedError,
    PermissionDeniedError,
    ScheduleNotFoundError,
    UnauthenticatedError,
)

STATUS_BY_ERROR: tuple[tuple[type[FaultlineError], grpc.StatusCode], ...] = (
    (InvalidArgumentError, grpc.StatusCode.INVALID_ARGUMENT),
    (JobNotFoundError, grpc.StatusCode.NOT_FOUND),
    (FailedPreconditionError, grpc.StatusCode.FAILED_PRECONDITION),
    (DatabaseUnavailableError, grpc.StatusCode.UNAVAILABLE),
    (OverloadedError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (UnauthenticatedError, grpc.StatusCode.UNAUTHENTICATED),
    (PermissionDeniedError, grpc.StatusCode.PERMISSION_DENIED),
    (ScheduleNotFoundError, grpc.StatusCode.NOT_FOUND),
    (AlreadyExistsError, grpc.StatusCode.ALREADY_EXISTS),
)


def trailing_metadata_for(exc: FaultlineError, code: grpc.StatusCode) -> Sequence[tuple[str, str | bytes]]:
    """The google.rpc.Status details that go with exc's status: RetryInfo when the server asks for a wait."""
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is None:
        return ()
    delay = duration_pb2.Duration()
    delay.FromTimedelta(retry_after)
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=str(exc), details=[detail])
    return tuple(rpc_status.to_status(status).trailing_metadata)


def code_for(exc: FaultlineError) -> grpc.StatusCode:
    for cls, code in STATUS_BY_ERROR:
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.INTERNAL
