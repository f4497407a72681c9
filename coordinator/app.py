"""Composition root: pool -> Store -> actors under the Supervisor -> gRPC server; owns start-up and shutdown order."""

from __future__ import annotations

import asyncio
import logging
import secrets
import signal
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from coordinator import backoff, embedded, metrics, tracing
from coordinator.actors.batching import Request
from coordinator.actors.completer import Completer
from coordinator.actors.dispatcher import Dispatcher, DispatcherConfig
from coordinator.actors.health import HealthMonitor
from coordinator.actors.lease_keeper import LeaseKeeper
from coordinator.actors.lease_reconciler import RECONCILE_INTERVAL_DEFAULT, LeaseReconciler
from coordinator.actors.maintenance import Maintenance, MaintenanceConfig
from coordinator.actors.metrics_sampler import MetricsSampler
from coordinator.actors.peers import Listener, Notifier
from coordinator.actors.promoter import Promoter
from coordinator.actors.reaper import LeaseReaper
from coordinator.api.job_service import JobServicer
from coordinator.api.session import WorkerSession
from coordinator.api.worker_service import WorkerServicer
from coordinator.config import (
    FLUSH_MAX_ITEMS_DEFAULT,
    HEALTH_PROBE_INTERVAL,
    INBOX_SIZE_DEFAULT,
    Config,
)
from coordinator.db.migrate import migrate
from coordinator.db.pool import create_pool
from coordinator.db.store import Store
from coordinator.errors import DatabaseUnavailableError
from coordinator.grants import Handoff
from coordinator.sessions import DispatchSignal, SessionRegistry
from coordinator.supervisor import ChildSpec, Supervisor
from coordinator.throughput import Throughput
from coordinator.tracing import JobTracer
from worker_sdk._proto.faultline.v1 import (
    job_service_pb2,
    job_service_pb2_grpc,
    worker_service_pb2,
    worker_service_pb2_grpc,
)

logger = logging.getLogger(__name__)

