"""A benchmark worker process: `python -m coordinator.bench.worker --addr ... --concurrency C --out FILE`.

It runs the SDK Worker with one no-op (or sleeping) handler for kind `noop`, and talks to the parent
on stdout, one line per event:

    ready                      the stream is open (welcome received)
    done <count> <t_ns>        leases finished so far (completion acknowledged), and when the last one did

On SIGTERM it stops, then writes its submit-to-start latencies (ms, grouped by the phase byte each
payload carries) as JSON to --out. A payload is struct "<qB": the producer's time.time_ns() just
before Submit, and the phase (0 idle, 1 load, 2 drain).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import struct
import sys
import time
from array import array
from datetime import timedelta

from worker_sdk import ConnState, JobContext, Worker

PAYLOAD = struct.Struct("<qB")
KIND = "noop"
QUEUE = "bench"
# bench --flow paused|throttled: the backlog waits in this queue, which the workers serve too.
HELD_QUEUE = "bench-held"
# Progress lines are written at most this often, so a busy worker does not spend its time on stdout;
# the first completion after a quiet spell is written at once (the idle-latency phase waits for it).
REPORT_MIN_INTERVAL_S = 0.002


class _Observer:
    """Counts finished leases; wakes the reporter. Owned by the worker's event loop."""

    def __init__(self) -> None:
        self.done = 0
        self.last_ns = 0
        self.wake = asyncio.Event()
        self.ready = asyncio.Event()

    def lease_started(self, kind: str, queue: str) -> None:
        pass

    def lease_finished(self, kind: str, queue: str, outcome: str, seconds: float) -> None:
        self.done += 1
        self.last_ns = time.time_ns()
        self.wake.set()

    def connection_changed(self, state: ConnState) -> None:
        if state is ConnState.READY:
            self.ready.set()
            self.wake.set()


async def _report(obs: _Observer) -> None:
    announced = False
    written = -1
    while True:
        await obs.wake.wait()
        obs.wake.clear()
        if obs.ready.is_set() and not announced:
            sys.stdout.write("ready\n")
            announced = True
        if obs.done != written:
            written = obs.done
            sys.stdout.write(f"done {obs.done} {obs.last_ns}\n")
        sys.stdout.flush()
        await asyncio.sleep(REPORT_MIN_INTERVAL_S)


async def main(args: argparse.Namespace) -> None:
    obs = _Observer()
    latencies: dict[int, array[float]] = {0: array("d"), 1: array("d"), 2: array("d")}
    sleep_s = args.sleep_ms / 1000.0
    worker = Worker(args.addr, queues=[QUEUE, *args.extra_queue], concurrency=args.concurrency,
                    prefetch=args.prefetch, observer=obs, drain_grace=timedelta(seconds=5), api_key=args.api_key or "")

    @worker.handler(KIND)
    async def noop(ctx: JobContext) -> bytes:
        started = time.time_ns()
        payload = ctx.payload
        if len(payload) >= PAYLOAD.size:
            submitted, phase = PAYLOAD.unpack_from(payload)
            latencies.setdefault(phase, array("d")).append((started - submitted) / 1e6)
        if sleep_s:
            await asyncio.sleep(sleep_s)
        return b""

    reporter = asyncio.create_task(_report(obs))
    try:
        await worker.run()
    finally:
        reporter.cancel()
        with open(args.out, "w") as f:
            json.dump({str(k): list(v) for k, v in latencies.items()}, f)


def cli() -> None:
    p = argparse.ArgumentParser(prog="python -m coordinator.bench.worker")
    p.add_argument("--addr", required=True)
    p.add_argument("--concurrency", type=int, default=20)
    p.add_argument("--prefetch", type=int, default=None, help="leases buffered beyond concurrency (SDK default)")
    p.add_argument("--sleep-ms", type=float, default=0.0)
    p.add_argument("--extra-queue", action="append", default=[], help="another queue to serve (bench --flow)")
    p.add_argument("--out", required=True)
    p.add_argument("--api-key", default="", help="API key (work scope) for a coordinator with auth on")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    try:
        import uvloop

        uvloop.run(main(args))
    except ImportError:
        asyncio.run(main(args))


if __name__ == "__main__":
    cli()
