"""`faultline drill NAME [--short]`: run a failure drill against a stack it starts itself.

Prints the checker's lines, the figures and the verdict; exits 0 when the drill passed, 1 on any
violation, 2 when the drill could not run its script (and says why).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import tempfile
import time
from pathlib import Path

EXIT_VIOLATION = 1
EXIT_DRILL_ERROR = 2
EXIT_INTERRUPTED = 130


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from coordinator.drills.drills import DRILLS

    p = sub.add_parser("drill", help="run a failure drill (its own coordinator, workers, producers and database)",
                       description="Drills: " + "; ".join(f"{d.name}: {d.about}" for d in DRILLS.values()))
    p.add_argument("name", choices=[*DRILLS, "all"], help="which drill ('all' runs each in turn)")
    p.add_argument("--short", action="store_true", help="the quick form that CI runs")
    p.add_argument("--workdir", type=Path, help="where process logs go (default: a new temporary directory)")
    p.add_argument("--keep-db", action="store_true", help="keep the drill's database for inspection")
    p.add_argument("--auth", action="store_true",
                   help="coordinators with FAULTLINE_AUTH=required; every process holds one admin key "
                        "(worker-kill is the drill written for it: others name workers by their bare id)")
    p.set_defaults(func=run_drill_cli)


def run_drill_cli(args: argparse.Namespace) -> int:
    from coordinator.drills.drills import DRILLS

    names = list(DRILLS) if args.name == "all" else [args.name]
    worst = 0
    for name in names:
        code = _run_one(name, short=args.short, workdir=args.workdir, keep_db=args.keep_db, auth=args.auth)
        worst = max(worst, code)
        if code == EXIT_INTERRUPTED:
            break
    return worst


def _run_one(name: str, *, short: bool, workdir: Path | None, keep_db: bool, auth: bool = False) -> int:
    from coordinator.drills.drills import DrillOutcome
    from coordinator.drills.runner import run_drill
    from coordinator.drills.stack import DrillError

    if workdir is None:
        wd = Path(tempfile.mkdtemp(prefix=f"faultline-drill-{name}-"))
    else:
        # Never mix with an earlier run's logs, events and acknowledgements.
        wd = workdir / name
        if wd.exists() and any(wd.iterdir()):
            wd = workdir / f"{name}-{time.strftime('%Y%m%dT%H%M%S')}"
    t0 = time.monotonic()

    async def interruptible() -> DrillOutcome:
        # SIGINT/SIGTERM cancel the drill, so that its stack stops every child and drops its database.
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        return await run_drill(name, short=short, workdir=wd, keep_db=keep_db, auth=auth)

    try:
        outcome = asyncio.run(interruptible())
    except asyncio.CancelledError:
        print(f"verdict {name}: INTERRUPTED after {time.monotonic() - t0:.1f}s; logs in {wd}", flush=True)
        return EXIT_INTERRUPTED
    except DrillError as exc:
        print(f"verdict {name}{' --short' if short else ''}: ERROR after {time.monotonic() - t0:.1f}s: {exc}",
              flush=True)
        print(f"drill {name}: logs in {wd}", flush=True)
        return EXIT_DRILL_ERROR
    for line in outcome.summary():
        print(line, flush=True)
    if not outcome.passed:
        print(f"drill {name}: logs in {wd}", file=sys.stdout, flush=True)
        return EXIT_VIOLATION
    return 0
