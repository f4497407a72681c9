"""A real worker process for end-to-end tests: handlers whose behaviour the test picks through the job kind.

Env: FL_ADDR, FL_WORKER_ID, FL_QUEUES (comma list), FL_CONCURRENCY, FL_DRAIN_GRACE_S.
Kinds: echo (returns the payload), sleep (sleeps payload ms, returns "done-by-<worker id>"),
hang (never returns unless cancelled), charge (a step that sends its idempotency key to a downstream
ledger, the file FL_LEDGER, then hangs before the step is recorded when the payload names this worker:
the crash window a SIGKILL then hits).
"""

from __future__ import annotations

import asyncio
import os
from datetime import timedelta
from pathlib import Path

from worker_sdk import JobContext, Worker

WORKER_ID = os.environ["FL_WORKER_ID"]


def append(path: Path, line: str) -> None:
    with path.open("a") as f:
        f.write(line)


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

    @worker.handler("charge")
    async def charge(ctx: JobContext) -> bytes:
        async def send() -> bytes:
            key = ctx.idempotency_key("charge")
            line = f"{key} {WORKER_ID} {ctx.attempt}\n"
            await asyncio.to_thread(append, Path(os.environ["FL_LEDGER"]), line)
            print(f"effect sent job={ctx.job_id} key={key}", flush=True)
            if ctx.payload.decode() == f"hang-after-effect-on:{WORKER_ID}":
                await asyncio.Event().wait()
            return key.encode()

        return await ctx.step("charge", send)

    await worker.run()
    print("worker exited cleanly", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
