"""Worker: the handler registry, the credit-bounded set of running leases, heartbeats and stop/drain.

Worker lifecycle (WorkerState), owned by run() and stop()::

    CREATED --run()--> RUNNING --stop() / SIGTERM / SIGINT--> STOPPING --drained, or grace over--> CLOSING
    CLOSING --stream closed--> STOPPED

STOPPING sends no credit but still runs grants that arrive (the coordinator may spend credit it
already had); they count as in-flight work. CLOSING refuses grants: the protocol has no way to hand
a lease back, so they are left to expire on the coordinator (logged), and run() returns promptly.

Lease lifecycle (LeaseState), one _RunningLease per lease id in Worker._leases (owner: the event loop;
mutated only by the Worker's own callbacks and each lease's task)::

    RUNNING --handler returned or raised------------------------------> COMPLETING --reply--> released
      |--CancelLease / CANCELLED verdict--> CANCELLING   --handler ends--> COMPLETING  Fail(retryable=False, "cancelled")
      |--execution timeout---------------> TIMING_OUT   --handler ends--> COMPLETING  Fail(retryable=True)
      |--drain grace over----------------> SHUTTING_DOWN --handler ends-> COMPLETING  Fail(retryable=True, "worker shutdown")
      \\--STALE/NOT_FOUND, trust window,--> LOST         --handler ends--> released (nothing is ever reported)
          or not resumed after reconnect
    CANCELLING, TIMING_OUT and SHUTTING_DOWN can still become LOST; COMPLETING never changes again:
    its completion frame is fenced, and its reply (DUPLICATE / STALE_LEASE) settles it.

Slots and credit: the worker holds up to capacity = concurrency + prefetch leases; at most
`concurrency` of them run a handler, the rest wait in a FIFO buffer for a handler slot (prefetch), so
that a freed handler slot starts its next job at once instead of after a claim round trip. A lease
holds a capacity slot from its grant until its handler has ended and its completion frame is queued
(or, for a lost lease, until the handler has ended). The slot's Credit(1) is queued right behind the
completion frame, so both usually travel in one message and the coordinator can grant the next job
without waiting for the completion's verdict; the coordinator stops counting a lease against
capacity once its Complete/Fail arrives. The lease itself stays in _leases (for heartbeats and the
reconnect hello) until the verdict. Each welcome announces capacity - busy slots as credit.
Stopping sends no more credit.

Buffered leases are held leases like the others: they are heartbeated, their trust window runs, and
their execution timeout is measured from the grant (as the coordinator measures it from the claim),
so time spent buffered counts against it. A buffered lease that is cancelled, times out or is lost
before it starts is reported (or dropped, if lost) without running its handler. On stop() the
buffered leases are in-flight work: they run during the drain grace as handler slots free up; those
still unstarted when the grace is over are handed back with a Release frame: the coordinator queues
them again at once and does not count the attempt, so a job on its last attempt is not dead-lettered
by a shutdown it never ran in. (A coordinator too old to accept Release, per welcome.accepts_release,
gets a retryable Fail with a zero retry delay instead, which does count the attempt.)

Cancelling a handler: async handlers get asyncio cancellation; sync handlers (threads) cannot be
interrupted, so they only see ctx.cancelled and the worker waits for them, except at shutdown,
where after the drain grace the worker reports them and stops waiting.

Trust window: the lease's heartbeat_timeout (fallback: the session's lease TTL). A lease with no
ACCEPTED heartbeat verdict for that long, measured from when the accepted heartbeat was sent, is
treated as lost locally: the coordinator has probably expired it already. The worker says so with an
Abandon frame (when welcome.accepts_abandon), so that the coordinator stops counting the lease
against this worker's capacity at once and re-queues it if it had not yet; the slot's Credit follows
when the handler has ended, as for any lease. A LeaseRevoked frame (the coordinator took the lease
back) makes the lease LOST the same way, without an Abandon. So a paused or cut-off worker never
leaves the coordinator counting leases it no longer runs, and gets work again once it is back.
"""  # noqa: E501 - the lease diagram's rows are wider than the prose

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
import os
import secrets
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from os import PathLike
from typing import Protocol, TypeAlias, TypeVar, cast

import grpc
import grpc.aio
from opentelemetry import trace

from worker_sdk._channel import auth_metadata, open_channel, resolve_api_key, tls_credentials
from worker_sdk._context import CancelReason, HandlerResult, JobContext, to_result_bytes
from worker_sdk._errors import (
    AuthError,
    InvalidArgumentError,
    JobCancelledError,
    LeaseLostError,
    NonRetryableError,
    RetryJob,
    UnavailableError,
)
from worker_sdk._frames import (
    Abandon,
    CancelLease,
    Complete,
    CompletionFrame,
    Drain,
    Fail,
    Heartbeat,
    Hello,
    LeaseGrant,
    LeaseRef,
    LeaseRevoked,
    Release,
    Reply,
    ReplyStatus,
    RequestFrame,
    Welcome,
)
from worker_sdk._metrics import FanOut, WorkerMetrics, resolve_address
from worker_sdk._stream import ConnState, LeaseStream
from worker_sdk._tracing import handler_span, record_failure
from worker_sdk._version import SDK_NAME, SDK_VERSION

logger = logging.getLogger(__name__)

