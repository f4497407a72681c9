"""LeaseStream: the worker's one bidi WorkerService.Connect stream, its reconnects and its frame batching.

Connection state machine (ConnState), owned by LeaseStream.run()::

    IDLE --run()--> CONNECTING --welcome--> READY --drain frame--> DRAINING
                      ^    |                  |                       |
                      |    | error/EOF        | error/EOF             | coordinator closes
                      |    v                  v                       v
                      +-- BACKOFF <-----------+-----------------------+
    any state --close()--> CLOSED

* CONNECTING: hello (with every lease still held locally) is the only frame written until the
  welcome arrives. Welcome tells which held leases the coordinator resumed; the rest are lost.
* READY: requests, heartbeats and credit flow. DRAINING: the same, but credit is dropped, since the
  coordinator will grant nothing more on this session and will close it when the grace is over.
* BACKOFF: full-jitter exponential delay (RECONNECT_BACKOFF_*). The attempt counter resets after a
  session that was welcomed and lived RECONNECT_WELCOMED_HEALTHY_AFTER (or any session that lived
  RECONNECT_HEALTHY_AFTER_DEFAULT), so a coordinator restart costs one short delay, not the backoff
  of every earlier restart. While leases are held, no delay exceeds RECONNECT_HELD_TTL_FRACTION of
  the lease TTL: held leases are resumed (hello.held_leases) if the coordinator is back in time.

Writes are batched: one sender task per session drains the outgoing queue and packs everything
pending (plus all pending credit, summed into one Credit frame) into one ConnectRequest per write.
Incoming ConnectResponses are processed frame by frame, in order, by one reader task; the listener
callbacks are synchronous, so no frame overtakes another.

Requests (frames that get a Reply) are remembered until answered: `_inflight` (sent or queued on the
current session, keyed by seq) or `_parked` (waiting for a session). When a session ends, in-flight
requests are parked; the next welcome re-sends them under fresh seqs (seqs are never reused, so
they stay unique per session), except:
  * heartbeats, which fail at once with UnavailableError (the heartbeat loop sends a fresh one);
  * progress and step frames of leases the coordinator did not resume (LeaseLostError).
Completions (Complete/Fail/Release) and Abandon are always re-sent: they are fenced and idempotent per fencing token,
and the reply tells whether the first copy stuck (DUPLICATE) or the lease is gone (STALE_LEASE).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from enum import StrEnum
from typing import Protocol

import grpc
import grpc.aio

from worker_sdk import _convert
from worker_sdk._backoff import (
    RECONNECT_BACKOFF_BASE_DEFAULT,
    RECONNECT_BACKOFF_CAP_DEFAULT,
    RECONNECT_HEALTHY_AFTER_DEFAULT,
    UNAVAILABLE_RETRY_BASE_DEFAULT,
    UNAVAILABLE_RETRY_CAP_DEFAULT,
    full_jitter,
)
from worker_sdk._errors import LeaseLostError, ProtocolError, UnavailableError, WorkerSDKError
from worker_sdk._frames import (
    Abandon,
    CancelLease,
    Complete,
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
    lease_of,
)
from worker_sdk._proto.faultline.v1 import worker_service_pb2, worker_service_pb2_grpc

logger = logging.getLogger(__name__)

#: Most frames packed into one ConnectRequest.
MAX_FRAMES_PER_MESSAGE_DEFAULT = 1024
#: Soft bound on one ConnectRequest's encoded size, below gRPC's 4 MiB default receive limit.
MAX_MESSAGE_BYTES_DEFAULT = 2 * 1024 * 1024
#: Capacity of the outgoing frame queue; callers wait (backpressure) when it is full.
OUTGOING_QUEUE_SIZE_DEFAULT = 65_536
#: Longest wait for the welcome after hello before the session is abandoned.
HANDSHAKE_TIMEOUT_DEFAULT = timedelta(seconds=10)
#: Longest wait, on close(), for the coordinator to end the stream after the worker half-closed it.
CLOSE_GRACE_DEFAULT = timedelta(seconds=2)
#: A welcomed session that lived this long resets the reconnect attempt counter.
RECONNECT_WELCOMED_HEALTHY_AFTER = timedelta(seconds=1)
#: While leases are held, the longest reconnect delay as a fraction of the lease TTL.
RECONNECT_HELD_TTL_FRACTION = 0.1
# Credit.count is 1-10,000 on the wire.
_CREDIT_MAX_PER_FRAME = 10_000


class ConnState(StrEnum):
    """Where the stream is in its connection lifecycle (see the module docstring)."""

    IDLE = "idle"
    CONNECTING = "connecting"
    READY = "ready"
    DRAINING = "draining"
    BACKOFF = "backoff"
    CLOSED = "closed"


class _SessionEnd(StrEnum):
    EOF = "eof"
    ABORTED = "aborted"
    CLOSED = "closed"


class SessionListener(Protocol):
    """What the stream asks of its owner (the Worker). Called on the event loop, never awaited."""

    def held_leases(self) -> tuple[LeaseRef, ...]:
        """Leases still held locally, announced in hello."""
        ...

    def on_welcome(self, welcome: Welcome, lost: frozenset[LeaseRef]) -> int:
        """A session opened; `lost` held leases were not resumed. Returns the initial credit."""
        ...

    def on_grant(self, grant: LeaseGrant) -> None: ...

    def on_cancel(self, cancel: CancelLease) -> None: ...

    def on_revoked(self, revoked: LeaseRevoked) -> None: ...

    def on_drain(self, drain: Drain) -> None: ...

    def on_disconnect(self) -> None: ...


@dataclass(slots=True, eq=False)
class _Pending:
    """One request awaiting its reply. Owned by LeaseStream; `seq`/`epoch` change on re-send."""

    order: int
    frame: RequestFrame
    future: asyncio.Future[Reply]
    seq: int = 0
    epoch: int = 0


@dataclass(frozen=True, slots=True)
class _Send:
    """A queued request as it was keyed when queued; skipped if it was re-keyed since."""

    seq: int
    epoch: int
    entry: _Pending


class _CreditWake:
    """Queue item that only wakes the sender so that it sends pending credit."""


class _StopSender:
    """Queue item that makes the sender write what it has gathered and return (graceful close)."""


_CREDIT_WAKE = _CreditWake()
_STOP_SENDER = _StopSender()


def _reraise_if_task_cancelled() -> None:
    """Re-raise CancelledError if it is the current task that is being cancelled (never swallow it)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class _StopSession(Exception):
    """Ends a session's TaskGroup (control flow only, never escapes _run_session)."""

    def __init__(self, end: _SessionEnd) -> None:
        super().__init__(end.value)
        self.end = end


