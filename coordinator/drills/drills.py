"""The drills: each starts its stack, injects its fault, waits for the system to settle, then checks.

Every drill ends the same way (finish()): wait until every job is terminal, run the checker
(checker.py) with what the producers were acknowledged, add the drill's own assertions (the fault
really happened, the refusals were seen from the worker's side, ...) and the figures. A drill
passes only when the checker and its own assertions found no violation.
"""

from __future__ import annotations

import asyncio
import random
import signal
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from coordinator.drills import checker
from coordinator.drills.checker import CheckReport, Expectations
from coordinator.drills.stack import DRILL_LEASE_TTL_MS, DrillError, Proc, Stack, wait_for

TERMINAL = ("succeeded", "dead_lettered", "cancelled")
# Generous bound on how long the system may take to settle after the fault, in seconds.
SETTLE_TIMEOUT_S = 120.0
STALE_COMPLETE_LOG = "stale complete refused"
STALE_FAIL_LOG = "stale fail refused"
STALE_METRIC = "faultline_stale_completions_rejected_total"
# A producer started until_stopped submits at most this many jobs (the drill stops it long before).
PRODUCER_CAP = 1_000_000
# Queued jobs a long-running drill producer keeps ahead of the workers: enough that every fault lands on
# work in flight, few enough that the drill does not spend its time draining a backlog.
BACKLOG = 150
# How long the drill waits for the worker sessions to agree with Postgres (INV-013), in seconds.
SESSIONS_SETTLE_S = 15.0
# After the faults, a fresh batch must be finished by the same worker processes within this, in seconds.
FRESH_BATCH_DEADLINE_S = 30.0
FRESH_BATCH_JOBS = 100


@dataclass(slots=True)
class DrillOutcome:
    """What `faultline drill` prints: the checker's lines, the figures, the verdict."""

    name: str
    short: bool
    report: CheckReport
    elapsed_s: float = 0.0
    workdir: str = ""

    @property
    def passed(self) -> bool:
        return self.report.passed

    def summary(self) -> list[str]:
        figs = " ".join(f"{k}={_fmt(v)}" for k, v in self.report.figures.items() if not isinstance(v, dict))
        verdict = "PASS" if self.passed else f"FAIL ({len(self.report.violations)} violation(s))"
        return [
            *self.report.lines,
            f"figures {self.name}: {figs}",
            f"verdict {self.name}{' --short' if self.short else ''}: {verdict} in {self.elapsed_s:.1f}s",
        ]


def _fmt(v: Any) -> str:
    return f"{v:.2f}" if isinstance(v, float) else str(v)


def say(name: str, text: str) -> None:
    print(f"drill {name}: {text}", flush=True)


def percentiles(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)
    return {"p50": statistics.median(ordered), "max": ordered[-1]}


async def wait_terminal(stack: Stack, con: Any, expected: int, *, timeout: float = SETTLE_TIMEOUT_S) -> dict[str, int]:
    """Until at least `expected` jobs exist and every job is terminal."""

    async def settled() -> dict[str, int] | None:
        counts = await checker.state_counts(con)
        total = sum(counts.values())
        done = sum(counts.get(s, 0) for s in TERMINAL)
        return counts if total >= expected and done == total else None

    counts: dict[str, int] = await wait_for(settled, timeout=timeout, what=f"{expected} jobs terminal")
    return counts


async def finish(
    stack: Stack, con: Any, expect: Expectations, report_hook: Callable[[CheckReport], None]
) -> CheckReport:
    """Run the checker, then the drill's own assertions and figures."""
    report = await checker.check(con, expect)
    await _check_sessions(stack, con, report)
    report.figures["stale_completions_refused"] = (stack.coordinator_log_count(STALE_COMPLETE_LOG)
                                                   + stack.coordinator_log_count(STALE_FAIL_LOG))
    by_frame = await stack.metric(STALE_METRIC)
    report.figures["stale_frames_refused"] = int(sum(by_frame.values()))
    report.lines.append("check stale frames refused by the coordinator (metrics): "
                        + (", ".join(f"{k}={int(v)}" for k, v in sorted(by_frame.items()) if v) or "none"))
    report_hook(report)
    return report


async def _check_sessions(stack: Stack, con: Any, report: CheckReport) -> None:
    """INV-013: wait (up to SESSIONS_SETTLE_S) until every session agrees with Postgres, then report."""
    from worker_sdk import Client

    coord = stack.live_coordinator()
    t0 = time.monotonic()
    async with Client(coord.extra["addr"]) as client:
        while True:
            workers = await client.list_workers()
            bad = await checker.session_disagreements(con, workers)
            if not bad or time.monotonic() - t0 > SESSIONS_SETTLE_S:
                break
            await asyncio.sleep(0.2)
    checker.check_sessions(report, bad, workers=len(workers), settle_s=round(time.monotonic() - t0, 1))


def _producing(p: Proc, progress: str) -> None:
    """A drill's faults need work in flight: a producer that should still run but exited is the drill's failure."""
    if not p.alive():
        raise DrillError(f"fault injection: the producer {p.name} exited (code {p.popen and p.popen.returncode}) "
                         f"with only {progress} done, so later faults would land on an idle system:\n"
                         f"{p.output()[-2000:]}")


async def _wait_in_flight(stack: Stack, con: Any, producer: Proc, fault: str) -> None:
    """Until some job is running: every fault must land on work in flight."""

    async def running() -> bool:
        _producing(producer, f"the faults before {fault}")
        return (await checker.state_counts(con)).get("running", 0) > 0

    await wait_for(running, timeout=SETTLE_TIMEOUT_S, what=f"a job running when {fault} lands")


@dataclass(slots=True)
class FreshBatch:
    """What same_workers_drain() saw: the fresh batch after the faults, and who ran it."""

    jobs: int
    workers: dict[str, int]
    finished: bool
    elapsed_s: float
    ran_by: dict[str, int]
    gone: list[str]
    snapshot: list[dict[str, Any]]

    def violations(self) -> list[Any]:
        bad: list[Any] = [f"{w} is no longer the process it was (pid {pid})" for w, pid in self.workers.items()
                          if w in self.gone]
        if not self.finished:
            bad.append(f"the fresh batch of {self.jobs} jobs was not finished within {FRESH_BATCH_DEADLINE_S:g}s "
                       "with these workers connected")
            bad.extend(self.snapshot)
        strangers = {w: n for w, n in self.ran_by.items() if w not in self.workers}
        if strangers:
            bad.append(f"jobs of the fresh batch ran on other workers: {strangers}")
        return bad


