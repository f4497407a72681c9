"""The gRPC server: its options, the interceptor chain, the services, TLS, and the rule that binds safely.

    interceptors, outermost first:
      AuthInterceptor (api/auth.py): authenticate, authorize, rate limit, access log (only with auth on)
      DecodeGuard     (api/decode.py): a request that does not parse is INVALID_ARGUMENT
    services: JobService, WorkerService, grpc.health.v1 (never authenticated, for probes), and
              reflection when FAULTLINE_REFLECTION is on (with auth on it needs a key, any scope)

Safe by default: with FAULTLINE_AUTH=off the server binds only a loopback address (127.0.0.0/8, ::1,
localhost). Any other address without auth refuses to start and says how to turn auth on, unless
FAULTLINE_AUTH_OFF_ANY_ADDRESS=on accepts the risk. FAULTLINE_TLS_CERT/KEY serve TLS; with
FAULTLINE_TLS_CLIENT_CA the server requires client certificates (and so authentication is on).
FAULTLINE_HEALTH_ADDR adds a plaintext listener that serves grpc.health.v1 and nothing else, for probes
that cannot speak TLS (Kubernetes' gRPC probes).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from typing import Any

import grpc
from grpc_health.v1 import health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from coordinator.api.auth import AuthInterceptor
from coordinator.api.decode import DecodeGuard
from coordinator.auth.keyring import KeyRing
from coordinator.auth.keys import parse_scopes
from coordinator.config import Config
from coordinator.errors import StartupError
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
HEALTH_SERVICE_NAME = "grpc.health.v1.Health"
GRPC_MAX_MESSAGE_BYTES = 64 << 20
# RPCs in progress at once over all connections (worker streams included; past it, RESOURCE_EXHAUSTED at
# once), and streams at once on one HTTP/2 connection.
GRPC_MAX_CONCURRENT_RPCS = 10_000
GRPC_MAX_CONCURRENT_STREAMS = 1_000
# Keepalive: ping an idle connection every KEEPALIVE_TIME_MS and drop it when the ack takes longer than
# KEEPALIVE_TIMEOUT_MS; accept client pings no more often than MIN_CLIENT_PING_INTERVAL_MS, calls or not.
KEEPALIVE_TIME_MS = 20_000
KEEPALIVE_TIMEOUT_MS = 10_000
MIN_CLIENT_PING_INTERVAL_MS = 5_000
SERVER_OPTIONS: tuple[tuple[str, int], ...] = (
    # gRPC sets SO_REUSEPORT by default, which lets a second coordinator share the port and split the
    # clients between two processes; off, a taken port fails the bind.
    ("grpc.so_reuseport", 0),
    ("grpc.max_receive_message_length", GRPC_MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", GRPC_MAX_MESSAGE_BYTES),
    ("grpc.max_concurrent_streams", GRPC_MAX_CONCURRENT_STREAMS),
    ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ("grpc.http2.min_ping_interval_without_data_ms", MIN_CLIENT_PING_INTERVAL_MS),
    ("grpc.keepalive_permit_without_calls", 1),
)


def is_loopback(host: str) -> bool:
    """True when every address host names is a loopback one (a name that does not resolve is not)."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(str(i[4][0]).split("%")[0]).is_loopback for i in infos)


def check_exposure(cfg: Config) -> None:
    """Refuse to serve without authentication anywhere but loopback, unless the risk is accepted explicitly."""
    host = cfg.grpc_addr.rsplit(":", 1)[0]
    if cfg.auth_required or cfg.auth_off_any_address or is_loopback(host):
        return
    raise StartupError(
        f"refusing to serve {cfg.grpc_addr} (FAULTLINE_GRPC_ADDR) without authentication: anyone who can reach it "
        "could submit, read and complete jobs. Turn auth on with FAULTLINE_AUTH=required and make a key with "
        "`faultline keys create NAME --scope admin` (see docs/security.md), or bind a loopback address; "
        "FAULTLINE_AUTH_OFF_ANY_ADDRESS=on accepts the risk")


