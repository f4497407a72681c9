"""BulkRunner against a scripted coordinator: it loops resume tokens, sums counts, and bounds ops per session."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import grpc
import pytest

from coordinator.console.app import ANONYMOUS
from coordinator.console.bulk import BulkAction, BulkRunner, OpState, Target, TooManyOperationsError
from coordinator.console.config import BULK_OPS_RUNNING_PER_SESSION_MAX
from coordinator.console.rpc import RpcError
from coordinator.console.sessions import SessionStore
from worker_sdk._proto.faultline.v1 import job_pb2
from worker_sdk._proto.faultline.v1 import job_service_pb2 as jpb


class Scripted:
    """Answers BulkRequeueJobs from a script of responses; blocks until released."""

    def __init__(self, answers: list[Any]) -> None:
        self.answers = answers
        self.requests: list[Any] = []
        self.release = asyncio.Event()

    async def call(self, method: str, request: Any, key: str | None, *, timeout: timedelta) -> Any:
        await self.release.wait()
        self.requests.append(request)
        answer = self.answers.pop(0)
        if isinstance(answer, RpcError):
            raise answer
        return answer


def _session() -> Any:
    return SessionStore(idle=timedelta(minutes=1), max_sessions=10).create(None, ANONYMOUS)


TARGET = Target(queue="imports", state=job_pb2.JOB_STATE_DEAD_LETTERED)


async def test_an_operation_follows_resume_tokens_to_the_end_and_adds_up() -> None:
    fake = Scripted([jpb.BulkRequeueJobsResponse(requeued=500, skipped=1, resume_token="t1"),
                     jpb.BulkRequeueJobsResponse(requeued=700, resume_token="t2"),
                     jpb.BulkRequeueJobsResponse(requeued=3)])
    runner = BulkRunner(fake)  # type: ignore[arg-type]
    op = runner.start(_session(), BulkAction.REQUEUE, TARGET)
    fake.release.set()
    await runner.wait(op.id)
    assert (op.state, op.done, op.skipped, op.calls) == (OpState.DONE, 1203, 1, 3)
    assert [r.resume_token for r in fake.requests] == ["", "t1", "t2"]
    assert all(r.filter.queue == "imports" and r.filter.state == job_pb2.JOB_STATE_DEAD_LETTERED
               for r in fake.requests)


async def test_a_refusal_fails_the_operation_with_the_coordinators_words() -> None:
    fake = Scripted([RpcError(method="BulkRequeueJobs", code=grpc.StatusCode.PERMISSION_DENIED,
                              details="needs admin")])
    runner = BulkRunner(fake)  # type: ignore[arg-type]
    op = runner.start(_session(), BulkAction.REQUEUE, TARGET)
    fake.release.set()
    await runner.wait(op.id)
    assert op.state is OpState.FAILED and "needs admin" in op.error


async def test_a_session_runs_a_bounded_number_of_operations_at_once() -> None:
    fake = Scripted([jpb.BulkCancelJobsResponse(cancelled=1)] * (BULK_OPS_RUNNING_PER_SESSION_MAX + 2))
    runner = BulkRunner(fake)  # type: ignore[arg-type]
    session = _session()
    ops = [runner.start(session, BulkAction.CANCEL, Target(ids=("1",)))
           for _ in range(BULK_OPS_RUNNING_PER_SESSION_MAX)]
    with pytest.raises(TooManyOperationsError):
        runner.start(session, BulkAction.CANCEL, Target(ids=("1",)))
    runner.start(_session(), BulkAction.CANCEL, Target(ids=("1",)))  # another session is not held up
    fake.release.set()
    for op in ops:
        await runner.wait(op.id)
    assert all(op.state is OpState.DONE for op in ops)
    runner.start(session, BulkAction.CANCEL, Target(ids=("1",)))  # room again once they finished
    await runner.close()