async def same_workers_drain(stack: Stack, con: Any, addr: str, workers: Sequence[Proc], tag: str) -> FreshBatch:
    """After the faults, submit a fresh batch and see whether the same worker processes (no restart) finish it."""
    from worker_sdk import Client

    pids = {w.name: w.pid for w in workers}
    total = sum((await checker.state_counts(con)).values())
    p = stack.start_producer(f"fresh-{tag}", addr, count=FRESH_BATCH_JOBS, payload={"ms": 10})
    await stack.wait_exit(p, timeout=SETTLE_TIMEOUT_S, what="the fresh batch's producer")
    ids = [int(r["id"]) for r in stack.read_jsonl(p.extra["acks"]) if "id" in r]
    t0 = time.monotonic()
    try:
        await wait_terminal(stack, con, total + len(ids), timeout=FRESH_BATCH_DEADLINE_S)
        finished = True
    except DrillError:
        finished = False
    elapsed = time.monotonic() - t0
    ran_by: dict[str, int] = {}
    for a in await checker.attempts_of(con, ids):
        if a["outcome"] == "succeeded":
            ran_by[a["worker_id"]] = ran_by.get(a["worker_id"], 0) + 1
    snapshot: list[dict[str, Any]] = []
    if not finished:  # the cause: what each session holds and offers, against what Postgres runs for it
        async with Client(addr) as client:
            for w in await client.list_workers():
                snapshot.append({"worker": w.worker_id, "capacity": w.capacity, "credit": w.credit,
                                 "session_leases": len(w.lease_ids),
                                 "running_in_postgres": len(await checker.held_by(con, w.worker_id))})
    gone = [w.name for w in workers if not w.alive() or w.pid != pids[w.name]]
    return FreshBatch(jobs=len(ids), workers=pids, finished=finished, elapsed_s=elapsed, ran_by=ran_by, gone=gone,
                      snapshot=snapshot)


def _fresh_invariant(report: CheckReport, fresh: FreshBatch, who: str) -> None:
    report.figures.update(fresh_batch_jobs=fresh.jobs, fresh_batch_s=round(fresh.elapsed_s, 2))
    report.invariant("DRILL", f"after the faults, {who} (the same processes, pids "
                     f"{', '.join(map(str, fresh.workers.values()))}) drained a fresh batch of {fresh.jobs} jobs",
                     fresh.violations(),
                     detail=f"in {fresh.elapsed_s:.1f}s, by "
                            + ", ".join(f"{w}={n}" for w, n in sorted(fresh.ran_by.items())))


def recovery_times(kills: Sequence[tuple[float, list[tuple[int, int]]]], attempts: Sequence[Any]) -> list[float]:
    """Per fault at time t holding (job, token) leases: seconds until the last of them started again elsewhere."""
    by_job: dict[int, list[Any]] = {}
    for a in attempts:
        by_job.setdefault(a["job_id"], []).append(a)
    out = []
    for t, held in kills:
        restarts = []
        for job_id, token in held:
            rows = by_job.get(job_id, [])
            mine = [a for a in rows if a["lease_token"] == token]
            if mine and mine[0]["outcome"] == "succeeded":
                continue  # it finished before the fault landed
            later = [a["started_at"] for a in rows if a["lease_token"] > token]
            if later:
                restarts.append(min(later).timestamp() - t)
        if restarts:
            out.append(max(restarts))
    return out


# -- worker-kill ---------------------------------------------------------------------------------


