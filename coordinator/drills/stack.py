"""The stack a drill runs: its database, coordinator and worker processes, producers, and waiting on them.

Every process is a child of the drill, with its output in a log file under the drill's work
directory; the drill kills them (SIGKILL, SIGSTOP/SIGCONT) and always stops the survivors at the end.
The database is a fresh one on the server of DATABASE_URL (else FAULTLINE_TEST_DSN, else the
embedded pgserver), or a private cluster (cluster.py) for drills that stop Postgres itself.

Ports are never picked and then bound by someone else later (another test may take the port in
between): every port a drill gives a server is a PortHold, bound by the drill for the whole drill
with SO_REUSEADDR and never listening. The server (gRPC, the metrics http.server and Postgres all
set SO_REUSEADDR) can then bind and listen on it, while the kernel hands it to nobody else, even
while that server is down (a coordinator killed and restarted on the same port, a Postgres outage).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from coordinator.drills import ledger

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[2]
# How often waits re-check their condition, in seconds (waits end on the condition, never on a timer).
POLL_S = 0.05
PROC_STOP_TIMEOUT_S = 10.0
SERVING_TIMEOUT_S = 60.0
METRICS_SCRAPE_TIMEOUT_S = 1.0
# A stopped producer finishes the batch it is on (retrying through an outage) before it exits.
PRODUCER_STOP_TIMEOUT_S = 60.0
# Settings every drill coordinator runs with: short leases and backoffs, so recovery takes seconds.
DRILL_LEASE_TTL_MS = 2_000
DRILL_COORDINATOR_ENV = {
    "FAULTLINE_LEASE_TTL_MS": str(DRILL_LEASE_TTL_MS),
    "FAULTLINE_BACKOFF_BASE_MS": "50",
    "FAULTLINE_BACKOFF_MAX_MS": "500",
    "FAULTLINE_REAPER_INTERVAL_MS": "100",
    "FAULTLINE_DRAIN_GRACE_MS": "1000",
    # ListQueues serves the last metrics sample; producers with --max-backlog wait for a fresh one.
    "FAULTLINE_METRICS_SAMPLE_MS": "200",
    "FAULTLINE_LOG_LEVEL": "INFO",
}


class DrillError(Exception):
    """The drill could not run its script (as opposed to a checker violation)."""


class PortHold:
    """A loopback TCP port reserved until close(): bound with SO_REUSEADDR and never listening (module docstring)."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, 0))
        self.port = int(self._sock.getsockname()[1])

    def close(self) -> None:
        self._sock.close()


# What a scrape of a coordinator that is down, restarting or not yet listening can raise.
SCRAPE_ERRORS = (OSError, http.client.HTTPException)


def with_database(dsn: str, name: str) -> str:
    """The same server, another database."""
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


def admin_dsn() -> str:
    """The server drills create their databases on: DATABASE_URL, FAULTLINE_TEST_DSN, else embedded."""
    dsn = os.environ.get("DATABASE_URL") or os.environ.get("FAULTLINE_TEST_DSN")
    if dsn:
        return dsn
    from coordinator import embedded
    from coordinator.config import EMBEDDED_DATA_DIR_DEFAULT

    return embedded.start(Path(os.environ.get("FAULTLINE_EMBEDDED_DATA_DIR") or EMBEDDED_DATA_DIR_DEFAULT))


