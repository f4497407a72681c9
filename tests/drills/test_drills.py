"""Every failure drill's short form passes: the fault happened and the checker found no violation.

Each drill starts its own coordinator, workers and producers (and, for postgres-restart and
pool-exhaustion, its own private Postgres cluster); see docs/failure-modes.md.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.drills import netns
from coordinator.drills.drills import DRILLS
from coordinator.drills.runner import run_drill
from tests.drills.conftest import SUMMARIES

pytestmark = pytest.mark.drill


@pytest.mark.timeout(240)
@pytest.mark.parametrize("name", list(DRILLS))
async def test_drill_short_form_passes(name: str, pg_admin: str, tmp_path: Path) -> None:
    if DRILLS[name].needs_root and (why := netns.available()) is not None:
        pytest.skip(f"{name} {why}")
    outcome = await run_drill(name, short=True, workdir=tmp_path / name, admin=pg_admin)
    lines = outcome.summary()
    SUMMARIES.extend(lines)
    print("\n".join(lines))
    assert outcome.passed, "\n".join([*outcome.report.violations, f"logs: {tmp_path / name}"])
    assert outcome.report.figures["lost"] == 0
    assert outcome.report.figures["duplicate_effects"] == 0


def test_drill_cli_lists_every_drill() -> None:
    from coordinator.cli import build_parser

    args = build_parser().parse_args(["drill", "worker-kill", "--short"])
    assert args.name == "worker-kill" and args.short
    with pytest.raises(SystemExit):
        build_parser().parse_args(["drill", "no-such-drill"])
