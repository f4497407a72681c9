"""ConsoleConfig: the console's settings and every limit it enforces, as named constants with units."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from datetime import timedelta

import grpc

from coordinator.errors import ConfigError

ADDR_ENV = "FAULTLINE_CONSOLE_ADDR"
ADDR_DEFAULT = "127.0.0.1:8089"
#: FAULTLINE_CONSOLE_ADDR=off (or --addr off) disables the console.
ADDR_OFF = "off"

#: A session unused this long is forgotten (its key with it); the next page asks for a login again.
SESSION_IDLE_DEFAULT = timedelta(minutes=30)
#: Most sessions held at once; a new login evicts the least recently used one beyond it.
SESSIONS_MAX_DEFAULT = 1_000
#: Most server-sent-event streams one session may hold open (tabs of one browser).
SSE_PER_SESSION_MAX = 8
#: Most server-sent-event streams open at once in the whole console (every session together).
SSE_TOTAL_MAX = 1_000
#: Most bulk operations one session may have running at once.
BULK_OPS_RUNNING_PER_SESSION_MAX = 2
#: Finished bulk operations a session keeps to show (the oldest finished one goes first).
BULK_OPS_KEPT_PER_SESSION = 20
#: How often a live reader polls the coordinator while someone listens.
POLL_INTERVAL_DEFAULT = timedelta(seconds=2)
#: A comment line on every open SSE stream this often, so that a closed browser is noticed.
SSE_KEEPALIVE = timedelta(seconds=5)
#: Deadline of one ordinary gRPC call.
RPC_TIMEOUT = timedelta(seconds=10)
#: Deadline of one bulk call (the server stops itself after about 3 s).
BULK_RPC_TIMEOUT = timedelta(seconds=30)
#: Largest request body accepted (forms only: a login, a filter, up to BULK_IDS_MAX ids).
REQUEST_BODY_MAX_BYTES = 64 * 1024
#: Payload and result previews show at most this much.
PREVIEW_BYTES_MAX = 4 * 1024
#: Jobs per page of the jobs lists.
JOBS_PAGE_SIZE = 50
#: Most selected ids in one bulk action (the API's own bound per call).
BULK_IDS_MAX = 1_000
#: Most label filters (the API's bound).
LABEL_FILTERS_MAX = 8
#: Longest API key accepted at the login form.
API_KEY_MAX_CHARS = 512
#: Widest error or label cell in a table before it is cut.
CELL_MAX_CHARS = 120
#: Longest text field read from a form (queue, kind, ids, label pairs).
FORM_FIELD_MAX_CHARS = 256
#: Attempts granted by a requeue from the console.
REQUEUE_EXTRA_ATTEMPTS = 1

COOKIE_NAME = "faultline_console"


@dataclass(frozen=True, slots=True)
class ConsoleConfig:
    """What `faultline console` was started with."""

    #: gRPC targets (host:port), in order of preference.
    coordinators: tuple[str, ...]
    #: Base URL of a Jaeger UI; job pages link to {jaeger_url}/trace/{trace_id}.
    jaeger_url: str | None = None
    #: TLS to the coordinators; None is plaintext.
    credentials: grpc.ChannelCredentials | None = None
    session_idle: timedelta = SESSION_IDLE_DEFAULT
    sessions_max: int = SESSIONS_MAX_DEFAULT
    poll_interval: timedelta = POLL_INTERVAL_DEFAULT
    #: Host headers accepted (host:port); empty accepts any (a console bound beyond loopback).
    allowed_hosts: frozenset[str] = field(default_factory=frozenset)
    #: Whether the session cookie carries Secure (the console is behind an HTTPS proxy).
    secure_cookie: bool = False

    def __post_init__(self) -> None:
        if not self.coordinators:
            raise ConfigError("the console needs at least one coordinator address")
        if self.sessions_max < 1:
            raise ConfigError("sessions_max must be at least 1")
        if self.session_idle <= timedelta(0) or self.poll_interval <= timedelta(0):
            raise ConfigError("session_idle and poll_interval must be positive")
        if self.jaeger_url is not None and not self.jaeger_url.startswith(("http://", "https://")):
            raise ConfigError(f"--jaeger-url must be an http(s) URL, got {self.jaeger_url!r}")


def split_addr(addr: str) -> tuple[str, int]:
    """host:port (IPv6 in brackets) -> (host, port); ConfigError when malformed."""
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"expected HOST:PORT, got {addr!r}")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def loopback_hosts(port: int) -> frozenset[str]:
    """The Host headers a loopback console answers to (a DNS-rebinding page names another host)."""
    return frozenset({f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"})
