"""Composition root: pool -> Store -> actors under the Supervisor -> gRPC server; owns start-up and shutdown order."""

from __future__ import annotations

import asyncio
import errno
import logging
import secrets
import signal
import socket
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer

from coordinator import backoff, embedded, memory, metrics, tracing
from coordinator.actors.batching import Inbox
from coordinator.actors.completer import Completer
from coordinator.actors.dispatcher import Dispatcher, DispatcherConfig
from coordinator.actors.health import HealthMonitor
from coordinator.actors.lease_keeper import LeaseKeeper
from coordinator.actors.lease_reconciler import RECONCILE_INTERVAL_DEFAULT, LeaseReconciler
from coordinator.actors.maintenance import Maintenance, MaintenanceConfig
from coordinator.actors.metrics_sampler import MetricsSampler
from coordinator.actors.peers import Listener, Notifier
from coordinator.actors.promoter import Promoter
from coordinator.actors.pruner import Pruner, PrunerConfig
from coordinator.actors.reaper import LeaseReaper
from coordinator.actors.scheduler import Scheduler
from coordinator.api import server as api_server
from coordinator.api.admission import SubmitAdmission
from coordinator.api.job_service import JobServicer
from coordinator.api.server import SERVICE_NAMES
from coordinator.api.session import WorkerSession
from coordinator.api.worker_service import WorkerServicer
from coordinator.auth.keyring import KeyRefresher, KeyRing
from coordinator.config import (
    FLUSH_MAX_ITEMS_DEFAULT,
    HEALTH_PROBE_INTERVAL,
    INBOX_SIZE_DEFAULT,
    SUBMIT_RETRY_AFTER,
    Config,
    dsn_target,
)
from coordinator.db.migrate import discover, migrate
from coordinator.db.pool import create_pool
from coordinator.db.store import ProbeSession, Store
from coordinator.errors import DatabaseUnavailableError, StartupError
from coordinator.grants import Handoff
from coordinator.policy import GrantPolicy
from coordinator.schedules import make_submit
from coordinator.sessions import DispatchSignal, SessionRegistry
from coordinator.submit import Submitter
from coordinator.supervisor import ChildSpec, Supervisor
from coordinator.throughput import Throughput
from coordinator.tracing import JobTracer
from coordinator.watch import WatchHub

logger = logging.getLogger(__name__)

MIGRATE_RETRY_BASE_S = 0.5
MIGRATE_RETRY_MAX_S = 10.0
SERVER_STOP_GRACE_S = 2.0
ACTOR_STOP_TIMEOUT_S = 5.0
POOL_CLOSE_TIMEOUT_S = 5.0