#: Leases run at once, and the size of the sync-handler thread pool.
CONCURRENCY_DEFAULT = 16
#: Leases buffered beyond concurrency when prefetch is not given, as a fraction of concurrency.
PREFETCH_FRACTION_DEFAULT = 0.5
#: Largest concurrency the coordinator accepts in hello.
CONCURRENCY_MAX = 10_000
#: How long stop() lets in-flight jobs finish before cancelling them.
DRAIN_GRACE_DEFAULT = timedelta(seconds=30)
#: After the drain grace: how long to wait for the "worker shutdown" failures to be acknowledged.
SHUTDOWN_REPORT_TIMEOUT_DEFAULT = timedelta(seconds=5)
#: Heartbeat period used until a welcome says otherwise (or if it says zero).
HEARTBEAT_INTERVAL_FALLBACK = timedelta(seconds=5)
#: Trust window used if neither the grant nor the welcome gives one.
LEASE_TTL_FALLBACK = timedelta(seconds=30)
#: First and longest delay of the gRPC channel's own reconnects (its defaults, 1 s growing to 120 s, would
#: keep a worker away from a restarted coordinator long after it is back, and its held leases expire).
CHANNEL_RECONNECT_BACKOFF_INITIAL = timedelta(milliseconds=100)
CHANNEL_RECONNECT_BACKOFF_MAX = timedelta(seconds=1)
#: Consecutive heartbeats without any reply before the session is torn down and reconnected.
HEARTBEAT_MISSES_BEFORE_RECONNECT_DEFAULT = 3
#: Longest error text sent in a Fail frame, in bytes of UTF-8.
FAIL_ERROR_MAX_BYTES = 8 * 1024
#: Error text of a Fail sent for a cancelled job.
CANCELLED_ERROR = "cancelled"
#: Error text of a Fail sent for a job interrupted by the worker's shutdown.
SHUTDOWN_ERROR = "worker shutdown"
_OUTCOME_OF_FRAME: dict[type, str] = {Complete: "succeeded", Fail: "failed", Release: "released"}
#: Reason of the Release (or, to an older coordinator, error text of the Fail) sent for a buffered job
#: that the worker's shutdown handed back unstarted.
SHUTDOWN_UNSTARTED_ERROR = "worker shutdown before start"

SyncHandler: TypeAlias = Callable[[JobContext], HandlerResult]
AsyncHandler: TypeAlias = Callable[[JobContext], Awaitable[HandlerResult]]
Handler: TypeAlias = SyncHandler | AsyncHandler
H = TypeVar("H", bound=Handler)


class WorkerState(StrEnum):
    """Where the Worker is in its lifecycle (see the module docstring)."""

    CREATED = "created"
    RUNNING = "running"
    STOPPING = "stopping"
    CLOSING = "closing"
    STOPPED = "stopped"


class LeaseState(StrEnum):
    """Where one held lease is (see the module docstring)."""

    RUNNING = "running"
    CANCELLING = "cancelling"
    TIMING_OUT = "timing_out"
    SHUTTING_DOWN = "shutting_down"
    LOST = "lost"
    COMPLETING = "completing"


_INTERRUPTED = frozenset({LeaseState.CANCELLING, LeaseState.TIMING_OUT, LeaseState.SHUTTING_DOWN})
_STATE_FOR_REASON = {
    CancelReason.CANCELLED: LeaseState.CANCELLING,
    CancelReason.TIMEOUT: LeaseState.TIMING_OUT,
    CancelReason.SHUTDOWN: LeaseState.SHUTTING_DOWN,
    CancelReason.LEASE_LOST: LeaseState.LOST,
}


class WorkerObserver(Protocol):
    """Hook for metrics (worker_sdk/_metrics.py is the built-in Prometheus one); every method must be cheap."""

    def lease_started(self, kind: str, queue: str) -> None: ...

    def lease_finished(self, kind: str, queue: str, outcome: str, seconds: float) -> None: ...

    def connection_changed(self, state: ConnState) -> None: ...


class _NoopObserver:
    def lease_started(self, kind: str, queue: str) -> None:
        pass

    def lease_finished(self, kind: str, queue: str, outcome: str, seconds: float) -> None:
        pass

    def connection_changed(self, state: ConnState) -> None:
        pass


@dataclass(slots=True, eq=False)
class _RunningLease:
    """One held lease. Owner: the Worker (event loop)."""

    grant: LeaseGrant
    ctx: JobContext
    handler: Handler | None
    is_async: bool
    trust_timeout: float
    started: float
    last_ack: float
    state: LeaseState = LeaseState.RUNNING
    task: asyncio.Task[None] | None = None
    handler_task: asyncio.Task[HandlerResult] | None = None
    outcome: str = field(default="")
    slot_freed: bool = False
    # Set while the lease waits in the prefetch buffer: True hands it a handler slot, False wakes it
    # unstarted (it was interrupted or lost).
    slot_wait: asyncio.Future[bool] | None = None

    @property
    def ref(self) -> LeaseRef:
        return self.grant.lease

    def log_extra(self, **more: object) -> dict[str, object]:
        return {
            "job_id": self.grant.job.id,
            "kind": self.grant.job.kind,
            "lease_id": self.grant.lease.lease_id,
            "fencing_token": self.grant.lease.fencing_token,
            "attempt": self.grant.attempt,
            **more,
        }


def _is_async_handler(fn: Handler) -> bool:
    # Also an instance whose class defines `async def __call__`.
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__)


async def _settled(task: asyncio.Task[HandlerResult]) -> None:
    """Wait until `task` has ended, however it ended; the caller reads the outcome from the task.

    Awaiting the task is cheaper than asyncio.wait (no waiter future, no callbacks), but it raises
    what the task raised: that is swallowed here, except our own cancellation, which awaiting also
    passes on to the task (as the caller's cleanup would).
    """
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if not task.done() or (current is not None and current.cancelling()):
            raise
    except Exception:  # the handler's exception: kept on the task for _outcome
        pass


