"""A drill producer process: submits N jobs in batches with idempotency keys, retrying until acknowledged.

`python -m coordinator.drills.producer --target ADDR --count N --prefix P --acks FILE`

Job i has the key "{prefix}-{i}". A batch that fails (coordinator down, Postgres down, deadline) is
re-sent with the same keys, so a batch that was stored before its answer was lost yields the same
jobs, not new ones. Each acknowledged job is appended to the acks file as {"key", "id", "created"};
the last line carries {"stats": ...}: batches sent, retries by error, and jobs created vs found.

With --until FILE the producer keeps submitting (--count is then only a cap) until FILE exists, so that
a drill has work in flight for as long as it injects faults; it then finishes the batch it is on.
With --max-backlog N it submits a batch only while the queue holds fewer than N queued jobs (ListQueues),
so that a long-running producer keeps the workers busy without building a backlog the drill must drain.
ListQueues answers from the coordinator's last metrics sample, so after a batch the producer waits for a
sample taken after it (FAULTLINE_METRICS_SAMPLE_MS; the drill stack samples every 200 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from worker_sdk import Client, InvalidArgumentError, JobSpec, JobTimeouts, WorkerSDKError

RETRY_BASE_S = 0.05
RETRY_CAP_S = 1.0
# How often a producer held back by --max-backlog looks at the queue again, in seconds.
BACKLOG_POLL_S = 0.02
CALL_TIMEOUT = timedelta(seconds=5)


async def main(args: argparse.Namespace) -> int:
    payload = args.payload.encode()
    timeouts = JobTimeouts(execution=timedelta(milliseconds=args.execution_timeout_ms)) \
        if args.execution_timeout_ms else None
    stats: Counter[str] = Counter()
    with open(args.acks, "a", buffering=1) as acks:  # noqa: ASYNC230 - line writes to a local file, once per batch
        async with Client(args.target, timeout=CALL_TIMEOUT) as client:
            until = Path(args.until) if args.until else None
            sent_at: datetime | None = None  # when the last batch was acknowledged
            for start in range(0, args.count, args.batch):
                if until is not None and until.exists():
                    break
                while args.max_backlog and await _queued(client, sent_at) >= args.max_backlog:
                    if until is not None and until.exists():
                        break
                    await asyncio.sleep(BACKLOG_POLL_S)
                specs = [
                    JobSpec(kind=args.kind, payload=payload, idempotency_key=f"{args.prefix}-{i}",
                            max_attempts=args.max_attempts or None, timeouts=timeouts)
                    for i in range(start, min(start + args.batch, args.count))
                ]
                attempt = 0
                while True:
                    stats["batches_sent"] += 1
                    try:
                        results = await client.submit_batch_ex(specs)
                        break
                    except InvalidArgumentError:
                        raise
                    except WorkerSDKError as exc:
                        attempt += 1
                        stats[f"retry_{type(exc).__name__}"] += 1
                        await asyncio.sleep(random.uniform(0, min(RETRY_CAP_S, RETRY_BASE_S * 2 ** attempt)))
                for spec, (job, created) in zip(specs, results, strict=True):
                    stats["created" if created else "found_existing"] += 1
                    acks.write(json.dumps({"key": spec.idempotency_key, "id": job.id, "created": created}) + "\n")
                sent_at = datetime.now(UTC)
                if args.pace_ms:
                    await asyncio.sleep(args.pace_ms / 1000)
            acks.write(json.dumps({"stats": dict(stats), "t": time.time()}) + "\n")
    return 0


async def _queued(client: Client, after: datetime | None) -> int:
    """Jobs queued in the default queue as sampled after `after`; 0 when the coordinator cannot say (the batch
    then goes and retries). A sample older than `after` may not count the last batch: the caller polls again."""
    try:
        queues = await client.list_queues()
    except WorkerSDKError:
        return 0
    default = [q for q in queues if q.name == "default"]
    if after is not None and default and (default[0].sampled_at is None or default[0].sampled_at < after):
        return sys.maxsize  # stale: look again after BACKLOG_POLL_S
    return sum(int(n) for q in default for st, n in q.depth.items() if st == "queued")


def cli() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--prefix", required=True)
    p.add_argument("--acks", required=True)
    p.add_argument("--kind", default="effect")
    p.add_argument("--payload", default="{}")
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--max-attempts", type=int, default=0)
    p.add_argument("--execution-timeout-ms", type=int, default=0)
    p.add_argument("--pace-ms", type=int, default=0, help="pause between batches, to spread submits over the drill")
    p.add_argument("--max-backlog", type=int, default=0, help="submit only while fewer jobs than this are queued")
    p.add_argument("--until", default="", help="stop (after the current batch) once this file exists")
    args: Any = p.parse_args()
    raise SystemExit(asyncio.run(main(args)))


if __name__ == "__main__":
    cli()
