"""WorkerSession: one worker's Connect stream, its credit and its leases.

    AWAITING_HELLO --hello--> OPEN --drain()--> DRAINING --leases done or grace over--> CLOSED
          |                     \\--------stream ends or breaks------------------------/
          \\--any other frame first: abort FAILED_PRECONDITION

Every heartbeat, progress, complete, fail, release and step frame gets exactly one Reply with its seq.

Credit counts free handler slots. A lease takes a slot from its grant until its Complete, Fail,
Release or Abandon frame arrives (its handler has ended; only the verdict is pending), so a worker
may send Credit in the same message as the completion instead of a round trip later. The session
keeps the credit the worker offered (at most capacity) and offers the dispatcher
min(offered, capacity - busy), busy being the leases that are neither released nor closing: a
Credit that arrives while the session still counts a lease the worker already let go of is not
lost, it becomes usable the moment the session forgets that lease.

The lease map follows Postgres (INV-013). A lease leaves it on its verdict, on a heartbeat verdict
STALE_LEASE / NOT_FOUND, when this coordinator's reaper takes it back (revoke(), told by the reaper
with the old token and holder), and when the lease reconciler finds it is no longer the current
running lease held by this worker, whoever changed that (another coordinator's reaper, say):
reconcile(). A lease taken back without the worker's close frame is announced with LeaseRevoked.
Fencing is still done in SQL on (job, token, running, holder); the lease map is bookkeeping
(capacity, operators, cancel push), never authority.

Frames take effect in order per lease (_LeaseOrder): a frame naming a lease is handed to its actor
only after every earlier frame of this session naming the same job has been answered, so a
heartbeat sent before a Complete is judged before the Complete lands. Frames about different
leases run concurrently, as before.

Cancel is a request: a Complete after CancelLease is accepted and the job ends SUCCEEDED with that
result; a Fail ends it CANCELLED (see CancelLease in the proto).

A closed stream does not touch the database: the worker's leases stay valid until their TTL.
A worker that reconnects in time names them in hello.held_leases and resumes them; otherwise the
reaper re-queues them when they expire, and any late frame from the old holder is refused as stale.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
import math
import time
import uuid
from collections import deque
from collections.abc import Callable, Collection, Coroutine, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc

from coordinator import metrics
from coordinator.actors.batching import Inbox, Request, Requests
from coordinator.actors.completer import CloseItem
from coordinator.actors.lease_keeper import HeartbeatItem, KeeperAnswer, KeeperItem
from coordinator.api import convert, validate
from coordinator.auth import keys as auth_keys
from coordinator.db.store import Completion, Failure, ProgressUpdate, Store, Verdict
from coordinator.errors import DatabaseUnavailableError, InvalidArgumentError
from coordinator.model import Job, LeaseKey, Outcome
from coordinator.sessions import SessionRegistry
from coordinator.tracing import JobTracer
from worker_sdk._proto.faultline.v1 import worker_service_pb2 as wpb

logger = logging.getLogger(__name__)

CAPACITY_MAX = 10_000
# -- per-session bounds: what one worker can make this process hold or do (floods, slow readers) ------
# Frames in one ConnectRequest (the SDK sends at most MAX_FRAMES_PER_MESSAGE_DEFAULT, 1024); more ends the
# stream INVALID_ARGUMENT.
FRAMES_PER_MESSAGE_MAX = 1024
# Work of this session handed to an actor or a statement and not answered yet, in units (a heartbeat counts
# one per lease it names, every other frame one). At the limit the reader stops reading until answers come
# back, so a flood waits in its own stream (gRPC flow control pushes back on the sender) and takes at most
# this share of any actor's inbox. A single frame heavier than the limit is read when nothing else is owed.
SESSION_INFLIGHT_MAX = 256
# ...and bytes count too: a frame weighs one unit more per INFLIGHT_UNIT_BYTES it carries (a result, progress
# details, a step's result), so the share is 256 frames or about 16 MiB of them, whichever comes first. By
# frames alone, 256 completions of 256 KiB were 64 MiB held here while Postgres was slow to take them.
INFLIGHT_UNIT_BYTES = 64 << 10
# get_step, record_step and release statements of one session that run at once; the rest wait their turn.
SESSION_STATEMENTS_MAX = 2
# Frames the reader handles between yields to the event loop.
READ_YIELD_EVERY = 64
# The outbox: frames queued to write to the worker. A frame costs its wire size plus FRAME_OVERHEAD_BYTES.
# Past OUTBOX_BYTES_SOFT the session shows no credit (new grants wait in Postgres) and its reader stops
# reading; if it stays past the soft mark for SLOW_READER_GRACE_S, or ever reaches OUTBOX_BYTES_MAX or
# OUTBOX_FRAMES_MAX, the worker is not reading its stream: the stream ends RESOURCE_EXHAUSTED.
OUTBOX_BYTES_SOFT = 8 << 20
OUTBOX_BYTES_MAX = 256 << 20
OUTBOX_FRAMES_MAX = 50_000
FRAME_OVERHEAD_BYTES = 256
SLOW_READER_GRACE_S = 10.0
# Grants written and not yet shown read. A write leaves the outbox once gRPC takes it, and gRPC and the kernel
# buffer what a worker does not read (tens of MiB), so the outbox alone cannot see a worker that never reads:
# its leases expire, their slots come back, and it is sent more. A worker names a lease (heartbeat, progress,
# verdict, step, release, abandon) only after reading its grant, and a stream is in order, so naming one grant
# shows every grant before it was read too (a cumulative acknowledgement). Past UNREAD_GRANT_BYTES_SOFT of
# grants not shown read the session shows no credit; if it stays past it for UNREAD_GRACE_HEARTBEATS
# heartbeat intervals (and at least SLOW_READER_GRACE_S), the worker is not reading: the stream ends as above.
UNREAD_GRANT_BYTES_SOFT = 8 << 20
UNREAD_GRACE_HEARTBEATS = 3
# How long ending a stuck stream waits for its status to be queued before it cancels the RPC instead.
ABORT_STATUS_TIMEOUT_S = 1.0
# One ConnectResponse holds at most this many frames or (beyond its first frame) bytes.
WRITE_BATCH_MAX = 1_000
WRITE_BATCH_BYTES_MAX = 4 << 20
# Stream messages (batches of frames) each way; `faultline bench` reads them per job.
_MESSAGES_RECEIVED = metrics.GRPC_MESSAGES.labels("Connect", "received")
_MESSAGES_SENT = metrics.GRPC_MESSAGES.labels("Connect", "sent")
PROGRESS_MESSAGE_MAX = 1024
PROGRESS_DETAILS_MAX = 64 << 10
ERROR_TEXT_MAX = 8 << 10
STEP_KEY_MAX = 256
RELEASE_REASON_MAX = 1024
ABANDON_REASON_MAX = 1024
#: Frames of one session that may wait behind earlier frames on the same lease; past it, UNAVAILABLE.
ORDER_WAITING_MAX = 10_000
RETRY_DELAY_MAX_MS = validate.DURATION_MAX_MS

_STATUS = {
    Outcome.ACCEPTED: wpb.REPLY_STATUS_ACCEPTED,
    Outcome.DUPLICATE: wpb.REPLY_STATUS_DUPLICATE,
    Outcome.STALE_LEASE: wpb.REPLY_STATUS_STALE_LEASE,
    Outcome.CANCELLED: wpb.REPLY_STATUS_CANCELLED,
    Outcome.NOT_FOUND: wpb.REPLY_STATUS_NOT_FOUND,
    Outcome.UNAVAILABLE: wpb.REPLY_STATUS_UNAVAILABLE,
    Outcome.INVALID: wpb.REPLY_STATUS_INVALID,
}
_CLOSE = object()


class SessionState(enum.Enum):
    """Where the stream is; see the module docstring."""

    AWAITING_HELLO = "awaiting_hello"
    OPEN = "open"
    DRAINING = "draining"
    CLOSED = "closed"


class StreamAbort(Exception):
    """End the stream with this status."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class _Ordered:
    """One frame in _LeaseOrder: the jobs it names and how to start it."""

    __slots__ = ("jobs", "left", "start", "waiting")

    def __init__(self, jobs: tuple[int, ...], start: Callable[[Callable[[], None]], None]) -> None:
        self.jobs = jobs
        self.start = start
        self.waiting = False
        self.left = False