def _default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def _truncate_utf8(text: str, limit: int) -> str:
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    return data[:limit].decode("utf-8", errors="ignore")


def format_error(exc: BaseException) -> str:
    """Format an exception as "Type: message", cut to FAIL_ERROR_MAX_BYTES."""
    message = str(exc)
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return _truncate_utf8(text, FAIL_ERROR_MAX_BYTES)


class Worker:
    """Runs handlers for leased jobs: `@worker.handler("kind")`, then `await worker.run()`.

    run() returns after stop() (or SIGTERM/SIGINT when run in the main thread) has drained the
    in-flight jobs: they get `drain_grace` to finish, then they are cancelled and reported as
    retryable failures ("worker shutdown").

    `concurrency` handlers run at once; `prefetch` more leases (default: half of concurrency) wait
    in a buffer for a free handler slot, so that a slot does not idle for a claim round trip. Use
    prefetch=0 for long jobs that other workers should rather take.
    """

    def __init__(
        self,
        target: str,
        *,
        queues: Sequence[str] = ("default",),
        concurrency: int = CONCURRENCY_DEFAULT,
        prefetch: int | None = None,
        worker_id: str | None = None,
        labels: Mapping[str, str] | None = None,
        drain_grace: timedelta = DRAIN_GRACE_DEFAULT,
        metrics_port: int | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        channel_options: Sequence[tuple[str, int | str]] = (),
        observer: WorkerObserver | None = None,
        handle_signals: bool = True,
        api_key: str | None = None,
        tls: bool | None = None,
        ca_cert: str | PathLike[str] | bytes | None = None,
        client_cert: str | PathLike[str] | bytes | None = None,
        client_key: str | PathLike[str] | bytes | None = None,
    ) -> None:
        """api_key (default $FAULTLINE_API_KEY) needs the work scope; the TLS options are the Client's.

        With auth on, the coordinator records this worker as `<identity>/<worker_id>` (key:NAME/host-pid).
        run() raises UnauthenticatedError or PermissionDeniedError when the coordinator refuses the key.
        """
        if isinstance(queues, str):
            queues = [queues]
        if not queues or any(not q for q in queues):
            raise InvalidArgumentError("queues must name at least one non-empty queue")
        if not 1 <= concurrency <= CONCURRENCY_MAX:
            raise InvalidArgumentError(f"concurrency must be in [1, {CONCURRENCY_MAX}], got {concurrency}")
        if prefetch is None:
            prefetch = min(int(concurrency * PREFETCH_FRACTION_DEFAULT), CONCURRENCY_MAX - concurrency)
        if not 0 <= prefetch <= CONCURRENCY_MAX - concurrency:
            raise InvalidArgumentError(
                f"prefetch must be in [0, {CONCURRENCY_MAX - concurrency}] (concurrency + prefetch <= "
                f"{CONCURRENCY_MAX}), got {prefetch}"
            )
        if drain_grace < timedelta(0):
            raise InvalidArgumentError("drain_grace must not be negative")
        worker_id = worker_id or _default_worker_id()
        if not 1 <= len(worker_id) <= 128:
            raise InvalidArgumentError("worker_id must be 1-128 characters")
        self._target = target
        self._queues = tuple(dict.fromkeys(queues))
        self._concurrency = concurrency
        self._capacity = concurrency + prefetch
        self._worker_id = worker_id
        self._labels = dict(labels or {})
        self._drain_grace = drain_grace
        # Opt-in Prometheus endpoint (metrics_port, else FAULTLINE_WORKER_METRICS_PORT); served while run() runs.
        metrics_at = resolve_address(metrics_port)
        self._metrics = WorkerMetrics(host=metrics_at[0], port=metrics_at[1]) if metrics_at else None
        try:
            self._credentials = credentials or tls_credentials(
                tls=tls, ca_cert=ca_cert, client_cert=client_cert, client_key=client_key)
            self._auth_metadata = auth_metadata(resolve_api_key(api_key))
        except ValueError as exc:
            raise InvalidArgumentError(str(exc)) from None
        self._channel_options = tuple(channel_options)
        observers = [o for o in (observer, self._metrics) if o is not None]
        self._observer: WorkerObserver = (
            FanOut(*observers) if len(observers) > 1 else (observers[0] if observers else _NoopObserver())
        )
        self._handle_signals = handle_signals
        self._handlers: dict[str, tuple[Handler, bool]] = {}
        # Everything below is owned by the event loop running run().
        self._state = WorkerState.CREATED
        self._leases: dict[str, _RunningLease] = {}
        # Leases whose capacity slot is taken (granted, completion not yet queued); see the module docstring.
        self._busy_slots = 0
        # Handlers running (at most concurrency), and buffered leases waiting for a handler slot, in grant order.
        self._handlers_running = 0
        self._slot_waiters: deque[_RunningLease] = deque()
        self._stream: LeaseStream | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._heartbeat_interval = HEARTBEAT_INTERVAL_FALLBACK.total_seconds()
        self._lease_ttl = LEASE_TTL_FALLBACK.total_seconds()
        # Set by each welcome: whether the coordinator accepts Release and Abandon frames (see the module docstring).
        self._accepts_release = False
        self._accepts_abandon = False
        self._stop_requested = asyncio.Event()
        self._force_stop = asyncio.Event()
        self._stopped = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._heartbeat_wake = asyncio.Event()

    # ---- registry ------------------------------------------------------------------------

    def handler(self, kind: str) -> Callable[[H], H]:
        """Decorator registering `fn` (async def, or def to run in a thread) for jobs of `kind`."""

        def register(fn: H) -> H:
            self.register(kind, fn)
            return fn

        return register

    def register(self, kind: str, fn: Handler) -> None:
        """Register `fn` for jobs of `kind`; before run() only."""
        if self._state is not WorkerState.CREATED:
            raise InvalidArgumentError("handlers must be registered before run()")
        if not kind or len(kind) > 128:
            raise InvalidArgumentError("kind must be 1-128 characters")
        if kind in self._handlers:
            raise InvalidArgumentError(f"a handler for {kind!r} is already registered")
        if not callable(fn):
            raise InvalidArgumentError("handler must be callable")
        self._handlers[kind] = (fn, _is_async_handler(fn))

    # ---- introspection -------------------------------------------------------------------

    @property
    def worker_id(self) -> str:
        return self._worker_id

    @property
    def state(self) -> WorkerState:
        return self._state

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(sorted(self._handlers))

    @property
    def connection_state(self) -> ConnState:
        return self._stream.state if self._stream is not None else ConnState.IDLE

    @property
    def running_jobs(self) -> int:
        """Leases held right now (running, or waiting for their completion reply)."""
        return len(self._leases)

    # ---- lifecycle -----------------------------------------------------------------------

    async def run(self) -> None:
        """Connect and run handlers until stop() or SIGTERM/SIGINT; returns once drained."""
        if self._state is not WorkerState.CREATED:
            raise InvalidArgumentError("Worker.run() can be called only once")
        if not self._handlers:
            raise InvalidArgumentError("register at least one handler before run()")
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._executor = ThreadPoolExecutor(max_workers=self._concurrency, thread_name_prefix="faultline-handler")
        reconnect_options: tuple[tuple[str, int | str], ...] = (
            ("grpc.initial_reconnect_backoff_ms", int(CHANNEL_RECONNECT_BACKOFF_INITIAL.total_seconds() * 1000)),
            ("grpc.min_reconnect_backoff_ms", int(CHANNEL_RECONNECT_BACKOFF_INITIAL.total_seconds() * 1000)),
            ("grpc.max_reconnect_backoff_ms", int(CHANNEL_RECONNECT_BACKOFF_MAX.total_seconds() * 1000)),
        )
        channel = open_channel(
            self._target, credentials=self._credentials, options=(*reconnect_options, *self._channel_options)
        )
        self._stream = LeaseStream(
            channel=channel,
            hello=Hello(
                worker_id=self._worker_id,
                queues=self._queues,
                kinds=self.kinds,
                capacity=self._capacity,
                labels=self._labels,
                sdk_name=SDK_NAME,
                sdk_version=SDK_VERSION,
            ),
            listener=_Listener(self),
            metadata=self._auth_metadata,
        )
        if self._metrics is not None:
            self._metrics.start()
        installed = self._install_signal_handlers(loop)
        self._state = WorkerState.RUNNING
        logger.info(
            "worker started",
            extra={
                "worker_id": self._worker_id,
                "target": self._target,
                "queues": list(self._queues),
                "kinds": list(self.kinds),
                "concurrency": self._concurrency,
            },
        )
        refused: AuthError | None = None
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                tg.create_task(self._stream.run(), name="faultline-stream")
                tg.create_task(self._heartbeat_loop(), name="faultline-heartbeat")
                await self._stop_requested.wait()
                await self._drain()
                self._state = WorkerState.CLOSING
                await self._stream.close()
                await self._abandon_leases()
                self._state = WorkerState.STOPPED
                self._heartbeat_wake.set()
        except* AuthError as group:
            # The coordinator refused the credentials (the stream said so): run() ends with that error.
            first = group.exceptions[0]
            assert isinstance(first, AuthError)
            refused = first
        finally:
            self._state = WorkerState.STOPPED
            self._tg = None
            for sig in installed:
                loop.remove_signal_handler(sig)
            self._executor.shutdown(wait=False, cancel_futures=True)
            if self._metrics is not None:
                self._metrics.stop()
            await channel.close()
            self._stopped.set()
            logger.info("worker stopped", extra={"worker_id": self._worker_id})
        if refused is not None:
            raise refused

    def request_stop(self) -> None:
        """Begin a graceful stop without waiting (event-loop thread only); a second call skips the grace."""
        if self._state is WorkerState.STOPPING:
            self._force_stop.set()
        self._stop_requested.set()

    async def stop(self) -> None:
        """Stop taking work, drain in-flight jobs (up to drain_grace), close the stream, then return."""
        if self._state is WorkerState.CREATED:
            self._state = WorkerState.STOPPED
            self._stopped.set()
            return
        self._stop_requested.set()
        await self._stopped.wait()

    def _install_signal_handlers(self, loop: asyncio.AbstractEventLoop) -> list[signal.Signals]:
        if not self._handle_signals or threading.current_thread() is not threading.main_thread():
            return []
        installed: list[signal.Signals] = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self._on_signal, sig)
            except (NotImplementedError, RuntimeError, ValueError):  # e.g. Windows, or a non-main loop
                continue
            installed.append(sig)
        return installed

    def _on_signal(self, sig: signal.Signals) -> None:
        logger.info("worker received signal", extra={"signal": sig.name, "state": self._state.value})
        self.request_stop()

    async def _drain(self) -> None:
        stream = self._require_stream()
        self._state = WorkerState.STOPPING
        stream.discard_credit()
        logger.info(
            "worker draining",
            extra={"held": len(self._leases), "grace_s": self._drain_grace.total_seconds()},
        )
        if await self._wait_idle(self._drain_grace.total_seconds()):
            return
        logger.warning("drain grace over, cancelling remaining jobs", extra={"held": len(self._leases)})
        for run in list(self._leases.values()):
            if run.state is LeaseState.RUNNING:
                self._interrupt(run, CancelReason.SHUTDOWN)
            elif run.handler_task is not None and not run.handler_task.done():
                # A sync handler still running after a cancel or a loss: stop waiting for its thread.
                run.handler_task.cancel()
        if await self._wait_idle(SHUTDOWN_REPORT_TIMEOUT_DEFAULT.total_seconds(), forceable=False):
            return
        logger.error("shutdown reports not acknowledged in time", extra={"held": len(self._leases)})
        tasks = [run.task for run in self._leases.values() if run.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)

    async def _abandon_leases(self) -> None:
        """Cancel lease tasks still alive after close (grants that raced the close); nothing is reported."""
        tasks = [run.task for run in self._leases.values() if run.task is not None]
        if not tasks:
            return
        logger.warning("leases left to expire on the coordinator", extra={"held": len(tasks)})
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)

    async def _wait_idle(self, timeout: float, *, forceable: bool = True) -> bool:
        if self._idle.is_set():
            return True
        waiters = [asyncio.ensure_future(self._idle.wait())]
        if forceable:
            waiters.append(asyncio.ensure_future(self._force_stop.wait()))
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
            await asyncio.wait(waiters)
        return self._idle.is_set()

    def _require_stream(self) -> LeaseStream:
        if self._stream is None:
            raise InvalidArgumentError("the worker is not running")
        return self._stream

    # ---- session callbacks (see _Listener) -----------------------------------------------

    def _held_leases(self) -> tuple[LeaseRef, ...]:
        return tuple(run.ref for run in self._leases.values() if run.state is not LeaseState.LOST)

    def _on_welcome(self, welcome: Welcome, lost: frozenset[LeaseRef]) -> int:
        self._accepts_release = welcome.accepts_release
        self._accepts_abandon = welcome.accepts_abandon
        if welcome.heartbeat_interval > timedelta(0):
            self._heartbeat_interval = welcome.heartbeat_interval.total_seconds()
        if welcome.lease_ttl > timedelta(0):
            self._lease_ttl = welcome.lease_ttl.total_seconds()
        for ref in lost:
            run = self._leases.get(ref.lease_id)
            if run is not None and run.ref == ref:
                self._lose(run, "not resumed after reconnect", tell=False)
        self._heartbeat_wake.set()  # re-establish trust in resumed leases promptly
        self._observer.connection_changed(ConnState.READY)
        if self._state is not WorkerState.RUNNING:
            return 0
        return max(0, self._capacity - self._busy_slots)

    def _on_grant(self, grant: LeaseGrant) -> None:
        lease_id = grant.lease.lease_id
        if lease_id in self._leases:
            logger.error("duplicate lease grant ignored", extra={"lease_id": lease_id, "job_id": grant.job.id})
            return
        tg, loop = self._tg, self._loop
        if tg is None or loop is None or self._state in (WorkerState.CLOSING, WorkerState.STOPPED):
            logger.warning(
                "lease grant while closing left to expire", extra={"lease_id": lease_id, "job_id": grant.job.id}
            )
            return
        if self._busy_slots >= self._capacity:
            logger.warning("lease granted beyond capacity", extra={"lease_id": lease_id, "held": len(self._leases)})
        registered = self._handlers.get(grant.job.kind)
        now = time.monotonic()
        trust = grant.heartbeat_timeout.total_seconds() if grant.heartbeat_timeout else self._lease_ttl
        run = _RunningLease(
            grant=grant,
            ctx=JobContext(grant=grant, link=_Link(self), loop=loop),
            handler=registered[0] if registered else None,
            is_async=registered[1] if registered else True,
            trust_timeout=trust,
            started=now,
            last_ack=now,
        )
        self._leases[lease_id] = run
        self._busy_slots += 1
        self._idle.clear()
        self._observer.lease_started(grant.job.kind, grant.job.queue)
        run.task = tg.create_task(self._run_lease(run), name=f"faultline-lease-{lease_id}")

    def _on_cancel(self, cancel: CancelLease) -> None:
        run = self._leases.get(cancel.lease.lease_id)
        if run is None or run.ref != cancel.lease:
            logger.debug("cancel for a lease not held ignored", extra={"lease_id": cancel.lease.lease_id})
            return
        logger.info("job cancelled by coordinator", extra=run.log_extra(reason=cancel.reason))
        self._interrupt(run, CancelReason.CANCELLED)

    def _on_revoked(self, revoked: LeaseRevoked) -> None:
        run = self._leases.get(revoked.lease.lease_id)
        if run is None or run.ref != revoked.lease:
            logger.debug("revoke for a lease not held ignored", extra={"lease_id": revoked.lease.lease_id})
            return
        self._lose(run, f"revoked by the coordinator: {revoked.reason}", tell=False)

    def _on_drain(self, drain: Drain) -> None:
        # The stream stops sending credit; running jobs go on and are re-announced on the next session.
        logger.info("session draining", extra={"held": len(self._leases)})

    # ---- lease transitions ---------------------------------------------------------------

    def _interrupt(self, run: _RunningLease, reason: CancelReason) -> None:
        target = _STATE_FOR_REASON[reason]
        if run.state is LeaseState.RUNNING or (target is LeaseState.LOST and run.state in _INTERRUPTED):
            run.state = target
        else:
            return
        run.ctx._mark_cancelled(reason)
        if run.slot_wait is not None and not run.slot_wait.done():
            run.slot_wait.set_result(False)  # still buffered: wake it to be reported unstarted
        task = run.handler_task
        if task is not None and not task.done() and (run.is_async or reason is CancelReason.SHUTDOWN):
            task.cancel()

    def _lose(self, run: _RunningLease, why: str, *, tell: bool = True) -> None:
        """Mark the lease lost; tell=True also sends Abandon (the coordinator may still count it)."""
        if run.state is LeaseState.COMPLETING or run.state is LeaseState.LOST:
            return
        logger.warning("lease lost", extra=run.log_extra(reason=why))
        self._interrupt(run, CancelReason.LEASE_LOST)
        if tell and self._accepts_abandon and self._tg is not None and self._stream is not None:
            self._tg.create_task(self._abandon(run, why), name=f"faultline-abandon-{run.ref.lease_id}")

    async def _abandon(self, run: _RunningLease, why: str) -> None:
        """Tell the coordinator that this worker gave the lease up; re-sent across reconnects until answered."""
        try:
            reply = await self._require_stream().call(Abandon(run.ref, _truncate_utf8(why, 1024)))
        except (UnavailableError, LeaseLostError):
            return  # the stream closed; the coordinator's reaper and reconciler take the lease back anyway
        logger.info("lease abandoned", extra=run.log_extra(status=reply.status.value, reason=reply.message))

    # ---- one lease -----------------------------------------------------------------------

    async def _run_lease(self, run: _RunningLease) -> None:
        try:
            frame = await self._execute(run)
            if frame is not None:
                await self._report(run, frame)
            else:
                run.outcome = run.outcome or "lost"
        except Exception:  # loop boundary for one lease: never take the worker down
            logger.exception("lease task crashed", extra=run.log_extra())
            run.outcome = "crashed"
        finally:
            self._release(run)

    async def _execute(self, run: _RunningLease) -> CompletionFrame | None:
        grant = run.grant
        if run.handler is None:
            logger.error("no handler for job kind", extra=run.log_extra())
            return Fail(
                lease=grant.lease,
                error=f"NoHandler: worker {self._worker_id} has no handler for kind {grant.job.kind!r}",
                retryable=True,
            )
        if not await self._take_handler_slot(run):
            return self._unstarted_outcome(run)
        try:
            return await self._execute_in_slot(run)
        finally:
            self._give_handler_slot()

    async def _take_handler_slot(self, run: _RunningLease) -> bool:
        """Wait (FIFO) for a handler slot; False, holding none, if the lease should not run its handler."""
        if run.state is not LeaseState.RUNNING:
            return False
        if self._handlers_running < self._concurrency and not self._slot_waiters:
            self._handlers_running += 1
        else:
            wait: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
            run.slot_wait = wait
            self._slot_waiters.append(run)
            try:
                got = await wait
            except asyncio.CancelledError:
                if wait.done() and not wait.cancelled() and wait.result():
                    self._give_handler_slot()  # handed a slot in the same step as our cancellation
                raise
            finally:
                run.slot_wait = None
            if not got:
                return False
        timeout = run.grant.execution_timeout
        if run.state is LeaseState.RUNNING and timeout and time.monotonic() - run.started >= timeout.total_seconds():
            logger.warning("execution timeout exceeded before start", extra=run.log_extra())
            self._interrupt(run, CancelReason.TIMEOUT)
        if run.state is not LeaseState.RUNNING:
            self._give_handler_slot()
            return False
        return True

    def _give_handler_slot(self) -> None:
        """Hand the freed handler slot to the oldest buffered lease still waiting, else free it."""
        while self._slot_waiters:
            nxt = self._slot_waiters.popleft()
            if nxt.slot_wait is not None and not nxt.slot_wait.done():
                nxt.slot_wait.set_result(True)
                return
        self._handlers_running -= 1

    def _unstarted_outcome(self, run: _RunningLease) -> CompletionFrame | None:
        """The report for a lease whose handler never ran (interrupted or lost while buffered)."""
        lease = run.ref
        match run.state:
            case LeaseState.CANCELLING:
                return Fail(lease=lease, error=CANCELLED_ERROR, retryable=False)
            case LeaseState.SHUTTING_DOWN:
                if self._accepts_release:
                    return Release(lease=lease, reason=SHUTDOWN_UNSTARTED_ERROR)
                return Fail(lease=lease, error=SHUTDOWN_UNSTARTED_ERROR, retryable=True, retry_delay=timedelta(0))
            case LeaseState.TIMING_OUT:
                timeout = run.grant.execution_timeout.total_seconds() if run.grant.execution_timeout else 0
                return Fail(
                    lease=lease,
                    error=f"TimeoutError: execution timeout of {timeout:g}s exceeded before start",
                    retryable=True,
                )
        return None  # LOST: nothing is ever reported

    async def _execute_in_slot(self, run: _RunningLease) -> CompletionFrame | None:
        grant = run.grant
        with handler_span(
            kind=grant.job.kind,
            trace_context=grant.trace_context,
            job_id=grant.job.id,
            attempt=grant.attempt,
            fencing_token=grant.lease.fencing_token,
            queue=grant.job.queue,
        ) as span:
            # Created inside the span so the handler's context has it as the current span.
            handler_task = asyncio.create_task(self._invoke(run), name=f"faultline-handler-{grant.lease.lease_id}")
            run.handler_task = handler_task
            try:
                # Measured from the grant, as the coordinator measures it from the claim.
                timeout = (
                    max(grant.execution_timeout.total_seconds() - (time.monotonic() - run.started), 0.0)
                    if grant.execution_timeout else None
                )
                if timeout is None:
                    await _settled(handler_task)
                else:
                    done, _ = await asyncio.wait([handler_task], timeout=timeout)
                    if not done:
                        logger.warning("execution timeout exceeded", extra=run.log_extra(timeout_s=timeout))
                        self._interrupt(run, CancelReason.TIMEOUT)
                        await asyncio.wait([handler_task])
            finally:
                if not handler_task.done():  # we are being cancelled ourselves
                    handler_task.cancel()
                    await asyncio.wait([handler_task])
            return self._outcome(run, handler_task, span)

    async def _invoke(self, run: _RunningLease) -> HandlerResult:
        assert run.handler is not None
        if run.is_async:
            return await cast(AsyncHandler, run.handler)(run.ctx)
        loop = asyncio.get_running_loop()
        context = contextvars.copy_context()  # carries the handler span into the thread
        call = functools.partial(context.run, cast(SyncHandler, run.handler), run.ctx)
        return await loop.run_in_executor(self._executor, call)

    def _outcome(
        self, run: _RunningLease, task: asyncio.Task[HandlerResult], span: trace.Span
    ) -> CompletionFrame | None:
        lease = run.ref
        match run.state:
            case LeaseState.LOST:
                return None
            case LeaseState.CANCELLING:
                return Fail(lease=lease, error=CANCELLED_ERROR, retryable=False)
            case LeaseState.SHUTTING_DOWN:
                return Fail(lease=lease, error=SHUTDOWN_ERROR, retryable=True)
            case LeaseState.TIMING_OUT:
                timeout = run.grant.execution_timeout.total_seconds() if run.grant.execution_timeout else 0
                return Fail(
                    lease=lease, error=f"TimeoutError: execution timeout of {timeout:g}s exceeded", retryable=True
                )
        if task.cancelled():
            error = asyncio.CancelledError("the handler was cancelled")
            record_failure(span, error, "cancelled")
            return Fail(lease=lease, error="CancelledError: the handler was cancelled", retryable=True)
        exc = task.exception()
        if exc is None:
            try:
                return Complete(lease, to_result_bytes(task.result()))
            except TypeError as bad:
                record_failure(span, bad, "bad handler result")
                logger.error("handler returned a bad result", extra=run.log_extra(error=str(bad)))
                return Fail(lease=lease, error=format_error(bad), retryable=False)
        record_failure(span, exc, format_error(exc))
        if isinstance(exc, LeaseLostError):
            self._lose(run, "handler raised LeaseLostError")
            return None
        if isinstance(exc, JobCancelledError):
            return Fail(lease=lease, error=CANCELLED_ERROR, retryable=False)
        if isinstance(exc, RetryJob):
            logger.info("handler asked for a retry", extra=run.log_extra(error=str(exc)))
            return Fail(lease=lease, error=format_error(exc), retryable=True, retry_delay=exc.delay)
        if isinstance(exc, NonRetryableError):
            logger.warning("handler failed, not retryable", extra=run.log_extra(error=str(exc)))
            return Fail(lease=lease, error=format_error(exc), retryable=False)
        logger.warning("handler failed", exc_info=exc, extra=run.log_extra())
        return Fail(lease=lease, error=format_error(exc), retryable=True)

    async def _report(self, run: _RunningLease, frame: CompletionFrame) -> None:
        """Send the completion, re-sending across reconnects, until a verdict settles the lease."""
        run.state = LeaseState.COMPLETING
        stream = self._require_stream()
        # The handler is done: its slot's credit goes out right behind the completion frame.
        then_credit = 1 if self._free_slot(run) and self._state is WorkerState.RUNNING else 0
        while True:
            try:
                reply = await stream.call(frame, then_credit=then_credit)
                then_credit = 0
            except UnavailableError:
                logger.warning("completion not acknowledged: stream closed", extra=run.log_extra())
                run.outcome = "unreported"
                return
            except LeaseLostError:
                run.outcome = "lost"
                return
            outcome = _OUTCOME_OF_FRAME[type(frame)]
            match reply.status:
                case ReplyStatus.ACCEPTED:
                    run.outcome = outcome
                    return
                case ReplyStatus.DUPLICATE:
                    logger.info("completion was already recorded", extra=run.log_extra())
                    run.outcome = outcome
                    return
                case ReplyStatus.STALE_LEASE | ReplyStatus.NOT_FOUND:
                    logger.warning(
                        "completion rejected, lease lost",
                        extra=run.log_extra(status=reply.status.value, reason=reply.message),
                    )
                    run.outcome = "lost"
                    return
                case ReplyStatus.CANCELLED if isinstance(frame, Complete):
                    # The job was cancelled while the handler finished: end it as cancelled.
                    frame = Fail(lease=run.ref, error=CANCELLED_ERROR, retryable=False)
                case ReplyStatus.CANCELLED:
                    run.outcome = "cancelled"
                    return
                case ReplyStatus.INVALID | ReplyStatus.UNSPECIFIED if isinstance(frame, Release):
                    # A coordinator that does not know Release (met across a reconnect): fail it back instead.
                    frame = Fail(lease=run.ref, error=frame.reason, retryable=True, retry_delay=timedelta(0))
                case ReplyStatus.INVALID | ReplyStatus.UNSPECIFIED if isinstance(frame, Complete):
                    logger.error("coordinator rejected the result", extra=run.log_extra(reason=reply.message))
                    frame = Fail(
                        lease=run.ref,
                        error=_truncate_utf8(f"InvalidResult: {reply.message}", FAIL_ERROR_MAX_BYTES),
                        retryable=False,
                    )
                case _:
                    logger.error(
                        "coordinator rejected the failure report",
                        extra=run.log_extra(status=reply.status.value, reason=reply.message),
                    )
                    run.outcome = "unreported"
                    return

    def _free_slot(self, run: _RunningLease) -> bool:
        """Give the lease's handler slot back (once); True if this call freed it."""
        if run.slot_freed:
            return False
        run.slot_freed = True
        self._busy_slots -= 1
        return True

    def _release(self, run: _RunningLease) -> None:
        if self._leases.get(run.ref.lease_id) is run:
            del self._leases[run.ref.lease_id]
        self._observer.lease_finished(
            run.grant.job.kind, run.grant.job.queue, run.outcome or "unknown", time.monotonic() - run.started
        )
        if not self._leases:
            self._idle.set()
        if self._free_slot(run) and self._state is WorkerState.RUNNING and self._stream is not None:
            self._stream.add_credit(1)

    # ---- heartbeats ----------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        """Every heartbeat interval: one Heartbeat frame for all held leases; between: trust windows."""
        stream = self._require_stream()
        misses = 0
        next_due = time.monotonic()
        while self._state is not WorkerState.STOPPED:
            now = time.monotonic()
            wake_at = min([next_due, *(r.last_ack + r.trust_timeout for r in self._active())])
            if wake_at > now:
                try:
                    # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow our own cancellation.
                    async with asyncio.timeout(wake_at - now):
                        await self._heartbeat_wake.wait()
                    next_due = time.monotonic()  # woken: a new session, or stopping
                except TimeoutError:
                    pass
            self._heartbeat_wake.clear()
            if self._stopped.is_set() or self.state is WorkerState.STOPPED:
                return
            self._expire_untrusted()
            now = time.monotonic()
            if now < next_due:
                continue
            next_due = now + self._heartbeat_interval
            if stream.state not in (ConnState.READY, ConnState.DRAINING):
                continue
            answered = await self._heartbeat_once(stream)
            misses = 0 if answered else misses + 1
            if misses >= HEARTBEAT_MISSES_BEFORE_RECONNECT_DEFAULT:
                misses = 0
                stream.abort_session("heartbeats unanswered")

    def _active(self) -> Iterable[_RunningLease]:
        return (r for r in self._leases.values() if r.state is LeaseState.RUNNING or r.state in _INTERRUPTED)

    def _expire_untrusted(self) -> None:
        now = time.monotonic()
        for run in list(self._active()):
            if now - run.last_ack > run.trust_timeout:
                self._lose(run, f"no accepted heartbeat for {run.trust_timeout:g}s")

    async def _heartbeat_once(self, stream: LeaseStream) -> bool:
        """Send one heartbeat and apply its verdicts; False when no reply came in time."""
        held = {run.ref.lease_id: run for run in self._leases.values() if run.state is not LeaseState.LOST}
        sent_at = time.monotonic()
        try:
            async with asyncio.timeout(self._heartbeat_interval):
                reply = await stream.call(Heartbeat(tuple(run.ref for run in held.values())))
        except TimeoutError:
            logger.warning("heartbeat reply timed out", extra={"held": len(held)})
            return False
        except UnavailableError:
            return True  # the session ended; reconnecting is already under way
        if reply.status is not ReplyStatus.ACCEPTED:
            logger.warning("heartbeat not accepted", extra={"status": reply.status.value, "reason": reply.message})
        for verdict in reply.leases:
            run = held.get(verdict.lease.lease_id)
            if run is None or run.ref != verdict.lease or self._leases.get(run.ref.lease_id) is not run:
                continue
            match verdict.status:
                case ReplyStatus.ACCEPTED:
                    run.last_ack = max(run.last_ack, sent_at)
                case ReplyStatus.STALE_LEASE | ReplyStatus.NOT_FOUND:
                    self._lose(run, f"heartbeat verdict {verdict.status.value}: {verdict.message}", tell=False)
                case ReplyStatus.CANCELLED:
                    logger.info("job cancelled (heartbeat verdict)", extra=run.log_extra(reason=verdict.message))
                    self._interrupt(run, CancelReason.CANCELLED)
                case _:
                    logger.warning(
                        "unexpected heartbeat verdict",
                        extra=run.log_extra(status=verdict.status.value, reason=verdict.message),
                    )
        return True