SERVICE_NAMES = (
    job_service_pb2.DESCRIPTOR.services_by_name["JobService"].full_name,
    worker_service_pb2.DESCRIPTOR.services_by_name["WorkerService"].full_name,
)
MIGRATE_RETRY_BASE_S = 0.5
MIGRATE_RETRY_MAX_S = 10.0
GRPC_MAX_MESSAGE_BYTES = 64 << 20
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
    _worker_servicer: WorkerServicer | None = None
    _health: HealthServicer | None = None
    _supervisor_task: asyncio.Task[None] | None = None
    _metrics_server: Any = None
    _stopped: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> None:
        cfg = self.config
        tracing.setup_from_env()
        # Not `a or await to_thread(...)`: mypy then infers to_thread's result from the `str | None` context.
        dsn = cfg.database_url
        if not dsn:
            dsn = await asyncio.to_thread(embedded.start, cfg.embedded_data_dir)
        self.dsn = dsn
        pool = await create_pool(self.dsn, max_size=cfg.db_pool_max)
        self.store = store = Store(pool)
        await self._migrate_with_retry()
        # Names this process in NOTIFY payloads, so that its listener can drop its own announcements.
        coordinator_id = secrets.token_hex(8)
        notifier = Notifier(store=store, sender=coordinator_id)
        signal_ = DispatchSignal(announce=notifier.announce)
        self.registry = registry = SessionRegistry(signal_)
        tracer = JobTracer()
        throughput = Throughput()
        promoter_wake = asyncio.Event()
        completer_inbox: asyncio.Queue[Request[Any, Any]] = asyncio.Queue(INBOX_SIZE_DEFAULT)
        keeper_inbox: asyncio.Queue[Request[Any, Any]] = asyncio.Queue(INBOX_SIZE_DEFAULT)
        self._health = health = HealthServicer()

        async def on_db_change(up: bool) -> None:
            status = health_pb2.HealthCheckResponse.SERVING if up else health_pb2.HealthCheckResponse.NOT_SERVING
            for name in ("", *SERVICE_NAMES):
                await health.set(name, status)
            if up:
                signal_.wake()
                promoter_wake.set()

        children = [
            ChildSpec("dispatcher", lambda: Dispatcher(
                config=DispatcherConfig(lease_ttl_ms=cfg.lease_ttl_ms, claim_batch_max=cfg.claim_batch_max,
                                        fallback_poll_s=cfg.dispatch_poll.total_seconds()),
                store=store, registry=registry, signal=signal_, on_released=tracer.attempt_closed)),
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
                initially_up=True)),
            ChildSpec("metrics_sampler", lambda: MetricsSampler(
                store=store, registry=registry, pool_max=cfg.db_pool_max,
                interval_s=cfg.metrics_sample_interval.total_seconds())),
        ]
        if cfg.maintenance_interval is not None:
            maintenance = MaintenanceConfig(interval=cfg.maintenance_interval)
            children.append(ChildSpec("maintenance", lambda: Maintenance(store=store, dsn=dsn, config=maintenance)))
        self.supervisor = Supervisor(children, on_restart=lambda name: metrics.ACTOR_RESTARTS.labels(name).inc())
        for c in children:
            metrics.ACTOR_RESTARTS.labels(c.name)

        def session() -> WorkerSession:
            return WorkerSession(
                store=store, registry=registry, completer_inbox=completer_inbox, keeper_inbox=keeper_inbox,
                tracer=tracer, lease_ttl_ms=cfg.lease_ttl_ms, heartbeat_interval_ms=cfg.heartbeat_interval_ms,
                max_payload=cfg.max_payload_bytes,
            )

        server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", GRPC_MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", GRPC_MAX_MESSAGE_BYTES),
            ("grpc.keepalive_time_ms", 20_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
            ("grpc.keepalive_permit_without_calls", 1),
        ])
        # The generated *_pb2_grpc modules have no annotations (gen_protos.py emits no .pyi for them).
        job_service_pb2_grpc.add_JobServiceServicer_to_server(JobServicer(  # type: ignore[no-untyped-call]
            store=store, signal=signal_, registry=registry, tracer=tracer, throughput=throughput,
            handoff=Handoff(store=store, registry=registry, signal=signal_, lease_ttl_ms=cfg.lease_ttl_ms,
                            enabled=cfg.handoff, on_released=tracer.attempt_closed),
            promoter_wake=promoter_wake.set, max_payload=cfg.max_payload_bytes,
            max_attempts_default=cfg.max_attempts_default), server)
        self._worker_servicer = WorkerServicer(session)
        worker_service_pb2_grpc.add_WorkerServiceServicer_to_server(  # type: ignore[no-untyped-call]
            self._worker_servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
        reflection.enable_server_reflection((*SERVICE_NAMES, reflection.SERVICE_NAME, "grpc.health.v1.Health"), server)
        self.port = server.add_insecure_port(cfg.grpc_addr)
        if self.port == 0:
            raise OSError(f"cannot listen on {cfg.grpc_addr}")
        await on_db_change(True)
        self.server = server
        await server.start()
        if cfg.metrics_addr:
            from prometheus_client import start_http_server

            host, port = cfg.metrics_addr.rsplit(":", 1)
            self._metrics_server = start_http_server(int(port), addr=host.strip("[]"), registry=metrics.REGISTRY)
        self._supervisor_task = asyncio.create_task(self.supervisor.run(), name="supervisor")
        logger.info("coordinator serving", extra={"grpc": cfg.grpc_addr, "port": self.port,
                                                   "metrics": cfg.metrics_addr or "off"})

    async def _migrate_with_retry(self) -> None:
        assert self.store is not None
        retry_on: tuple[type[BaseException], ...] = (
            OSError, TimeoutError, DatabaseUnavailableError, *_pg_unavailable()
        )
        attempt = 0
        while True:
            try:
                async with self.store.pool.acquire() as con:
                    applied = await migrate(con)
                if applied:
                    logger.info("migrations applied", extra={"versions": ",".join(applied)})
                return
            except retry_on as exc:
                attempt += 1
                delay = backoff.exponential(
                    min(attempt, 20), base=_s(MIGRATE_RETRY_BASE_S), cap=_s(MIGRATE_RETRY_MAX_S)
                )
                logger.warning("waiting for Postgres to migrate", extra={"error": str(exc), "retry_in_s":
                                                                         round(delay.total_seconds(), 2)})
                await asyncio.sleep(delay.total_seconds())

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

    async def stop(self) -> None:
        """Drain workers, stop serving, stop the actors, close the pool; every phase is bounded and timed."""
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
            await self._worker_servicer.drain(cfg.drain_grace)
        mark("drain")
        if self.server is not None:
            try:
                async with asyncio.timeout(SERVER_STOP_GRACE_S + ACTOR_STOP_TIMEOUT_S):
                    await self.server.stop(SERVER_STOP_GRACE_S)
            except TimeoutError:
                logger.warning("grpc server stop timed out")
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
        if self.store is not None:
            try:
                async with asyncio.timeout(POOL_CLOSE_TIMEOUT_S):
                    await self.store.pool.close()
            except TimeoutError:
                logger.warning("pool close timed out; terminating connections")
                self.store.pool.terminate()
        mark("pool")
        tracing.shutdown()
        logger.info("coordinator stopped", extra={f"{k}_s": v for k, v in phases.items()})


def _s(seconds: float) -> Any:
    from datetime import timedelta

    return timedelta(seconds=seconds)


def _pg_unavailable() -> tuple[type[BaseException], ...]:
    import asyncpg

    return (asyncpg.PostgresConnectionError, asyncpg.CannotConnectNowError, asyncpg.InterfaceError,
            asyncpg.TooManyConnectionsError)


async def main(config: Config) -> int:
    """Run until SIGTERM/SIGINT (exit 0) or a supervisor escalation (exit 1)."""
    coordinator = Coordinator(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, coordinator.request_stop)
    await coordinator.start()
    code = 0
    try:
        await coordinator.wait()
    except Exception:
        logger.critical("coordinator escalating: supervisor gave up", exc_info=True)
        code = 1
    await coordinator.stop()
    return code