async def wait_for(check: Callable[..., object], *, timeout: float, what: str) -> Any:
    """check()'s first truthy value (check may be async); DrillError naming `what` when the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value) or isinstance(value, asyncio.Future):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise DrillError(f"timed out after {timeout:g}s waiting for {what} (last: {value!r})")
        await asyncio.sleep(POLL_S)


@dataclass
class Proc:
    """A child process with its output in a log file."""

    name: str
    args: list[str]
    env: dict[str, str]
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def start(self) -> Proc:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(self.args, env=self.env, stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT)
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.pid, sig)

    def kill(self) -> None:
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)
            assert self.popen is not None
            self.popen.wait(PROC_STOP_TIMEOUT_S)

    def terminate(self, timeout: float = PROC_STOP_TIMEOUT_S) -> int:
        """SIGCONT (a frozen process cannot act on SIGTERM), SIGTERM, wait; SIGKILL past the timeout. The exit code."""
        assert self.popen is not None
        if self.alive():
            try:
                os.kill(self.pid, signal.SIGCONT)
                os.kill(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return -signal.SIGKILL

    def stop(self) -> None:
        if self.popen is not None and self.alive():
            self.terminate()
        if hasattr(self, "_log"):
            self._log.close()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


async def health_status(addr: str) -> int | None:
    """grpc.health.v1 status of the coordinator at addr, or None when it does not answer."""
    try:
        async with grpc.aio.insecure_channel(addr) as ch:
            # typeshed's HealthStub omits the method attributes that the generated __init__ assigns.
            check = health_pb2_grpc.HealthStub(ch).Check  # type: ignore[attr-defined]
            resp = await check(health_pb2.HealthCheckRequest(), timeout=1)
            return int(resp.status)
    except grpc.aio.AioRpcError:
        return None


SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def scrape(metrics_addr: str) -> dict[str, float]:
    """The coordinator's /metrics as {sample name with labels: value}."""
    with urllib.request.urlopen(f"http://{metrics_addr}/metrics", timeout=METRICS_SCRAPE_TIMEOUT_S) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                continue
    return out