class _Listener:
    """Adapts the Worker to the stream's SessionListener without widening Worker's public API."""

    __slots__ = ("_worker",)

    def __init__(self, worker: Worker) -> None:
        self._worker = worker

    def held_leases(self) -> tuple[LeaseRef, ...]:
        return self._worker._held_leases()

    def on_welcome(self, welcome: Welcome, lost: frozenset[LeaseRef]) -> int:
        return self._worker._on_welcome(welcome, lost)

    def on_grant(self, grant: LeaseGrant) -> None:
        self._worker._on_grant(grant)

    def on_cancel(self, cancel: CancelLease) -> None:
        self._worker._on_cancel(cancel)

    def on_revoked(self, revoked: LeaseRevoked) -> None:
        self._worker._on_revoked(revoked)

    def on_drain(self, drain: Drain) -> None:
        self._worker._on_drain(drain)

    def on_disconnect(self) -> None:
        self._worker._observer.connection_changed(ConnState.BACKOFF)


class _Link:
    """A JobContext's line to its Worker: lease frames out, verdicts back into the lease state."""

    __slots__ = ("_worker",)

    def __init__(self, worker: Worker) -> None:
        self._worker = worker

    async def request(self, frame: RequestFrame) -> Reply:
        return await self._worker._require_stream().call(frame)

    def lease_lost(self, lease: LeaseRef, reason: str) -> None:
        run = self._worker._leases.get(lease.lease_id)
        if run is not None and run.ref == lease:
            self._worker._lose(run, reason)

    def job_cancelled(self, lease: LeaseRef, reason: str) -> None:
        run = self._worker._leases.get(lease.lease_id)
        if run is not None and run.ref == lease:
            self._worker._interrupt(run, CancelReason.CANCELLED)
