"""Background bulk operations: a cancel or requeue of many jobs, run here so that no HTTP request waits on it.

An operation calls BulkCancelJobs or BulkRequeueJobs, each call doing a few seconds of work, and calls again
with the resume token until the token comes back empty, adding up the counts; the browser watches its
progress page. Each operation is one task, owned by the BulkRunner's dict keyed by operation id:

    RUNNING --(empty resume token)--> DONE
       \\--(the coordinator refused, or console shutdown)--> FAILED

A session may run at most BULK_OPS_RUNNING_PER_SESSION_MAX at once and keeps the last
BULK_OPS_KEPT_PER_SESSION to show.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import logging
import secrets
import time
from dataclasses import dataclass, field

from coordinator.console.config import (
    BULK_OPS_KEPT_PER_SESSION,
    BULK_OPS_RUNNING_PER_SESSION_MAX,
    BULK_RPC_TIMEOUT,
    REQUEUE_EXTRA_ATTEMPTS,
)
from coordinator.console.rpc import Coordinators, RpcError, state_name
from coordinator.console.sessions import Session
from coordinator.errors import FaultlineError
from worker_sdk._proto.faultline.v1 import job_service_pb2 as jpb

logger = logging.getLogger(__name__)

OP_ID_BYTES = 12


class BulkAction(enum.StrEnum):
    CANCEL = "cancel"
    REQUEUE = "requeue"


class OpState(enum.StrEnum):
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class TooManyOperationsError(FaultlineError):
    """This session already runs as many bulk operations as it may; wait for one to finish."""


@dataclass(frozen=True, slots=True)
class Target:
    """Which jobs: named ids, or every job matching a filter (exactly one)."""

    ids: tuple[str, ...] = ()
    queue: str = ""
    kind: str = ""
    state: int = 0
    labels: tuple[tuple[str, str], ...] = ()

    def describe(self) -> str:
        if self.ids:
            return f"{len(self.ids)} selected job(s)"
        parts = [f"{k}={v}" for k, v in (("queue", self.queue), ("kind", self.kind)) if v]
        if self.state:
            parts.append(f"state={state_name(self.state)}")
        parts += [f"label {k}={v}" for k, v in self.labels]
        return "every job matching " + ", ".join(parts)

    def filter_pb(self) -> jpb.JobFilter:
        return jpb.JobFilter(queue=self.queue, kind=self.kind, state=self.state,  # type: ignore[arg-type]
                             labels=dict(self.labels))


@dataclass(slots=True, eq=False)
class BulkOp:
    """One operation's progress. Written only by its task in BulkRunner; read by pages."""

    id: str
    session_id: str
    action: BulkAction
    target: Target
    state: OpState = OpState.RUNNING
    calls: int = 0
    done: int = 0  # cancelled or requeued
    cancel_requested: int = 0
    skipped: int = 0
    error: str = ""
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None

    @property
    def elapsed_s(self) -> float:
        return (self.finished or time.monotonic()) - self.started


class BulkRunner:
    """Owns the bulk operations and their tasks."""

    def __init__(self, coordinators: Coordinators) -> None:
        self._coordinators = coordinators
        self._ops: dict[str, BulkOp] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def get(self, op_id: str) -> BulkOp | None:
        return self._ops.get(op_id)

    def start(self, session: Session, action: BulkAction, target: Target) -> BulkOp:
        running = [i for i in session.ops if (op := self._ops.get(i)) and op.state is OpState.RUNNING]
        if len(running) >= BULK_OPS_RUNNING_PER_SESSION_MAX:
            raise TooManyOperationsError()
        op = BulkOp(id=secrets.token_urlsafe(OP_ID_BYTES), session_id=session.id, action=action, target=target)
        self._ops[op.id] = op
        session.ops.append(op.id)
        # Forget the oldest finished operations beyond what a session keeps.
        while len(session.ops) > BULK_OPS_KEPT_PER_SESSION + BULK_OPS_RUNNING_PER_SESSION_MAX:
            old = next((i for i in session.ops if (o := self._ops.get(i)) is None or o.state is not OpState.RUNNING),
                       None)
            if old is None:
                break
            session.ops.remove(old)
            self._ops.pop(old, None)
        task = asyncio.get_running_loop().create_task(self._run(op, session.key), name=f"console-bulk-{op.id}")
        self._tasks[op.id] = task
        task.add_done_callback(functools.partial(self._forget_task, op.id))
        return op

    def _forget_task(self, op_id: str, _task: asyncio.Task[None]) -> None:
        self._tasks.pop(op_id, None)

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def wait(self, op_id: str) -> None:
        """Until the operation finished (tests)."""
        task = self._tasks.get(op_id)
        if task is not None:
            await asyncio.shield(task)

    async def _run(self, op: BulkOp, key: str | None) -> None:
        token = ""
        try:
            while True:
                if op.action is BulkAction.CANCEL:
                    creq = jpb.BulkCancelJobsRequest(resume_token=token)
                    if op.target.ids:
                        creq.ids.extend(op.target.ids)
                    else:
                        creq.filter.CopyFrom(op.target.filter_pb())
                    cresp = await self._coordinators.call("BulkCancelJobs", creq, key, timeout=BULK_RPC_TIMEOUT)
                    op.done += cresp.cancelled
                    op.cancel_requested += cresp.cancel_requested
                    op.skipped += cresp.skipped
                    token = cresp.resume_token
                else:
                    rreq = jpb.BulkRequeueJobsRequest(resume_token=token, extra_attempts=REQUEUE_EXTRA_ATTEMPTS)
                    if op.target.ids:
                        rreq.ids.extend(op.target.ids)
                    else:
                        rreq.filter.CopyFrom(op.target.filter_pb())
                    rresp = await self._coordinators.call("BulkRequeueJobs", rreq, key, timeout=BULK_RPC_TIMEOUT)
                    op.done += rresp.requeued
                    op.skipped += rresp.skipped
                    token = rresp.resume_token
                op.calls += 1
                if not token:
                    break
            op.state = OpState.DONE
            logger.info("console bulk operation done", extra={"op": op.id, "action": op.action.value,
                                                              "done": op.done, "calls": op.calls})
        except RpcError as exc:
            op.state, op.error = OpState.FAILED, exc.message
        except asyncio.CancelledError:
            op.state, op.error = OpState.FAILED, "the console stopped before the operation finished"
            raise
        except Exception:  # the operation's boundary: it must end FAILED, never stay RUNNING
            logger.exception("console bulk operation crashed", extra={"op": op.id})
            op.state, op.error = OpState.FAILED, "the console failed while running it; the details are in its log"
        finally:
            op.finished = time.monotonic()
