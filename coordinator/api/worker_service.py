"""WorkerService servicer: opens a WorkerSession per Connect stream and tracks them for drain."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import grpc

from coordinator.api.session import WorkerSession
from worker_sdk._proto.faultline.v1 import worker_service_pb2_grpc

logger = logging.getLogger(__name__)


class WorkerServicer(worker_service_pb2_grpc.WorkerServiceServicer):
    """See the module docstring."""

    def __init__(self, session_factory: Callable[[], WorkerSession]) -> None:
        self._factory = session_factory
        # Owned here: every session whose stream is open, including those still awaiting hello.
        self._open: set[WorkerSession] = set()
        # Set by drain(): a session opened after it would only be told to drain, so it is refused outright.
        self._draining = False

    async def Connect(
        self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        if self._draining:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "draining")
        session = self._factory()
        self._open.add(session)
        try:
            await session.serve(context)
        finally:
            self._open.discard(session)

    async def drain(self, grace: timedelta) -> int:
        """Tell every worker to drain; wait until they hold no leases or grace runs out. Returns sessions drained."""
        self._draining = True
        sessions = list(self._open)
        for s in sessions:
            s.drain(grace)
        if sessions:
            waits = [asyncio.ensure_future(s.wait_drained()) for s in sessions]
            done, pending = await asyncio.wait(waits, timeout=grace.total_seconds())
            for p in pending:
                p.cancel()
            logger.info("workers drained", extra={"drained": len(done), "timed_out": len(pending)})
        return len(sessions)