class _LeaseOrder:
    """A FIFO line per job id: a frame starts once it is first in line for every job it names.

    start(done) must call done() exactly once, when the frame's reply is queued. Owned by one session.
    """

    def __init__(self) -> None:
        self._lines: dict[int, deque[_Ordered]] = {}
        self.waiting = 0
        self._ready: deque[_Ordered] = deque()
        self._running = False

    def enter(self, jobs: Iterable[int], start: Callable[[Callable[[], None]], None]) -> None:
        op = _Ordered(tuple(dict.fromkeys(jobs)), start)
        blocked = False
        for job in op.jobs:
            line = self._lines.get(job)
            if line is None:
                self._lines[job] = deque((op,))
            else:
                blocked = blocked or bool(line)
                line.append(op)
        if blocked:
            op.waiting = True
            self.waiting += 1
        else:
            self._ready.append(op)
            self._run()

    def _done(self, op: _Ordered) -> None:
        if not op.left:
            op.left = True
            self._leave(op)

    def _leave(self, op: _Ordered) -> None:
        for job in op.jobs:
            line = self._lines[job]
            line.popleft()  # op was first in every line it is in: it started only then
            if not line:
                del self._lines[job]
            else:
                nxt = line[0]
                if nxt.waiting and all(self._lines[j][0] is nxt for j in nxt.jobs):
                    nxt.waiting = False
                    self.waiting -= 1
                    self._ready.append(nxt)
        self._run()

    def _run(self) -> None:
        # Iterative, not recursive: a frame answered at once (busy, invalid) starts the next in line.
        if self._running:
            return
        self._running = True
        try:
            while self._ready:
                op = self._ready.popleft()
                op.start(functools.partial(self._done, op))
        finally:
            self._running = False


class _Close:
    """A completion or failure waiting to be handed to the completer with the rest of its message."""

    __slots__ = ("answer", "busy", "item", "weight")

    def __init__(self, item: CloseItem, answer: Callable[[Verdict], None], busy: Callable[[], None],
                 weight: int) -> None:
        self.item = item
        self.answer = answer
        self.busy = busy
        self.weight = weight


