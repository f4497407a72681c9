"""The drill checker: after a drill, verify docs/invariants.md against the drill's database.

Faultline's own tables are read only through the `check_*` statements of coordinator/db/queries.sql
(via QUERIES), the effects ledger through ledger.sql. check() returns a CheckReport: one line per
invariant (ok or violated, with up to a few offending rows), the figures the drill prints, and the
list of violations, which is empty exactly when the drill passed.

check_sessions() is INV-013, the one invariant that also reads the coordinator: once the system has
settled, what each connected worker session holds (JobService.ListWorkers: lease ids, credit) must
equal the running rows Postgres says that worker holds, and a session that holds nothing has credit.
A session that keeps counting a lease the reaper took back offers that slot to nobody, for ever.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from coordinator.db.queries import QUERIES, run
from coordinator.drills import ledger

TERMINAL_STATES = frozenset({"succeeded", "dead_lettered", "cancelled"})
# A running job's lease may be past its expiry for up to one reaper pass before it is re-queued.
LEASE_SLACK_MS_DEFAULT = 2_000
# Offending rows quoted per violated invariant.
SAMPLE_ROWS = 5
# Lease ids quoted per worker in an INV-013 violation.
SAMPLE_LEASES = 3


@dataclass(frozen=True, slots=True, kw_only=True)
class Expectations:
    """What the drill knows independently of the database."""

    #: Job ids the producers were acknowledged with (Submit/SubmitBatch answered OK).
    acknowledged: Sequence[int]
    #: Per kind, the final states its jobs may end in (kinds not named: any terminal state).
    final_states: Mapping[str, frozenset[str]] = field(default_factory=dict)
    #: Kinds whose handler applies a ledger effect on success.
    effect_kinds: frozenset[str] = frozenset({"effect"})
    lease_slack_ms: int = LEASE_SLACK_MS_DEFAULT


@dataclass(slots=True)
class CheckReport:
    """The checker's verdict: summary lines, figures, violations (empty: passed)."""

    lines: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not self.violations

    def invariant(self, code: str, text: str, bad: Sequence[Any], *, detail: str = "") -> None:
        if bad:
            sample = "; ".join(_row(r) for r in bad[:SAMPLE_ROWS])
            more = f" (+{len(bad) - SAMPLE_ROWS} more)" if len(bad) > SAMPLE_ROWS else ""
            line = f"{code} VIOLATED {text}: {len(bad)}{'+' if len(bad) >= 50 else ''} row(s): {sample}{more}"
            self.violations.append(line)
        else:
            line = f"{code} ok       {text}{(' (' + detail + ')') if detail else ''}"
        self.lines.append("check " + line)


def _row(r: Any) -> str:
    if isinstance(r, Mapping) or hasattr(r, "items"):
        return "{" + ", ".join(f"{k}={v}" for k, v in dict(r).items()) + "}"
    return str(r)


async def _q(con: Any, name: str, *args: Any) -> Any:
    return await run(con, QUERIES[name], *args)


async def check(con: Any, expect: Expectations) -> CheckReport:
    """Run every invariant check on an asyncpg connection to the drill's database."""
    report = CheckReport()
    acked = sorted(set(expect.acknowledged))
    states = {r["state"]: r["n"] for r in await _q(con, "check_state_counts")}
    total = sum(states.values())
    report.figures.update(jobs=total, acknowledged=len(acked), states=states)

    not_terminal = await _q(con, "check_not_terminal")
    report.invariant("INV-001", "every job is terminal", not_terminal,
                     detail=", ".join(f"{k}={v}" for k, v in sorted(states.items())))
    missing = await _q(con, "check_missing_jobs", acked)
    report.figures["lost"] = len(missing)
    report.invariant("INV-002", "no acknowledged job is lost", missing, detail=f"{len(acked)} acknowledged, 0 lost")
    extra = await _q(con, "check_unacknowledged_jobs", acked)
    report.invariant("INV-003", "no job exists that no producer was acknowledged with (no duplicate submits)",
                     extra, detail=f"{total} jobs for {len(acked)} acknowledgements")

    kind_states: dict[str, dict[str, int]] = {}
    for r in await _q(con, "check_kind_states"):
        kind_states.setdefault(r["kind"], {})[r["state"]] = r["n"]
    unexpected = [
        {"kind": kind, "state": st, "jobs": n}
        for kind, by_state in sorted(kind_states.items())
        for st, n in sorted(by_state.items())
        if st not in expect.final_states.get(kind, TERMINAL_STATES)
    ]
    report.figures["kinds"] = kind_states
    report.invariant("INV-004", "every job ended in the state its kind expects", unexpected,
                     detail="; ".join(f"{k}: {', '.join(f'{s}={n}' for s, n in sorted(v.items()))}"
                                      for k, v in sorted(kind_states.items())))

    report.invariant("INV-005", "no job is running without a live lease",
                     await _q(con, "check_running_without_live_lease", expect.lease_slack_ms))
    report.invariant("INV-006", "attempts <= max_attempts", await _q(con, "check_attempts_over_max"))
    report.invariant("INV-007", "every succeeded job has exactly one accepted completion, under its current token",
                     await _q(con, "check_succeeded_completions"))
    report.invariant("INV-008", "attempt history agrees with the job rows (count, numbering, increasing tokens)",
                     await _q(con, "check_attempt_history"))

    kinds = sorted(expect.effect_kinds)
    wrong_result = []
    for r in await _q(con, "check_results", kinds):
        try:
            token = int(json.loads(bytes(r["result"]))["token"])
        except (ValueError, KeyError, TypeError):
            token = None
        if token != r["lease_token"]:
            wrong_result.append({"id": r["id"], "lease_token": r["lease_token"], "result_token": token})
    report.invariant("INV-009", "each stored result was produced by the attempt holding the current token",
                     wrong_result)

    verdicts = {r["verdict"]: r["n"] for r in await ledger.run(con, "ledger_verdicts")}
    doubles = await ledger.run(con, "ledger_double_applied")
    report.figures["duplicate_effects"] = len(doubles)
    report.figures["ledger"] = verdicts
    report.invariant("INV-010", "no effect was applied twice", doubles,
                     detail=", ".join(f"{k}={v}" for k, v in sorted(verdicts.items())))
    report.invariant("INV-011", "every succeeded job's effect was applied",
                     await ledger.run(con, "ledger_missing_effects", kinds))
    report.invariant("INV-012", "every applied effect carries a token Faultline granted for that job",
                     await ledger.run(con, "ledger_foreign_effects"))
    outcomes = {r["outcome"]: r["n"] for r in await _q(con, "check_attempt_outcomes")}
    report.figures["attempt_outcomes"] = outcomes
    report.lines.append("check attempts by outcome: " + ", ".join(f"{k}={v}" for k, v in sorted(outcomes.items())))
    return report