@dataclass
class Coordinator:
    """A running coordinator; tests build one in-process, __main__ runs one until a signal."""

    config: Config
    dsn: str = ""
    port: int = 0
    store: Store | None = None
    server: grpc.aio.Server | None = None
    supervisor: Supervisor | None = None
    registry: SessionRegistry | None = None
    policy: GrantPolicy | None = None
    submitter: Submitter | None = None
    _worker_servicer: WorkerServicer | None = None
    _health: HealthServicer | None = None
    _health_server: grpc.aio.Server | None = None
    health_port: int = 0
    _supervisor_task: asyncio.Task[None] | None = None
    _metrics_server: Any = None
    _probe: ProbeSession | None = None
    _stopped: asyncio.Event = field(default_factory=asyncio.Event)
    _hurry: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> None:
        """Up to serving. Raises StartupError for what waiting cannot fix; retries only an unreachable Postgres."""
        cfg = self.config
        # Fail fast on a taken address, before a possibly long wait for Postgres; the real bind below decides.
        api_server.check_exposure(cfg)  # before anything else: a config that is unsafe to serve never waits
        check_free(cfg.grpc_addr, "FAULTLINE_GRPC_ADDR")
        if cfg.metrics_addr:
            check_free(cfg.metrics_addr, "FAULTLINE_METRICS_ADDR")
        tracing.setup_from_env()
        metrics.limit_label_values(cfg.metric_label_values_max)
        # Not `a or await to_thread(...)`: mypy then infers to_thread's result from the `str | None` context.
        dsn = cfg.database_url
        if not dsn:
            dsn = await asyncio.to_thread(embedded.start, cfg.embedded_data_dir)
        self.dsn = dsn
        pool = await create_pool(self.dsn, max_size=cfg.db_pool_max)
        self.store = store = Store(pool)
        await self._migrate_with_retry()
        ring = KeyRing(store=store)
        if cfg.auth_required:
            await ring.reload()  # the keys before the first call; later reloads are the key refresher's
        # Names this process in NOTIFY payloads, so that its listener can drop its own announcements.
        coordinator_id = secrets.token_hex(8)
        notifier = Notifier(store=store, sender=coordinator_id)
        signal_ = DispatchSignal(announce=notifier.announce)
        self.registry = registry = SessionRegistry(signal_)
        tracer = JobTracer()
        throughput = Throughput()
        promoter_wake = asyncio.Event()
        completer_inbox: Inbox[Any, Any] = asyncio.Queue(INBOX_SIZE_DEFAULT)
        keeper_inbox: Inbox[Any, Any] = asyncio.Queue(INBOX_SIZE_DEFAULT)
        self._health = health = HealthServicer()
        self._probe = probe = ProbeSession(dsn)  # outlives health actor restarts; closed in stop()

        async def on_db_change(up: bool) -> None:
            status = health_pb2.HealthCheckResponse.SERVING if up else health_pb2.HealthCheckResponse.NOT_SERVING
            for name in ("", *SERVICE_NAMES):
                await health.set(name, status)
            if up:
                signal_.wake()
                promoter_wake.set()

        # The grant policy (coordinator/policy.py) is asked by both grant paths; the Submitter is the one
        # submit entry point (coordinator/submit.py) for the JobService and any other producer of jobs.
        self.policy = policy = GrantPolicy(store=store)
        await policy.reload()
        self.submitter = submitter = Submitter(
            handoff=Handoff(store=store, registry=registry, signal=signal_, lease_ttl_ms=cfg.lease_ttl_ms,
                            enabled=cfg.handoff, policy=policy, on_released=tracer.attempt_closed,
                            throughput=throughput),
            signal=signal_, tracer=tracer, promoter_wake=promoter_wake.set)
        sampler = MetricsSampler(store=store, registry=registry, pool_max=cfg.db_pool_max,
                                 interval_s=cfg.metrics_sample_interval.total_seconds())
        children = [
            ChildSpec("dispatcher", lambda: Dispatcher(
                config=DispatcherConfig(lease_ttl_ms=cfg.lease_ttl_ms, claim_batch_max=cfg.claim_batch_max,
                                        fallback_poll_s=cfg.dispatch_poll.total_seconds()),
                store=store, registry=registry, signal=signal_, policy=policy,
                on_released=tracer.attempt_closed, throughput=throughput)),
            ChildSpec("completer", lambda: Completer(
                inbox=completer_inbox, store=store, retry=cfg.retry, max_items=FLUSH_MAX_ITEMS_DEFAULT,
                on_retry_scheduled=promoter_wake.set, on_closed=tracer.attempt_closed, throughput=throughput)),
            ChildSpec("lease_keeper", lambda: LeaseKeeper(
                inbox=keeper_inbox, store=store, lease_ttl_ms=cfg.lease_ttl_ms, max_items=FLUSH_MAX_ITEMS_DEFAULT)),
            ChildSpec("lease_reaper", lambda: LeaseReaper(
                store=store, retry=cfg.retry, interval_s=cfg.reaper_interval.total_seconds(),
                on_requeued=promoter_wake.set, on_closed=tracer.attempt_closed,
                on_expired=registry.leases_taken_back)),
            ChildSpec("lease_reconciler", lambda: LeaseReconciler(
                store=store, registry=registry,
                interval_s=min(cfg.reaper_interval, RECONCILE_INTERVAL_DEFAULT).total_seconds())),
            ChildSpec("promoter", lambda: Promoter(store=store, signal=signal_, wake=promoter_wake)),
            # The notifier's pending set must outlive a restart (the signal holds its announce), so the
            # factory hands back the same instance; the listener keeps nothing and is rebuilt.
            ChildSpec("notifier", lambda: notifier),
            ChildSpec("listener", lambda: Listener(dsn=dsn, signal=signal_, sender=coordinator_id)),
            ChildSpec("health", lambda: HealthMonitor(
                store=store, interval_s=HEALTH_PROBE_INTERVAL.total_seconds(), on_change=on_db_change,
                initially_up=True, probe=probe.ping)),
            # ListQueues serves the sampler's last sample: the factory hands back the same instance.
            ChildSpec("metrics_sampler", lambda: sampler),
        ]
        if cfg.auth_required:
            children.append(ChildSpec("key_refresher", lambda: KeyRefresher(
                ring=ring, interval_s=cfg.key_refresh_interval.total_seconds())))
        if cfg.maintenance_interval is not None:
            maintenance = MaintenanceConfig(interval=cfg.maintenance_interval)
            children.append(ChildSpec("maintenance", lambda: Maintenance(store=store, dsn=dsn, config=maintenance)))
        # === time: watches, schedules, retention ===
        submit_job = make_submit(submitter)  # schedules submit through the one entry point
        # The hub's watchers outlive a restart of its poll loop: the factory hands back the same instance.
        watch_hub = WatchHub(store=store, interval_s=cfg.watch_poll.total_seconds(), max_watchers=cfg.watchers_max,
                             max_per_client=cfg.watchers_per_client_max)
        children.append(ChildSpec("watch_hub", lambda: watch_hub))
        if cfg.scheduler:
            children.append(ChildSpec("scheduler", lambda: Scheduler(
                store=store, submit=submit_job, grace=cfg.schedule_misfire_grace)))
        if cfg.retention_interval is not None:
            pruner = PrunerConfig(interval=cfg.retention_interval, succeeded=cfg.retention_succeeded,
                                  dead_lettered=cfg.retention_dead_lettered, cancelled=cfg.retention_cancelled,
                                  keyed=cfg.retention_keyed)
            children.append(ChildSpec("pruner", lambda: Pruner(store=store, config=pruner)))
        self.supervisor = Supervisor(children, on_restart=lambda name: metrics.ACTOR_RESTARTS.labels(name).inc())
        for c in children:
            metrics.ACTOR_RESTARTS.labels(c.name)

        def session() -> WorkerSession:
            return WorkerSession(
                store=store, registry=registry, completer_inbox=completer_inbox, keeper_inbox=keeper_inbox,
                tracer=tracer, lease_ttl_ms=cfg.lease_ttl_ms, heartbeat_interval_ms=cfg.heartbeat_interval_ms,
                max_payload=cfg.max_payload_bytes,
            )

        job_servicer = JobServicer(
            store=store, signal=signal_, registry=registry, throughput=throughput, submitter=submitter,
            policy=policy, max_payload=cfg.max_payload_bytes,
            watch_hub=watch_hub, submit_job=submit_job, auth_enabled=cfg.auth_required, sampler=sampler,
            max_attempts_default=cfg.max_attempts_default,
            admission=SubmitAdmission(max_requests=cfg.submit_inflight_max, max_bytes=cfg.submit_inflight_bytes_max,
                                      retry_after=SUBMIT_RETRY_AFTER))
        self._worker_servicer = WorkerServicer(session)
        server = api_server.build(cfg, ring=ring, job_servicer=job_servicer, worker_servicer=self._worker_servicer,
                                  health=health)
        self.port = api_server.bind(server, cfg)
        if cfg.health_addr:
            self._health_server = api_server.build_health_only(health)
            self.health_port = api_server.bind_health_only(self._health_server, cfg.health_addr)
        self.server = server
        if cfg.metrics_addr:
            from prometheus_client import start_http_server

            host, port = cfg.metrics_addr.rsplit(":", 1)
            try:
                self._metrics_server = start_http_server(int(port), addr=host.strip("[]"),
                                                         registry=metrics.REGISTRY)
            except OSError as exc:
                raise StartupError(f"cannot listen on {cfg.metrics_addr} (FAULTLINE_METRICS_ADDR): "
                                   f"{exc.strerror or exc}") from None
        await on_db_change(True)
        await server.start()
        if self._health_server is not None:
            await self._health_server.start()
        self._supervisor_task = asyncio.create_task(self.supervisor.run(), name="supervisor")
        logger.info("coordinator serving", extra={"grpc": cfg.grpc_addr, "port": self.port,
                                                   "metrics": cfg.metrics_addr or "off"})

    async def _migrate_with_retry(self) -> None:
        """Migrate, retrying only "not reachable yet"; anything else (credentials, no such database) is fatal."""
        assert self.store is not None
        import asyncpg

        discover()  # a broken install is a StartupError now, not a wait that blames Postgres
        target = dsn_target(self.dsn)
        attempt = 0
        while True:
            try:
                async with self.store.pool.acquire() as con:
                    applied = await migrate(con)
                if applied:
                    logger.info("migrations applied", extra={"versions": ",".join(applied)})
                return
            except _not_reachable_yet() as exc:
                attempt += 1
                delay = backoff.exponential(
                    min(attempt, 20), base=_s(MIGRATE_RETRY_BASE_S), cap=_s(MIGRATE_RETRY_MAX_S)
                )
                logger.warning("Postgres not reachable yet; retrying", extra={
                    "target": target, "error": _one_line(exc), "retry_in_s": round(delay.total_seconds(), 2)})
                await asyncio.sleep(delay.total_seconds())
            except asyncpg.PostgresError as exc:
                raise StartupError(f"Postgres at {target} refused the coordinator: {_one_line(exc)} "
                                   f"({type(exc).__name__}; check DATABASE_URL)") from None
            except asyncpg.ClientConfigurationError as exc:
                raise StartupError(f"DATABASE_URL: {_one_line(exc)}") from None

    async def wait(self) -> None:
        """Until stop() or a supervisor escalation (which re-raises here)."""
        assert self._supervisor_task is not None
        stop = asyncio.ensure_future(self._stopped.wait())
        await asyncio.wait({stop, self._supervisor_task}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if self._supervisor_task.done() and not self._supervisor_task.cancelled():
            self._supervisor_task.result()

    def request_stop(self) -> None:
        self._stopped.set()

    def hurry(self) -> None:
        """End a drain at once (a second Ctrl-C): workers' leases are left to expire."""
        self._hurry.set()

    async def stop(self, *, quiet: bool = False) -> None:
        """Drain workers, stop serving, stop the actors, close the pool; every phase is bounded and timed.

        Safe after a failed or cancelled start(); `quiet` logs the closing line at debug (the caller says why).
        """
        cfg = self.config
        phases: dict[str, float] = {}
        clock = asyncio.get_running_loop().time
        t = clock()

        def mark(name: str) -> None:
            nonlocal t
            now = clock()
            phases[name] = round(now - t, 3)
            t = now

        if self._health is not None:
            try:
                async with asyncio.timeout(SERVER_STOP_GRACE_S):
                    await self._health.enter_graceful_shutdown()
            except TimeoutError:
                logger.warning("health shutdown timed out")
        mark("health")
        if self._worker_servicer is not None:
            drain = asyncio.ensure_future(self._worker_servicer.drain(cfg.drain_grace))
            hurry = asyncio.ensure_future(self._hurry.wait())
            await asyncio.wait({drain, hurry}, return_when=asyncio.FIRST_COMPLETED)
            hurry.cancel()
            if not drain.done():
                drain.cancel()
                logger.warning("drain cut short by a second signal; unfinished leases will expire")
        mark("drain")
        if self.server is not None:
            grace = 0.0 if self._hurry.is_set() else SERVER_STOP_GRACE_S
            try:
                async with asyncio.timeout(SERVER_STOP_GRACE_S + ACTOR_STOP_TIMEOUT_S):
                    await self.server.stop(grace)
            except TimeoutError:
                logger.warning("grpc server stop timed out")
        if self._health_server is not None:
            await self._health_server.stop(0)
        mark("server")
        if self._supervisor_task is not None:
            self._supervisor_task.cancel()
            try:
                async with asyncio.timeout(ACTOR_STOP_TIMEOUT_S):
                    await self._supervisor_task
            except (asyncio.CancelledError, Exception):
                pass
        mark("actors")
        if self._metrics_server is not None:
            server, _thread = self._metrics_server
            server.shutdown()
        if self._probe is not None:
            self._probe.close()
        if self.store is not None:
            try:
                async with asyncio.timeout(POOL_CLOSE_TIMEOUT_S):
                    await self.store.pool.close()
            except TimeoutError:
                logger.warning("pool close timed out; terminating connections")
                self.store.pool.terminate()
        mark("pool")
        tracing.shutdown()
        logger.log(logging.DEBUG if quiet else logging.INFO, "coordinator stopped",
                   extra={f"{k}_s": v for k, v in phases.items()})


def _s(seconds: float) -> Any:
    from datetime import timedelta

    return timedelta(seconds=seconds)


def _not_reachable_yet() -> tuple[type[BaseException], ...]:
    """What waiting can fix: no route or refused connection, a server starting, restarting or full."""
    import asyncpg

    return (OSError, TimeoutError, DatabaseUnavailableError, asyncpg.PostgresConnectionError,
            asyncpg.OperatorInterventionError, asyncpg.InterfaceError, asyncpg.TooManyConnectionsError)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text


def check_free(addr: str, var: str) -> None:
    """Raise StartupError when addr (host:port) cannot be bound now; port 0 and unresolvable hosts pass."""
    host, port = addr.rsplit(":", 1)
    if int(port) == 0:
        return
    try:
        family, type_, proto, _, sockaddr = socket.getaddrinfo(
            host.strip("[]"), int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except OSError:
        return
    with socket.socket(family, type_, proto) as sock:
        # As gRPC and prometheus_client bind: SO_REUSEADDR (TIME_WAIT is no conflict), no SO_REUSEPORT.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(sockaddr)
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
                raise StartupError(f"cannot listen on {addr} ({var}): {exc.strerror}") from None
            raise


async def main(config: Config) -> int:
    """Run until SIGTERM/SIGINT (exit 0) or a supervisor escalation (exit 1); a StartupError propagates.

    A signal during start-up (a wait for Postgres, say) cancels the start; the first signal after it starts
    the drain; a second one ends the drain at once.
    """
    memory.pin_malloc_threshold()
    coordinator = Coordinator(config)
    loop = asyncio.get_running_loop()
    starting = asyncio.ensure_future(coordinator.start())
    signals = 0

    def on_signal(sig: signal.Signals) -> None:
        nonlocal signals
        signals += 1
        if not starting.done():
            logger.info("signal during start-up: stopping", extra={"signal": sig.name})
            starting.cancel()
        elif signals == 1:
            logger.info("signal: draining", extra={"signal": sig.name})
            coordinator.request_stop()
        else:
            logger.info("second signal: ending the drain now", extra={"signal": sig.name})
            coordinator.hurry()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        await starting
    except asyncio.CancelledError:
        if not starting.cancelled():
            raise
        await coordinator.stop()
        return 0
    except BaseException:
        await coordinator.stop(quiet=True)
        raise
    code = 0
    try:
        await coordinator.wait()
    except Exception:
        logger.critical("coordinator escalating: supervisor gave up", exc_info=True)
        code = 1
    await coordinator.stop()
    return code