class WorkerSession:
    """See the module docstring."""

    def __init__(
        self,
        *,
        store: Store,
        registry: SessionRegistry,
        completer_inbox: Inbox[CloseItem, Verdict],
        keeper_inbox: Inbox[KeeperItem, KeeperAnswer],
        tracer: JobTracer,
        lease_ttl_ms: int,
        heartbeat_interval_ms: int,
        max_payload: int,
    ) -> None:
        self._store = store
        self._registry = registry
        self._completer = completer_inbox
        self._keeper = keeper_inbox
        self._tracer = tracer
        self._ttl_ms = lease_ttl_ms
        self._heartbeat_ms = heartbeat_interval_ms
        self._max_payload = max_payload
        self.session_id = uuid.uuid4().hex[:16]
        self.worker_id = ""
        self.queues: tuple[str, ...] = ()
        self.kinds: tuple[str, ...] = ()
        self.capacity = 0
        self.labels: dict[str, str] = {}
        self.sdk = ""
        self.connected_at = datetime.now(UTC)
        self.last_heartbeat = time.monotonic()
        # Owned by this session: state, credit, leases, the outbox and the tasks it started.
        self.state = SessionState.AWAITING_HELLO
        # Free slots the worker offered and no grant has used yet, at most capacity; see credit.
        self._offered = 0
        self._leases: dict[int, LeaseKey] = {}
        # When each held lease was added (a counter), so a reconcile never drops a lease newer than its query.
        self._lease_seq: dict[int, int] = {}
        self._lease_counter = 0
        # Job ids of held leases whose Complete/Fail/Release/Abandon arrived: they no longer take a handler slot.
        self._closing: set[int] = set()
        self._order = _LeaseOrder()
        # Unbounded as a queue so that _CLOSE always fits; _send bounds it by frames and bytes. _sizes holds
        # the cost of each frame in it (not of _CLOSE), in the same order.
        self._outbox: asyncio.Queue[Any] = asyncio.Queue()
        self._sizes: deque[int] = deque()
        self._outbox_bytes = 0
        self._behind: asyncio.TimerHandle | None = None  # armed while the outbox is past its soft mark
        # Grants not shown read (see UNREAD_GRANT_BYTES_SOFT), in the order they were queued: grant number
        # -> (lease, cost), the lease's grant number, their total cost, and the timer armed past the mark.
        self._unread: dict[int, tuple[LeaseKey, int]] = {}
        self._unread_no: dict[LeaseKey, int] = {}
        self._unread_bytes = 0
        self._grants_queued = 0
        self._unread_behind: asyncio.TimerHandle | None = None
        self._abort: StreamAbort | None = None  # set when the worker fell too far behind; the writer ends the stream
        self._writer: asyncio.Task[Any] | None = None
        # The event loop, looked up once: asyncio.get_running_loop() is a getpid() system call in CPython
        # 3.11, and _ask runs once per completion frame (0.9% of the coordinator's samples under load).
        self._loop: asyncio.AbstractEventLoop | None = None
        self._writing = False
        self._tasks: set[asyncio.Task[None]] = set()
        # Statements waiting for one of this session's SESSION_STATEMENTS_MAX runners (see _spawn).
        self._statements: deque[tuple[Coroutine[Any, Any, None], Callable[[], None] | None, int]] = deque()
        self._runners = 0
        # Units of work owed to this session (see SESSION_INFLIGHT_MAX), and the reader's wake-up.
        self._load = 0
        self._room = asyncio.Event()
        self._drained = asyncio.Event()
        # Frames handed to an actor or a task whose reply is not queued yet, and whether the worker
        # has half-closed its side: the stream ends only once every frame it sent is answered.
        self._unanswered = 0
        self._reader_eof = False
        # Completions and failures started while the reader handles one message, handed to the completer
        # together when it yields or the message ends (see _ask_close); None while the reader is not handling one.
        self._closes: list[_Close] | None = None

    # -- what the dispatcher and operators see ---------------------------------------------

    @property
    def credit(self) -> int:
        """Leases the dispatcher may grant now: what the worker offered, within the slots not taken.

        A worker that has not read what it was sent gets nothing more until it has (see OUTBOX_BYTES_SOFT).
        """
        if self._outbox_bytes > OUTBOX_BYTES_SOFT or self._unread_bytes > UNREAD_GRANT_BYTES_SOFT:
            return 0
        busy = len(self._leases) - len(self._closing)
        credit = max(0, min(self._offered, self.capacity - busy))
        if self._unread_bytes and credit > 1:
            # No more grants than fit under the unread mark at this worker's grant size so far, so that one
            # claim cannot take a non-reading worker far past it.
            fit = (UNREAD_GRANT_BYTES_SOFT - self._unread_bytes) * len(self._unread) // self._unread_bytes + 1
            credit = min(credit, fit)
        return credit

    @property
    def accepting(self) -> bool:
        return self.state is SessionState.OPEN

    @property
    def lease_count(self) -> int:
        return len(self._leases)

    @property
    def lease_ids(self) -> list[str]:
        return [k.lease_id for k in self._leases.values()]

    def take_credit(self, n: int) -> None:
        self._offered -= n

    def return_credit(self, n: int) -> None:
        self._offered = min(self._offered + n, self.capacity)

    def holds(self, job_id: int) -> LeaseKey | None:
        return self._leases.get(job_id)

    def deliver(self, jobs: Sequence[Job]) -> bool:
        if self.state is not SessionState.OPEN:
            return False
        frames = []
        debug = logger.isEnabledFor(logging.DEBUG)
        for job in jobs:
            key = LeaseKey(job.id, job.lease_token)
            ctx = self._tracer.attempt_started(job, worker_id=self.worker_id)
            hb_ms = job.heartbeat_timeout_ms or self._ttl_ms
            # The frame from nested dicts in one pass (see convert.job_fields).
            grant: dict[str, Any] = {
                "lease_id": key.lease_id,
                "fencing_token": job.lease_token,
                "job": convert.job_fields(job),
                "attempt": job.attempts,
                "heartbeat_timeout": convert.duration_fields(hb_ms),
            }
            if job.lease_expires_at is not None:
                grant["lease_deadline"] = convert.timestamp_fields(job.lease_expires_at)
            if job.execution_timeout_ms is not None:
                grant["execution_timeout"] = convert.duration_fields(job.execution_timeout_ms)
            if ctx:
                grant["trace_context"] = ctx
            frames.append((key, wpb.CoordinatorFrame(lease=grant)))
            self._hold(key)
            if debug:
                logger.debug("lease granted", extra={"job_id": job.id, "lease_token": job.lease_token,
                                                     "worker_id": self.worker_id})
        for key, frame in frames:
            if not self._send(frame):
                return False
            self._grant_queued(key, self._sizes[-1])
        return True

    def revoke(self, key: LeaseKey, reason: str) -> bool:
        """Forget a lease that Postgres no longer gives this worker; tell the worker unless it already closed it.

        True if the session held it. Called by the reaper's report and by reconcile()."""
        if self._leases.get(key.job_id) != key:
            return False
        closing = key.job_id in self._closing
        self._drop_lease(key)
        if not closing:
            metrics.RECOVERIES.labels("lease_revoked").inc()
            logger.info("lease revoked", extra={"session_id": self.session_id, "worker_id": self.worker_id,
                                                "job_id": key.job_id, "lease_token": key.token, "reason": reason})
            self._send(wpb.CoordinatorFrame(lease_revoked=wpb.LeaseRevoked(
                lease=wpb.LeaseRef(lease_id=key.lease_id, fencing_token=key.token), reason=reason)))
        return True

    def lease_mark(self) -> int:
        """A mark to pass to reconcile(): leases held now are older than it."""
        return self._lease_counter

    def held_before(self, mark: int) -> list[LeaseKey]:
        """The leases held now that were added before mark (what a reconcile may judge)."""
        return [k for j, k in self._leases.items() if self._lease_seq.get(j, 0) <= mark]

    def reconcile(self, gone: Collection[LeaseKey], mark: int, reason: str = "not held") -> int:
        """Forget the leases in gone (Postgres: no longer running under this token and holder) held since mark."""
        n = 0
        for key in gone:
            if self._leases.get(key.job_id) == key and self._lease_seq.get(key.job_id, 0) <= mark:
                n += self.revoke(key, reason)
        return n

    def push_cancel(self, key: LeaseKey, reason: str) -> None:
        self._send(wpb.CoordinatorFrame(cancel=wpb.CancelLease(
            lease=wpb.LeaseRef(lease_id=key.lease_id, fencing_token=key.token), reason=reason)))

    def drain(self, grace: timedelta) -> None:
        """Ask the worker to finish what it holds; the stream closes when it has, or after grace."""
        if self.state is SessionState.OPEN:
            self.state = SessionState.DRAINING
            grace_ms = int(grace.total_seconds() * 1000)
            self._send(wpb.CoordinatorFrame(drain=wpb.Drain(grace=convert.duration_ms(grace_ms))))
            self._maybe_close()

    async def wait_drained(self) -> None:
        await self._drained.wait()

    # -- the stream --------------------------------------------------------------------------

    async def serve(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        reader = asyncio.create_task(self._read_loop(context), name=f"session-read:{self.session_id}")
        try:
            await self._write_loop(context, reader)
        finally:
            reader.cancel()
            for t in list(self._tasks):
                t.cancel()
            self._close()
        exc = reader.exception() if reader.done() and not reader.cancelled() else None
        if isinstance(exc, StreamAbort):
            logger.warning("worker stream aborted", extra={"session_id": self.session_id, "worker_id": self.worker_id,
                                                            "reason": exc.message})
            await context.abort(exc.code, exc.message)
        elif isinstance(exc, (grpc.aio.AioRpcError, ConnectionError)):
            logger.info("worker stream broke", extra={"session_id": self.session_id, "error": str(exc)})
        elif exc is not None:
            logger.error("worker session failed", extra={"session_id": self.session_id}, exc_info=exc)
            await context.abort(grpc.StatusCode.INTERNAL, f"coordinator error: {type(exc).__name__}")

    async def _write_loop(self, context: grpc.aio.ServicerContext[Any, Any], reader: asyncio.Task[None]) -> None:
        get: asyncio.Task[Any] | None = None
        reading = True
        taken: list[Any] = []  # a frame taken from the outbox when the abort came: _end_behind looks at it too
        self._writer = asyncio.current_task()
        try:
            while self._abort is None:
                if reading and reader.done():
                    if not self._half_closed(reader):
                        return  # the worker went away or broke the protocol
                    reading = False
                if self._outbox.empty():
                    get = asyncio.ensure_future(self._outbox.get())
                    if reading:
                        await asyncio.wait({get, reader}, return_when=asyncio.FIRST_COMPLETED)
                        if not get.done():
                            get.cancel()
                            get = None
                            continue
                    first = await get
                    get = None
                else:
                    # Frames are waiting (the usual case under load): no waiter task to create.
                    first = self._outbox.get_nowait()
                if first is _CLOSE:
                    break
                if self._abort is not None:
                    taken.append(first)
                    break
                frames = [first]
                size = self._sizes.popleft()
                closing = False
                while len(frames) < WRITE_BATCH_MAX and size < WRITE_BATCH_BYTES_MAX and not self._outbox.empty():
                    nxt = self._outbox.get_nowait()
                    if nxt is _CLOSE:
                        closing = True
                        break
                    frames.append(nxt)
                    size += self._sizes.popleft()
                self._writing = True
                try:
                    await context.write(wpb.ConnectResponse(frames=frames))
                    _MESSAGES_SENT.inc()
                finally:
                    self._writing = False
                self._written(size)
                if closing:
                    break
        except asyncio.CancelledError:
            if self._abort is None:
                raise
            # _fell_behind cancelled a write that the worker was not reading; end the stream below.
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
        finally:
            if get is not None:
                get.cancel()
        if self._abort is not None:
            await self._end_behind(context, self._abort, taken)

    def _written(self, size: int) -> None:
        """size bytes left the outbox: past the soft mark no longer, the worker gets credit and frames read again."""
        self._outbox_bytes -= size
        if self._behind is not None and self._outbox_bytes <= OUTBOX_BYTES_SOFT:
            self._behind.cancel()
            self._behind = None
            self._room.set()
            self._registry.signal.credit()

    def _grant_queued(self, key: LeaseKey, cost: int) -> None:
        """A grant is on its way: count its cost as not read until the worker names it or a later grant."""
        self._grants_queued += 1
        old = self._unread_no.pop(key, None)
        if old is not None:  # the same lease granted again (it cannot be, but the count must stay right)
            self._unread_bytes -= self._unread.pop(old)[1]
        self._unread[self._grants_queued] = (key, cost)
        self._unread_no[key] = self._grants_queued
        self._unread_bytes += cost
        if self._unread_behind is None and self._unread_bytes > UNREAD_GRANT_BYTES_SOFT:
            grace = max(SLOW_READER_GRACE_S, UNREAD_GRACE_HEARTBEATS * self._heartbeat_ms / 1000)
            self._unread_behind = asyncio.get_running_loop().call_later(grace, self._fell_behind, "slow_reader")

    def _shown_read(self, key: LeaseKey) -> None:
        """The worker named key: its grant, and every grant queued before it, reached the worker."""
        upto = self._unread_no.get(key)
        if upto is None:
            return
        unread = self._unread
        while unread:
            no = next(iter(unread))
            if no > upto:
                break
            lease, cost = unread.pop(no)
            del self._unread_no[lease]
            self._unread_bytes -= cost
        if self._unread_behind is not None and self._unread_bytes <= UNREAD_GRANT_BYTES_SOFT:
            self._unread_behind.cancel()
            self._unread_behind = None
            if self.state is SessionState.OPEN and self.credit > 0:
                self._registry.signal.credit()

    def _fell_behind(self, reason: str) -> None:
        """The worker is not reading its stream: close the session now and have the writer end the stream."""
        if self._abort is not None:
            return
        self._behind = None
        self._abort = StreamAbort(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"worker is not reading its stream: {self._outbox.qsize()} frames ({self._outbox_bytes} bytes) unsent, "
            f"{len(self._unread)} grants ({self._unread_bytes} bytes) sent and not acknowledged",
        )
        metrics.SESSIONS_ABORTED.labels(reason).inc()
        logger.warning("worker is not reading its stream; ending it", extra={
            "session_id": self.session_id, "worker_id": self.worker_id, "reason": reason,
            "unsent_frames": self._outbox.qsize(), "unsent_bytes": self._outbox_bytes,
            "unread_grants": len(self._unread), "unread_bytes": self._unread_bytes})
        self._close()
        if self._writing and self._writer is not None:
            self._writer.cancel()  # blocked in a write the worker will not read: see _write_loop

    async def _end_behind(
        self, context: grpc.aio.ServicerContext[Any, Any], abort: StreamAbort, taken: list[Any]
    ) -> None:
        """Release the grants the worker never got (still in the outbox), then end the stream with abort's status.

        A grant already written may have reached the worker, which can resume it on a new stream (hello
        held_leases) before its TTL: those leases are left to expire like those of any broken stream.
        """
        unsent: list[LeaseKey] = []
        while not self._outbox.empty():
            taken.append(self._outbox.get_nowait())
        for f in taken:
            if f is not _CLOSE and f.WhichOneof("frame") == "lease":
                key = LeaseKey.parse(f.lease.lease_id, f.lease.fencing_token)
                if key is not None:
                    unsent.append(key)
        self._sizes.clear()
        self._outbox_bytes = 0
        if unsent and self.worker_id:
            try:
                rows = await self._store.release_leases(unsent, holder=self.worker_id)
            except DatabaseUnavailableError as exc:
                logger.warning("unsent grants left to expire", extra={"session_id": self.session_id,
                                                                      "count": len(unsent), "error": str(exc)})
                rows = []
            released = {r["id"] for r in rows}
            for key in unsent:
                if key.job_id in released:
                    self._tracer.attempt_closed(key, "released", "worker is not reading its stream")
            metrics.RECOVERIES.labels("released_undelivered").inc(len(rows))
            if rows:
                self._registry.signal.wake()
        try:
            async with asyncio.timeout(ABORT_STATUS_TIMEOUT_S):
                await context.abort(abort.code, abort.message)
        except TimeoutError:
            # The status is queued behind bytes the worker does not read: cancel the call instead, so that
            # nothing of it stays here. The worker sees the status if it ever reads up to it.
            raise asyncio.CancelledError() from None

    def _half_closed(self, reader: asyncio.Task[None]) -> bool:
        """The worker closed its side cleanly: grant nothing more, answer what it sent, then end the stream."""
        if reader.cancelled() or reader.exception() is not None:
            return False
        self._reader_eof = True
        if self.state is SessionState.OPEN:
            self.state = SessionState.DRAINING
        self._maybe_close()
        return True

    async def _read_loop(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        while True:
            msg = await context.read()
            if msg is grpc.aio.EOF:
                return
            _MESSAGES_RECEIVED.inc()
            if len(msg.frames) > FRAMES_PER_MESSAGE_MAX:
                raise StreamAbort(grpc.StatusCode.INVALID_ARGUMENT,
                                  f"ConnectRequest.frames: {len(msg.frames)} frames in one message; "
                                  f"the limit is {FRAMES_PER_MESSAGE_MAX}")
            self._closes = []
            try:
                for i, frame in enumerate(msg.frames):
                    if self._load >= SESSION_INFLIGHT_MAX or self._behind is not None:
                        self._flush_closes()  # before waiting: their answers are what makes room
                        await self._wait_for_room()
                        self._closes = []
                    elif i and not i % READ_YIELD_EVERY:
                        self._flush_closes()
                        await asyncio.sleep(0)  # a long message must not keep the other sessions waiting
                        self._closes = []
                    if self.state is SessionState.AWAITING_HELLO:
                        await self._first(frame)
                    else:
                        self._handle(frame)
            finally:
                self._flush_closes()  # what came before a bad frame still counts

    async def _wait_for_room(self) -> None:
        """Stop reading while this session's share is used up: its answers are owed, or its outbox is not read."""
        metrics.SESSION_READER_PAUSES.labels("outbox" if self._behind is not None else "inflight").inc()
        while self._load >= SESSION_INFLIGHT_MAX or self._behind is not None:
            self._room.clear()
            await self._room.wait()

    def _send(self, frame: Any) -> bool:
        if self.state is SessionState.CLOSED:
            return False
        size = frame.ByteSize() + FRAME_OVERHEAD_BYTES
        if self._outbox_bytes + size > OUTBOX_BYTES_MAX or len(self._sizes) >= OUTBOX_FRAMES_MAX:
            self._fell_behind("outbox_full")
            return False
        self._outbox.put_nowait(frame)
        self._sizes.append(size)
        self._outbox_bytes += size
        if self._behind is None and self._outbox_bytes > OUTBOX_BYTES_SOFT:
            self._behind = asyncio.get_running_loop().call_later(
                SLOW_READER_GRACE_S, self._fell_behind, "slow_reader")
        return True

    def _close(self) -> None:
        if self.state is SessionState.CLOSED:
            return
        was_registered = self.state is not SessionState.AWAITING_HELLO
        self.state = SessionState.CLOSED
        self._drained.set()
        if self._behind is not None:
            self._behind.cancel()
            self._behind = None
        if self._unread_behind is not None:
            self._unread_behind.cancel()
            self._unread_behind = None
        while self._statements:  # never started: nobody waits for their replies any more
            self._statements.popleft()[0].close()
        if was_registered:
            self._registry.remove(self.session_id)
            metrics.WORKERS_CONNECTED.set(len(self._registry))
            logger.info("worker disconnected", extra={"session_id": self.session_id, "worker_id": self.worker_id,
                                                      "leases_held": len(self._leases)})
        self._outbox.put_nowait(_CLOSE)

    def _maybe_close(self) -> None:
        """End the stream once nothing is owed: every frame answered, and (draining) no lease held."""
        if self._unanswered or self._order.waiting or self.state is SessionState.CLOSED:
            return
        if self._reader_eof or (self.state is SessionState.DRAINING and not self._leases):
            self._drained.set()
            self._outbox.put_nowait(_CLOSE)

    # -- frames ------------------------------------------------------------------------------

    async def _first(self, frame: Any) -> None:
        which = frame.WhichOneof("frame")
        if which != "hello":
            raise StreamAbort(grpc.StatusCode.FAILED_PRECONDITION,
                              f"the first frame must be hello, got {which or 'an empty frame'}")
        await self._hello(frame.hello)

    def _handle(self, frame: Any) -> None:
        which = frame.WhichOneof("frame")
        match which:
            case "hello":
                raise StreamAbort(grpc.StatusCode.FAILED_PRECONDITION, "hello sent twice on one stream")
            case "credit":
                self._on_credit(frame.credit)
            case "heartbeat":
                self._on_heartbeat(frame.seq, frame.heartbeat)
            case "progress":
                self._on_progress(frame.seq, frame.progress)
            case "complete":
                self._on_complete(frame.seq, frame.complete)
            case "fail":
                self._on_fail(frame.seq, frame.fail)
            case "release":
                self._on_release(frame.seq, frame.release)
            case "abandon":
                self._on_abandon(frame.seq, frame.abandon)
            case "get_step" | "record_step":
                step = getattr(frame, which)
                key = self._lease(step.lease)
                if key is None:
                    self._reply_invalid(frame.seq, f"{which}.lease: malformed lease id or token")
                else:
                    seq = frame.seq
                    nbytes = len(step.result) if which == "record_step" else 0
                    self._in_order((key.job_id,), lambda done: self._spawn(
                        self._on_step(seq, which, step), done, nbytes), seq)
            case _:
                self._reply_invalid(frame.seq, "empty frame")

    async def _hello(self, hello: Any) -> None:
        try:
            validate.hello(hello)  # worker id alphabet, labels and SDK strings bounded
            worker_id = hello.worker_id
            if not worker_id or len(worker_id) > 128 or not worker_id.isprintable():
                raise InvalidArgumentError("hello.worker_id", "must be 1-128 printable characters")
            if not hello.queues:
                raise InvalidArgumentError("hello.queues", "at least one queue is required")
            queues = tuple(sorted({validate.name(q, "hello.queues") for q in hello.queues}))
            if not hello.kinds:
                raise InvalidArgumentError("hello.kinds", "at least one kind is required")
            kinds = tuple(sorted({validate.name(k, "hello.kinds") for k in hello.kinds}))
            if not 1 <= hello.capacity <= CAPACITY_MAX:
                raise InvalidArgumentError("hello.capacity", f"must be in [1, {CAPACITY_MAX}]")
            held = [LeaseKey.parse(r.lease_id, r.fencing_token) for r in hello.held_leases]
        except InvalidArgumentError as exc:
            raise StreamAbort(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        # The holder Postgres fences on is the claimed id under the caller's identity (api/auth.py), and a
        # key limited to queues takes work only from them.
        principal = auth_keys.current()
        for q in queues:
            if not principal.allows_queue(q):
                raise StreamAbort(grpc.StatusCode.PERMISSION_DENIED,
                                  f"hello.queues: {principal.name} may not take work from queue {q!r} "
                                  f"(its queues: {', '.join(principal.queues)})")
        worker_id = principal.qualify(worker_id)
        self.worker_id, self.queues, self.kinds, self.capacity = worker_id, queues, kinds, hello.capacity
        self.labels = dict(hello.labels)
        self.sdk = f"{hello.sdk_name} {hello.sdk_version}".strip()
        resumed: list[LeaseKey] = []
        valid = [k for k in held if k is not None]
        if valid:
            try:
                rows = await self._store.resume_leases(valid, worker_id=worker_id, lease_ttl_ms=self._ttl_ms)
            except DatabaseUnavailableError as exc:
                raise StreamAbort(grpc.StatusCode.UNAVAILABLE, f"cannot resume leases: {exc}") from None
            resumed = [LeaseKey(r["id"], r["lease_token"]) for r in rows]
            for key in resumed:
                self._hold(key)
        self.state = SessionState.OPEN
        self._send(wpb.CoordinatorFrame(welcome=wpb.Welcome(
            session_id=self.session_id,
            heartbeat_interval=convert.duration_ms(self._heartbeat_ms),
            lease_ttl=convert.duration_ms(self._ttl_ms),
            resumed_leases=[wpb.LeaseRef(lease_id=k.lease_id, fencing_token=k.token) for k in resumed],
            accepts_release=True,
            accepts_abandon=True,
        )))
        self._registry.add(self)
        metrics.WORKERS_CONNECTED.set(len(self._registry))
        logger.info("worker connected", extra={
            "session_id": self.session_id, "worker_id": worker_id, "queues": list(queues),
            "capacity": hello.capacity, "held": len(held), "resumed": len(resumed)})

    def _on_credit(self, credit: Any) -> None:
        if not 1 <= credit.count <= CAPACITY_MAX:
            raise StreamAbort(grpc.StatusCode.INVALID_ARGUMENT, f"credit.count must be in [1, {CAPACITY_MAX}]")
        if self.state is not SessionState.OPEN:
            return
        # Kept up to capacity; the credit property never offers more than the slots not taken.
        self._offered = min(self._offered + credit.count, self.capacity)
        self._registry.signal.credit()

    def _lease(self, ref: Any) -> LeaseKey | None:
        """The lease a frame names; naming it shows its grant was read (see UNREAD_GRANT_BYTES_SOFT)."""
        key = LeaseKey.parse(ref.lease_id, ref.fencing_token)
        if key is not None and self._unread:
            self._shown_read(key)
        return key

    def _on_heartbeat(self, seq: int, hb: Any) -> None:
        self.last_heartbeat = time.monotonic()
        refs = list(hb.leases)
        keys = [self._lease(r) for r in refs]
        valid = tuple(k for k in keys if k is not None)
        if not valid:
            self._reply_heartbeat(seq, refs, keys, ())
            return

        def start(done: Callable[[], None]) -> None:
            def answer(a: KeeperAnswer) -> None:
                try:
                    self._reply_heartbeat(seq, refs, keys, a)
                finally:
                    done()

            if not self._ask_keeper(HeartbeatItem(valid, self.worker_id), answer):
                self._reply_busy(seq)
                done()

        self._in_order((k.job_id for k in valid), start, seq)

    def _reply_heartbeat(self, seq: int, refs: list[Any], keys: list[LeaseKey | None], answer: KeeperAnswer) -> None:
        if len(answer) != sum(k is not None for k in keys):  # the keeper could not reach Postgres
            self._reply(seq, wpb.Reply(seq=seq, status=wpb.REPLY_STATUS_UNAVAILABLE, message=answer[0].message))
            return
        verdicts = iter(answer)
        statuses = []
        lost: list[LeaseKey] = []
        for ref, key in zip(refs, keys, strict=True):
            if key is None:
                statuses.append(wpb.LeaseStatus(lease=ref, status=wpb.REPLY_STATUS_INVALID, message="malformed lease"))
                continue
            v = next(verdicts)
            if v.outcome in (Outcome.STALE_LEASE, Outcome.NOT_FOUND):
                lost.append(key)
            statuses.append(wpb.LeaseStatus(lease=ref, status=_STATUS[v.outcome], message=v.message))
        self._reply(seq, wpb.Reply(seq=seq, status=wpb.REPLY_STATUS_ACCEPTED, leases=statuses))
        for key in lost:  # after the reply: see _reply_verdict
            self._drop_lease(key)

    def _on_progress(self, seq: int, p: Any) -> None:
        key = self._lease(p.lease)
        if key is None:
            return self._reply_invalid(seq, "progress.lease: malformed lease id or token")
        if not (0.0 <= p.fraction <= 1.0) or math.isnan(p.fraction):
            return self._reply_invalid(seq, "progress.fraction must be in [0, 1]")
        if len(p.message) > PROGRESS_MESSAGE_MAX or "\x00" in p.message:
            return self._reply_invalid(
                seq, f"progress.message must be at most {PROGRESS_MESSAGE_MAX} characters, no NUL"
            )
        if len(p.details) > PROGRESS_DETAILS_MAX:
            return self._reply_invalid(seq, f"progress.details must be at most {PROGRESS_DETAILS_MAX} bytes")
        item = ProgressUpdate(key, self.worker_id, p.fraction, p.message, p.details)

        def start(done: Callable[[], None]) -> None:
            def answer(a: KeeperAnswer) -> None:
                try:
                    self._reply_verdict(seq, key, a[0], closing=False)
                finally:
                    done()

            if not self._ask_keeper(item, answer):
                self._reply_busy(seq)
                done()

        self._in_order((key.job_id,), start, seq)
        return None

    def _on_complete(self, seq: int, c: Any) -> None:
        key = self._lease(c.lease)
        if key is None:
            return self._reply_invalid(seq, "complete.lease: malformed lease id or token")
        if len(c.result) > self._max_payload:
            return self._reply_invalid(
                seq, f"complete.result is {len(c.result)} bytes; the limit is {self._max_payload}"
            )
        self._close_lease(seq, key, Completion(key, self.worker_id, c.result))

    def _on_fail(self, seq: int, f: Any) -> None:
        key = self._lease(f.lease)
        if key is None:
            return self._reply_invalid(seq, "fail.lease: malformed lease id or token")
        delay_ms: int | None = None
        if f.HasField("retry_delay"):
            d = f.retry_delay
            if d.seconds < 0 or d.nanos < 0 or d.seconds * 1000 > RETRY_DELAY_MAX_MS:
                return self._reply_invalid(seq, "fail.retry_delay must be in [0, 7 days]")
            delay_ms = d.seconds * 1000 + d.nanos // 1_000_000
        error = f.error.replace("\x00", "")[:ERROR_TEXT_MAX] or "failed"
        self._close_lease(seq, key, Failure(key, self.worker_id, error, f.retryable, delay_ms))

    def _on_release(self, seq: int, r: Any) -> None:
        key = self._lease(r.lease)
        if key is None:
            return self._reply_invalid(seq, "release.lease: malformed lease id or token")
        if self._leases.get(key.job_id) == key:
            self._closing.add(key.job_id)
        reason = r.reason.replace("\x00", "")[:RELEASE_REASON_MAX]
        self._in_order((key.job_id,), lambda done: self._spawn(self._release(seq, key, reason), done), seq)
        return None

    def _on_abandon(self, seq: int, a: Any) -> None:
        """The worker gave up the lease: stop counting it now; end the attempt as a retryable failure."""
        key = self._lease(a.lease)
        if key is None:
            return self._reply_invalid(seq, "abandon.lease: malformed lease id or token")
        reason = a.reason.replace("\x00", "")[:ABANDON_REASON_MAX] or "abandoned"
        logger.info("lease abandoned by worker", extra={"job_id": key.job_id, "lease_token": key.token,
                                                        "worker_id": self.worker_id, "reason": reason})
        self._close_lease(seq, key, Failure(key, self.worker_id, f"abandoned: {reason}", True, None))
        return None

    async def _release(self, seq: int, key: LeaseKey, reason: str) -> None:
        """Put a lease whose handler never started back in the queue, fenced on this worker holding it."""
        try:
            rows = await self._store.release_leases([key], holder=self.worker_id)
            if rows:
                verdict = Verdict(Outcome.ACCEPTED)
            else:
                verdict = (await self._store.classify([key], closing_outcome="released")).get(
                    key, Verdict(Outcome.NOT_FOUND, "no such job"))
        except DatabaseUnavailableError as exc:
            self._closing.discard(key.job_id)
            return self._reply(seq, wpb.Reply(seq=seq, status=wpb.REPLY_STATUS_UNAVAILABLE, message=str(exc)))
        if rows:
            logger.info("lease released by worker", extra={"job_id": key.job_id, "lease_token": key.token,
                                                           "worker_id": self.worker_id, "reason": reason})
            self._tracer.attempt_closed(key, "released", reason or None)
            if rows[0]["state"] == "queued":
                self._registry.signal.wake(rows[0]["queue"])
        elif verdict.outcome is Outcome.STALE_LEASE:
            metrics.STALE_REJECTED.labels("release").inc()
        if verdict.outcome is not Outcome.ACCEPTED:
            metrics.FRAMES_REFUSED.labels("release", verdict.outcome.value).inc()
        return self._reply_verdict(seq, key, verdict, closing=True)

    def _close_lease(self, seq: int, key: LeaseKey, item: CloseItem) -> None:
        if self._leases.get(key.job_id) == key:
            self._closing.add(key.job_id)

        def start(done: Callable[[], None]) -> None:
            def answer(v: Verdict) -> None:
                try:
                    self._reply_verdict(seq, key, v, closing=True)
                finally:
                    done()

            def busy() -> None:
                try:
                    self._reply_busy(seq)
                finally:
                    done()

            self._ask_close(item, answer, busy)

        self._in_order((key.job_id,), start, seq)

    def _reply_verdict(self, seq: int, key: LeaseKey, v: Verdict, *, closing: bool) -> None:
        # Constructor fields, only those that hold something: the frame is built in one pass (convert.job_fields).
        reply: dict[str, Any] = {"seq": seq, "status": _STATUS[v.outcome]}
        if v.message:
            reply["message"] = v.message
        if v.result:
            reply["result"] = v.result
        if v.state is not None:
            reply["job_state"] = convert.STATE_TO_PB[v.state]
        if v.outcome not in (Outcome.ACCEPTED, Outcome.DUPLICATE):
            self._log_refused(seq, reply["status"], v.message)
        # Reply before dropping the lease: dropping the last lease of a draining session closes the
        # stream, and the worker must still hear the verdict on its completion.
        self._send(wpb.CoordinatorFrame(reply=reply))
        if (closing and v.outcome is not Outcome.UNAVAILABLE) or v.outcome in (Outcome.STALE_LEASE, Outcome.NOT_FOUND):
            self._drop_lease(key)

    async def _on_step(self, seq: int, which: str, step: Any) -> None:
        key = self._lease(step.lease)
        if key is None:
            return self._reply_invalid(seq, f"{which}.lease: malformed lease id or token")
        if not step.key or len(step.key) > STEP_KEY_MAX or "\x00" in step.key:
            return self._reply_invalid(seq, f"{which}.key must be 1-{STEP_KEY_MAX} characters, no NUL")
        try:
            if which == "get_step":
                got = await self._store.get_step(key, self.worker_id, step.key)
                if got is None:
                    return self._reply(
                        seq, wpb.Reply(seq=seq, status=wpb.REPLY_STATUS_NOT_FOUND, message="no such job")
                    )
                current, found, result = got
                if not current:
                    metrics.STALE_REJECTED.labels("get_step").inc()
                    return self._reply(seq, wpb.Reply(seq=seq, status=wpb.REPLY_STATUS_STALE_LEASE,
                                                      message="stale lease: token is not current for this worker"))
                return self._reply(seq, wpb.Reply(seq=seq, status=wpb.REPLY_STATUS_ACCEPTED, step_found=found,
                                                  result=result or b""))
            if len(step.result) > self._max_payload:
                return self._reply_invalid(seq, f"record_step.result exceeds {self._max_payload} bytes")
            current, stored = await self._store.record_step(key, self.worker_id, step.key, step.result)
            if not current:
                metrics.STALE_REJECTED.labels("record_step").inc()
                return self._reply(seq, wpb.Reply(seq=seq, status=wpb.REPLY_STATUS_STALE_LEASE,
                                                  message="stale lease: token is not current for this worker"))
            return self._reply(seq, wpb.Reply(seq=seq, status=wpb.REPLY_STATUS_ACCEPTED, step_found=True,
                                              result=stored or b""))
        except DatabaseUnavailableError as exc:
            return self._reply(seq, wpb.Reply(seq=seq, status=wpb.REPLY_STATUS_UNAVAILABLE, message=str(exc)))

    # -- helpers -------------------------------------------------------------------------------

    def _ask_keeper(self, item: KeeperItem, answer: Callable[[Any], None]) -> bool:
        """Hand item to the lease keeper; answer(result) queues the reply. False when its inbox is full.

        (Completions and failures go to the completer through _ask_close.)"""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        try:
            self._keeper.put_nowait(Request(item, fut))
        except asyncio.QueueFull:
            return False
        if isinstance(item, HeartbeatItem):
            weight = max(len(item.keys), 1)
        else:
            weight = 1 + len(item.details) // INFLIGHT_UNIT_BYTES
        self._unanswered += 1
        self._load += weight

        def done(f: asyncio.Future[Any]) -> None:
            try:
                answer(f.result())
            finally:
                self._answered(weight)

        fut.add_done_callback(done)
        return True

    def _ask_close(self, item: CloseItem, answer: Callable[[Verdict], None], busy: Callable[[], None]) -> None:
        """Hand a completion or failure to the completer; answer(verdict), or busy() when its inbox is full.

        While the reader handles a message, the closes it starts wait in _closes and go to the completer as one
        Requests when the reader yields or the message ends: one future and one inbox slot per message, not per
        frame. A close started later (it waited behind an earlier frame on its lease) goes at once.
        """
        weight = 1 + len(item.result) // INFLIGHT_UNIT_BYTES if isinstance(item, Completion) else 1
        self._unanswered += 1
        self._load += weight
        pending = _Close(item, answer, busy, weight)
        if self._closes is not None:
            self._closes.append(pending)
        else:
            self._put_closes([pending])

    def _flush_closes(self) -> None:
        """Send the closes collected so far (see _ask_close) and stop collecting until the reader says so."""
        closes, self._closes = self._closes, None
        if closes:
            self._put_closes(closes)

    def _put_closes(self, closes: list[_Close]) -> None:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        fut: asyncio.Future[list[Verdict]] = loop.create_future()
        try:
            self._completer.put_nowait(Requests([c.item for c in closes], fut))
        except asyncio.QueueFull:
            for c in closes:
                try:
                    c.busy()
                finally:
                    self._answered(c.weight)
            return

        def done(f: asyncio.Future[list[Verdict]]) -> None:
            verdicts = f.result()
            for c, v in zip(closes, verdicts, strict=True):
                try:
                    c.answer(v)
                except Exception:  # one reply's bug must not leave its neighbours unanswered
                    logger.exception("answering a close failed", extra={"session_id": self.session_id})
                finally:
                    self._answered(c.weight)

        fut.add_done_callback(done)

    def _spawn(self, coro: Coroutine[Any, Any, None], done: Callable[[], None] | None = None,
               nbytes: int = 0) -> None:
        """Run a statement for this session: at most SESSION_STATEMENTS_MAX at once, the rest in order after.

        done, if given, runs once the statement has ended, however it ended (see _in_order). nbytes: what the
        statement holds (a step's result), weighed as in _ask.
        """
        weight = 1 + nbytes // INFLIGHT_UNIT_BYTES
        self._unanswered += 1
        self._load += weight
        self._statements.append((coro, done, weight))
        if self._runners < SESSION_STATEMENTS_MAX:
            self._runners += 1
            task = asyncio.create_task(self._run_statements())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run_statements(self) -> None:
        try:
            while self._statements:
                coro, done, weight = self._statements.popleft()
                try:
                    await coro
                except Exception:
                    logger.exception("session statement failed", extra={"session_id": self.session_id})
                finally:
                    if done is not None:
                        done()
                    self._answered(weight)
        finally:
            self._runners -= 1

    def _answered(self, weight: int) -> None:
        self._unanswered -= 1
        self._load -= weight
        if self._load < SESSION_INFLIGHT_MAX:
            self._room.set()
        self._maybe_close()

    def _in_order(self, jobs: Iterable[int], start: Callable[[Callable[[], None]], None], seq: int = 0) -> None:
        """Run start(done) once every earlier frame naming one of these jobs has been answered."""
        if self._order.waiting >= ORDER_WAITING_MAX:
            self._reply(seq, wpb.Reply(seq=seq, status=wpb.REPLY_STATUS_UNAVAILABLE,
                                       message="too many frames waiting behind earlier frames on the same lease"))
            return
        self._order.enter(jobs, start)

    def _reply_busy(self, seq: int) -> None:
        self._reply(seq, wpb.Reply(seq=seq, status=wpb.REPLY_STATUS_UNAVAILABLE, message="coordinator busy"))

    def _hold(self, key: LeaseKey) -> None:
        self._lease_counter += 1
        self._leases[key.job_id] = key
        self._lease_seq[key.job_id] = self._lease_counter
        self._closing.discard(key.job_id)

    def _drop_lease(self, key: LeaseKey) -> None:
        if self._leases.get(key.job_id) == key:
            del self._leases[key.job_id]
            self._lease_seq.pop(key.job_id, None)
            freed = key.job_id not in self._closing
            self._closing.discard(key.job_id)
            if freed and self.state is SessionState.OPEN and self.credit > 0:
                self._registry.signal.credit()  # a slot the worker had already offered is usable again
            self._maybe_close()

    def _reply(self, seq: int, reply: Any) -> None:
        if reply.status not in (wpb.REPLY_STATUS_ACCEPTED, wpb.REPLY_STATUS_DUPLICATE):
            self._log_refused(seq, reply.status, reply.message)
        self._send(wpb.CoordinatorFrame(reply=reply))

    def _log_refused(self, seq: int, status: int, reason: str) -> None:
        logger.debug("frame refused", extra={"session_id": self.session_id, "seq": seq,
                                             "status": wpb.ReplyStatus.Name(status), "reason": reason})

    def _reply_invalid(self, seq: int, message: str) -> None:
        metrics.FRAMES_REFUSED.labels("frame", "invalid").inc()
        self._reply(seq, wpb.Reply(seq=seq, status=wpb.REPLY_STATUS_INVALID, message=message))
