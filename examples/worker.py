"""Example worker: handlers "echo", "resize" and "flaky" on the default queue.

    python examples/worker.py

Environment: FAULTLINE_ADDR (default 127.0.0.1:50051), FAULTLINE_QUEUES (comma-separated, default
"default"), FAULTLINE_CONCURRENCY (default 16). Ctrl-C or SIGTERM drains: running jobs get 30 s to
finish; a second Ctrl-C cancels them at once (they are retried elsewhere). It prints one line each time
it is connected and ready for work, so a run that never prints it never reached the coordinator (the
warnings above say why: the address, the gRPC status and its message).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import sys
from datetime import timedelta
from pathlib import Path

try:
    import worker_sdk  # noqa: F401
except ImportError:  # running from a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from worker_sdk import ConnState, JobContext, NonRetryableError, RetryJob, Worker

ADDR = os.environ.get("FAULTLINE_ADDR", "127.0.0.1:50051")
QUEUES = [q for q in os.environ.get("FAULTLINE_QUEUES", "default").split(",") if q]
CONCURRENCY = int(os.environ.get("FAULTLINE_CONCURRENCY", "16"))
#: Simulated work per resize tile.
RESIZE_TILE_DELAY = timedelta(milliseconds=50)
RESIZE_TILES = 4



class ReadyLine:
    """A WorkerObserver that prints one line whenever the worker's session becomes ready."""

    def lease_started(self, kind: str, queue: str) -> None:
        pass

    def lease_finished(self, kind: str, queue: str, outcome: str, seconds: float) -> None:
        pass

    def connection_changed(self, state: ConnState) -> None:
        if state is ConnState.READY:
            print(f"worker ready: connected to {ADDR}, queues {','.join(QUEUES)}, kinds {','.join(worker.kinds)}, "
                  f"concurrency {CONCURRENCY}", flush=True)


worker = Worker(ADDR, queues=QUEUES, concurrency=CONCURRENCY, observer=ReadyLine())


@worker.handler("echo")
async def echo(ctx: JobContext) -> bytes:
    """Returns its payload."""
    return ctx.payload


@worker.handler("resize")
async def resize(ctx: JobContext) -> bytes:
    """Pretends to resize an image tile by tile, reporting progress, then uploads it exactly once."""
    for tile in range(1, RESIZE_TILES + 1):
        if ctx.cancelled:
            break
        await asyncio.sleep(RESIZE_TILE_DELAY.total_seconds())
        await ctx.progress(tile / RESIZE_TILES, f"tile {tile}/{RESIZE_TILES}")

    async def upload() -> bytes:
        # A side effect that must not repeat when a later attempt of this job runs again: the step
        # guard stores its result, and a retry gets the stored receipt instead of uploading twice.
        ctx.logger.info("uploading", extra={"bytes": len(ctx.payload)})
        return f"receipt-{ctx.job_id}-token-{ctx.fencing_token}".encode()

    receipt = await ctx.step("upload", upload)
    return b"resized:" + receipt


@worker.handler("flaky")
async def flaky(ctx: JobContext) -> bytes:
    """Fails at random, to show retries, explicit retry delays and dead-lettering."""
    roll = random.random()
    if roll < 0.3:
        raise RuntimeError(f"transient failure on attempt {ctx.attempt}")
    if roll < 0.4:
        raise RetryJob(delay=timedelta(seconds=1), message="backend busy, try again in a second")
    if roll < 0.45:
        raise NonRetryableError("poison payload")
    return f"lucky on attempt {ctx.attempt}".encode()


async def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    await worker.run()


if __name__ == "__main__":
    asyncio.run(main())
