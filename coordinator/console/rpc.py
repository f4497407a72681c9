"""The console's channels to its coordinators: one per target, every call with the caller's key as metadata.

This is the only module that opens channels and calls the generated stubs. The console works on the wire
messages themselves (app.py and bulk.py build requests, pages.py reads responses) rather than converting them:
it is an API client whose whole job is to show those messages, and the pb2 types stay inside
coordinator/console. A call goes to the first coordinator that answers: UNAVAILABLE and DEADLINE_EXCEEDED
move on to the next target, any other status is the answer. ListWorkers is asked of every coordinator,
since each one knows only the workers connected to it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Generic, TypeVar

import grpc
import grpc.aio
from google.protobuf.message import Message

from coordinator.console.config import RPC_TIMEOUT
from coordinator.errors import FaultlineError
from worker_sdk._channel import open_channel
from worker_sdk._proto.faultline.v1 import job_pb2, job_service_pb2_grpc

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Statuses after which the next coordinator is tried: this one could not answer, another may.
_TRY_NEXT = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
# HTTP status of the page that reports each gRPC status.
_HTTP_STATUS = {
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNIMPLEMENTED: 501,
}


class RpcError(FaultlineError):
    """The coordinator refused or could not answer."""

    def __init__(self, *, method: str, code: grpc.StatusCode, details: str) -> None:
        self.method = method
        self.code = code
        self.details = details
        super().__init__(f"{method}: {code.name}: {details}")

    @property
    def http_status(self) -> int:
        return _HTTP_STATUS.get(self.code, 503 if self.code in _TRY_NEXT else 502)

    @property
    def title(self) -> str:
        return {
            grpc.StatusCode.UNAUTHENTICATED: "Not logged in",
            grpc.StatusCode.PERMISSION_DENIED: "Permission denied",
            grpc.StatusCode.NOT_FOUND: "Not found",
            grpc.StatusCode.INVALID_ARGUMENT: "Invalid request",
            grpc.StatusCode.FAILED_PRECONDITION: "Not possible in this state",
            grpc.StatusCode.ALREADY_EXISTS: "Already exists",
            grpc.StatusCode.RESOURCE_EXHAUSTED: "Rate limited",
            grpc.StatusCode.UNIMPLEMENTED: "Not supported by this coordinator",
            grpc.StatusCode.UNAVAILABLE: "Coordinator unavailable",
            grpc.StatusCode.DEADLINE_EXCEEDED: "Coordinator too slow",
        }.get(self.code, "Coordinator error")

    @property
    def message(self) -> str:
        """One sentence for the operator (the server's own details included, to be escaped by the page)."""
        if self.code is grpc.StatusCode.UNIMPLEMENTED:
            return f"The coordinator does not implement {self.method} yet (it runs an older version)."
        if self.code in _TRY_NEXT:
            return f"No coordinator answered {self.method}: {self.details}"
        return f"{self.method}: {self.details}" if self.details else f"{self.method} failed ({self.code.name})."


@dataclass(frozen=True, slots=True)
class Answer(Generic[T]):
    """One coordinator's answer to a call asked of every coordinator."""

    target: str
    response: T | None
    error: RpcError | None


class Coordinators:
    """Owns one aio channel per configured coordinator, opened on start() and closed on close()."""

    def __init__(self, targets: tuple[str, ...], *, credentials: grpc.ChannelCredentials | None) -> None:
        self._targets = targets
        self._credentials = credentials
        # Owned by this object; filled on start() (channels must be made on the event loop).
        self._channels: list[grpc.aio.Channel] = []
        self._stubs: list[job_service_pb2_grpc.JobServiceStub] = []

    @property
    def targets(self) -> tuple[str, ...]:
        return self._targets

    async def start(self) -> None:
        for target in self._targets:
            channel = open_channel(target, credentials=self._credentials)
            self._channels.append(channel)
            self._stubs.append(job_service_pb2_grpc.JobServiceStub(channel))  # type: ignore[no-untyped-call]

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close(grace=None)
        self._channels.clear()
        self._stubs.clear()

    async def call(self, method: str, request: Message, key: str | None, *,
                   timeout: timedelta = RPC_TIMEOUT) -> Any:
        """The response of the first coordinator that answers; RpcError otherwise."""
        last: RpcError | None = None
        for target, stub in zip(self._targets, self._stubs, strict=True):
            try:
                return await _invoke(stub, method, request, key, timeout)
            except RpcError as exc:
                if exc.code not in _TRY_NEXT:
                    raise
                logger.info("console rpc failed over", extra={"target": target, "method": method,
                                                              "code": exc.code.name})
                last = exc
        assert last is not None
        raise RpcError(method=method, code=last.code,
                       details=f"{last.details} (tried {', '.join(self._targets)})") from None

    async def call_all(self, method: str, request: Message, key: str | None, *,
                       timeout: timedelta = RPC_TIMEOUT) -> list[Answer[Any]]:
        """Every coordinator's answer, in the configured order."""
        out: list[Answer[Any]] = []
        for target, stub in zip(self._targets, self._stubs, strict=True):
            try:
                out.append(Answer(target, await _invoke(stub, method, request, key, timeout), None))
            except RpcError as exc:
                out.append(Answer(target, None, exc))
        return out


async def _invoke(stub: job_service_pb2_grpc.JobServiceStub, method: str, request: Message, key: str | None,
                  timeout: timedelta) -> Any:
    metadata = (("authorization", f"Bearer {key}"),) if key else ()
    try:
        return await getattr(stub, method)(request, timeout=timeout.total_seconds(), metadata=metadata)
    except grpc.aio.AioRpcError as exc:
        raise RpcError(method=method, code=exc.code(), details=exc.details() or "") from None


def state_name(state: int) -> str:
    """JOB_STATE_DEAD_LETTERED -> dead_lettered (the names ListQueues' depth map uses)."""
    return str(job_pb2.JobState.Name(state)).removeprefix("JOB_STATE_").lower()


JOB_STATES: dict[str, int] = {state_name(v): int(v) for v in job_pb2.JobState.values() if v}
