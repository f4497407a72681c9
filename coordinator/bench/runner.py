"""One benchmark run of one system, and the loop over runs and systems that `faultline bench` drives.

A run, for either system (Faultline here, a peer in peers.py):

    fresh database -> server (Faultline: its own coordinator subprocess) -> consumer subprocesses
      -> warm-up job -> idle phase: IDLE_JOBS jobs one at a time, each waited for
      -> load phase: N producer tasks submit --jobs jobs (Submit, or SubmitBatch of --batch)
         while the consumers run them; end-to-end = first submit to last acknowledged completion
      -> consumers stop and hand back their submit-to-start samples -> teardown, drop the database

Drain mode (--drain, implied by --backlog) skips the producers' race: it queues --jobs + --backlog jobs
first, then starts the consumers and measures the claim rate over the first --jobs completions (between
10% and 100% of them, so process start-up does not count).

Clocks: submit and start stamps are time.time_ns() in different processes on one machine (one clock).
CPU and RSS come from /proc/<pid>; "machine CPU" is every core's busy time from /proc/stat over the
load phase, so anything else running on the machine shows up in it. Messages, statements, commits, WAL and
the CPU of the run's own Postgres processes over the load phase come from work.py.

--coordinators N starts N coordinators on the run's database; worker i talks to coordinator i mod N and
producer j to coordinator j mod N (the idle phase uses coordinator 0's producer).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import socket
import sys
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from coordinator.bench.stats import (
    RunResult,
    cpu_seconds,
    latency_summary,
    postgres_cpu_seconds,
    rss_mb,
    self_cpu_seconds,
)
from coordinator.bench.work import STATS_FLUSH_S_DEFAULT, PgSnapshot, PostgresProbe, add_counters, scrape
from coordinator.bench.worker import HELD_QUEUE, KIND, PAYLOAD, QUEUE

DATABASE_URL_DEFAULT = "postgresql://postgres@127.0.0.1:5432/postgres"
# bench --flow: off (no settings row: the plain claim), capped (max_running far above the load: the limited
# claim's own cost), keys (per-key concurrency 2 over --keys distinct keys, the backlog included), paused /
# throttled (the --backlog waits in a second queue that is paused / limited to THROTTLED_RATE per second,
# which the workers also serve).
FLOW_MODES = ("off", "capped", "keys", "paused", "throttled")
FLOW_CAPPED_MAX_RUNNING = 1_000_000
FLOW_PER_KEY = 2
THROTTLED_RATE = 1.0
IDLE_JOBS_DEFAULT = 200
# Pause after each idle job completes, so the next one really finds every process idle.
IDLE_GAP_S = 0.002
READY_TIMEOUT_S = 60.0
PROGRESS_INTERVAL_S = 1.0
STOP_TIMEOUT_S = 20.0
PHASE_IDLE, PHASE_LOAD, PHASE_DRAIN, PHASE_WARMUP = 0, 1, 2, 3
BACKLOG_BATCH = 1000
BACKLOG_PRODUCERS = 4
DRAIN_WINDOW_START = 0.1


@dataclass(frozen=True, slots=True, kw_only=True)
class BenchConfig:
    """What one `faultline bench` invocation asks for."""

    jobs: int = 20_000
    producers: int = 4
    workers: int = 1
    coordinators: int = 1
    concurrency: int = 20
    # Leases each worker buffers beyond concurrency; None takes the SDK's default.
    prefetch: int | None = None
    batch: int = 10
    sleep_ms: float = 0.0
    idle_jobs: int = IDLE_JOBS_DEFAULT
    runs: int = 1
    database_url: str = DATABASE_URL_DEFAULT
    addr: str | None = None
    drain: bool = False
    backlog: int = 0
    profile: str | None = None
    keep_logs: bool = False
    stats_wait_s: float = STATS_FLUSH_S_DEFAULT
    # Flow limits on the bench queues (FLOW_MODES), and how many distinct concurrency keys --flow keys uses.
    flow: str = "off"
    keys: int = 1000

    def __post_init__(self) -> None:
        if self.flow not in FLOW_MODES:
            raise ValueError(f"flow must be one of {', '.join(FLOW_MODES)}")
        if self.keys < 1:
            raise ValueError("keys must be >= 1")
        if min(self.jobs, self.producers, self.workers, self.coordinators, self.concurrency, self.batch) < 1:
            raise ValueError("jobs, producers, workers, coordinators, concurrency and batch must be >= 1")
        if self.addr and self.coordinators != 1:
            raise ValueError("--addr names one running coordinator; --coordinators needs the bench to start them")
        if self.runs < 1 or self.idle_jobs < 0 or self.backlog < 0 or self.sleep_ms < 0 or self.stats_wait_s < 0:
            raise ValueError("runs >= 1; idle_jobs, backlog, sleep_ms and stats_wait_s >= 0")


def payload(phase: int) -> bytes:
    return PAYLOAD.pack(time.time_ns(), phase)


def machine_busy_s() -> float:
    """Busy CPU seconds of the whole machine so far (all cores)."""
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (parts + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def with_database(dsn: str, name: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


@contextlib.asynccontextmanager
async def fresh_database(server_dsn: str, prefix: str):  # type: ignore[no-untyped-def]
    """CREATE DATABASE on the server of server_dsn; DROP it afterwards. Yields its DSN."""
    import asyncpg

    name = f"{prefix}_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield with_database(server_dsn, name)
    finally:
        admin = await asyncpg.connect(server_dsn)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


class Consumer:
    """One consumer subprocess speaking the worker.py line protocol."""

    def __init__(self, proc: asyncio.subprocess.Process, out: Path, progress: asyncio.Event) -> None:
        self.proc = proc
        self.out = out
        self.done = 0
        self.last_ns = 0
        self.ready = asyncio.Event()
        self._progress = progress
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            line = raw.decode().split()
            if not line:
                continue
            if line[0] == "ready":
                self.ready.set()
            elif line[0] == "done":
                self.done, self.last_ns = int(line[1]), int(line[2])
            self._progress.set()

    async def stop(self) -> dict[int, list[float]]:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        try:
            raw = json.loads(self.out.read_text())
        except (OSError, ValueError):
            return {}
        return {int(k): v for k, v in raw.items()}


class Harness(ABC):
    """What a run needs from a system: start it, submit to it, stop it."""

    system: str = ""

    def __init__(self, cfg: BenchConfig, tmp: Path, say: Callable[[str], None]) -> None:
        self.cfg = cfg
        self.tmp = tmp
        self.say = say
        self.consumers: list[Consumer] = []
        self.progress = asyncio.Event()

    @property
    @abstractmethod
    def shape(self) -> str: ...

    @abstractmethod
    async def start(self, dsn: str | None) -> None:
        """Bring up the server side (a coordinator, a schema)."""

    @abstractmethod
    def consumer_commands(self) -> list[list[str]]:
        """One argv per consumer subprocess; each gets `--out FILE` appended."""

    async def open_backlog_producer(self) -> Callable[[list[bytes]], object] | None:
        """A producer of --backlog jobs when they go elsewhere than the measured ones (bench --flow); else None."""
        return None

    @abstractmethod
    async def open_producer(self) -> Callable[[list[bytes]], asyncio.Future[None] | object]:
        """A submit function for one producer task: submit these payloads (one call, or one batch call)."""

    async def settle(self, target: int) -> int:
        """After consumers counted `target` finishes: the time (ns) the last completion was durable."""
        return max(c.last_ns for c in self.consumers)

    async def stop(self) -> None:  # noqa: B027 - optional hook: harnesses without a server side keep the no-op
        """Tear the server side down."""

    def server_pid(self) -> int | None:
        pids = self.server_pids()
        return pids[0] if pids else None

    def consumer_env(self) -> dict[str, str] | None:
        """The consumers' environment; None inherits this process's."""
        return None

    def server_pids(self) -> list[int]:
        """The server-side processes of the system besides Postgres (Faultline: its coordinators)."""
        return []

    async def work_counters(self) -> dict[str, float]:
        """Cumulative counters of the server side (work.scrape names); empty when it keeps none."""
        return {}

    @property
    def done(self) -> int:
        return sum(c.done for c in self.consumers)

    async def start_consumers(self) -> None:
        for i, argv in enumerate(self.consumer_commands()):
            out = self.tmp / f"{self.system}-consumer-{i}.json"
            err = open(self.tmp / f"{self.system}-consumer-{i}.log", "ab")  # noqa: SIM115 - lives with the process
            proc = await asyncio.create_subprocess_exec(
                *argv, "--out", str(out), stdout=asyncio.subprocess.PIPE, stderr=err, env=self.consumer_env())
            err.close()
            self.consumers.append(Consumer(proc, out, self.progress))

    async def wait_ready(self) -> None:
        await asyncio.wait_for(asyncio.gather(*(c.ready.wait() for c in self.consumers)), READY_TIMEOUT_S)

    async def wait_done(self, target: int, label: str = "", started_ns: int = 0) -> None:
        """Until the consumers counted `target` finishes; reports progress every PROGRESS_INTERVAL_S."""
        next_report = time.monotonic() + PROGRESS_INTERVAL_S
        while self.done < target:
            dead = [c for c in self.consumers if c.proc.returncode is not None]
            if dead:
                raise RuntimeError(f"{self.system} consumer exited with {dead[0].proc.returncode}; see {self.tmp}")
            self.progress.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.progress.wait(), PROGRESS_INTERVAL_S)
            if label and time.monotonic() >= next_report:
                next_report = time.monotonic() + PROGRESS_INTERVAL_S
                elapsed = (time.time_ns() - started_ns) / 1e9 if started_ns else 0.0
                rate = f", {self.done / elapsed:,.0f} jobs/s so far" if elapsed > 0 else ""
                self.say(f"  {self.system} [{self.shape}] {label}: {self.done:,}/{target:,} finished{rate}")

    async def stop_consumers(self) -> dict[int, list[float]]:
        samples: dict[int, list[float]] = {}
        for part in await asyncio.gather(*(c.stop() for c in self.consumers)):
            for phase, values in part.items():
                samples.setdefault(phase, []).extend(values)
        return samples


async def run_once(h: Harness, dsn: str | None) -> RunResult:
    """One run of one system (see the module docstring)."""
    cfg = h.cfg
    result = RunResult(system=h.system, shape=h.shape, jobs=cfg.jobs)
    await h.start(dsn)
    try:
        submit = await h.open_producer()
        if cfg.drain or cfg.backlog:
            await _run_drain(h, submit, result)
        else:
            await _run_load(h, submit, result, dsn)
    finally:
        samples = await h.stop_consumers() if h.consumers else {}
        await h.stop()
    if samples.get(PHASE_IDLE):
        result.idle_ms = latency_summary(samples[PHASE_IDLE])
    if samples.get(PHASE_LOAD):
        result.load_ms = latency_summary(samples[PHASE_LOAD])
    return result


async def _run_load(
    h: Harness, submit: Callable[[list[bytes]], object], result: RunResult, dsn: str | None,
) -> None:
    cfg = h.cfg
    await h.start_consumers()
    await h.wait_ready()
    # Warm-up: one job end to end, so connections, prepared statements and LISTENs exist before timing.
    await _await(submit([payload(PHASE_WARMUP)]))
    await h.wait_done(1)
    base = h.done
    for i in range(cfg.idle_jobs):
        await _await(submit([payload(PHASE_IDLE)]))
        await h.wait_done(base + i + 1)
        await asyncio.sleep(IDLE_GAP_S)
    base = h.done
    h.say(f"  {h.system} [{h.shape}] idle phase done ({cfg.idle_jobs} jobs one at a time); load: {cfg.jobs:,} jobs")
    submitters = [submit] + [await h.open_producer() for _ in range(cfg.producers - 1)]
    async with contextlib.AsyncExitStack() as stack:
        probe = await stack.enter_async_context(PostgresProbe(dsn, flush_wait_s=cfg.stats_wait_s)) if dsn else None
        pg0, pg1 = PgSnapshot(), PgSnapshot()
        if probe is not None:
            await probe.counters(pg0)
        work0 = await h.work_counters()
        pids = h.server_pids()
        server_cpu0 = [cpu_seconds(p) for p in pids]
        rss0 = [rss_mb(p) for p in pids]
        consumer_cpu0 = sum(cpu_seconds(c.proc.pid) for c in h.consumers)
        busy0 = machine_busy_s()
        pgm0, me0 = postgres_cpu_seconds(), self_cpu_seconds()
        if probe is not None:
            pg0.cpu = await probe.cpu((await probe.pids())[0])
        counter = iter(range(0, cfg.jobs, cfg.batch))
        calls = 0
        submit_end = 0
        t0 = time.time_ns()

        async def produce(fn: Callable[[list[bytes]], object]) -> None:
            nonlocal submit_end, calls
            for start in counter:
                n = min(cfg.batch, cfg.jobs - start)
                await _await(fn([payload(PHASE_LOAD) for _ in range(n)]))
                calls += 1
            submit_end = max(submit_end, time.time_ns())

        producers = [asyncio.create_task(produce(fn)) for fn in submitters]
        await h.wait_done(base + cfg.jobs, "load", t0)
        await asyncio.gather(*producers)
        t_end = await h.settle(base + cfg.jobs)
        busy1 = machine_busy_s()
        pgm1, me1 = postgres_cpu_seconds(), self_cpu_seconds()
        server_cpu1 = [cpu_seconds(p) for p in pids]
        consumer_cpu1 = sum(cpu_seconds(c.proc.pid) for c in h.consumers)
        work1 = await h.work_counters()
        if probe is not None:
            pg_pids, connections = await probe.pids()
            pg1.cpu = await probe.cpu(pg_pids)
            result.extra["connections"] = float(connections)
            await probe.counters(pg1)  # after the statistics flush wait: commits of idle actors count too
    elapsed = (t_end - t0) / 1e9
    per_1k = 1000 / cfg.jobs
    result.completed = h.done - base
    result.jobs_per_s = cfg.jobs / elapsed
    result.submit_per_s = cfg.jobs / ((submit_end - t0) / 1e9)
    x = result.extra
    x["elapsed_s"] = elapsed
    x["cpu_machine"] = (busy1 - busy0) * per_1k
    x["cpu_postgres_machine"] = (pgm1 - pgm0) * per_1k
    x["cpu_producers"] = (me1 - me0) * per_1k
    x["cpu_worker"] = (consumer_cpu1 - consumer_cpu0) * per_1k
    x["producer_calls"] = calls / cfg.jobs
    if probe is not None:
        x["cpu_postgres"] = PostgresProbe.cpu_between(pg0, pg1) * per_1k
        own = PostgresProbe.OWN_COMMITS_PER_SNAPSHOT
        x["commits"] = (pg1.commits - pg0.commits - own) / cfg.jobs
        x["rollbacks"] = (pg1.rollbacks - pg0.rollbacks) / cfg.jobs
        x["wal_bytes"] = (pg1.wal_bytes - pg0.wal_bytes) / cfg.jobs
        x["db_growth_bytes"] = (pg1.size_bytes - pg0.size_bytes) / cfg.jobs
    if pids:
        result.cpu_s_per_1k = (sum(server_cpu1) - sum(server_cpu0)) * per_1k
        if len(pids) > 1:
            for i, (c0, c1) in enumerate(zip(server_cpu0, server_cpu1, strict=True)):
                x[f"cpu_coordinator_{i}"] = (c1 - c0) * per_1k
        x["server_rss_mb_start"] = max(rss0)
        x["server_rss_mb_end"] = max(rss_mb(p) for p in pids)
    if work1:
        for key in work1.keys() | work0.keys():
            delta = (work1.get(key, 0.0) - work0.get(key, 0.0)) / cfg.jobs
            if delta:
                x[key] = delta
        # Producers' calls are unary RPCs; a stream's messages are batches of frames.
        sums = {"msg_producer_in": 0.0, "msg_producer_out": 0.0, "statements": 0.0}
        for key, value in list(x.items()):
            parts = key.split(" ")
            if parts[0] == "messages" and parts[1] != "Connect":
                sums["msg_producer_in" if parts[2] == "received" else "msg_producer_out"] += value
            elif parts[0] == "statements":
                sums["statements"] += value
        x.update(sums)
        x["msg_worker_in"] = x.pop("messages Connect received", 0.0)
        x["msg_worker_out"] = x.pop("messages Connect sent", 0.0)


async def _run_drain(h: Harness, submit: Callable[[list[bytes]], object], result: RunResult) -> None:
    cfg = h.cfg
    total = cfg.jobs + cfg.backlog
    h.say(f"  {h.system} [{h.shape}] queueing {total:,} jobs before any consumer starts")
    submitters = [submit] + [await h.open_producer() for _ in range(BACKLOG_PRODUCERS - 1)]
    backlog_submit = await h.open_backlog_producer()
    counter = iter(range(0, total, BACKLOG_BATCH))
    queued = 0
    last_said = time.monotonic()

    async def produce(fn: Callable[[list[bytes]], object]) -> None:
        nonlocal queued, last_said
        for start in counter:
            n = min(BACKLOG_BATCH, total - start)
            if backlog_submit is not None and start >= cfg.jobs:
                fn = backlog_submit  # the backlog waits in its own (paused or throttled) queue
            await _await(fn([payload(PHASE_DRAIN) for _ in range(n)]))
            queued += n
            if time.monotonic() - last_said > PROGRESS_INTERVAL_S * 5:
                last_said = time.monotonic()
                h.say(f"  {h.system} queued {queued:,}/{total:,}")

    await asyncio.gather(*(produce(fn) for fn in submitters))
    pid = h.server_pid()
    cpu0 = cpu_seconds(pid) if pid else None
    await h.start_consumers()
    t0 = time.time_ns()
    first = max(1, int(cfg.jobs * DRAIN_WINDOW_START))
    await h.wait_done(first, "drain", t0)
    w0, d0 = max(c.last_ns for c in h.consumers), h.done
    await h.wait_done(cfg.jobs, "drain", t0)
    w1, d1 = max(c.last_ns for c in h.consumers), h.done
    result.completed = d1
    result.jobs_per_s = (d1 - d0) / ((w1 - w0) / 1e9)
    result.extra["queued_at_start"] = float(total)
    if pid and cpu0 is not None:
        result.cpu_s_per_1k = (cpu_seconds(pid) - cpu0) / d1 * 1000
        result.extra["server_rss_mb_end"] = rss_mb(pid)


async def _await(x: object) -> None:
    if asyncio.iscoroutine(x) or isinstance(x, asyncio.Future):
        await x


class FaultlineHarness(Harness):
    """Faultline: its own coordinator subprocesses (or --addr), W SDK worker subprocesses, SDK Client producers.

    code, when given, is a source tree put first on PYTHONPATH of the coordinators and workers, so that
    another commit's code runs in the same invocation (interleaved comparisons); producers run in this
    process, on this tree's SDK, for every system.
    """

    system = "faultline"
    # FAULTLINE_AUTH=required with a work key for the workers and a submit key for the producers (auth on/off).
    auth = False

    def __init__(self, cfg: BenchConfig, tmp: Path, say: Callable[[str], None], *, code: str | None = None,
                 label: str = "faultline") -> None:
        super().__init__(cfg, tmp, say)
        self.system = label
        self._code = code
        self._coordinators: list[asyncio.subprocess.Process] = []
        self._metrics_addrs: list[str] = []
        self._profiler: asyncio.subprocess.Process | None = None
        self._clients: list[object] = []
        self.addrs = [cfg.addr] if cfg.addr else []
        self._worker_key = ""
        self._producer_key = ""

    @property
    def addr(self) -> str:
        return self.addrs[0]

    @property
    def shape(self) -> str:
        c = self.cfg
        coords = f"{c.coordinators} coordinators, " if c.coordinators > 1 else ""
        flow = "" if c.flow == "off" else f", flow {c.flow}" + (f" ({c.keys} keys)" if c.flow == "keys" else "")
        return f"{coords}{c.workers}w x {c.concurrency}, {c.producers}p, batch {c.batch}{flow}"

    def server_pids(self) -> list[int]:
        return [p.pid for p in self._coordinators]

    async def work_counters(self) -> dict[str, float]:
        total: dict[str, float] = {}
        for addr in self._metrics_addrs:
            add_counters(total, await asyncio.to_thread(scrape, addr))
        return total

    def _env(self, extra: dict[str, str]) -> dict[str, str]:
        env = {**os.environ, **extra}
        if self._code:
            env["PYTHONPATH"] = os.pathsep.join(p for p in (self._code, env.get("PYTHONPATH", "")) if p)
            # `python -m coordinator` puts the working directory first on sys.path, ahead of PYTHONPATH: run
            # from a checkout, the other tree's coordinator and workers imported this tree's code instead.
            env["PYTHONSAFEPATH"] = "1"
        return env

    async def start(self, dsn: str | None) -> None:
        if self.cfg.addr:
            return
        assert dsn is not None
        if self.auth:
            self._worker_key, self._producer_key = await _make_bench_keys(dsn)
        for i in range(self.cfg.coordinators):
            addr, metrics_addr = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
            env = self._env({"DATABASE_URL": dsn, "FAULTLINE_GRPC_ADDR": addr, "FAULTLINE_METRICS_ADDR": metrics_addr})
            env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
            env.pop("FAULTLINE_API_KEY", None)
            if self.auth:
                env["FAULTLINE_AUTH"] = "required"
            log = open(self.tmp / f"coordinator-{i}.log", "ab")  # noqa: SIM115 - lives with the process
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "coordinator", env=env, stdout=log, stderr=asyncio.subprocess.STDOUT)
            log.close()
            self._coordinators.append(proc)
            self.addrs.append(addr)
            self._metrics_addrs.append(metrics_addr)
            # One at a time: the first applies the migrations, the others find them applied.
            await self._wait_serving(addr, proc, self.tmp / f"coordinator-{i}.log")
        await self._apply_flow()
        if self.cfg.profile:
            self._profiler = await asyncio.create_subprocess_exec(
                "py-spy", "record", "--nonblocking", "-r", "200", "-p", str(self._coordinators[0].pid),
                "-o", self.cfg.profile, "-f", "speedscope" if self.cfg.profile.endswith(".json") else "flamegraph",
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)

    async def _wait_serving(self, addr: str, proc: asyncio.subprocess.Process, log: Path) -> None:
        from worker_sdk import Client, WorkerSDKError

        deadline = time.monotonic() + READY_TIMEOUT_S
        async with Client(addr, api_key=self._producer_key) as client:
            while True:
                try:
                    await client.list_queues()
                    return
                except WorkerSDKError:
                    if proc.returncode is not None:
                        raise RuntimeError(f"coordinator exited; see {log}") from None
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.1)

    async def _apply_flow(self) -> None:
        """The queue settings of bench --flow, set before any job is queued."""
        from worker_sdk import Client

        flow = self.cfg.flow
        if flow == "off":
            return
        async with Client(self.addr) as client:
            if flow == "capped":
                await client.set_queue_settings(QUEUE, max_running=FLOW_CAPPED_MAX_RUNNING)
            elif flow == "keys":
                await client.set_queue_settings(QUEUE, per_key_concurrency=FLOW_PER_KEY)
            elif flow == "paused":
                await client.pause_queue(HELD_QUEUE)
            elif flow == "throttled":
                await client.set_queue_settings(HELD_QUEUE, rate_per_second=THROTTLED_RATE)

    def consumer_commands(self) -> list[list[str]]:
        extra = ["--prefetch", str(self.cfg.prefetch)] if self.cfg.prefetch is not None else []
        if self._worker_key:
            extra += ["--api-key", self._worker_key]
        if self.cfg.flow in ("paused", "throttled"):
            extra += ["--extra-queue", HELD_QUEUE]
        return [[sys.executable, "-m", "coordinator.bench.worker", "--addr", self.addrs[i % len(self.addrs)],
                 "--concurrency", str(self.cfg.concurrency), "--sleep-ms", str(self.cfg.sleep_ms), *extra]
                for i in range(self.cfg.workers)]

    def consumer_env(self) -> dict[str, str] | None:
        return self._env({}) if self._code else None

    async def open_producer(self) -> Callable[[list[bytes]], object]:
        from worker_sdk import Client, JobSpec

        client = Client(self.addrs[len(self._clients) % len(self.addrs)], api_key=self._producer_key)
        await client.__aenter__()
        self._clients.append(client)

        keyed = self.cfg.flow == "keys"
        keys = self.cfg.keys

        async def submit(payloads: list[bytes]) -> None:
            if len(payloads) == 1 and self.cfg.batch == 1 and not keyed:
                await client.submit(KIND, payloads[0], queue=QUEUE)
            elif keyed:
                await client.submit_batch([JobSpec(kind=KIND, payload=p, queue=QUEUE,
                                                   concurrency_key=f"k{secrets.randbelow(keys)}") for p in payloads])
            else:
                await client.submit_batch([JobSpec(kind=KIND, payload=p, queue=QUEUE) for p in payloads])

        return submit

    async def open_backlog_producer(self) -> Callable[[list[bytes]], object] | None:
        if self.cfg.flow not in ("paused", "throttled"):
            return None
        from worker_sdk import Client, JobSpec

        client = Client(self.addr)
        await client.__aenter__()
        self._clients.append(client)

        async def submit(payloads: list[bytes]) -> None:
            await client.submit_batch([JobSpec(kind=KIND, payload=p, queue=HELD_QUEUE) for p in payloads])

        return submit

    async def stop(self) -> None:
        for client in self._clients:
            await client.close()  # type: ignore[attr-defined]
        if self._profiler is not None and self._profiler.returncode is None:
            self._profiler.send_signal(signal.SIGINT)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._profiler.wait(), STOP_TIMEOUT_S)
        for proc in self._coordinators:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self._coordinators:
            try:
                await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
            except TimeoutError:
                proc.kill()
                await proc.wait()


class AuthFaultlineHarness(FaultlineHarness):
    """Faultline with FAULTLINE_AUTH=required: every call and the worker streams go through the auth edge."""

    system = "faultline+auth"
    auth = True

    def __init__(self, cfg: BenchConfig, tmp: Path, say: Callable[[str], None], *, code: str | None = None,
                 label: str = "faultline+auth") -> None:
        super().__init__(cfg, tmp, say, code=code, label=label)


async def _make_bench_keys(dsn: str) -> tuple[str, str]:
    """A work key and a submit key in the bench database (migrated first: the coordinator is not up yet)."""
    import asyncpg

    from coordinator.auth.keys import KeyRecord, Scope, format_token, hash_secret, new_key_id, new_salt, new_secret
    from coordinator.db.migrate import migrate
    from coordinator.db.pool import create_pool
    from coordinator.db.store import Store

    con = await asyncpg.connect(dsn)
    try:
        await migrate(con)
    finally:
        await con.close()
    pool = await create_pool(dsn, max_size=1)
    tokens = []
    try:
        for name, scope in (("bench-workers", Scope.WORK), ("bench-producers", Scope.SUBMIT)):
            key_id, secret, salt = new_key_id(), new_secret(), new_salt()
            await Store(pool).api_key_insert(KeyRecord(key_id=key_id, name=name, salt=salt,
                                                       secret_hash=hash_secret(salt, secret),
                                                       scopes=frozenset({scope, Scope.READ})))
            tokens.append(format_token(key_id, secret))
    finally:
        await pool.close()
    return tokens[0], tokens[1]


async def run_system(
    make: Callable[[BenchConfig, Path, Callable[[str], None]], Harness],
    cfg: BenchConfig,
    say: Callable[[str], None],
    prefix: str,
) -> RunResult:
    """One run of one system in a fresh database (unless --addr) and a fresh temp dir."""
    with tempfile.TemporaryDirectory(prefix="faultline-bench-") as tmp:
        h = make(cfg, Path(tmp), say)
        try:
            if cfg.addr and isinstance(h, FaultlineHarness):
                return await run_once(h, None)
            async with fresh_database(cfg.database_url, prefix) as dsn:
                return await run_once(h, dsn)
        except BaseException:
            if cfg.keep_logs:
                kept = Path(tempfile.mkdtemp(prefix="faultline-bench-logs-"))
                for f in Path(tmp).iterdir():
                    kept.joinpath(f.name).write_bytes(f.read_bytes())
                say(f"  logs kept in {kept}")
            raise


def shapes_for(names: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(names))
