"""Example producer: submits N jobs, polls until every one is finished, prints a summary table.

    python examples/producer.py 500                    # 500 jobs spread over echo, resize, flaky
    python examples/producer.py 1000 --kinds echo      # only echo jobs

Environment: FAULTLINE_ADDR (default 127.0.0.1:50051), FAULTLINE_JOBS (default N when no argument).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

try:
    import worker_sdk  # noqa: F401
except ImportError:  # running from a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from worker_sdk import Client, Job, JobSpec, JobState, WorkerSDKError

JOBS_DEFAULT = 100
#: Jobs per SubmitBatch call (the coordinator accepts up to 10,000).
SUBMIT_BATCH_SIZE = 500
#: Concurrent GetJob calls while polling.
POLL_CONCURRENCY = 64
POLL_INTERVAL_S = 0.5
TIMEOUT_DEFAULT_S = 300.0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("count", nargs="?", type=int, default=int(os.environ.get("FAULTLINE_JOBS", JOBS_DEFAULT)))
    parser.add_argument("--addr", default=os.environ.get("FAULTLINE_ADDR", "127.0.0.1:50051"))
    parser.add_argument("--kinds", default="echo,resize,flaky", help="comma-separated job kinds, used round-robin")
    parser.add_argument("--queue", default="default")
    parser.add_argument("--max-attempts", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=TIMEOUT_DEFAULT_S, help="seconds to wait for completion")
    return parser.parse_args()


async def submit_all(client: Client, args: argparse.Namespace, run_id: str) -> list[Job]:
    kinds = [k for k in args.kinds.split(",") if k]
    specs = [
        JobSpec(
            kind=kinds[i % len(kinds)],
            payload=f"job {i}".encode(),
            queue=args.queue,
            max_attempts=args.max_attempts,
            idempotency_key=f"{run_id}-{i}",  # re-running the same batch after a crash submits nothing twice
            labels={"run": run_id},
        )
        for i in range(args.count)
    ]
    jobs: list[Job] = []
    for start in range(0, len(specs), SUBMIT_BATCH_SIZE):
        jobs.extend(await client.submit_batch(specs[start : start + SUBMIT_BATCH_SIZE]))
    return jobs


async def wait_all(client: Client, jobs: list[Job], timeout: float) -> dict[str, Job]:
    latest = {job.id: job for job in jobs}
    limit = asyncio.Semaphore(POLL_CONCURRENCY)

    async def refresh(job_id: str) -> None:
        async with limit:
            latest[job_id] = await client.get(job_id)

    deadline = time.monotonic() + timeout
    while True:
        pending = [job_id for job_id, job in latest.items() if not job.state.terminal]
        print(f"\r{len(latest) - len(pending)}/{len(latest)} finished", end="", flush=True)
        if not pending or time.monotonic() > deadline:
            print()
            return latest
        await asyncio.sleep(POLL_INTERVAL_S)
        async with asyncio.TaskGroup() as tg:
            for job_id in pending:
                tg.create_task(refresh(job_id))


def print_summary(jobs: dict[str, Job], elapsed: float) -> None:
    by_kind: dict[str, Counter[JobState]] = defaultdict(Counter)
    attempts: dict[str, list[int]] = defaultdict(list)
    for job in jobs.values():
        by_kind[job.kind][job.state] += 1
        attempts[job.kind].append(job.attempts)
    states = list(JobState)
    header = f"{'kind':<10}" + "".join(f"{s.value:>15}" for s in states) + f"{'avg attempts':>14}"
    print(header)
    print("-" * len(header))
    for kind in sorted(by_kind):
        row = f"{kind:<10}" + "".join(f"{by_kind[kind][s]:>15}" for s in states)
        print(row + f"{sum(attempts[kind]) / len(attempts[kind]):>14.2f}")
    total: Counter[JobState] = Counter(job.state for job in jobs.values())
    print("-" * len(header))
    print(f"{'total':<10}" + "".join(f"{total[s]:>15}" for s in states))
    finished = sum(1 for job in jobs.values() if job.state.terminal)
    print(f"\n{finished}/{len(jobs)} jobs finished in {elapsed:.2f}s ({finished / max(elapsed, 1e-9):.0f} jobs/s)")
    errors = Counter(job.last_error for job in jobs.values() if job.state is JobState.DEAD_LETTERED)
    for error, count in errors.most_common(3):
        print(f"  dead-lettered x{count}: {error}")


async def main() -> int:
    args = parse_args()
    run_id = f"producer-{os.getpid()}-{int(time.time())}"
    started = time.monotonic()
    try:
        async with Client(args.addr) as client:
            jobs = await submit_all(client, args, run_id)
            print(f"submitted {len(jobs)} jobs in {time.monotonic() - started:.2f}s")
            final = await wait_all(client, jobs, args.timeout)
    except WorkerSDKError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print_summary(final, time.monotonic() - started)
    return 0 if all(job.state.terminal for job in final.values()) else 2


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