class Stack:
    """One drill's database and processes; `async with Stack(...)` cleans everything up."""

    def __init__(self, name: str, *, workdir: Path, admin: str | None = None, keep_db: bool = False,
                 auth: bool = False) -> None:
        self.name = name
        # auth: coordinators run FAULTLINE_AUTH=required and every process (and this one's clients, through
        # FAULTLINE_API_KEY, restored in close()) uses one admin key; holders are then key:drill/<name>.
        self.auth = auth
        self._env: dict[str, str] = {}
        self._saved_key: str | None = None
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._admin = admin
        self._keep_db = keep_db
        self.db_name = ""
        self.dsn = ""
        self.procs: list[Proc] = []
        self.coordinators: list[Proc] = []
        # Last /metrics snapshot of each coordinator process (owner: the drill's watch task).
        self._metrics: dict[int, dict[str, float]] = {}
        self._watch: asyncio.Task[None] | None = None
        self._seq = 0
        # Ports reserved for this drill's servers, released in close().
        self._holds: list[PortHold] = []

    async def __aenter__(self) -> Stack:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- database ----------------------------------------------------------------------------

    async def create_database(self, admin: str | None = None) -> str:
        server = admin or self._admin
        if server is None:
            server = await asyncio.to_thread(admin_dsn)
        self._admin = server
        self.db_name = f"faultline_drill_{self.name.replace('-', '_')}_{uuid.uuid4().hex[:8]}"
        con = await asyncpg.connect(server, timeout=10)
        try:
            await con.execute(f'CREATE DATABASE "{self.db_name}"')
        finally:
            await con.close()
        self.dsn = with_database(server, self.db_name)
        con = await asyncpg.connect(self.dsn, timeout=10)
        try:
            await ledger.install(con)
            if self.auth:
                await self._make_key(con)
        finally:
            await con.close()
        return self.dsn

    async def _make_key(self, con: asyncpg.Connection[Any]) -> None:
        from coordinator.auth.keys import format_token, hash_secret, new_key_id, new_salt, new_secret
        from coordinator.db.migrate import migrate
        from coordinator.db.queries import QUERIES, run

        await migrate(con)
        key_id, secret, salt = new_key_id(), new_secret(), new_salt()
        await run(con, QUERIES["api_key_insert"], key_id, "drill", salt, hash_secret(salt, secret), ["admin"], [],
                  None, None)
        token = format_token(key_id, secret)
        self._env = {"FAULTLINE_API_KEY": token}
        if self._saved_key is None:
            self._saved_key = os.environ.get("FAULTLINE_API_KEY", "")
        os.environ["FAULTLINE_API_KEY"] = token

    def holder(self, worker_name: str) -> str:
        """The worker id Postgres records for a worker started as worker_name (qualified when auth is on)."""
        return f"key:drill/{worker_name}" if self.auth else worker_name

    async def connect(self) -> asyncpg.Connection[Any]:
        return await asyncpg.connect(self.dsn, timeout=10)

    async def _drop_database(self) -> None:
        if not self.db_name or self._keep_db or self._admin is None:
            return
        try:
            con = await asyncpg.connect(self._admin, timeout=10)
            try:
                await con.execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')
            finally:
                await con.close()
        except (OSError, asyncpg.PostgresError) as exc:
            print(f"drill {self.name}: could not drop {self.db_name}: {exc}", flush=True)

    # -- processes ---------------------------------------------------------------------------

    def _proc(self, name: str, args: list[str], env: dict[str, str] | None = None,
              prefix: list[str] | None = None) -> Proc:
        self._seq += 1
        e = dict(os.environ)
        e.update(self._env)
        e.update(env or {})
        p = Proc(name, [*(prefix or []), sys.executable, *args], e, self.workdir / f"{self._seq:03d}-{name}.log")
        self.procs.append(p)
        return p.start()

    def reserve_port(self, host: str = "127.0.0.1") -> int:
        """A port held for this drill until close() (see the module docstring)."""
        hold = PortHold(host)
        self._holds.append(hold)
        return hold.port

    async def start_coordinator(self, *, port: int | None = None, dsn: str | None = None,
                                env: dict[str, str] | None = None, wait: bool = True,
                                host: str = "127.0.0.1") -> Proc:
        """A coordinator on `port` (a port this stack reserved; default: a new one) and a new metrics port."""
        port = port or self.reserve_port(host)
        metrics_port = self.reserve_port()
        p = self._proc(f"coordinator-{port}", ["-m", "coordinator"], {
            **DRILL_COORDINATOR_ENV,
            "DATABASE_URL": dsn or self.dsn,
            "FAULTLINE_GRPC_ADDR": f"{host}:{port}",
            "FAULTLINE_METRICS_ADDR": f"127.0.0.1:{metrics_port}",
            **({"FAULTLINE_AUTH": "required"} if self.auth else {}),
            # A drill that binds a non-loopback address (partition-netns: the veth of a network namespace
            # the drill made) accepts serving it without auth: nothing outside the namespaces can reach it.
            **({"FAULTLINE_AUTH_OFF_ANY_ADDRESS": "on"} if not self.auth and not host.startswith("127.") else {}),
            **(env or {}),
        })
        p.extra.update(addr=f"{host}:{port}", port=port, metrics=f"127.0.0.1:{metrics_port}")
        self.coordinators.append(p)
        if self._watch is None:
            self._watch = asyncio.create_task(self._watch_metrics(), name="drill-metrics")
        if wait:
            await self.wait_serving(p)
        return p

    def live_coordinator(self) -> Proc:
        """The coordinator process still running (the newest); DrillError when there is none."""
        for c in reversed(self.coordinators):
            if c.alive():
                return c
        raise DrillError("no coordinator is running: "
                         + "; ".join(f"{c.name} exited {c.popen and c.popen.returncode}" for c in self.coordinators))

    async def wait_serving(self, coord: Proc, timeout: float = SERVING_TIMEOUT_S) -> float:
        """Seconds until the coordinator's health says SERVING."""
        t0 = time.monotonic()

        async def serving() -> bool:
            if not coord.alive():
                raise DrillError(f"{coord.name} exited:\n{coord.output()[-3000:]}")
            return await health_status(coord.extra["addr"]) == SERVING

        await wait_for(serving, timeout=timeout, what=f"{coord.name} SERVING")
        return time.monotonic() - t0

    def start_worker(self, name: str, target: str, *, concurrency: int = 8, extra: list[str] | None = None,
                     dsn: str | None = None, prefix: list[str] | None = None) -> Proc:
        events = self.workdir / f"{name}.events.jsonl"
        p = self._proc(name, ["-m", "coordinator.drills.worker", "--target", target, "--dsn", dsn or self.dsn,
                              "--worker-id", name, "--concurrency", str(concurrency), "--events", str(events),
                              *(extra or [])], prefix=prefix)
        p.extra["events"] = events
        return p

    def start_zombie(self, name: str, target: str, *, capacity: int, work_ms: int) -> Proc:
        events = self.workdir / f"{name}.events.jsonl"
        p = self._proc(name, ["-m", "coordinator.drills.zombie", "--target", target, "--dsn", self.dsn,
                              "--worker-id", name, "--capacity", str(capacity), "--work-ms", str(work_ms),
                              "--events", str(events)])
        p.extra["events"] = events
        return p

    def start_producer(self, name: str, target: str, *, count: int, kind: str = "effect",
                       payload: dict[str, Any] | None = None, batch: int = 100, extra: list[str] | None = None,
                       until_stopped: bool = False) -> Proc:
        """A producer of `count` jobs; until_stopped: it keeps producing (count is a cap) until stop_producer()."""
        acks = self.workdir / f"{name}.acks.jsonl"
        stop = self.workdir / f"{name}.stop"
        p = self._proc(name, ["-m", "coordinator.drills.producer", "--target", target, "--count", str(count),
                              "--prefix", name, "--kind", kind, "--payload", json.dumps(payload or {}),
                              "--batch", str(batch), "--acks", str(acks),
                              *(["--until", str(stop)] if until_stopped else []), *(extra or [])])
        p.extra.update(acks=acks, stop=stop)
        return p

    async def stop_producer(self, p: Proc, *, timeout: float = PRODUCER_STOP_TIMEOUT_S) -> int:
        """Tell a producer started until_stopped to finish its batch and exit; the jobs it was acknowledged."""
        p.extra["stop"].touch()
        code = await self.wait_exit(p, timeout=timeout, what=f"{p.name} to finish its last batch and exit")
        if code != 0:
            raise DrillError(f"{p.name} exited {code}:\n{p.output()[-2000:]}")
        return sum(1 for r in self.read_jsonl(p.extra["acks"]) if "id" in r)

    async def wait_exit(self, p: Proc, *, timeout: float, what: str) -> int:
        await wait_for(lambda: not p.alive(), timeout=timeout, what=what)
        assert p.popen is not None
        return int(p.popen.returncode)

    # -- what the processes report -------------------------------------------------------------

    @staticmethod
    def read_jsonl(path: Path) -> list[dict[str, Any]]:
        if not path.exists():
            return []
        out = []
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut short by SIGKILL
        return out

    def acknowledged(self) -> list[int]:
        ids: list[int] = []
        for p in self.procs:
            if "acks" in p.extra:
                ids.extend(int(r["id"]) for r in self.read_jsonl(p.extra["acks"]) if "id" in r)
        return ids

    def producer_stats(self) -> dict[str, int]:
        stats: dict[str, int] = {}
        for p in self.procs:
            if "acks" in p.extra:
                for r in self.read_jsonl(p.extra["acks"]):
                    for k, v in r.get("stats", {}).items():
                        stats[k] = stats.get(k, 0) + int(v)
        return stats

    def events(self, p: Proc) -> list[dict[str, Any]]:
        return self.read_jsonl(p.extra["events"])

    def all_events(self) -> list[dict[str, Any]]:
        return [e for p in self.procs if "events" in p.extra for e in self.events(p)]

    def coordinator_log_count(self, needle: str) -> int:
        return sum(p.output().count(needle) for p in self.coordinators)

    async def _watch_metrics(self) -> None:
        while True:
            for c in list(self.coordinators):
                if c.alive():
                    try:
                        self._metrics[c.pid] = await asyncio.to_thread(scrape, c.extra["metrics"])
                    except SCRAPE_ERRORS:
                        pass  # not listening yet, or just killed: its last scrape stands
            await asyncio.sleep(0.5)

    async def metric(self, prefix: str) -> dict[str, float]:
        """A counter summed over every coordinator process (a killed one counts its last scrape), by sample."""
        for c in self.coordinators:
            if c.alive():
                try:
                    self._metrics[c.pid] = await asyncio.to_thread(scrape, c.extra["metrics"])
                except SCRAPE_ERRORS as exc:
                    raise DrillError(f"{c.name} is running but its /metrics on {c.extra['metrics']} does not answer "
                                     f"({type(exc).__name__}: {exc}); its log:\n{c.output()[-2000:]}") from exc
        out: dict[str, float] = {}
        for m in self._metrics.values():
            for k, v in m.items():
                if k == prefix or k.startswith(prefix + "{"):
                    label = k[len(prefix):].strip("{}") or "all"
                    out[label] = out.get(label, 0.0) + v
        return out

    # -- teardown ----------------------------------------------------------------------------

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            try:
                await self._watch
            except asyncio.CancelledError:
                pass
        for p in reversed(self.procs):
            await asyncio.to_thread(p.stop)
        self.procs.clear()
        for hold in self._holds:
            hold.close()
        self._holds.clear()
        await self._drop_database()
        self.db_name = ""
        if self._saved_key is not None:
            if self._saved_key:
                os.environ["FAULTLINE_API_KEY"] = self._saved_key
            else:
                os.environ.pop("FAULTLINE_API_KEY", None)
            self._saved_key = None
