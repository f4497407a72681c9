"""Opt-in Prometheus metrics for a Worker: a WorkerObserver that counts, and the /metrics endpoint.

Enabled by Worker(metrics_port=...) or FAULTLINE_WORKER_METRICS_PORT ("9465" or "host:9465"; a bare
port listens on every interface, so that a scraper in another container can reach it). The SDK's
base install does not depend on prometheus-client; it is imported only here, only when metrics are
asked for, and its absence is a clear error at Worker construction rather than at the first scrape:
install the `worker-metrics` extra.

Families (each worker has its own registry, so several Workers in one process do not collide):

- faultline_worker_handler_duration_seconds{queue,kind}: a lease from grant to settled completion.
- faultline_worker_jobs_in_flight{queue,kind}: leases held now.
- faultline_worker_jobs_total{queue,kind,outcome}: settled leases by outcome (succeeded, failed,
  cancelled, lost, unreported, crashed).
- faultline_worker_reconnects_total: sessions opened after the first one.
- faultline_worker_connected: 1 while a session is ready.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Any

from worker_sdk._errors import InvalidArgumentError, WorkerSDKError
from worker_sdk._stream import ConnState

if TYPE_CHECKING:
    from worker_sdk._worker import WorkerObserver

#: Environment variable that turns the endpoint on when Worker(metrics_port=...) is not given.
METRICS_PORT_ENV = "FAULTLINE_WORKER_METRICS_PORT"
#: Interface a bare port listens on.
METRICS_HOST_DEFAULT = "0.0.0.0"
# Handler runs span milliseconds to long batch work; the same buckets as the coordinator's job histograms.
_DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


def resolve_address(metrics_port: int | None) -> tuple[str, int] | None:
    """(host, port) to serve on, from the argument or else the environment; None when metrics are off."""
    if metrics_port is not None:
        return _checked(METRICS_HOST_DEFAULT, metrics_port)
    raw = os.environ.get(METRICS_PORT_ENV, "").strip()
    if not raw or raw.lower() == "off":
        return None
    host, _, port = raw.rpartition(":")
    try:
        return _checked(host.strip("[]") or METRICS_HOST_DEFAULT, int(port))
    except ValueError:
        raise InvalidArgumentError(f"{METRICS_PORT_ENV} must be a port or host:port, got {raw!r}") from None


def _checked(host: str, port: int) -> tuple[str, int]:
    if not 0 <= port <= 65535:
        raise InvalidArgumentError(f"metrics port must be in [0, 65535], got {port}")
    return host, port


class WorkerMetrics:
    """Counts what the Worker reports through WorkerObserver, and serves it on start()."""

    def __init__(self, *, host: str, port: int) -> None:
        try:
            import prometheus_client as prom
        except ImportError as exc:
            raise WorkerSDKError(
                "worker metrics need prometheus-client: pip install 'faultline-jobs[worker-metrics]'"
            ) from exc
        self._prom = prom
        self._host = host
        self._port = port
        self.registry = registry = prom.CollectorRegistry(auto_describe=True)
        self._duration = prom.Histogram(
            "faultline_worker_handler_duration_seconds",
            "Time a lease was held by this worker: handler run plus the completion's acknowledgement.",
            ["queue", "kind"], buckets=_DURATION_BUCKETS, registry=registry,
        )
        self._in_flight = prom.Gauge(
            "faultline_worker_jobs_in_flight", "Leases held by this worker now.", ["queue", "kind"], registry=registry,
        )
        self._jobs = prom.Counter(
            "faultline_worker_jobs", "Leases this worker settled, by outcome (succeeded, failed, cancelled, lost, "
            "unreported, crashed).", ["queue", "kind", "outcome"], registry=registry,
        )
        self._reconnects = prom.Counter(
            "faultline_worker_reconnects", "Sessions opened to the coordinator after the first one.", registry=registry,
        )
        self._connected = prom.Gauge(
            "faultline_worker_connected", "1 while this worker has a ready session.", registry=registry,
        )
        # Written from the event loop only; read by nobody else.
        self._sessions = 0
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port being served (the real one when 0 was asked for); 0 before start()."""
        return int(self._server.server_port) if self._server is not None else 0

    def start(self) -> None:
        server, thread = self._prom.start_http_server(self._port, addr=self._host, registry=self.registry)
        self._server, self._thread = server, thread

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()

    # ---- WorkerObserver ------------------------------------------------------------------

    def lease_started(self, kind: str, queue: str) -> None:
        self._in_flight.labels(queue, kind).inc()

    def lease_finished(self, kind: str, queue: str, outcome: str, seconds: float) -> None:
        self._in_flight.labels(queue, kind).dec()
        self._jobs.labels(queue, kind, outcome).inc()
        self._duration.labels(queue, kind).observe(seconds)

    def connection_changed(self, state: ConnState) -> None:
        if state is ConnState.READY:
            self._sessions += 1
            if self._sessions > 1:
                self._reconnects.inc()
            self._connected.set(1)
        else:
            self._connected.set(0)


class FanOut:
    """Passes each observation to several observers (the user's and the metrics exporter)."""

    __slots__ = ("_observers",)

    def __init__(self, *observers: WorkerObserver) -> None:
        self._observers = observers

    def lease_started(self, kind: str, queue: str) -> None:
        for o in self._observers:
            o.lease_started(kind, queue)

    def lease_finished(self, kind: str, queue: str, outcome: str, seconds: float) -> None:
        for o in self._observers:
            o.lease_finished(kind, queue, outcome, seconds)

    def connection_changed(self, state: ConnState) -> None:
        for o in self._observers:
            o.connection_changed(state)
