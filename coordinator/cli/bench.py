"""`faultline bench`: Faultline end to end (and optionally PgQueuer beside it); see coordinator/bench/."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from coordinator.bench.runner import FLOW_MODES, IDLE_JOBS_DEFAULT, BenchConfig, FaultlineHarness, run_system
from coordinator.bench.stats import RunResult, fmt, median_result

EXIT_FAILED = 1
EXIT_CONFIG = 2


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "bench", help="measure end-to-end throughput and submit-to-start latency (optionally beside PgQueuer)",
        description="Starts its own coordinator on a fresh database of DATABASE_URL's server (else "
                    "FAULTLINE_TEST_DSN's, else the embedded Postgres, as `faultline drill` does; or targets --addr), "
                    "W worker processes and N producer tasks. The last line is `jobs_per_s=N p50_ms=N p99_ms=N` "
                    "(median end-to-end jobs/s, median idle submit-to-start p50/p99).")
    p.add_argument("--jobs", type=int, default=20_000, help="jobs in the load phase (default 20000)")
    p.add_argument("--concurrency", type=int, default=20, help="handler slots per worker process (default 20)")
    p.add_argument("--prefetch", type=int, default=None,
                   help="leases each worker buffers beyond --concurrency (default: the SDK's, half of it)")
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--producers", type=int, default=4, help="producer tasks (default 4)")
    p.add_argument("--batch", type=int, default=10,
                   help="jobs per submit call; 1 uses Submit, more use SubmitBatch "
                        "(default 10, PgQueuer's own enqueue batch)")
    p.add_argument("--sleep-ms", type=float, default=0.0, help="handler sleep in ms; 0 is a no-op (default 0)")
    p.add_argument("--idle-jobs", type=int, default=IDLE_JOBS_DEFAULT,
                   help=f"jobs submitted one at a time for idle latency (default {IDLE_JOBS_DEFAULT})")
    p.add_argument("--runs", type=int, default=1, help="repeat and report medians (default 1)")
    p.add_argument("--addr", default=None, help="use this running coordinator instead of starting one")
    p.add_argument("--drain", action="store_true", help="queue every job first, then measure the claim rate")
    p.add_argument("--backlog", type=int, default=0,
                   help="extra jobs queued behind the measured ones (implies --drain)")
    p.add_argument("--flow", choices=list(FLOW_MODES), default="off",
                   help="flow limits on the bench queues: off (none), capped (a max-running far above the load), "
                        "keys (per-key concurrency 2 over --keys keys), paused / throttled (the --backlog waits in a "
                        "second, paused / 1-per-second queue that the workers also serve) (default: off)")
    p.add_argument("--keys", type=int, default=1000, help="distinct concurrency keys of --flow keys (default 1000)")
    p.add_argument("--peer", choices=["pgqueuer"], default=None, help="run this peer too, in the same run")
    p.add_argument("--peer-shapes", default="defaults,tasks,bench",
                   help="PgQueuer shapes to run (default: defaults,tasks,bench)")
    p.add_argument("--profile", default=None,
                   help="record the coordinator with py-spy into this file (.svg flamegraph or .json speedscope)")
    p.add_argument("--keep-logs", action="store_true", help="keep process logs of a failed run")
    p.set_defaults(func=run_bench)


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _pick_postgres() -> tuple[str, str]:
    """The server to create bench databases on, and where it came from: as `faultline drill` picks it."""
    from coordinator.config import EMBEDDED_DATA_DIR_DEFAULT, check_dsn, dsn_target

    for var in ("DATABASE_URL", "FAULTLINE_TEST_DSN"):
        dsn = os.environ.get(var)
        if dsn:
            check_dsn(dsn, var)
            return dsn, f"{var} ({dsn_target(dsn)})"
    from coordinator import embedded

    data_dir = Path(os.environ.get("FAULTLINE_EMBEDDED_DATA_DIR") or EMBEDDED_DATA_DIR_DEFAULT)
    return embedded.start(data_dir), f"the embedded Postgres in {data_dir} (DATABASE_URL not set)"


def run_bench(args: argparse.Namespace) -> int:
    from coordinator.errors import ConfigError

    try:
        database_url, where = _pick_postgres()
    except ConfigError as exc:
        print(f"faultline bench: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    _say(f"faultline bench: Postgres from {where}")
    try:
        cfg = BenchConfig(
            jobs=args.jobs, producers=args.producers, workers=args.workers, concurrency=args.concurrency,
            prefetch=args.prefetch,
            batch=args.batch, sleep_ms=args.sleep_ms, idle_jobs=args.idle_jobs, runs=args.runs,
            database_url=database_url, addr=args.addr,
            drain=args.drain or args.backlog > 0, backlog=args.backlog, profile=args.profile,
            keep_logs=args.keep_logs, flow=args.flow, keys=args.keys,
        )
    except ValueError as exc:
        print(f"faultline bench: {exc}", file=sys.stderr)
        return 2
    peers: list[tuple[str, Callable[..., object]]] = []
    if args.peer == "pgqueuer":
        from coordinator.bench import peers as peer_mod

        if not peer_mod.available():
            print("faultline bench: --peer pgqueuer needs PgQueuer (pip install 'faultline-jobs[bench]')",
                  file=sys.stderr)
            return 2
        for shape in [s.strip() for s in args.peer_shapes.split(",") if s.strip()]:
            peer_mod.shape_args(shape, cfg.concurrency)  # validates
            peers.append((shape, lambda c, t, s, shape=shape: peer_mod.PgQueuerHarness(c, t, s, shape)))
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run  # type: ignore[assignment]
    try:
        results = runner(_bench(cfg, peers))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # the CLI boundary: say what failed, exit non-zero
        print(f"faultline bench: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return _report(cfg, results, args)


async def _bench(cfg: BenchConfig, peers: list[tuple[str, Callable[..., object]]]) -> dict[str, list[RunResult]]:
    results: dict[str, list[RunResult]] = {}
    started = time.monotonic()
    for run in range(1, cfg.runs + 1):
        _say(f"run {run}/{cfg.runs}: faultline")
        r = await run_system(FaultlineHarness, cfg, _say, "faultline_bench")
        results.setdefault("faultline", []).append(r)
        idle_p50 = fmt(r.idle_ms.get("p50", float("nan")))
        _say(f"run {run}/{cfg.runs}: faultline {fmt(r.jobs_per_s, 0)} jobs/s, idle p50 {idle_p50} ms")
        for shape, make in peers:
            _say(f"run {run}/{cfg.runs}: pgqueuer [{shape}]")
            p = await run_system(make, cfg, _say, "pgqueuer_bench")  # type: ignore[arg-type]
            results.setdefault(f"pgqueuer:{shape}", []).append(p)
            _say(f"run {run}/{cfg.runs}: pgqueuer [{shape}] {fmt(p.jobs_per_s, 0)} jobs/s, "
                 f"idle p50 {fmt(p.idle_ms.get('p50', float('nan')))} ms")
    _say(f"benchmark took {time.monotonic() - started:.0f}s")
    return results


def _report(cfg: BenchConfig, results: dict[str, list[RunResult]], args: argparse.Namespace) -> int:
    mode = "drain" if cfg.drain else "load"
    print(f"faultline bench: {cfg.jobs:,} jobs ({mode}{f', backlog {cfg.backlog:,}' if cfg.backlog else ''}), "
          f"{cfg.workers} worker process(es) x concurrency {cfg.concurrency}, {cfg.producers} producer(s), "
          f"batch {cfg.batch}, handler {'sleep ' + str(cfg.sleep_ms) + ' ms' if cfg.sleep_ms else 'no-op'}, "
          f"medians of {cfg.runs} run(s), {os.cpu_count()} cores")
    medians = {name: median_result(runs) for name, runs in results.items()}
    for name, m in medians.items():
        print(f"\n{name} [{m.shape}]")
        all_runs = ", ".join(fmt(r.jobs_per_s, 0) for r in results[name])
        print(f"  end-to-end          {fmt(m.jobs_per_s, 0):>10} jobs/s   (runs: {all_runs})")
        if not cfg.drain:
            print(f"  submit              {fmt(m.submit_per_s, 0):>10} jobs/s")
        for label, lat in (("idle", m.idle_ms), ("load", m.load_ms)):
            if lat:
                print(f"  {label} submit->start  p50 {fmt(lat['p50'])} ms  p95 {fmt(lat['p95'])} ms  "
                      f"p99 {fmt(lat['p99'])} ms  (n={int(lat['n'])})")
        if m.cpu_s_per_1k == m.cpu_s_per_1k:
            print(f"  coordinator CPU     {fmt(m.cpu_s_per_1k, 3)} s per 1,000 jobs")
        for key, value in m.extra.items():
            print(f"  {key:<24}{fmt(value, 3)}")
        incomplete = [r for r in results[name] if r.completed < cfg.jobs]
        if incomplete:
            print(f"  INCOMPLETE: {len(incomplete)} run(s) finished fewer than {cfg.jobs} jobs")
    fl = medians["faultline"]
    peers = {k: v for k, v in medians.items() if k != "faultline"}
    if peers:
        best_name, _ = max(peers.items(), key=lambda kv: kv[1].jobs_per_s)
        print("\nratios (faultline / pgqueuer, medians)")
        for name, m in peers.items():
            tag = "  <- best PgQueuer shape" if name == best_name else ""
            nan = float("nan")
            idle = fl.idle_ms.get("p50", nan) / m.idle_ms.get("p50", nan) if m.idle_ms else nan
            print(f"  vs {name:<20} throughput x{fmt(fl.jobs_per_s / m.jobs_per_s)}   "
                  f"idle p50 x{fmt(idle)} (lower is better){tag}")
    p50 = fl.idle_ms.get("p50", float("nan"))
    p99 = fl.idle_ms.get("p99", float("nan"))
    print(f"jobs_per_s={fl.jobs_per_s:.0f} p50_ms={p50:.2f} p99_ms={p99:.2f}")
    failed = any(r.completed < cfg.jobs for runs in results.values() for r in runs)
    return EXIT_FAILED if failed else 0