# -- reads the drills use while they run (the same reviewed statements) ------------------------------


async def state_counts(con: Any) -> dict[str, int]:
    """Jobs per state."""
    return {r["state"]: r["n"] for r in await _q(con, "check_state_counts")}


async def held_by(con: Any, worker_id: str) -> list[tuple[int, int]]:
    """(job id, token) of the running leases the worker holds."""
    return [(r["id"], r["lease_token"]) for r in await _q(con, "check_held_by", worker_id)]


async def attempts_of(con: Any, job_ids: Sequence[int]) -> list[Any]:
    """Every attempt of these jobs, ordered by job and attempt."""
    return list(await _q(con, "check_attempts_of", list(job_ids)))


# -- INV-013: worker sessions agree with Postgres -----------------------------------------------------


async def session_disagreements(con: Any, workers: Sequence[Any]) -> list[dict[str, Any]]:
    """INV-013's offending workers: sessions (WorkerInfo from ListWorkers) whose held lease ids differ from the
    running rows Postgres has for that worker id, or that hold nothing and yet have no credit."""
    by_worker: dict[str, list[Any]] = {}
    for w in workers:
        by_worker.setdefault(w.worker_id, []).append(w)
    bad: list[dict[str, Any]] = []
    for worker_id, sessions in sorted(by_worker.items()):
        in_session = {lease for w in sessions for lease in w.lease_ids}
        in_postgres = {f"{job}.{token}" for job, token in await held_by(con, worker_id)}
        credit = sum(w.credit for w in sessions)
        capacity = sum(w.capacity for w in sessions)
        if in_session != in_postgres:
            only_session = sorted(in_session - in_postgres)
            only_pg = sorted(in_postgres - in_session)
            bad.append({
                "worker": worker_id, "capacity": capacity, "credit": credit,
                "session_leases": len(in_session), "running_in_postgres": len(in_postgres),
                "cause": (f"the session still counts {len(only_session)} lease(s) Postgres no longer runs for it "
                          f"(e.g. {', '.join(only_session[:SAMPLE_LEASES])})" if only_session else "")
                + ("; " if only_session and only_pg else "")
                + (f"Postgres runs {len(only_pg)} lease(s) for it that its session does not know "
                   f"(e.g. {', '.join(only_pg[:SAMPLE_LEASES])})" if only_pg else ""),
            })
        elif not in_session and credit <= 0 and not any(w.draining for w in sessions):
            bad.append({"worker": worker_id, "capacity": capacity, "credit": credit, "session_leases": 0,
                        "running_in_postgres": 0,
                        "cause": "idle with every slot free, but no credit: the coordinator will never grant it work"})
    return bad


def check_sessions(report: CheckReport, bad: Sequence[Any], *, workers: int, settle_s: float) -> None:
    """Add INV-013's line to the report (bad: session_disagreements() after the drill waited settle_s for it)."""
    report.figures["sessions_checked"] = workers
    report.invariant(
        "INV-013", "after the system settles, every connected worker session holds exactly the leases Postgres runs "
        "for that worker, and an idle session has credit", [{**r, "waited_s": settle_s} for r in bad],
        detail=f"{workers} session(s) agree with Postgres")
