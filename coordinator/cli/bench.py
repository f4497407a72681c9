"""`faultline bench`: Faultline end to end (and optionally PgQueuer beside it); see coordinator/bench/."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from coordinator.bench.runner import (
    FLOW_MODES,
    IDLE_JOBS_DEFAULT,
    AuthFaultlineHarness,
    BenchConfig,
    FaultlineHarness,
    Harness,
    run_system,
)
from coordinator.bench.stats import RunResult, fmt, median_result
from coordinator.bench.work import STATS_FLUSH_S_DEFAULT

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
    p.add_argument("--coordinators", type=int, default=1,
                   help="coordinator processes on the run's database; workers and producers are spread over "
                        "them (default 1)")
    p.add_argument("--compare", action="append", default=[], metavar="LABEL=PATH",
                   help="also run Faultline from the source tree PATH (another commit's checkout) as system "
                        "LABEL, interleaved with this tree in every run; repeatable")
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
    p.add_argument("--auth", choices=["off", "on", "both"], default="off",
                   help="run Faultline with FAULTLINE_AUTH=required (on), or both ways interleaved in each run and "
                        "report the ratio (both); default off")
    p.add_argument("--profile", default=None,
                   help="record the coordinator with py-spy into this file (.svg flamegraph or .json speedscope)")
    p.add_argument("--keep-logs", action="store_true", help="keep process logs of a failed run")
    p.add_argument("--json", default=None, help="also write every run's figures to this file")
    p.add_argument("--stats-wait-s", type=float, default=STATS_FLUSH_S_DEFAULT,
                   help="wait before reading pg_stat_database at each end of the load phase, so that every "
                        f"backend has flushed its counters (default {STATS_FLUSH_S_DEFAULT}, PostgreSQL 15's idle "
                        "flush interval plus a margin)")
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
            jobs=args.jobs, producers=args.producers, workers=args.workers, coordinators=args.coordinators,
            concurrency=args.concurrency,
            prefetch=args.prefetch,
            batch=args.batch, sleep_ms=args.sleep_ms, idle_jobs=args.idle_jobs, runs=args.runs,
            database_url=database_url, addr=args.addr,
            drain=args.drain or args.backlog > 0, backlog=args.backlog, profile=args.profile,
            keep_logs=args.keep_logs, stats_wait_s=args.stats_wait_s, flow=args.flow, keys=args.keys,
        )
    except ValueError as exc:
        print(f"faultline bench: {exc}", file=sys.stderr)
        return 2
    # "faultline" is the system the last line reports: auth on when asked for alone.
    systems: list[tuple[str, Callable[..., Harness]]] = [
        ("faultline", (lambda c, t, s: AuthFaultlineHarness(c, t, s, label="faultline"))
         if args.auth == "on" else FaultlineHarness)]
    if args.auth == "both":
        systems.append(("faultline+auth", AuthFaultlineHarness))
    for spec in args.compare:
        label, sep, path = spec.partition("=")
        if not sep or not label or not (Path(path) / "coordinator" / "__main__.py").is_file():
            print(f"faultline bench: --compare {spec!r}: expected LABEL=PATH, PATH a Faultline source tree",
                  file=sys.stderr)
            return EXIT_CONFIG
        tree = str(Path(path).resolve())
        systems.append((label, lambda c, t, s, label=label, tree=tree:
                        FaultlineHarness(c, t, s, code=tree, label=label)))
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
        results = runner(_bench(cfg, systems, peers))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # the CLI boundary: say what failed, exit non-zero
        print(f"faultline bench: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return _report(cfg, results, args)


async def _bench(
    cfg: BenchConfig, systems: list[tuple[str, Callable[..., Harness]]], peers: list[tuple[str, Callable[..., object]]],
) -> dict[str, list[RunResult]]:
    results: dict[str, list[RunResult]] = {name: [] for name, _ in systems}
    started = time.monotonic()
    for run in range(1, cfg.runs + 1):
        # Faultline systems in a rotating order, so that none always runs first (or right after the peer).
        shift = (run - 1) % len(systems)
        for name, make_fl in systems[shift:] + systems[:shift]:
            _say(f"run {run}/{cfg.runs}: {name} (load average {os.getloadavg()[0]:.2f})")
            r = await run_system(make_fl, cfg, _say, "faultline_bench")
            r.extra["load_average"] = os.getloadavg()[0]
            results[name].append(r)
            idle_p50 = fmt(r.idle_ms.get("p50", float("nan")))
            _say(f"run {run}/{cfg.runs}: {name} {fmt(r.jobs_per_s, 0)} jobs/s, idle p50 {idle_p50} ms")
        for shape, make in peers:
            _say(f"run {run}/{cfg.runs}: pgqueuer [{shape}] (load average {os.getloadavg()[0]:.2f})")
            p = await run_system(make, cfg, _say, "pgqueuer_bench")  # type: ignore[arg-type]
            p.extra["load_average"] = os.getloadavg()[0]
            results.setdefault(f"pgqueuer:{shape}", []).append(p)
            _say(f"run {run}/{cfg.runs}: pgqueuer [{shape}] {fmt(p.jobs_per_s, 0)} jobs/s, "
                 f"idle p50 {fmt(p.idle_ms.get('p50', float('nan')))} ms")
    _say(f"benchmark took {time.monotonic() - started:.0f}s")
    return results


# What the report prints per job, in order: (key in RunResult.extra, label, digits). Keys missing for a
# system (a peer keeps no gRPC counters; a --compare tree without them) read n/a.
WORK_ROWS = (
    ("msg_producer_in", "gRPC producer -> coordinator  messages / job", 3),
    ("msg_producer_out", "gRPC coordinator -> producer  messages / job", 3),
    ("msg_worker_out", "gRPC coordinator -> worker    messages / job", 3),
    ("msg_worker_in", "gRPC worker -> coordinator    messages / job", 3),
    ("producer_calls", "producer calls / job (Submit or enqueue)", 3),
    ("statements", "Postgres statements / job (coordinator's counter)", 3),
    ("commits", "Postgres commits / job (pg_stat_database)", 3),
    ("wal_bytes", "WAL bytes / job (cluster-wide)", 0),
    ("db_growth_bytes", "database growth on disk / job (bytes; history is kept)", 0),
    ("connections", "Postgres connections to this database at the end (not per job)", 0),
)
CPU_ROWS = (
    ("cpu_coordinator", "coordinator(s)"),
    ("cpu_worker", "worker / consumer process(es)"),
    ("cpu_producers", "producers (the bench process)"),
    ("cpu_postgres", "Postgres: this database's backends + WAL writer, checkpointer, bgwriter"),
    ("cpu_postgres_machine", "Postgres: every postgres process on the machine"),
    ("cpu_machine", "whole machine (/proc/stat, everyone's work)"),
)
NAN = float("nan")


def _value(m: RunResult, key: str) -> float:
    return m.cpu_s_per_1k if key == "cpu_coordinator" else m.extra.get(key, NAN)


def _report(cfg: BenchConfig, results: dict[str, list[RunResult]], args: argparse.Namespace) -> int:
    mode = "drain" if cfg.drain else "load"
    coords = f"{cfg.coordinators} coordinators, " if cfg.coordinators > 1 else ""
    print(f"faultline bench: {cfg.jobs:,} jobs ({mode}{f', backlog {cfg.backlog:,}' if cfg.backlog else ''}), "
          f"{coords}{cfg.workers} worker process(es) x concurrency {cfg.concurrency}, {cfg.producers} producer(s), "
          f"batch {cfg.batch}, handler {'sleep ' + str(cfg.sleep_ms) + ' ms' if cfg.sleep_ms else 'no-op'}, "
          f"medians of {cfg.runs} run(s), {os.cpu_count()} cores")
    medians = {name: median_result(runs) for name, runs in results.items() if runs}
    for name, m in medians.items():
        print(f"\n{name} [{m.shape}]")
        all_runs = ", ".join(fmt(r.jobs_per_s, 0) for r in results[name])
        loads = ", ".join(fmt(r.extra.get("load_average", NAN)) for r in results[name])
        print(f"  end-to-end          {fmt(m.jobs_per_s, 0):>10} jobs/s   (runs: {all_runs}; load average after "
              f"each: {loads})")
        if not cfg.drain:
            print(f"  submit              {fmt(m.submit_per_s, 0):>10} jobs/s")
        for label, lat in (("idle", m.idle_ms), ("load", m.load_ms)):
            if lat:
                print(f"  {label} submit->start  p50 {fmt(lat['p50'])} ms  p95 {fmt(lat['p95'])} ms  "
                      f"p99 {fmt(lat['p99'])} ms  (n={int(lat['n'])})")
        if cfg.drain:
            print(f"  coordinator CPU     {fmt(m.cpu_s_per_1k, 3)} s per 1,000 jobs")
            continue
        print("  CPU s per 1,000 jobs (load phase)")
        for key, label in CPU_ROWS:
            print(f"    {label:<74}{fmt(_value(m, key), 3):>8}")
        for key in sorted(k for k in m.extra if k.startswith("cpu_coordinator_")):
            print(f"      coordinator {key.rsplit('_', 1)[1]:<60}{fmt(m.extra[key], 3):>10}")
        print("  work per job (load phase)")
        for key, label, digits in WORK_ROWS:
            print(f"    {label:<74}{fmt(_value(m, key), digits):>8}")
        top = sorted(((v, k.split(" ", 1)[1]) for k, v in m.extra.items() if k.startswith("statements ")),
                     reverse=True)
        if top:
            print("      by query: " + ", ".join(f"{q} {fmt(v, 3)}" for v, q in top[:6]))
        pg = m.extra.get("cpu_postgres", NAN)
        print(f"  PROJECTION, not a measurement: {fmt(1000 / pg if pg > 0 else NAN, 0)} jobs/s per dedicated "
              f"Postgres core (1 / Postgres CPU per job, this database's processes)")
        incomplete = [r for r in results[name] if r.completed < cfg.jobs]
        if incomplete:
            print(f"  INCOMPLETE: {len(incomplete)} run(s) finished fewer than {cfg.jobs} jobs")
    fl = medians["faultline"]
    if "faultline+auth" in medians:
        on = medians["faultline+auth"]
        print("\nauth on / auth off (medians)")
        print(f"  throughput x{fmt(on.jobs_per_s / fl.jobs_per_s, 3)}   idle p50 "
              f"x{fmt(on.idle_ms.get('p50', NAN) / fl.idle_ms.get('p50', NAN), 3)}   coordinator CPU per job "
              f"x{fmt(on.cpu_s_per_1k / fl.cpu_s_per_1k, 3)}")
    others = {k: v for k, v in medians.items() if k not in ("faultline", "faultline+auth")}
    peers = {k: v for k, v in others.items() if k.startswith("pgqueuer:")}
    if others:
        best_name = max(peers.items(), key=lambda kv: kv[1].jobs_per_s)[0] if peers else ""
        print("\nratios (faultline / other, medians; CPU and latency: lower is better)")
        for name, m in others.items():
            tag = "  <- best PgQueuer shape" if name == best_name else ""
            idle = fl.idle_ms.get("p50", NAN) / m.idle_ms.get("p50", NAN) if m.idle_ms else NAN
            coord = f"   coordinator CPU x{fmt(fl.cpu_s_per_1k / m.cpu_s_per_1k)}" if not name.startswith(
                "pgqueuer:") else ""
            print(f"  vs {name:<20} throughput x{fmt(fl.jobs_per_s / m.jobs_per_s)}   idle p50 x{fmt(idle)}   "
                  f"Postgres CPU x{fmt(_value(fl, 'cpu_postgres') / _value(m, 'cpu_postgres'))}{coord}{tag}")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__ if k != "database_url"},
             "runs": {name: [dataclasses.asdict(r) for r in runs] for name, runs in results.items()}}, indent=1))
    p50 = fl.idle_ms.get("p50", NAN)
    p99 = fl.idle_ms.get("p99", NAN)
    print(f"jobs_per_s={fl.jobs_per_s:.0f} p50_ms={p50:.2f} p99_ms={p99:.2f}")
    failed = any(r.completed < cfg.jobs for runs in results.values() for r in runs)
    return EXIT_FAILED if failed else 0