class LeaseStream:
    """The worker side of WorkerService.Connect. One instance lives as long as its Worker."""

    def __init__(
        self,
        *,
        channel: grpc.aio.Channel,
        hello: Hello,
        listener: SessionListener,
        metadata: Sequence[tuple[str, str]] = (),
        max_frames_per_message: int = MAX_FRAMES_PER_MESSAGE_DEFAULT,
        max_message_bytes: int = MAX_MESSAGE_BYTES_DEFAULT,
        outgoing_queue_size: int = OUTGOING_QUEUE_SIZE_DEFAULT,
        reconnect_base: timedelta = RECONNECT_BACKOFF_BASE_DEFAULT,
        reconnect_cap: timedelta = RECONNECT_BACKOFF_CAP_DEFAULT,
        healthy_after: timedelta = RECONNECT_HEALTHY_AFTER_DEFAULT,
        handshake_timeout: timedelta = HANDSHAKE_TIMEOUT_DEFAULT,
        close_grace: timedelta = CLOSE_GRACE_DEFAULT,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ) -> None:
        if max_frames_per_message < 1:
            raise ValueError("max_frames_per_message must be >= 1")
        self._stub = worker_service_pb2_grpc.WorkerServiceStub(channel)  # type: ignore[no-untyped-call]
        self._hello = hello
        self._listener = listener
        self._metadata = tuple(metadata)
        self._max_frames = max_frames_per_message
        self._max_bytes = max_message_bytes
        self._reconnect_base = reconnect_base
        self._reconnect_cap = reconnect_cap
        self._healthy_after = healthy_after.total_seconds()
        self._handshake_timeout = handshake_timeout.total_seconds()
        self._close_grace = close_grace.total_seconds()
        self._clock = clock
        self._rand = rand
        # All of the following are only touched on the event loop; the state by run() and close().
        self._state = ConnState.IDLE
        self._session_id = ""
        self._epoch = 0
        self._seq = itertools.count(1)
        self._order = itertools.count(1)
        self._inflight: dict[int, _Pending] = {}
        self._parked: dict[int, _Pending] = {}
        self._credit = 0
        self._outgoing: asyncio.Queue[_Send | _CreditWake | _StopSender] = asyncio.Queue(maxsize=outgoing_queue_size)
        self._interrupt = asyncio.Event()
        self._interrupt_reason = _SessionEnd.ABORTED
        self._closing = asyncio.Event()
        self._finished = asyncio.Event()
        self._session_started = asyncio.Event()
        # Set by each welcome: whether that session opened, and the lease TTL it announced (seconds).
        self._welcomed = False
        self._lease_ttl_s = 0.0

    # ---- introspection --------------------------------------------------------------------

    @property
    def state(self) -> ConnState:
        return self._state

    @property
    def session_id(self) -> str:
        return self._session_id

    # ---- public operations --------------------------------------------------------------

    def add_credit(self, count: int) -> None:
        """Announce `count` more free slots; summed into one Credit frame by the sender."""
        if count <= 0 or self._state is not ConnState.READY:
            # Not READY: the next welcome computes the credit afresh. DRAINING: no more grants come.
            return
        self._credit += count
        if self._outgoing.empty():
            try:
                self._outgoing.put_nowait(_CREDIT_WAKE)
            except asyncio.QueueFull:  # pragma: no cover - the sender is awake anyway
                pass

    def discard_credit(self) -> None:
        """Drop credit not yet written (the worker is stopping)."""
        self._credit = 0

    def abort_session(self, reason: str) -> None:
        """Tear the current session down and reconnect (e.g. heartbeats go unanswered)."""
        if self._state in (ConnState.CONNECTING, ConnState.READY, ConnState.DRAINING):
            logger.warning("worker stream aborted", extra={"reason": reason, "session_id": self._session_id})
            self._interrupt_reason = _SessionEnd.ABORTED
            self._interrupt.set()

    async def call(self, frame: RequestFrame, *, then_credit: int = 0) -> Reply:
        """Send one request and wait for its reply, surviving reconnects.

        then_credit: credit to announce once the frame is queued on an open session, so that the
        Credit frame follows it in the same message (the Worker frees a handler slot this way).

        UNAVAILABLE replies are retried with backoff (the frame had no effect) except for heartbeats.
        Raises UnavailableError once the stream is closed, LeaseLostError if the frame's lease was
        not resumed after a reconnect.
        """
        attempt = 0
        while True:
            reply = await self._call_once(frame, then_credit)
            then_credit = 0
            if reply.status is not ReplyStatus.UNAVAILABLE or isinstance(frame, Heartbeat):
                return reply
            delay = full_jitter(
                attempt, base=UNAVAILABLE_RETRY_BASE_DEFAULT, cap=UNAVAILABLE_RETRY_CAP_DEFAULT, rand=self._rand
            )
            attempt += 1
            lease = lease_of(frame)
            logger.warning(
                "coordinator unavailable, frame will be re-sent",
                extra={
                    "frame": type(frame).__name__,
                    "lease_id": lease.lease_id if lease else None,
                    "attempt": attempt,
                    "delay_s": delay.total_seconds(),
                    "reason": reply.message,
                },
            )
            try:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow our own cancellation.
                async with asyncio.timeout(delay.total_seconds()):
                    await self._closing.wait()
            except TimeoutError:
                continue
            raise UnavailableError("worker stream closed")

    async def run(self) -> None:
        """Connect, serve sessions and reconnect until close()."""
        attempt = 0
        try:
            while not self._closing.is_set():
                started = self._clock()
                end = _SessionEnd.EOF
                try:
                    end = await self._run_session()
                except grpc.aio.AioRpcError as exc:
                    logger.warning(
                        "worker stream failed: %s from %s: %s", exc.code().name,
                        # The channel's target (a private attribute of grpc.aio; "?" should that change).
                        str(getattr(getattr(self._stub.Connect, "_channel", None), "target", "?"))
                        .removeprefix("b'").removesuffix("'"),
                        exc.details(),
                        extra={"code": exc.code().name, "details": exc.details(), "session_id": self._session_id},
                    )
                except WorkerSDKError as exc:
                    logger.warning("worker stream failed", extra={"reason": str(exc), "session_id": self._session_id})
                except Exception:  # loop boundary: any session failure means reconnect
                    logger.exception("worker stream session crashed")
                finally:
                    self._end_session()
                if self._closing.is_set() or end is _SessionEnd.CLOSED:
                    break
                lived = self._clock() - started
                if lived >= self._healthy_after or (
                        self._welcomed and lived >= RECONNECT_WELCOMED_HEALTHY_AFTER.total_seconds()):
                    attempt = 0
                delay = full_jitter(attempt, base=self._reconnect_base, cap=self._reconnect_cap_now(), rand=self._rand)
                attempt += 1
                self._state = ConnState.BACKOFF
                logger.info(
                    "worker stream reconnecting",
                    extra={"attempt": attempt, "delay_s": round(delay.total_seconds(), 3), "end": end.value},
                )
                try:
                    async with asyncio.timeout(delay.total_seconds()):
                        await self._closing.wait()
                except TimeoutError:
                    pass
        finally:
            self._state = ConnState.CLOSED
            self._fail_all(UnavailableError("worker stream closed"))
            self._finished.set()

    def _reconnect_cap_now(self) -> timedelta:
        """The reconnect cap; lower while leases are held, so that they are resumed before they expire."""
        cap = self._reconnect_cap
        if self._lease_ttl_s > 0 and self._listener.held_leases():
            cap = min(cap, max(timedelta(seconds=self._lease_ttl_s * RECONNECT_HELD_TTL_FRACTION),
                               self._reconnect_base))
        return cap

    async def close(self) -> None:
        """Half-close the stream, give the coordinator CLOSE_GRACE to end it, then stop reconnecting."""
        if self._state is ConnState.IDLE:
            self._state = ConnState.CLOSED
            self._closing.set()
            self._finished.set()
            return
        self._closing.set()
        self._interrupt_reason = _SessionEnd.CLOSED
        self._interrupt.set()
        await self._finished.wait()

    # ---- one session ----------------------------------------------------------------------

    async def _run_session(self) -> _SessionEnd:
        self._epoch += 1
        self._welcomed = False
        self._state = ConnState.CONNECTING
        self._interrupt.clear()
        self._interrupt_reason = _SessionEnd.ABORTED
        if self._closing.is_set():
            return _SessionEnd.CLOSED
        call = self._stub.Connect(metadata=self._metadata)
        end = _SessionEnd.EOF
        error: BaseException | None = None
        sender: list[asyncio.Task[None]] = []
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._read_session(call, tg, sender), name="faultline-stream-reader")
                tg.create_task(self._watch_interrupt(call, sender), name="faultline-stream-watch")
        except* _StopSession as group:
            first = group.exceptions[0]
            assert isinstance(first, _StopSession)
            end = first.end
        except* (grpc.aio.AioRpcError, WorkerSDKError) as group:
            error = group.exceptions[0]
        finally:
            call.cancel()
        if error is not None:
            raise error
        return end

    async def _read_session(
        self,
        call: grpc.aio.StreamStreamCall[worker_service_pb2.ConnectRequest, worker_service_pb2.ConnectResponse],
        tg: asyncio.TaskGroup,
        sender: list[asyncio.Task[None]],
    ) -> None:
        try:
            await self._handshake_and_read(call, tg, sender)
        except asyncio.CancelledError:
            _reraise_if_task_cancelled()
            # grpc.aio raises CancelledError from read() when the call itself was cancelled.
            raise UnavailableError("the call was cancelled") from None

    async def _handshake_and_read(
        self,
        call: grpc.aio.StreamStreamCall[worker_service_pb2.ConnectRequest, worker_service_pb2.ConnectResponse],
        tg: asyncio.TaskGroup,
        sender: list[asyncio.Task[None]],
    ) -> None:
        hello = replace(self._hello, held_leases=self._listener.held_leases())
        await call.write(worker_service_pb2.ConnectRequest(frames=[_convert.hello_to_pb(hello)]))
        try:
            async with asyncio.timeout(self._handshake_timeout):
                first = await call.read()
        except TimeoutError:
            raise UnavailableError("no welcome from the coordinator") from None
        if not isinstance(first, worker_service_pb2.ConnectResponse):  # grpc.aio.EOF
            raise _StopSession(_SessionEnd.EOF)
        frames = list(first.frames)
        if not frames or frames[0].WhichOneof("frame") != "welcome":
            raise ProtocolError("the coordinator's first frame was not a welcome")
        welcome = _convert.welcome_from_pb(frames[0].welcome)
        resend = self._open_session(welcome, hello.held_leases)
        await self._write_entries(call, resend)
        sender.append(tg.create_task(self._send_loop(call), name="faultline-stream-sender"))
        for frame in frames[1:]:
            self._dispatch(frame)
        while True:
            message = await call.read()
            if not isinstance(message, worker_service_pb2.ConnectResponse):  # grpc.aio.EOF
                raise _StopSession(_SessionEnd.EOF)
            for frame in message.frames:
                self._dispatch(frame)

    async def _watch_interrupt(
        self,
        call: grpc.aio.StreamStreamCall[worker_service_pb2.ConnectRequest, worker_service_pb2.ConnectResponse],
        sender: list[asyncio.Task[None]],
    ) -> None:
        await self._interrupt.wait()
        reason = self._interrupt_reason
        if reason is _SessionEnd.CLOSED and self._state in (ConnState.READY, ConnState.DRAINING):
            # Graceful close: let the sender flush and return (cancelling it mid-write would cancel the
            # whole call), half-close, then give the reader CLOSE_GRACE to see the coordinator's EOF;
            # the reader's EOF ends the session and cancels this wait.
            await self._outgoing.put(_STOP_SENDER)
            try:
                async with asyncio.timeout(self._close_grace):
                    await asyncio.wait(sender)
                    await call.done_writing()
                    await asyncio.Event().wait()
            except (grpc.aio.AioRpcError, TimeoutError):
                pass
        raise _StopSession(reason)

    def _open_session(self, welcome: Welcome, held: Sequence[LeaseRef]) -> list[_Pending]:
        """Apply a welcome: tell the listener, re-key parked requests, queue the initial credit."""
        self._session_id = welcome.session_id
        self._welcomed = True
        if welcome.lease_ttl > timedelta(0):
            self._lease_ttl_s = welcome.lease_ttl.total_seconds()
        resumed = set(welcome.resumed_leases)
        lost = frozenset(ref for ref in held if ref not in resumed)
        self._state = ConnState.READY
        logger.info(
            "worker session opened",
            extra={
                "session_id": welcome.session_id,
                "held": len(held),
                "resumed": len(held) - len(lost),
                "lost": len(lost),
            },
        )
        initial_credit = self._listener.on_welcome(welcome, lost)
        lost_ids = {ref.lease_id for ref in lost}
        resend: list[_Pending] = []
        for entry in sorted(self._parked.values(), key=lambda e: e.order):
            lease = lease_of(entry.frame)
            ends_lease = isinstance(entry.frame, Complete | Fail | Release | Abandon)
            if lease is not None and lease.lease_id in lost_ids and not ends_lease:
                self._settle_exception(entry, LeaseLostError(f"lease {lease.lease_id} was not resumed"))
                continue
            self._assign(entry)
            resend.append(entry)
        self._parked.clear()
        self.add_credit(initial_credit)
        return resend

    def _end_session(self) -> None:
        was_open = self._state in (ConnState.READY, ConnState.DRAINING)
        self._credit = 0
        while not self._outgoing.empty():
            self._outgoing.get_nowait()
        for entry in sorted(self._inflight.values(), key=lambda e: e.order):
            if isinstance(entry.frame, Heartbeat):
                self._settle_exception(entry, UnavailableError("the stream ended before the heartbeat reply"))
            else:
                self._parked[entry.order] = entry
        self._inflight.clear()
        if was_open:
            logger.info("worker session closed", extra={"session_id": self._session_id})
            self._listener.on_disconnect()

    # ---- writing --------------------------------------------------------------------------

    async def _call_once(self, frame: RequestFrame, then_credit: int = 0) -> Reply:
        if self._state is ConnState.CLOSED or self._closing.is_set():
            raise UnavailableError("worker stream closed")
        open_ = self._state in (ConnState.READY, ConnState.DRAINING)
        if isinstance(frame, Heartbeat) and not open_:
            raise UnavailableError("no open session for the heartbeat")
        entry = _Pending(next(self._order), frame, asyncio.get_running_loop().create_future())
        try:
            if open_:
                self._assign(entry)
                await self._outgoing.put(_Send(entry.seq, entry.epoch, entry))
                self.add_credit(then_credit)
            else:
                self._parked[entry.order] = entry
            return await entry.future
        finally:
            if self._inflight.get(entry.seq) is entry:
                del self._inflight[entry.seq]
            self._parked.pop(entry.order, None)

    def _assign(self, entry: _Pending) -> None:
        entry.seq = next(self._seq)
        entry.epoch = self._epoch
        self._inflight[entry.seq] = entry

    def _live(self, item: _Send) -> bool:
        return item.epoch == self._epoch and self._inflight.get(item.seq) is item.entry

    async def _write_entries(
        self,
        call: grpc.aio.StreamStreamCall[worker_service_pb2.ConnectRequest, worker_service_pb2.ConnectResponse],
        entries: Sequence[_Pending],
    ) -> None:
        request = worker_service_pb2.ConnectRequest()
        size = 0
        for entry in entries:
            frame_size = _convert.add_request(request.frames, entry.seq, entry.frame).ByteSize()
            if len(request.frames) > 1 and (
                len(request.frames) > self._max_frames or size + frame_size > self._max_bytes
            ):
                del request.frames[-1]
                await call.write(request)
                request = worker_service_pb2.ConnectRequest()
                frame_size = _convert.add_request(request.frames, entry.seq, entry.frame).ByteSize()
                size = 0
            size += frame_size
        if request.frames:
            await call.write(request)

    async def _send_loop(
        self,
        call: grpc.aio.StreamStreamCall[worker_service_pb2.ConnectRequest, worker_service_pb2.ConnectResponse],
    ) -> None:
        """The session's only writer after the handshake: one ConnectRequest per batch of pending frames."""
        try:
            await self._send_batches(call)
        except asyncio.CancelledError:
            _reraise_if_task_cancelled()
            raise UnavailableError("the call was cancelled") from None

    async def _send_batches(
        self,
        call: grpc.aio.StreamStreamCall[worker_service_pb2.ConnectRequest, worker_service_pb2.ConnectResponse],
    ) -> None:
        # Frames are encoded straight into the request (see _convert.add_request). One that would push
        # the request past max_message_bytes is taken out again and carried to the next request.
        carry: _Send | None = None
        stop = False
        while not stop:
            request = worker_service_pb2.ConnectRequest()
            frames = request.frames
            size = 0
            if carry is not None:
                size = _convert.add_request(frames, carry.seq, carry.entry.frame).ByteSize()
                carry = None
            elif self._outgoing.empty() and not self._credit_due():
                item = await self._outgoing.get()
                if isinstance(item, _StopSender):
                    stop = True
                elif isinstance(item, _Send) and self._live(item):
                    size = _convert.add_request(frames, item.seq, item.entry.frame).ByteSize()
            while not stop and len(frames) < self._max_frames and not self._outgoing.empty():
                item = self._outgoing.get_nowait()
                if isinstance(item, _StopSender):
                    stop = True
                    break
                if not isinstance(item, _Send) or not self._live(item):
                    continue
                frame_size = _convert.add_request(frames, item.seq, item.entry.frame).ByteSize()
                if len(frames) > 1 and size + frame_size > self._max_bytes:
                    del frames[-1]
                    carry = item
                    break
                size += frame_size
            if self._credit_due():
                count = min(self._credit, _CREDIT_MAX_PER_FRAME)
                self._credit -= count
                _convert.add_credit(frames, count)
            elif self._state is ConnState.DRAINING:
                self._credit = 0
            if frames:
                await call.write(request)

    def _credit_due(self) -> bool:
        return self._credit > 0 and self._state is ConnState.READY

    # ---- reading --------------------------------------------------------------------------

    def _dispatch(self, pb_frame: worker_service_pb2.CoordinatorFrame) -> None:
        frame = _convert.coordinator_frame_from_pb(pb_frame)
        match frame:
            case Reply():
                entry = self._inflight.pop(frame.seq, None)
                if entry is None:
                    logger.debug("reply for an unknown seq ignored", extra={"seq": frame.seq})
                elif not entry.future.done():
                    entry.future.set_result(frame)
            case LeaseGrant():
                self._listener.on_grant(frame)
            case CancelLease():
                self._listener.on_cancel(frame)
            case LeaseRevoked():
                self._listener.on_revoked(frame)
            case Drain():
                logger.info(
                    "coordinator asked to drain",
                    extra={
                        "session_id": self._session_id,
                        "grace_s": frame.grace.total_seconds() if frame.grace else None,
                    },
                )
                self._state = ConnState.DRAINING
                self._credit = 0
                self._listener.on_drain(frame)
            case Welcome():
                logger.error("unexpected welcome in an open session ignored", extra={"session_id": self._session_id})
            case None:
                logger.debug("unknown coordinator frame ignored", extra={"frame": pb_frame.WhichOneof("frame")})

    # ---- settling -------------------------------------------------------------------------

    def _settle_exception(self, entry: _Pending, exc: BaseException) -> None:
        if not entry.future.done():
            entry.future.set_exception(exc)

    def _fail_all(self, exc: BaseException) -> None:
        for entry in [*self._inflight.values(), *self._parked.values()]:
            self._settle_exception(entry, exc)
        self._inflight.clear()
        self._parked.clear()