def _read(path: Any, var: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise StartupError(f"cannot read {var} {str(path)!r}: {exc.strerror or exc}") from None


def server_credentials(cfg: Config) -> grpc.ServerCredentials | None:
    """TLS credentials from FAULTLINE_TLS_*; None for plaintext."""
    if cfg.tls_cert is None or cfg.tls_key is None:
        return None
    cert = _read(cfg.tls_cert, "FAULTLINE_TLS_CERT")
    key = _read(cfg.tls_key, "FAULTLINE_TLS_KEY")
    ca = _read(cfg.tls_client_ca, "FAULTLINE_TLS_CLIENT_CA") if cfg.tls_client_ca is not None else None
    try:
        return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=ca is not None)
    except (ValueError, RuntimeError, TypeError) as exc:
        raise StartupError(f"FAULTLINE_TLS_CERT/KEY: {exc}") from None


def build(
    cfg: Config, *, ring: KeyRing, job_servicer: Any, worker_servicer: Any, health: HealthServicer
) -> grpc.aio.Server:
    """The server with every service added, not bound yet (see bind())."""
    check_exposure(cfg)
    interceptors: list[grpc.aio.ServerInterceptor] = [DecodeGuard()]
    if cfg.auth_required:  # with auth off the chain is DecodeGuard alone: auth off costs nothing
        interceptors.insert(0, AuthInterceptor(
            ring=ring, required=True, mtls=cfg.tls_client_ca is not None,
            cert_scopes=parse_scopes(cfg.tls_client_scopes), cert_queues=cfg.tls_client_queues))
    server = grpc.aio.server(interceptors=interceptors, maximum_concurrent_rpcs=GRPC_MAX_CONCURRENT_RPCS,
                             options=list(SERVER_OPTIONS))
    # The generated *_pb2_grpc modules have no annotations (gen_protos.py emits no .pyi for them).
    job_service_pb2_grpc.add_JobServiceServicer_to_server(job_servicer, server)  # type: ignore[no-untyped-call]
    worker_service_pb2_grpc.add_WorkerServiceServicer_to_server(  # type: ignore[no-untyped-call]
        worker_servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    if cfg.reflection:
        reflection.enable_server_reflection((*SERVICE_NAMES, reflection.SERVICE_NAME, HEALTH_SERVICE_NAME), server)
    return server


def build_health_only(health: HealthServicer) -> grpc.aio.Server:
    """The FAULTLINE_HEALTH_ADDR listener: plaintext, grpc.health.v1 alone (nothing else is reachable on it)."""
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    return server


def bind_health_only(server: grpc.aio.Server, addr: str) -> int:
    try:
        port = server.add_insecure_port(addr)
    except RuntimeError:
        port = 0
    if port == 0:
        raise StartupError(f"cannot listen on {addr} (FAULTLINE_HEALTH_ADDR): address in use or not available")
    return port


def bind(server: grpc.aio.Server, cfg: Config) -> int:
    """Listen on FAULTLINE_GRPC_ADDR (TLS when configured); the port bound, or StartupError."""
    creds = server_credentials(cfg)
    try:
        if creds is None:
            port = server.add_insecure_port(cfg.grpc_addr)
        else:
            port = server.add_secure_port(cfg.grpc_addr, creds)
    except RuntimeError:  # grpcio raises "Failed to bind" where older releases returned 0
        port = 0
    if port == 0:
        raise StartupError(f"cannot listen on {cfg.grpc_addr} (FAULTLINE_GRPC_ADDR): address in use or not "
                           "available")
    logger.info("grpc listening", extra={"grpc": cfg.grpc_addr, "port": port, "tls": creds is not None,
                                         "client_certificates": cfg.tls_client_ca is not None,
                                         "auth": "required" if cfg.auth_required else "off"})
    return port
