"""A real worker process for end-to-end tests: handlers whose behaviour the test picks through the job kind.

Env: FL_ADDR, FL_WORKER_ID, FL_QUEUES (comma list), FL_CONCURRENCY, FL_DRAIN_GRACE_S.
Kinds: echo (returns the payload), sleep (sleeps payload ms, returns "done-by-<worker id>"),
hang (never returns unless cancelled).
"""

from __future__ import annotations

import asyncio
import os
from datetime import timedelta

from worker_sdk import JobContext, Worker

WORKER_ID = os.environ["FL_WORKER_ID"]


async def main() -> None:
    worker = Worker(
        os.environ["FL_ADDR"],
        queues=os.environ.get("FL_QUEUES", "default").split(","),
        concurrency=int(os.environ.get("FL_CONCURRENCY", "4")),
        worker_id=WORKER_ID,
        drain_grace=timedelta(seconds=float(os.environ.get("FL_DRAIN_GRACE_S", "10"))),
    )

    @worker.handler("echo")
    async def echo(ctx: JobContext) -> bytes:
        return ctx.payload

    @worker.handler("sleep")
    async def sleep(ctx: JobContext) -> bytes:
        print(f"started job={ctx.job_id} token={ctx.fencing_token}", flush=True)
        await asyncio.sleep(int(ctx.payload or b"0") / 1000)
        print(f"finishing job={ctx.job_id} token={ctx.fencing_token}", flush=True)
        return f"done-by-{WORKER_ID}".encode()

    @worker.handler("hang")
    async def hang(ctx: JobContext) -> bytes:
        print(f"started job={ctx.job_id} token={ctx.fencing_token}", flush=True)
        await asyncio.Event().wait()
        return b""

    await worker.run()
    print("worker exited cleanly", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
