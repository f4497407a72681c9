"""A drill worker process: the SDK Worker with handlers that write the effects ledger, fenced by token.

`python -m coordinator.drills.worker --target ADDR --dsn DSN --worker-id ID --events FILE`

Kinds (the payload is JSON):
  effect     {"ms": work}: register the token with the ledger, work, apply the effect once.
  poison     {"mode": "raise" | "crash"}: always fails; "crash" takes the whole process down.
  hang       {"hang_attempts": n, "ms": work}: async; never returns on attempts <= n (cancellable).
  hang-sync  same, in a thread that ignores cancellation (only the coordinator's timeout ends it).

What the worker saw is appended to the events file as JSON lines, one per event, so that it
survives SIGKILL: handler starts, ledger verdicts, and the SDK's refusals (stale completions,
lost leases, timeouts), which is how a drill proves fencing from the worker's side.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, TextIO, TypeVar

import asyncpg

from coordinator import logs
from coordinator.drills import ledger
from coordinator.drills.ledger import LedgerAnswer, LedgerVerdict
from worker_sdk import JobContext, LeaseLostError, Worker

T = TypeVar("T")

# The ledger is the drill's downstream system; when it is down, a handler retries until cancelled.
LEDGER_RETRY_S = 0.1
LEDGER_POOL_MAX = 8
POISON_CRASH_EXIT = 70
# SDK log messages that are evidence for a drill, recorded as events with their fields.
SDK_EVIDENCE = {
    "lease lost",
    "completion rejected, lease lost",
    "completion was already recorded",
    "execution timeout exceeded",
    "heartbeat not accepted",
    "completion not acknowledged: stream closed",
}
_LEDGER_DOWN = (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError, asyncpg.CannotConnectNowError,
                asyncpg.TooManyConnectionsError, asyncpg.AdminShutdownError, TimeoutError)


class Events:
    """Append-only JSON lines, flushed per line (the process may be SIGKILLed at any time)."""

    def __init__(self, path: Path, worker_id: str) -> None:
        self._file: TextIO = open(path, "a", buffering=1)  # noqa: SIM115 - lives as long as the process
        self._worker_id = worker_id
        self._lock = threading.Lock()

    def record(self, event: str, **fields: Any) -> None:
        line = json.dumps({"t": time.time(), "worker": self._worker_id, "event": event, **fields}, default=str)
        with self._lock:
            self._file.write(line + "\n")


class EvidenceHandler(logging.Handler):
    """Turns the SDK's warnings about refused frames and lost leases into events."""

    def __init__(self, events: Events) -> None:
        super().__init__(logging.INFO)
        self._events = events

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if msg in SDK_EVIDENCE:
            fields = {k: getattr(record, k) for k in ("job_id", "fencing_token", "status", "reason")
                      if hasattr(record, k)}
            self._events.record(msg, **fields)


class DrillHandlers:
    """The handlers, sharing one ledger pool and the events file."""

    def __init__(self, *, dsn: str, worker_id: str, events: Events) -> None:
        self._dsn = dsn
        self._worker_id = worker_id
        self._events = events
        self._pool: asyncpg.Pool[Any] | None = None
        self._pool_lock = asyncio.Lock()
        self.loop: asyncio.AbstractEventLoop | None = None

    async def _ledger(self, ctx: JobContext, op: Callable[..., Awaitable[LedgerAnswer]]) -> LedgerAnswer:
        """One fenced ledger write, retried while the ledger is unreachable and the lease is ours."""
        while True:
            try:
                async with self._pool_lock:
                    if self._pool is None:
                        self._pool = await asyncpg.create_pool(self._dsn, min_size=0, max_size=LEDGER_POOL_MAX)
                return await op(self._pool, int(ctx.job_id), ctx.fencing_token, self._worker_id)
            except _LEDGER_DOWN:
                if ctx.cancelled:
                    raise LeaseLostError("ledger unreachable and the attempt was cancelled") from None
                await asyncio.sleep(LEDGER_RETRY_S)

    async def _effect(self, ctx: JobContext, spec: dict[str, Any]) -> bytes:
        job_id, token = int(ctx.job_id), ctx.fencing_token
        reg = await self._ledger(ctx, ledger.register)
        self._events.record("started", job_id=job_id, token=token, attempt=ctx.attempt, ledger=reg.verdict.value)
        if reg.verdict is LedgerVerdict.STALE:
            raise LeaseLostError(f"the ledger has seen a newer token than {token}")
        if spec.get("ms"):
            await asyncio.sleep(float(spec["ms"]) / 1000)
        ans = await self._ledger(ctx, ledger.apply)
        self._events.record("effect", job_id=job_id, token=token, verdict=ans.verdict.value,
                            applied_token=ans.applied_token)
        if ans.verdict is LedgerVerdict.STALE:
            raise LeaseLostError(f"the ledger refused token {token} as stale")
        return json.dumps({"token": token, "verdict": ans.verdict.value, "applied_token": ans.applied_token,
                           "worker": self._worker_id}).encode()

    async def effect(self, ctx: JobContext) -> bytes:
        return await self._effect(ctx, json.loads(ctx.payload or b"{}"))

    async def poison(self, ctx: JobContext) -> bytes:
        spec = json.loads(ctx.payload or b"{}")
        self._events.record("poison", job_id=int(ctx.job_id), token=ctx.fencing_token, attempt=ctx.attempt,
                            mode=spec.get("mode"))
        if spec.get("mode") == "crash":
            os._exit(POISON_CRASH_EXIT)
        raise RuntimeError(f"poison job {ctx.job_id} attempt {ctx.attempt}")

    async def hang(self, ctx: JobContext) -> bytes:
        spec = json.loads(ctx.payload or b"{}")
        if ctx.attempt <= int(spec.get("hang_attempts", 1)):
            self._events.record("hanging", job_id=int(ctx.job_id), token=ctx.fencing_token, attempt=ctx.attempt)
            await asyncio.Event().wait()  # never set: only cancellation ends this attempt
        return await self._effect(ctx, spec)

    def hang_sync(self, ctx: JobContext) -> bytes:
        spec = json.loads(ctx.payload or b"{}")
        if ctx.attempt <= int(spec.get("hang_attempts", 1)):
            self._events.record("hanging", job_id=int(ctx.job_id), token=ctx.fencing_token, attempt=ctx.attempt,
                                sync=True)
            threading.Event().wait()  # never set, and ctx.cancelled is ignored: a truly stuck thread
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(self._effect(ctx, spec), self.loop).result()

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()


async def main(args: argparse.Namespace) -> None:
    events = Events(Path(args.events), args.worker_id)
    logging.getLogger("worker_sdk").addHandler(EvidenceHandler(events))
    handlers = DrillHandlers(dsn=args.dsn, worker_id=args.worker_id, events=events)
    handlers.loop = asyncio.get_running_loop()
    worker = Worker(args.target, queues=["default"], concurrency=args.concurrency, worker_id=args.worker_id,
                    drain_grace=timedelta(seconds=1))
    worker.register("effect", handlers.effect)
    worker.register("poison", handlers.poison)
    worker.register("hang", handlers.hang)
    worker.register("hang-sync", handlers.hang_sync)
    events.record("worker started", pid=os.getpid())
    try:
        await worker.run()
    finally:
        await handlers.close()


def cli() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", required=True)
    p.add_argument("--dsn", required=True)
    p.add_argument("--worker-id", required=True)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--events", required=True)
    logs.setup()
    asyncio.run(main(p.parse_args()))


if __name__ == "__main__":
    cli()
