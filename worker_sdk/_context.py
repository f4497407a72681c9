"""JobContext: what a handler sees of its job and lease: identity, cancellation, progress and step guards.

A JobContext belongs to one lease. The Worker (its owner) marks it cancelled; the handler only reads
it. Async handlers use `await ctx.progress(...)` / `await ctx.step(...)`; sync handlers, which run in
the worker's thread pool, use the thread-safe `ctx.progress_sync(...)` / `ctx.step_sync(...)`.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import inspect
import logging
import threading
from collections.abc import Awaitable, Callable, Coroutine, Mapping, MutableMapping
from enum import StrEnum
from typing import Any, Protocol, TypeAlias, TypeVar

from worker_sdk._errors import (
    InvalidArgumentError,
    JobCancelledError,
    LeaseLostError,
    ProtocolError,
)
from worker_sdk._frames import GetStep, LeaseGrant, LeaseRef, Progress, RecordStep, Reply, ReplyStatus, RequestFrame
from worker_sdk._types import Job

#: What a handler or step function may return; None means b"", str is encoded as UTF-8.
HandlerResult: TypeAlias = bytes | bytearray | memoryview | str | None
StepFn: TypeAlias = Callable[[], HandlerResult | Awaitable[HandlerResult]]
_T = TypeVar("_T")
#: Longest progress message the coordinator accepts, in characters.
PROGRESS_MESSAGE_MAX_CHARS = 1024


def step_idempotency_key(job_id: str, step_key: str) -> str:
    """"faultline-<job id>-<first 32 hex digits of SHA-256 of the step key's UTF-8>": ASCII, at most 63 characters.

    Hashing keeps the key short and within any downstream's alphabet whatever the step key holds; the job id
    stays readable for whoever looks the key up on the other side.
    """
    if not 1 <= len(step_key) <= 256:
        raise InvalidArgumentError("step key must be 1-256 characters")
    return f"faultline-{job_id}-{hashlib.sha256(step_key.encode()).hexdigest()[:32]}"


class CancelReason(StrEnum):
    """Why a handler was asked to stop."""

    #: The job was cancelled (CancelJob); the attempt ends as failed, not retryable.
    CANCELLED = "cancelled"
    #: This worker no longer holds the lease; nothing is reported.
    LEASE_LOST = "lease_lost"
    #: The attempt ran past its execution timeout; it is retried.
    TIMEOUT = "timeout"
    #: The worker is stopping and the drain grace is over; the job is retried elsewhere.
    SHUTDOWN = "shutdown"


class LeaseLink(Protocol):
    """The Worker's side of a context: sending lease frames and reacting to their verdicts."""

    async def request(self, frame: RequestFrame) -> Reply: ...

    def lease_lost(self, lease: LeaseRef, reason: str) -> None: ...

    def job_cancelled(self, lease: LeaseRef, reason: str) -> None: ...


def to_result_bytes(value: object) -> bytes:
    """Coerce a handler's or step's return value to bytes (None -> b"", str -> UTF-8)."""
    if value is None:
        return b""
    if isinstance(value, bytes):
        return value
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    raise TypeError(f"expected bytes, str or None, got {type(value).__name__}")


