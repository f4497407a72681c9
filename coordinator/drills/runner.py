"""run_drill(): one drill in its own Stack, timed; what the CLI and tests/drills call."""

from __future__ import annotations

import time
from pathlib import Path

from coordinator.drills.drills import DRILLS, DrillOutcome
from coordinator.drills.stack import DrillError, Stack


async def run_drill(name: str, *, short: bool, workdir: Path, keep_db: bool = False,
                    admin: str | None = None, auth: bool = False) -> DrillOutcome:
    """Run the drill (databases on `admin`'s server, default: stack.admin_dsn()); DrillError when it could not
    carry out its script."""
    spec = DRILLS.get(name)
    if spec is None:
        raise DrillError(f"no drill named {name!r}; drills: {', '.join(DRILLS)}")
    t0 = time.monotonic()
    async with Stack(name, workdir=workdir, keep_db=keep_db, admin=admin, auth=auth) as stack:
        report = await spec.run(stack, short)
    return DrillOutcome(name=name, short=short, report=report, elapsed_s=time.monotonic() - t0, workdir=str(workdir))