async def worker_kill(stack: Stack, short: bool) -> CheckReport:
    name = "worker-kill"
    jobs, kills = (2_000, 10) if short else (10_000, 100)
    n_workers, concurrency, work_ms = 4, 8, 20
    say(name, f"about {jobs} jobs, {kills} SIGKILLs, {n_workers} workers x {concurrency}, {work_ms} ms per job; "
              "the producer keeps submitting until the last kill")
    await stack.create_database()
    coord = await stack.start_coordinator()
    addr = coord.extra["addr"]
    generation = 0
    workers: list[Proc] = [stack.start_worker(f"w{i}-g0", addr, concurrency=concurrency) for i in range(n_workers)]
    producer = stack.start_producer("producer", addr, count=PRODUCER_CAP, payload={"ms": work_ms}, batch=50,
                                    extra=["--max-attempts", "100", "--max-backlog", str(BACKLOG)],
                                    until_stopped=True)
    con = await stack.connect()
    faults: list[tuple[float, list[tuple[int, int]]]] = []
    rng = random.Random(5)
    deadline = time.monotonic() + SETTLE_TIMEOUT_S + jobs / 20
    step = jobs // (kills + 1)  # finished jobs between two kills
    due = step
    finished = 0
    while len(faults) < kills:
        if time.monotonic() > deadline:
            raise DrillError(f"fault injection: only {len(faults)} of {kills} kills landed in time, because no live "
                             f"worker held a lease when one was due ({finished} jobs finished)")
        _producing(producer, f"{len(faults)} of {kills} kills")
        counts = await checker.state_counts(con)
        finished = sum(counts.get(s, 0) for s in TERMINAL)
        if finished < due:
            await asyncio.sleep(0.02)
            continue
        candidates = [w for w in workers if w.alive()]
        rng.shuffle(candidates)
        for victim in candidates:
            held = await checker.held_by(con, stack.holder(victim.name))
            if held:
                t = time.time()
                victim.kill()
                faults.append((t, held))
                due = finished + step
                generation += 1
                workers[workers.index(victim)] = stack.start_worker(
                    f"w{workers.index(victim)}-g{generation}", addr, concurrency=concurrency)
                if len(faults) % max(kills // 10, 1) == 0:
                    say(name, f"kill {len(faults)}/{kills}: {victim.name} held {len(held)} leases ({finished} done)")
                break
        else:
            await asyncio.sleep(0.02)
    produced = await stack.stop_producer(producer)
    say(name, f"{kills} kills done; the producer stopped at {produced} jobs; waiting for every job to finish")
    await wait_terminal(stack, con, produced)
    acked = stack.acknowledged()
    attempts = await checker.attempts_of(con, sorted({j for _, held in faults for j, _ in held}))
    rec = recovery_times(faults, attempts)

    def extra(report: CheckReport) -> None:
        report.figures.update(kills=len(faults), leases_killed=sum(len(h) for _, h in faults))
        report.figures.update({f"recovery_{k}_s": v for k, v in percentiles(rec).items()})
        report.invariant("DRILL", f"{kills} workers were SIGKILLed while holding leases",
                         [] if len(faults) == kills and all(h for _, h in faults) else [f"{len(faults)} kills"],
                         detail=f"{sum(len(h) for _, h in faults)} leases held by the victims")

    report = await finish(stack, con, Expectations(acknowledged=acked, final_states=EFFECT_OK), extra)
    await con.close()
    return report


EFFECT_OK = {"effect": frozenset({"succeeded"})}


def _events(stack: Stack, p: Proc, event: str) -> list[dict[str, Any]]:
    return [e for e in stack.events(p) if e.get("event") == event]


def _proc_state(pid: int) -> str:
    """The kernel's one-letter state of a process (R, S, D, T for stopped, Z), or why it is unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError as exc:
        return f"unknown ({exc.strerror})"


def _fenced(stack: Stack, p: Proc) -> set[tuple[int, int]]:
    """(job, token) of the leases an SDK worker saw refused or gave up (it reports nothing for them)."""
    out = set()
    for e in stack.events(p):
        if e.get("event") in ("lease lost", "completion rejected, lease lost") and "job_id" in e:
            out.add((int(e["job_id"]), int(e.get("fencing_token", -1))))
        elif e.get("event") == "effect" and e.get("verdict") == "stale":
            out.add((int(e["job_id"]), int(e["token"])))
    return out


async def _succeeded_elsewhere(con: Any, tokens: dict[int, int]) -> bool:
    """Every job in tokens succeeded under a newer token than the one given."""
    rows = await checker.attempts_of(con, list(tokens))
    done = {a["job_id"] for a in rows if a["outcome"] == "succeeded" and a["lease_token"] > tokens[a["job_id"]]}
    return len(done) == len(tokens)


async def _more_succeeded(con: Any, before: int) -> bool:
    return (await checker.state_counts(con)).get("succeeded", 0) > before


async def _submit(addr: str, kind: str, payload: bytes, key: str, **kw: Any) -> tuple[Any, bool]:
    from worker_sdk import Client

    async with Client(addr) as client:
        return await client.submit_ex(kind, payload, idempotency_key=key, **kw)


# -- zombie-worker ---------------------------------------------------------------------------------


async def zombie_worker(stack: Stack, short: bool) -> CheckReport:
    name = "zombie-worker"
    bait, normal, rounds = (4, 200, 1) if short else (8, 2_000, 3)
    work_ms = 2_500
    say(name, f"{rounds} round(s): a protocol-level zombie and an SDK zombie each take {bait} leases, are "
              f"SIGSTOPped past their TTL ({DRILL_LEASE_TTL_MS} ms) and resumed; {normal} more jobs meanwhile")
    await stack.create_database()
    coord = await stack.start_coordinator()
    addr = coord.extra["addr"]
    con = await stack.connect()
    helpers: list[Proc] = []
    zombies: list[tuple[Proc, Proc]] = []
    faults: list[tuple[float, list[tuple[int, int]]]] = []
    total = 0
    for r in range(rounds):
        raw = stack.start_zombie(f"zombie-raw-{r}", addr, capacity=bait, work_ms=work_ms)
        sdk = stack.start_worker(f"zombie-sdk-{r}", addr, concurrency=bait)
        await wait_for(lambda raw=raw, sdk=sdk: _events(stack, raw, "welcome")
                       and _events(stack, sdk, "worker started"), timeout=30, what="zombies connected")
        # The SDK zombie needs a moment to connect too: wait until the coordinator lists it.
        from worker_sdk import Client

        async with Client(addr) as client:
            async def both_listed(names: frozenset[str] = frozenset({raw.name, sdk.name})) -> bool:
                return names <= {w.worker_id for w in await client.list_workers()}
            await wait_for(both_listed, timeout=30, what="both zombies listed by the coordinator")
        p = stack.start_producer(f"bait-{r}", addr, count=2 * bait, payload={"ms": work_ms},
                                 extra=["--max-attempts", "10"])
        total += 2 * bait
        await wait_for(lambda raw=raw, sdk=sdk: len(_events(stack, raw, "started")) >= bait
                       and len(_events(stack, sdk, "started")) >= bait, timeout=30, what="zombies holding leases")
        t_stop = time.time()
        raw.signal(signal.SIGSTOP)
        sdk.signal(signal.SIGSTOP)
        held = [(e["job_id"], e["token"]) for z in (raw, sdk) for e in _events(stack, z, "started")]
        # What the SDK zombie holds now: once resumed it has free slots and takes new work, which it runs
        # normally (a zombie whose session kept it at zero credit, as before INV-013, took none).
        sdk_tokens = {(e["job_id"], e["token"]) for e in _events(stack, sdk, "started")}
        faults.append((t_stop, held))
        zombies.append((raw, sdk))
        say(name, f"round {r + 1}: zombies stopped holding {len(held)} leases; starting two healthy workers")
        if not helpers:
            helpers = [stack.start_worker(f"healthy-{i}", addr, concurrency=8) for i in range(2)]
        stack.start_producer(f"normal-{r}", addr, count=normal, payload={"ms": 10}, batch=100)
        total += normal

        await wait_for(lambda held=held: _succeeded_elsewhere(con, dict(held)), timeout=60,
                       what="the zombies' jobs re-run and succeeded elsewhere")
        paused = time.time() - t_stop
        say(name, f"round {r + 1}: their {len(held)} jobs succeeded elsewhere after {paused:.1f}s; SIGCONT")
        raw.signal(signal.SIGCONT)
        sdk.signal(signal.SIGCONT)
        await stack.wait_exit(raw, timeout=30, what="the raw zombie to report and exit")

        def sdk_stood_down(sdk: Proc = sdk, want: set[tuple[int, int]] = sdk_tokens) -> bool:
            return want <= _fenced(stack, sdk)

        try:
            await wait_for(sdk_stood_down, timeout=30, what="the SDK zombie to drop every lease it held")
        except DrillError as exc:
            missing = sorted(sdk_tokens - _fenced(stack, sdk))
            raise DrillError(f"{exc}; not dropped: {missing[:10]}; SDK zombie process state "
                             f"{_proc_state(sdk.pid)!r}; its log ends:\n{sdk.output()[-1500:]}") from None
        await stack.wait_exit(p, timeout=30, what="bait producer")
        # Idle healthy workers would take the next round's bait before the zombies could.
        await wait_terminal(stack, con, total)
        for h in helpers:
            await asyncio.to_thread(h.stop)
        helpers = []
        if r + 1 < rounds:
            # Resumed, this SDK zombie is a healthy idle worker with credit (INV-013), and would take the next
            # round's bait before the new zombies could. The last round's zombie stays for the drain below.
            await asyncio.to_thread(sdk.stop)
    # The last SDK zombie is the only worker left: the queue must not stop with it attached and idle.
    fresh = await same_workers_drain(stack, con, addr, [zombies[-1][1]], "after-zombies")
    say(name, f"fresh batch of {fresh.jobs} jobs after the pauses: "
              f"{'finished' if fresh.finished else 'NOT finished'} in {fresh.elapsed_s:.1f}s by {fresh.ran_by}")

    def extra(report: CheckReport) -> None:
        _fresh_invariant(report, fresh, "the resumed SDK zombies")
        raw_hb, raw_effects, raw_completes, sdk_lost, sdk_sent = [], [], [], 0, []
        for raw, sdk in zombies:
            raw_hb += [e for e in _events(stack, raw, "heartbeat verdict") if e["phase"] == "after pause"]
            raw_effects += _events(stack, raw, "effect")
            raw_completes += _events(stack, raw, "complete reply")
            sdk_lost += len(_events(stack, sdk, "lease lost"))
            sdk_sent += [e for e in _events(stack, sdk, "completion rejected, lease lost")]
        n = bait * rounds
        report.invariant("DRILL", "the resumed zombie's heartbeats were refused as STALE_LEASE",
                         [e for e in raw_hb if e["status"] != "REPLY_STATUS_STALE_LEASE"] or
                         ([] if len(raw_hb) == n else [f"{len(raw_hb)} verdicts for {n} leases"]),
                         detail=f"{len(raw_hb)}/{n} stale")
        report.invariant("DRILL", "the resumed zombie's completions were refused as STALE_LEASE",
                         [e for e in raw_completes if e["status"] != "REPLY_STATUS_STALE_LEASE"] or
                         ([] if len(raw_completes) == n else [f"{len(raw_completes)} replies for {n} leases"]),
                         detail=f"{len(raw_completes)}/{n} stale")
        report.invariant("DRILL", "the ledger refused the zombie's effects (a newer token had been seen)",
                         [e for e in raw_effects if e["verdict"] != "stale"], detail=f"{len(raw_effects)}/{n} stale")
        report.invariant("DRILL", "the SDK zombie dropped its leases itself (trust window) and applied nothing",
                         [] if sdk_lost >= n else [f"only {sdk_lost} of {n} leases dropped"],
                         detail=f"{sdk_lost} leases dropped locally, {len(sdk_sent)} completions sent and refused")
        report.invariant("DRILL", "the coordinator counted the zombie's completions as stale",
                         [] if report.figures["stale_completions_refused"] >= n else
                         [f"{report.figures['stale_completions_refused']} < {n}"])
        report.figures.update(zombies=2 * rounds, zombie_leases=2 * n,
                              zombie_stale_heartbeats=len(raw_hb), zombie_stale_completions=len(raw_completes))
        report.figures.update({f"takeover_{k}_s": v for k, v in percentiles(
            recovery_times(faults, attempts)).items()})

    attempts = await checker.attempts_of(con, sorted({j for _, h in faults for j, _ in h}))
    report = await finish(stack, con, Expectations(acknowledged=stack.acknowledged(), final_states=EFFECT_OK), extra)
    await con.close()
    return report


# -- coordinator-kill ------------------------------------------------------------------------------


async def coordinator_kill(stack: Stack, short: bool) -> CheckReport:
    name = "coordinator-kill"
    jobs, kills = (2_000, 2) if short else (10_000, 10)
    n_workers, work_ms = 3, 20
    say(name, f"about {jobs} jobs, {kills} coordinator SIGKILLs under load, restarted on the same (held) port; "
              "the producer keeps submitting until the last restart has completed jobs")
    await stack.create_database()
    coord = await stack.start_coordinator()
    addr, port = coord.extra["addr"], coord.extra["port"]
    for i in range(n_workers):
        stack.start_worker(f"w{i}", addr, concurrency=8)
    producer = stack.start_producer("producer", addr, count=PRODUCER_CAP, payload={"ms": work_ms}, batch=50,
                                    extra=["--max-attempts", "100", "--max-backlog", str(BACKLOG)],
                                    until_stopped=True)
    con = await stack.connect()
    restarts: list[float] = []
    recoveries: list[float] = []
    reconnects: list[float] = []
    in_flight: list[tuple[int, int]] = []  # (job, token) held by a worker at each kill
    from worker_sdk import Client

    for k in range(kills):
        async def progressed(goal: int = (k + 1) * jobs // (kills + 1), k: int = k) -> bool:
            _producing(producer, f"{k} of {kills} kills")
            counts = await checker.state_counts(con)
            return sum(counts.get(s, 0) for s in TERMINAL) >= goal

        await wait_for(progressed, timeout=SETTLE_TIMEOUT_S, what=f"progress before kill {k + 1}")
        await _wait_in_flight(stack, con, producer, f"kill {k + 1}")
        counts = await checker.state_counts(con)
        before = counts.get("succeeded", 0)
        for i in range(n_workers):
            in_flight += await checker.held_by(con, f"w{i}")
        t_kill = time.monotonic()
        coord.kill()
        coord = await stack.start_coordinator(port=port, wait=False)
        await stack.wait_serving(coord)
        restarts.append(time.monotonic() - t_kill)  # wait_serving's own figure starts after the restart
        async with Client(addr) as client:
            async def all_back() -> bool:
                return len(await client.list_workers()) >= n_workers
            await wait_for(all_back, timeout=60, what="every worker reconnected")
        reconnects.append(time.monotonic() - t_kill)

        await wait_for(lambda before=before: _more_succeeded(con, before), timeout=60,
                       what=f"jobs completing after restart {k + 1} (work was in flight and the producer is running)")
        recoveries.append(time.monotonic() - t_kill)
        say(name, f"kill {k + 1}/{kills}: SERVING again {restarts[-1]:.2f}s after SIGKILL, all workers back "
                  f"{reconnects[-1]:.2f}s, completing {recoveries[-1]:.2f}s")
    produced = await stack.stop_producer(producer)
    say(name, f"the producer stopped at {produced} jobs; waiting for every job to finish")
    await wait_terminal(stack, con, produced)
    # A lease held across a kill was resumed when its attempt ended succeeded under that token, not expired.
    outcome = {(a["job_id"], a["lease_token"]): a["outcome"]
               for a in await checker.attempts_of(con, sorted({j for j, _ in in_flight}))}
    resumed = sum(outcome.get(lease) == "succeeded" for lease in in_flight)

    def extra(report: CheckReport) -> None:
        report.figures.update(coordinator_kills=kills, leases_in_flight_at_kills=len(in_flight),
                              leases_resumed=resumed,
                              resumed_ratio=round(resumed / len(in_flight), 3) if in_flight else 0.0)
        report.figures.update({f"serving_again_{k}_s": v for k, v in percentiles(restarts).items()})
        report.figures.update({f"workers_back_{k}_s": v for k, v in percentiles(reconnects).items()})
        report.figures.update({f"first_completion_{k}_s": v for k, v in percentiles(recoveries).items()})
        stats = stack.producer_stats()
        report.figures.update(producer_retries=sum(v for k, v in stats.items() if k.startswith("retry_")),
                              producer_found_existing=stats.get("found_existing", 0))
        report.invariant("DRILL", f"the coordinator was SIGKILLed {kills} times under load and came back",
                         [] if len(recoveries) == kills else [f"{len(recoveries)} recoveries"])

    report = await finish(stack, con, Expectations(acknowledged=stack.acknowledged(), final_states=EFFECT_OK), extra)
    await con.close()
    return report


# -- postgres-restart ------------------------------------------------------------------------------


async def postgres_restart(stack: Stack, short: bool) -> CheckReport:
    from coordinator.drills.cluster import PrivateCluster
    from coordinator.drills.stack import NOT_SERVING, SERVING, health_status

    name = "postgres-restart"
    jobs, outages, outage_s = (1_000, 1, 4.0) if short else (5_000, 3, 6.0)
    cluster = PrivateCluster().init()
    say(name, f"about {jobs} jobs; private cluster on port {cluster.port} ({cluster.bin}); {outages} outage(s) of "
              f"{outage_s:g}s (pg_ctl stop -m fast, then start); the producer runs until the last outage is over")
    cluster.start()
    try:
        await stack.create_database(admin=cluster.dsn)
        coord = await stack.start_coordinator()
        addr = coord.extra["addr"]
        workers = [stack.start_worker(f"w{i}", addr, concurrency=8) for i in range(3)]
        producer = stack.start_producer("producer", addr, count=PRODUCER_CAP, payload={"ms": 20}, batch=25,
                                        extra=["--max-attempts", "100", "--max-backlog", str(BACKLOG)],
                                        until_stopped=True)
        con = await stack.connect()
        probes: list[int] = []
        down_codes: list[str] = []
        not_serving_after: list[float] = []
        serving_after: list[float] = []
        completing_after: list[float] = []
        for k in range(outages):
            async def progressed(con: Any = con, goal: int = (k + 1) * jobs // (outages + 1), k: int = k) -> bool:
                _producing(producer, f"{k} of {outages} outages")
                counts = await checker.state_counts(con)
                return sum(counts.get(s, 0) for s in TERMINAL) >= goal

            await wait_for(progressed, timeout=SETTLE_TIMEOUT_S, what=f"progress before outage {k + 1}")
            await _wait_in_flight(stack, con, producer, f"outage {k + 1}")
            await con.close()
            t_down = time.monotonic()
            await asyncio.to_thread(cluster.stop)
            await wait_for(lambda: _is(health_status(addr), NOT_SERVING), timeout=30, what="health NOT_SERVING")
            not_serving_after.append(time.monotonic() - t_down)
            code = await _submit_code(addr, f"probe-{k}")
            down_codes.append(code)
            say(name, f"outage {k + 1}: NOT_SERVING after {not_serving_after[-1]:.2f}s; Submit answered {code}")
            while time.monotonic() - t_down < outage_s:  # the fault's length is the drill's parameter
                if not coord.alive():
                    raise DrillError(f"the coordinator died during the outage:\n{coord.output()[-3000:]}")
                await asyncio.sleep(0.1)
            t_up = time.monotonic()
            await asyncio.to_thread(cluster.start)
            await wait_for(lambda: _is(health_status(addr), SERVING), timeout=60, what="health SERVING again")
            serving_after.append(time.monotonic() - t_up)
            con = await stack.connect()
            before = (await checker.state_counts(con)).get("succeeded", 0)

            await wait_for(lambda con=con, before=before: _more_succeeded(con, before), timeout=60,
                           what=f"jobs completing after outage {k + 1} (work was in flight, the producer runs)")
            completing_after.append(time.monotonic() - t_up)
            job, _created = await _submit(addr, "effect", b"{}", f"probe-{k}")
            probes.append(int(job.id))
            say(name, f"outage {k + 1}: SERVING {serving_after[-1]:.2f}s after Postgres started, completing "
                      f"after {completing_after[-1]:.2f}s; probe retried with its key -> job {job.id}")
        produced = await stack.stop_producer(producer)
        say(name, f"the producer stopped at {produced} jobs; waiting for every job to finish")
        await wait_terminal(stack, con, produced + outages)
        fresh = await same_workers_drain(stack, con, addr, workers, "after-outages")
        say(name, f"fresh batch of {fresh.jobs} jobs after the outages: "
                  f"{'finished' if fresh.finished else 'NOT finished'} in {fresh.elapsed_s:.1f}s by {fresh.ran_by}")

        def extra(report: CheckReport) -> None:
            _fresh_invariant(report, fresh, "the workers that lived through the outages")
            report.figures.update(outages=outages, outage_s=outage_s)
            for label, vals in (("not_serving", not_serving_after), ("serving_again", serving_after),
                                ("first_completion", completing_after)):
                report.figures.update({f"{label}_{k}_s": v for k, v in percentiles(vals).items()})
            stats = stack.producer_stats()
            report.figures.update(producer_retries=sum(v for k, v in stats.items() if k.startswith("retry_")),
                                  producer_found_existing=stats.get("found_existing", 0))
            report.invariant("DRILL", "the coordinator stayed up through every outage (same process)",
                             [] if coord.alive() and len(stack.coordinators) == 1 else ["coordinator restarted"])
            report.invariant("DRILL", "health went NOT_SERVING then SERVING for each outage",
                             [] if len(serving_after) == outages == len(not_serving_after) else ["missing transition"])
            report.invariant("DRILL", "Submit answered UNAVAILABLE during the outage",
                             [c for c in down_codes if c != "UNAVAILABLE"], detail=", ".join(down_codes))

        report = await finish(stack, con, Expectations(acknowledged=stack.acknowledged() + probes,
                                                       final_states=EFFECT_OK), extra)
        await con.close()
        return report
    finally:
        await stack.close()
        await asyncio.to_thread(cluster.destroy, stack.workdir)


async def _is(status: Awaitable[int | None], want: int) -> bool:
    return await status == want


async def _submit_code(addr: str, key: str) -> str:
    import grpc

    from worker_sdk._proto.faultline.v1 import job_service_pb2 as jpb
    from worker_sdk._proto.faultline.v1 import job_service_pb2_grpc

    async with grpc.aio.insecure_channel(addr) as ch:
        try:
            await job_service_pb2_grpc.JobServiceStub(ch).Submit(  # type: ignore[no-untyped-call]
                jpb.SubmitRequest(kind="effect", payload=b"{}", idempotency_key=key), timeout=10)
            return "OK"
        except grpc.aio.AioRpcError as exc:
            return exc.code().name


# -- partition -------------------------------------------------------------------------------------


async def partition(stack: Stack, short: bool) -> CheckReport:
    from coordinator.drills.proxy import FaultProxy

    name = "partition"
    held_n, normal, rounds = (6, 200, 1) if short else (8, 2_000, 3)
    work_ms = 1_000
    say(name, f"{rounds} round(s): a worker behind a TCP proxy takes {held_n} leases, the proxy black-holes the "
              f"link past the lease TTL, the jobs run elsewhere, then the link heals")
    await stack.create_database()
    coord = await stack.start_coordinator()
    addr = coord.extra["addr"]
    con = await stack.connect()
    proxies: list[FaultProxy] = []
    cut: list[Proc] = []
    faults: list[tuple[float, list[tuple[int, int]]]] = []
    healthy: list[Proc] = []
    total = 0
    try:
        for r in range(rounds):
            proxy = FaultProxy("127.0.0.1", coord.extra["port"])
            proxies.append(proxy)
            pport = (await proxy.start()).port
            w = stack.start_worker(f"cut-off-{r}", f"127.0.0.1:{pport}", concurrency=held_n)
            cut.append(w)
            from worker_sdk import Client

            async with Client(addr) as client:
                async def listed(name: str = w.name) -> bool:
                    return name in {x.worker_id for x in await client.list_workers()}
                await wait_for(listed, timeout=30, what="the cut-off worker connected through the proxy")
            p = stack.start_producer(f"held-{r}", addr, count=held_n, payload={"ms": work_ms},
                                     extra=["--max-attempts", "10"])
            total += held_n
            await wait_for(lambda w=w: len(_events(stack, w, "started")) >= held_n, timeout=30,
                           what="the cut-off worker running its jobs")
            t_cut = time.time()
            proxy.partition()
            held = [(e["job_id"], e["token"]) for e in _events(stack, w, "started")]
            faults.append((t_cut, held))
            say(name, f"round {r + 1}: link cut while {w.name} runs {len(held)} jobs of {work_ms} ms")
            if not healthy:
                healthy = [stack.start_worker(f"healthy-{i}", addr, concurrency=8) for i in range(2)]
            stack.start_producer(f"normal-{r}", addr, count=normal, payload={"ms": 10})
            total += normal
            await wait_for(lambda held=held: _succeeded_elsewhere(con, dict(held)), timeout=60,
                           what="the cut-off worker's jobs succeeded elsewhere")
            say(name, f"round {r + 1}: its jobs succeeded elsewhere {time.time() - t_cut:.1f}s after the cut; healing")
            proxy.heal()

            await wait_for(lambda w=w, held=held: set(held) <= _fenced(stack, w), timeout=60,
                           what="the healed worker's completions refused (or its leases dropped)")
            await stack.wait_exit(p, timeout=30, what="held producer")
            # Idle workers (the healthy ones, and this round's healed one) would take the next round's jobs
            # before the next cut-off worker could.
            await wait_terminal(stack, con, total)
            for h in [*healthy, w]:
                await asyncio.to_thread(h.stop)
            healthy = []

        def extra(report: CheckReport) -> None:
            n = held_n * rounds
            rejected = sum(len(_events(stack, w, "completion rejected, lease lost")) for w in cut)
            dropped = sum(len(_events(stack, w, "lease lost")) for w in cut)
            report.figures.update(partitions=rounds, partitioned_leases=n, healed_completions_refused=rejected,
                                  leases_dropped_by_trust_window=dropped)
            report.figures.update({f"ran_elsewhere_{k}_s": v for k, v in percentiles(
                recovery_times(faults, attempts)).items()})
            report.invariant("DRILL", "every partitioned lease was fenced after the heal (completion refused as stale "
                             "or lease dropped by the worker)",
                             [] if rejected + dropped >= n else [f"{rejected + dropped} < {n}"],
                             detail=f"{rejected} completions refused STALE_LEASE, {dropped} leases dropped locally")

        attempts = await checker.attempts_of(con, sorted({j for _, h in faults for j, _ in h}))
        report = await finish(stack, con, Expectations(acknowledged=stack.acknowledged(), final_states=EFFECT_OK),
                              extra)
        await con.close()
        return report
    finally:
        for proxy in proxies:
            await proxy.close()


async def partition_netns(stack: Stack, short: bool) -> CheckReport:
    from urllib.parse import urlsplit

    from coordinator.drills import netns
    from coordinator.drills.proxy import FaultProxy

    name = "partition-netns"
    why = netns.available()
    if why is not None:
        raise DrillError(f"the network-namespace variant {why}")
    held_n, normal = (6, 200) if short else (8, 2_000)
    work_ms = 1_000
    link = netns.NetnsLink()
    say(name, f"a worker in network namespace {link.ns} takes {held_n} leases; blackhole routes drop every packet "
              "on its veth past the lease TTL; the jobs run elsewhere; then the link heals")
    relay: FaultProxy | None = None
    try:
        await asyncio.to_thread(link.up)
        await stack.create_database()
        con = await stack.connect()
        coord = await stack.start_coordinator(host=link.host_ip)
        addr = coord.extra["addr"]
        # The namespace reaches the ledger's Postgres only over the veth: a relay on the host side of it.
        db = urlsplit(stack.dsn)
        relay = FaultProxy(db.hostname or "127.0.0.1", db.port or 5432, listen_host=link.host_ip)
        rport = (await relay.start()).port
        ns_dsn = stack.dsn.replace(f"@{db.hostname}:{db.port or 5432}/", f"@{link.host_ip}:{rport}/", 1)
        w = stack.start_worker("in-netns", addr, concurrency=held_n, dsn=ns_dsn, prefix=link.exec_prefix)
        from worker_sdk import Client

        async with Client(addr) as client:
            async def listed() -> bool:
                return "in-netns" in {x.worker_id for x in await client.list_workers()}
            await wait_for(listed, timeout=30, what="the namespaced worker connected over the veth")
        p = stack.start_producer("held", addr, count=held_n, payload={"ms": work_ms}, extra=["--max-attempts", "10"])
        await wait_for(lambda: len(_events(stack, w, "started")) >= held_n, timeout=30,
                       what="the namespaced worker running its jobs")
        t_cut = time.time()
        await asyncio.to_thread(link.partition)
        held = [(e["job_id"], e["token"]) for e in _events(stack, w, "started")]
        say(name, f"link black-holed while the worker runs {len(held)} jobs of {work_ms} ms")
        for i in range(2):
            stack.start_worker(f"healthy-{i}", addr, concurrency=8)
        stack.start_producer("normal", addr, count=normal, payload={"ms": 10})
        await wait_for(lambda: _succeeded_elsewhere(con, dict(held)), timeout=60,
                       what="the namespaced worker's jobs succeeded elsewhere")
        say(name, f"its jobs succeeded elsewhere {time.time() - t_cut:.1f}s after the cut; healing")
        await asyncio.to_thread(link.heal)
        await wait_for(lambda: set(held) <= _fenced(stack, w), timeout=90,
                       what="the healed worker's late writes refused (or its leases dropped)")
        await stack.wait_exit(p, timeout=30, what="held producer")
        await wait_terminal(stack, con, held_n + normal)
        attempts = await checker.attempts_of(con, [j for j, _ in held])

        def extra(report: CheckReport) -> None:
            rejected = len(_events(stack, w, "completion rejected, lease lost"))
            dropped = len(_events(stack, w, "lease lost"))
            stale_effects = len([e for e in _events(stack, w, "effect") if e["verdict"] == "stale"])
            report.figures.update(partitioned_leases=len(held), healed_completions_refused=rejected,
                                  leases_dropped_by_trust_window=dropped, stale_ledger_writes=stale_effects)
            report.figures.update({f"ran_elsewhere_{k}_s": v for k, v in percentiles(
                recovery_times([(t_cut, held)], attempts)).items()})
            report.invariant("DRILL", "every partitioned lease was fenced after the heal",
                             sorted(set(held) - _fenced(stack, w)),
                             detail=f"{rejected} completions refused, {dropped} leases dropped locally, "
                                    f"{stale_effects} ledger writes refused as stale")

        report = await finish(stack, con, Expectations(acknowledged=stack.acknowledged(), final_states=EFFECT_OK),
                              extra)
        await con.close()
        return report
    finally:
        if relay is not None:
            await relay.close()
        await stack.close()
        await asyncio.to_thread(link.down)


# -- poison-job ------------------------------------------------------------------------------------


async def _respawn(stack: Stack, workers: list[Proc], addr: str, concurrency: int, counter: list[int]) -> None:
    """Keep the worker pool at size: a worker that died (a crashing poison job) is replaced."""
    while True:
        for i, w in enumerate(workers):
            if not w.alive():
                counter[0] += 1
                workers[i] = stack.start_worker(f"w{i}-r{counter[0]}", addr, concurrency=concurrency)
        await asyncio.sleep(0.1)


async def poison_job(stack: Stack, short: bool) -> CheckReport:
    name = "poison-job"
    good, raising, crashing = (500, 10, 3) if short else (5_000, 50, 10)
    say(name, f"{good} good jobs, {raising} poison jobs that raise (max_attempts 3), {crashing} that crash their "
              "worker process (max_attempts 2)")
    await stack.create_database()
    coord = await stack.start_coordinator()
    addr = coord.extra["addr"]
    workers = [stack.start_worker(f"w{i}", addr, concurrency=8) for i in range(3)]
    respawns = [0]
    keeper = asyncio.create_task(_respawn(stack, workers, addr, 8, respawns))
    t0 = time.monotonic()
    stack.start_producer("poison-raise", addr, count=raising, kind="poison", payload={"mode": "raise"},
                         extra=["--max-attempts", "3"])
    stack.start_producer("poison-crash", addr, count=crashing, kind="poison", payload={"mode": "crash"},
                         extra=["--max-attempts", "2"])
    stack.start_producer("good", addr, count=good, payload={"ms": 10}, extra=["--max-attempts", "20"])
    con = await stack.connect()
    try:
        total = good + raising + crashing
        await wait_terminal(stack, con, total)
        elapsed = time.monotonic() - t0
    finally:
        keeper.cancel()
    say(name, f"all {total} jobs terminal after {elapsed:.1f}s; {respawns[0]} worker(s) replaced after crashes")

    want = {}
    for p in stack.procs:
        if p.name.startswith("poison-"):
            for r in stack.read_jsonl(p.extra["acks"]):
                if "id" in r:
                    want[int(r["id"])] = 3 if p.name == "poison-raise" else 2
    used: dict[int, int] = {}
    for a in await checker.attempts_of(con, sorted(want)):
        used[a["job_id"]] = used.get(a["job_id"], 0) + 1

    def extra(report: CheckReport) -> None:
        report.figures.update(poison_jobs=raising + crashing, worker_crashes=respawns[0], settle_s=elapsed)
        report.invariant("DRILL", "each poison job ran exactly max_attempts attempts, then was dead-lettered",
                         [{"id": j, "attempts": used.get(j, 0), "max": m} for j, m in want.items() if used.get(j) != m],
                         detail=f"{len(want)} poison jobs")

    report = await finish(stack, con, Expectations(
        acknowledged=stack.acknowledged(),
        final_states={"effect": frozenset({"succeeded"}), "poison": frozenset({"dead_lettered"})}), extra)
    await con.close()
    return report


# -- hung-handler ----------------------------------------------------------------------------------


async def hung_handler(stack: Stack, short: bool) -> CheckReport:
    name = "hung-handler"
    n_async, n_sync, normal = (6, 3, 100) if short else (30, 10, 1_000)
    timeout_ms = 1_000
    say(name, f"{n_async} async handlers and {n_sync} thread handlers (ignoring cancellation) hang on their first "
              f"attempt, execution timeout {timeout_ms} ms; {normal} normal jobs alongside")
    await stack.create_database()
    coord = await stack.start_coordinator()
    addr = coord.extra["addr"]
    workers = [stack.start_worker(f"w{i}", addr, concurrency=16) for i in range(2)]
    t0 = time.monotonic()
    stack.start_producer("hang-async", addr, count=n_async, kind="hang", payload={"hang_attempts": 1, "ms": 10},
                         extra=["--max-attempts", "3", "--execution-timeout-ms", str(timeout_ms)])
    stack.start_producer("hang-sync", addr, count=n_sync, kind="hang-sync", payload={"hang_attempts": 1, "ms": 10},
                         extra=["--max-attempts", "3", "--execution-timeout-ms", str(timeout_ms)])
    stack.start_producer("normal", addr, count=normal, payload={"ms": 10})
    con = await stack.connect()
    total = n_async + n_sync + normal
    await wait_terminal(stack, con, total)
    elapsed = time.monotonic() - t0
    for w in workers:
        w.kill()  # their stuck threads would keep them alive past SIGTERM
    say(name, f"all {total} jobs terminal after {elapsed:.1f}s")

    def extra(report: CheckReport) -> None:
        outcomes = report.figures.get("attempt_outcomes", {})
        timed_out = outcomes.get("execution_timeout", 0) + outcomes.get("failed", 0)
        report.figures.update(hung=n_async + n_sync, first_attempts_timed_out=timed_out, settle_s=elapsed)
        report.invariant("DRILL", "every hung first attempt was timed out (by the SDK or the coordinator's reaper) "
                         "and the retry succeeded", [] if timed_out >= n_async + n_sync else
                         [f"{timed_out} timed-out attempts for {n_async + n_sync} hung jobs"],
                         detail=", ".join(f"{k}={v}" for k, v in sorted(outcomes.items())))

    effect_like = frozenset({"succeeded"})
    report = await finish(stack, con, Expectations(
        acknowledged=stack.acknowledged(), effect_kinds=frozenset({"effect", "hang", "hang-sync"}),
        final_states={"effect": effect_like, "hang": effect_like, "hang-sync": effect_like}), extra)
    await con.close()
    return report


# -- duplicate-submits -----------------------------------------------------------------------------


async def duplicate_submits(stack: Stack, short: bool) -> CheckReport:
    import grpc

    from worker_sdk._proto.faultline.v1 import job_service_pb2 as jpb
    from worker_sdk._proto.faultline.v1 import job_service_pb2_grpc

    name = "duplicate-submits"
    concurrent, keys = (1_000, 1) if short else (1_000, 10)
    channels_n = 20
    say(name, f"{concurrent} concurrent Submits for each of {keys} key(s), over {channels_n} channels")
    await stack.create_database()
    coord = await stack.start_coordinator()
    addr = coord.extra["addr"]
    stack.start_worker("w0", addr, concurrency=8)
    channels = [grpc.aio.insecure_channel(addr) for _ in range(channels_n)]
    stubs = [job_service_pb2_grpc.JobServiceStub(c) for c in channels]  # type: ignore[no-untyped-call]
    answers: dict[str, list[tuple[str, bool]]] = {}
    errors: list[str] = []
    try:
        for k in range(keys):
            key = f"the-one-key-{k}"

            async def one(i: int, key: str = key) -> tuple[str, bool] | None:
                try:
                    r = await stubs[i % channels_n].Submit(
                        jpb.SubmitRequest(kind="effect", payload=b'{"ms": 5}', idempotency_key=key), timeout=30)
                    return r.job.id, r.created
                except grpc.aio.AioRpcError as exc:
                    errors.append(exc.code().name)
                    return None

            got = await asyncio.gather(*(one(i) for i in range(concurrent)))
            answers[key] = [g for g in got if g is not None]
    finally:
        for c in channels:
            await c.close()
    con = await stack.connect()
    await wait_terminal(stack, con, keys)
    ids = sorted({int(i) for a in answers.values() for i, _ in a})

    def extra(report: CheckReport) -> None:
        bad = []
        for key, a in answers.items():
            created = sum(1 for _, c in a if c)
            distinct = {i for i, _ in a}
            if len(a) != concurrent or created != 1 or len(distinct) != 1:
                bad.append({"key": key, "answers": len(a), "created": created, "distinct_ids": len(distinct)})
        report.invariant("DRILL", f"{concurrent} concurrent Submits with one key: one job, one created=true, "
                         "every answer the same id", bad + [f"errors: {errors[:5]}"] * bool(errors),
                         detail=f"{keys * concurrent} answers, {len(ids)} job(s)")
        report.figures.update(submits=keys * concurrent, keys=keys, distinct_jobs=len(ids))

    report = await finish(stack, con, Expectations(acknowledged=ids, final_states=EFFECT_OK), extra)
    await con.close()
    return report


# -- pool-exhaustion -------------------------------------------------------------------------------

# Drill-side fault injection in the private cluster (superuser statements, not Faultline queries).
# The workers' ledger and the hog connect as "drill" (owner of the database); the coordinator as its own
# role, a member of "drill", so that Postgres can refuse it alone, which no connection race can undo.
POOL_DRILL_ROLES_SQL = ("CREATE ROLE drill LOGIN NOSUPERUSER CREATEDB; "
                        "CREATE ROLE faultline_coordinator LOGIN NOSUPERUSER IN ROLE drill")
REFUSE_COORDINATOR_SQL = "ALTER ROLE faultline_coordinator CONNECTION LIMIT 0"
ADMIT_COORDINATOR_SQL = "ALTER ROLE faultline_coordinator CONNECTION LIMIT -1"
TERMINATE_COORDINATOR_SQL = ("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                             "WHERE application_name = 'faultline-coordinator'")


async def pool_exhaustion(stack: Stack, short: bool) -> CheckReport:
    import asyncpg

    from coordinator.drills.cluster import PrivateCluster
    from coordinator.drills.stack import NOT_SERVING, SERVING, health_status, with_database

    name = "pool-exhaustion"
    jobs, hold_s = (500, 4.0) if short else (3_000, 10.0)
    max_conn = 30
    cluster = PrivateCluster(max_connections=max_conn).init()
    say(name, f"about {jobs} jobs; private cluster with max_connections={max_conn}; for {hold_s:g}s the drill holds "
              "every free connection slot and Postgres refuses the coordinator's role, whose sessions are cut")
    cluster.start()
    hog: list[Any] = []
    su: Any = None
    try:
        su = await asyncpg.connect(cluster.dsn)
        await su.execute(POOL_DRILL_ROLES_SQL)
        user_admin = cluster.dsn.replace("postgres@", "drill@", 1)
        await stack.create_database(admin=user_admin)
        coordinator_dsn = with_database(cluster.dsn.replace("postgres@", "faultline_coordinator@", 1), stack.db_name)
        coord = await stack.start_coordinator(dsn=coordinator_dsn)
        addr = coord.extra["addr"]
        for i in range(2):
            stack.start_worker(f"w{i}", addr, concurrency=4)
        producer = stack.start_producer("producer", addr, count=PRODUCER_CAP, payload={"ms": 20}, batch=25,
                                        extra=["--max-attempts", "100", "--max-backlog", str(BACKLOG)],
                                        until_stopped=True)
        await su.close()
        su = await asyncpg.connect(with_database(cluster.dsn, stack.db_name))  # the checker reads as superuser
        con = su

        async def progressed() -> bool:
            _producing(producer, "no exhaustion")
            counts = await checker.state_counts(con)
            return sum(counts.get(s, 0) for s in TERMINAL) >= jobs // 2

        await wait_for(progressed, timeout=SETTLE_TIMEOUT_S, what="progress before the exhaustion")
        await _wait_in_flight(stack, con, producer, "the exhaustion")
        t0 = time.monotonic()
        await su.execute(REFUSE_COORDINATOR_SQL)
        while True:
            try:
                hog.append(await asyncpg.connect(with_database(user_admin, stack.db_name), timeout=5))
            except asyncpg.TooManyConnectionsError:
                break
        cut = await su.fetchval(TERMINATE_COORDINATOR_SQL)
        await wait_for(lambda: _is(health_status(addr), NOT_SERVING), timeout=30, what="health NOT_SERVING")
        code = await _submit_code(addr, "probe-exhausted")
        say(name, f"{len(hog)} free slots taken, {cut} coordinator connections cut; NOT_SERVING after "
                  f"{time.monotonic() - t0:.2f}s; Submit answered {code}")
        while time.monotonic() - t0 < hold_s:  # the fault's length is the drill's parameter
            if not coord.alive():
                raise DrillError(f"the coordinator died while Postgres refused connections:\n{coord.output()[-3000:]}")
            await asyncio.sleep(0.1)
        taken = len(hog)
        for c in hog:
            await c.close()
        hog.clear()
        await su.execute(ADMIT_COORDINATOR_SQL)
        t_up = time.monotonic()
        await wait_for(lambda: _is(health_status(addr), SERVING), timeout=60, what="health SERVING again")
        serving_again = time.monotonic() - t_up
        job, _ = await _submit(addr, "effect", b"{}", "probe-exhausted")

        async def completing(before: int = (await checker.state_counts(con)).get("succeeded", 0)) -> bool:
            _producing(producer, "the exhaustion")
            return await _more_succeeded(con, before)

        await wait_for(completing, timeout=60, what="jobs completing after the exhaustion (the producer is running)")
        produced = await stack.stop_producer(producer)
        await wait_terminal(stack, con, produced + 1)
        say(name, f"SERVING {serving_again:.2f}s after Postgres admitted the coordinator again")

        def extra(report: CheckReport) -> None:
            report.figures.update(slots_taken=taken, coordinator_connections_cut=cut, serving_again_s=serving_again)
            report.invariant("DRILL", "the coordinator stayed up while Postgres refused connections",
                             [] if coord.alive() and len(stack.coordinators) == 1 else ["coordinator restarted"])
            report.invariant("DRILL", "Submit answered UNAVAILABLE or RESOURCE_EXHAUSTED, not INTERNAL",
                             [] if code in ("UNAVAILABLE", "RESOURCE_EXHAUSTED") else [code], detail=code)

        report = await finish(stack, con, Expectations(acknowledged=[*stack.acknowledged(), int(job.id)],
                                                       final_states=EFFECT_OK), extra)
        return report
    finally:
        for c in hog:
            await c.close()
        if su is not None:
            await su.close()
        await stack.close()
        await asyncio.to_thread(cluster.destroy, stack.workdir)


@dataclass(frozen=True, slots=True)
class DrillSpec:
    """One drill: its function and what it shows."""

    name: str
    run: Callable[[Stack, bool], Awaitable[CheckReport]]
    about: str
    needs_root: bool = False


DRILLS: dict[str, DrillSpec] = {
    s.name: s for s in [
        DrillSpec("worker-kill", worker_kill,
                  "SIGKILL workers again and again under load; every job still succeeds, each effect once"),
        DrillSpec("zombie-worker", zombie_worker,
                  "SIGSTOP workers past their lease, then SIGCONT; their heartbeats and completions are refused"),
        DrillSpec("coordinator-kill", coordinator_kill,
                  "SIGKILL the coordinator under load and restart it; workers and producers reconnect"),
        DrillSpec("postgres-restart", postgres_restart,
                  "stop and start a private Postgres under load; NOT_SERVING, UNAVAILABLE, then recovery"),
        DrillSpec("partition", partition,
                  "black-hole a worker's link past its lease; the job runs elsewhere, the healed completion is fenced"),
        DrillSpec("partition-netns", partition_netns,
                  "the partition drill with a real black hole: a network namespace and blackhole routes (root only)",
                  needs_root=True),
        DrillSpec("poison-job", poison_job,
                  "jobs that always fail or crash their worker are dead-lettered; the queue keeps moving"),
        DrillSpec("hung-handler", hung_handler,
                  "handlers that never return are timed out and retried"),
        DrillSpec("duplicate-submits", duplicate_submits,
                  "1,000 concurrent Submits with one idempotency key make one job"),
        DrillSpec("pool-exhaustion", pool_exhaustion,
                  "Postgres refuses new connections; the coordinator answers UNAVAILABLE and does not crash"),
    ]
}