class _JobLogger(logging.LoggerAdapter[logging.Logger]):
    """Adds the job's identity to every record, merged with the call's own extra."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        kwargs["extra"] = {**(self.extra or {}), **kwargs.get("extra", {})}
        return msg, kwargs


_JOB_LOGGER = logging.getLogger("worker_sdk.job")
# Guards the lazy creation of JobContext._cancel_flag against _mark_cancelled (cancels are rare, so
# one lock for all contexts costs nothing measurable).
_CANCEL_FLAG_LOCK = threading.Lock()


class JobContext:
    """The running attempt of one job, as passed to its handler. Do not construct it yourself."""

    __slots__ = (
        "_cancel_event",
        "_cancel_flag",
        "_cancel_reason",
        "_grant",
        "_link",
        "_logger",
        "_loop",
    )

    def __init__(self, *, grant: LeaseGrant, link: LeaseLink, loop: asyncio.AbstractEventLoop) -> None:
        self._grant = grant
        self._link = link
        self._loop = loop
        self._cancel_reason: CancelReason | None = None
        # Created on first use: most handlers never touch them, and building the two events and the
        # logger adapter was about 2 us per job (threading.Event alone builds a Condition and a Lock).
        # _cancel_event: event-loop thread only, like the cancel_event property that makes it.
        self._cancel_event: asyncio.Event | None = None
        # Mirror of the cancellation that threads (sync handlers) can block on; made and set under
        # _CANCEL_FLAG_LOCK, so that a flag made while the Worker cancels cannot miss the cancel.
        self._cancel_flag: threading.Event | None = None
        self._logger: _JobLogger | None = None

    # ---- identity ------------------------------------------------------------------------

    @property
    def job(self) -> Job:
        """The job as leased (state RUNNING)."""
        return self._grant.job

    @property
    def job_id(self) -> str:
        return self._grant.job.id

    @property
    def kind(self) -> str:
        return self._grant.job.kind

    @property
    def queue(self) -> str:
        return self._grant.job.queue

    @property
    def payload(self) -> bytes:
        return self._grant.job.payload

    @property
    def labels(self) -> Mapping[str, str]:
        return self._grant.job.labels

    @property
    def attempt(self) -> int:
        """1-based attempt number."""
        return self._grant.attempt

    @property
    def max_attempts(self) -> int:
        return self._grant.job.max_attempts

    @property
    def lease_id(self) -> str:
        return self._grant.lease.lease_id

    @property
    def fencing_token(self) -> int:
        """Strictly increases for the job across attempts; pass it to systems that can fence writes."""
        return self._grant.lease.fencing_token

    @property
    def logger(self) -> logging.LoggerAdapter[logging.Logger]:
        """A logger that adds job_id, kind, attempt, lease_id and fencing_token to every record."""
        adapter = self._logger
        if adapter is None:
            # Two threads may both build one; either is fine, they are equal.
            grant = self._grant
            adapter = self._logger = _JobLogger(
                _JOB_LOGGER,
                {
                    "job_id": grant.job.id,
                    "kind": grant.job.kind,
                    "attempt": grant.attempt,
                    "lease_id": grant.lease.lease_id,
                    "fencing_token": grant.lease.fencing_token,
                },
            )
        return adapter

    # ---- cancellation --------------------------------------------------------------------

    @property
    def cancelled(self) -> bool:
        """True once the handler should stop (cancelled job, lost lease, timeout or shutdown)."""
        event = self._cancel_event
        return self._cancel_reason is not None if event is None else event.is_set()

    @property
    def cancel_event(self) -> asyncio.Event:
        """Set when `cancelled` becomes true; await it from async code (event-loop thread only)."""
        event = self._cancel_event
        if event is None:
            event = self._cancel_event = asyncio.Event()
            if self._cancel_reason is not None:
                event.set()
        return event

    @property
    def cancel_reason(self) -> CancelReason | None:
        return self._cancel_reason

    def wait_cancelled(self, timeout: float | None = None) -> bool:
        """For sync handlers: block up to `timeout` seconds until cancelled; returns `cancelled`.

        Use it instead of time.sleep() so that a cancel interrupts the wait.
        """
        flag = self._cancel_flag
        if flag is None:
            with _CANCEL_FLAG_LOCK:
                flag = self._cancel_flag
                if flag is None:
                    flag = threading.Event()
                    if self._cancel_reason is not None:
                        flag.set()
                    self._cancel_flag = flag
        return flag.wait(timeout)

    def _mark_cancelled(self, reason: CancelReason) -> None:
        """Owner: the Worker. A lost lease overrides any earlier reason (nothing will be reported)."""
        with _CANCEL_FLAG_LOCK:
            if self._cancel_reason is None or reason is CancelReason.LEASE_LOST:
                self._cancel_reason = reason
            flag = self._cancel_flag
        if self._cancel_event is not None:
            self._cancel_event.set()
        if flag is not None:
            flag.set()

    # ---- progress ------------------------------------------------------------------------

    async def progress(self, fraction: float, message: str = "", details: bytes = b"") -> None:
        """Report progress (fraction in [0, 1]) and wait until the coordinator stored it.

        Raises LeaseLostError if the lease is gone. If the job was cancelled meanwhile, the context
        becomes cancelled (and an async handler is cancelled at its next await).
        """
        if not 0.0 <= fraction <= 1.0:
            raise InvalidArgumentError(f"progress fraction must be in [0, 1], got {fraction}")
        if len(message) > PROGRESS_MESSAGE_MAX_CHARS:
            message = message[:PROGRESS_MESSAGE_MAX_CHARS]
        self._raise_if_lost()
        reply = await self._link.request(
            Progress(lease=self._grant.lease, fraction=fraction, message=message, details=bytes(details))
        )
        self._check(reply, "progress", raise_on_cancel=False)

    def progress_sync(self, fraction: float, message: str = "", details: bytes = b"") -> None:
        """progress() for sync handlers: blocks the calling (non-event-loop) thread until stored."""
        self._run_threadsafe(self.progress(fraction, message, details))

    # ---- step guards ---------------------------------------------------------------------

    def idempotency_key(self, step_key: str) -> str:
        """A key for the downstream system's own dedupe (a payment API, say): the same for this job and step key
        on every attempt and every worker, and different for any other job or step key.

        A step's function can run more than once (the worker may die after the effect and before the step is
        recorded), so an effect that must happen once needs the downstream's help: send it this key.
        See step_idempotency_key() for the formula, which other languages can follow.
        """
        return step_idempotency_key(self.job_id, step_key)

    async def step(self, key: str, fn: StepFn) -> bytes:
        """Run `fn` at most once per job (across attempts) and return its stored result.

        If an earlier attempt recorded `key`, its result is returned and `fn` does not run.
        Otherwise `fn` runs (an async fn is awaited, a sync fn runs in a thread) and its result is
        recorded; the first recorded result wins and is what this returns.
        """
        found, stored = await self._get_step(key)
        if found:
            return stored
        if inspect.iscoroutinefunction(fn):
            value: object = await fn()
        else:
            context = contextvars.copy_context()
            value = await asyncio.get_running_loop().run_in_executor(None, context.run, fn)
            if inspect.isawaitable(value):
                value = await value
        return await self._record_step(key, to_result_bytes(value))

    def step_sync(self, key: str, fn: Callable[[], HandlerResult]) -> bytes:
        """step() for sync handlers: `fn` runs in the calling thread, lookups go through the event loop."""
        found, stored = self._run_threadsafe(self._get_step(key))
        if found:
            return stored
        return self._run_threadsafe(self._record_step(key, to_result_bytes(fn())))

    async def _get_step(self, key: str) -> tuple[bool, bytes]:
        self._check_step_key(key)
        self._raise_if_lost()
        reply = await self._link.request(GetStep(self._grant.lease, key))
        self._check(reply, "get_step", raise_on_cancel=True)
        return reply.step_found, reply.result

    async def _record_step(self, key: str, result: bytes) -> bytes:
        self._raise_if_lost()
        reply = await self._link.request(RecordStep(self._grant.lease, key, result))
        self._check(reply, "record_step", raise_on_cancel=True)
        return reply.result

    @staticmethod
    def _check_step_key(key: str) -> None:
        if not 1 <= len(key) <= 256:
            raise InvalidArgumentError("step key must be 1-256 characters")

    # ---- helpers -------------------------------------------------------------------------

    def _raise_if_lost(self) -> None:
        if self._cancel_reason is CancelReason.LEASE_LOST:
            raise LeaseLostError(f"lease {self.lease_id} was lost")

    def _check(self, reply: Reply, what: str, *, raise_on_cancel: bool) -> None:
        match reply.status:
            case ReplyStatus.ACCEPTED | ReplyStatus.DUPLICATE:
                return
            case ReplyStatus.STALE_LEASE | ReplyStatus.NOT_FOUND:
                self._link.lease_lost(self._grant.lease, reply.message or reply.status.value)
                raise LeaseLostError(reply.message or f"{what}: lease {self.lease_id} is no longer current")
            case ReplyStatus.CANCELLED:
                self._link.job_cancelled(self._grant.lease, reply.message or "job cancelled")
                if raise_on_cancel:
                    raise JobCancelledError(reply.message or None)
                return
            case ReplyStatus.INVALID:
                self.logger.error("coordinator rejected frame", extra={"frame": what, "reason": reply.message})
                raise InvalidArgumentError(reply.message or f"{what} rejected as invalid")
            case _:
                raise ProtocolError(f"{what}: unexpected reply status {reply.status.value}")

    def _run_threadsafe(self, coro: Coroutine[Any, Any, _T]) -> _T:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            coro.close()
            raise InvalidArgumentError("the *_sync context methods are for sync handlers; await the async ones")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def __repr__(self) -> str:
        return (
            f"JobContext(job_id={self.job_id!r}, kind={self.kind!r}, attempt={self.attempt}, "
            f"fencing_token={self.fencing_token}, cancelled={self.cancelled})"
        )
