"""Every tunable of the coordinator: frozen Config, named defaults with units, validation from the environment."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from coordinator.errors import ConfigError, FaultlineError

GRPC_ADDR_DEFAULT = "127.0.0.1:50051"
METRICS_ADDR_DEFAULT = "127.0.0.1:9464"
BACKOFF_BASE_MS_DEFAULT = 1_000
BACKOFF_MAX_MS_DEFAULT = 300_000
BACKOFF_MULTIPLIER_DEFAULT = 2.0
BACKOFF_JITTER_DEFAULT = 0.2
LEASE_TTL_MS_DEFAULT = 30_000
MAX_ATTEMPTS_DEFAULT = 5
MAX_PAYLOAD_BYTES_DEFAULT = 1 << 20
DB_POOL_MIN_DEFAULT = 2
DB_POOL_MAX_DEFAULT = 10
# Dispatcher: largest claim in one statement, and the fallback poll that catches jobs made
# ready by another coordinator when NOTIFY was missed.
CLAIM_BATCH_MAX_DEFAULT = 500
DISPATCH_FALLBACK_POLL = timedelta(seconds=1)
# Completer and lease keeper: flush when this many items wait, or after this long.
FLUSH_MAX_ITEMS_DEFAULT = 1_000
FLUSH_INTERVAL = timedelta(milliseconds=2)
HEARTBEAT_FLUSH_INTERVAL = timedelta(milliseconds=50)
REAPER_INTERVAL = timedelta(milliseconds=500)
REAPER_BATCH_MAX = 1_000
PROMOTER_IDLE_MAX = timedelta(seconds=5)
PROMOTER_BATCH_MAX = 1_000
HEALTH_PROBE_INTERVAL = timedelta(seconds=1)
METRICS_SAMPLE_INTERVAL = timedelta(seconds=5)
# Maintenance (coordinator/actors/maintenance.py): every interval, a job table whose dead row versions
# exceed VACUUM_BASE + VACUUM_SCALE x live rows is vacuumed (and analyzed); else one whose rows changed
# since its last analyze exceed ANALYZE_BASE + ANALYZE_SCALE x the planner's row estimate is analyzed.
# Autovacuum's defaults are 50 + 0.2 x rows and 50 + 0.1 x rows, looked at once a minute. The dead-row
# scale is a quarter of autovacuum's because dead entries at the head of faultline_jobs_ready slow every
# claim; the bases are larger because at a 5 s interval a small table would be redone on every pass for a
# trickle of changes, and below a thousand rows neither dead entries nor stale statistics cost anything.
MAINTENANCE_INTERVAL = timedelta(seconds=5)
MAINTENANCE_VACUUM_BASE_ROWS_DEFAULT = 1_000
MAINTENANCE_VACUUM_SCALE_DEFAULT = 0.05
MAINTENANCE_ANALYZE_BASE_ROWS_DEFAULT = 1_000
MAINTENANCE_ANALYZE_SCALE_DEFAULT = 0.1
# The maintenance connection's statement timeout (the pool's 30 s would cut off a VACUUM of a large
# table), and how long a VACUUM or ANALYZE waits for a table lock that another session holds.
MAINTENANCE_STATEMENT_TIMEOUT = timedelta(hours=1)
MAINTENANCE_LOCK_TIMEOUT = timedelta(seconds=5)
DRAIN_GRACE_DEFAULT = timedelta(seconds=10)
INBOX_SIZE_DEFAULT = 10_000
# Submit and SubmitBatch work in flight (coordinator/api/admission.py): past either bound a call is answered
# RESOURCE_EXHAUSTED with a RetryInfo of SUBMIT_RETRY_AFTER.
SUBMIT_INFLIGHT_MAX_DEFAULT = 1_024
SUBMIT_INFLIGHT_BYTES_MAX_DEFAULT = 64 << 20
SUBMIT_RETRY_AFTER = timedelta(milliseconds=200)
# Distinct queue and kind label values that get metric series of their own; later ones read "other".
METRIC_LABEL_VALUES_MAX_DEFAULT = 100
# --- Flow control (coordinator/policy.py; limits themselves are rows in faultline_queues) ---
# Least time between two reloads of the queue settings cache after a plain claim came back short.
SETTINGS_RELOAD_MIN = timedelta(milliseconds=250)
# Bounds of the settings an operator may set (SetQueueSettings), checked at the edge.
PER_KEY_CONCURRENCY_MAX = 100_000
MAX_RUNNING_MAX = 1_000_000
RATE_PER_S_MAX = 1_000_000.0
BURST_MAX = 1_000_000

# Supervisor: restart delays grow from BASE to MAX; more than INTENSITY restarts of one actor
# within WINDOW means something is broken for good and the process exits non-zero.
RESTART_BACKOFF_BASE = timedelta(milliseconds=100)
RESTART_BACKOFF_MAX = timedelta(seconds=10)
RESTART_INTENSITY = 10
RESTART_WINDOW = timedelta(seconds=60)
RESTART_HEALTHY_AFTER = timedelta(seconds=30)
# -- security (coordinator/api/auth.py, coordinator/api/server.py, coordinator/auth/) -------------------
# FAULTLINE_AUTH: off (the default; refused on any address but loopback unless FAULTLINE_AUTH_OFF_ANY_ADDRESS
# accepts the risk) or required (every RPC but grpc.health.v1 needs an API key or a client certificate).
AUTH_OFF = "off"
AUTH_REQUIRED = "required"
AUTH_MODES = (AUTH_OFF, AUTH_REQUIRED)
# How often each coordinator reloads the active API keys: the longest a revocation takes to reach it.
KEY_REFRESH_INTERVAL = timedelta(seconds=2)
# What a client certificate alone (mTLS, no API key) may do, and on which queues.
TLS_CLIENT_SCOPES_DEFAULT = "work"
TLS_CLIENT_QUEUES_DEFAULT = "*"
EMBEDDED_DATA_DIR_DEFAULT = Path.home() / ".local" / "share" / "faultline" / "pgdata"

# === Time: watches, schedules, retention (coordinator/watch.py, coordinator/schedules.py, actors/scheduler.py,
# actors/pruner.py) ===
# WatchJob: every coordinator reads the jobs its watchers follow in one statement per poll (any coordinator's
# change is seen within one interval); past WATCHERS_MAX open watches a new one is RESOURCE_EXHAUSTED.
WATCH_POLL_INTERVAL = timedelta(milliseconds=100)
WATCHERS_MAX_DEFAULT = 10_000
# One client's share of them (its key's identity with auth on, its address with auth off): a client that opens
# watches without end is refused, not its neighbours.
WATCHERS_PER_CLIENT_MAX_DEFAULT = 1_000
# Scheduler: the longest it sleeps (a schedule created on another coordinator is seen within it), the least
# (a due schedule another coordinator holds is looked at again after it), and schedules per transaction.
SCHEDULER_IDLE_MAX = timedelta(seconds=1)
SCHEDULER_BUSY_PAUSE = timedelta(milliseconds=50)
SCHEDULER_BATCH_MAX = 100
# A tick later than this (coordinators down, database away) is a missed tick: catch-up policy applies.
SCHEDULE_MISFIRE_GRACE = timedelta(seconds=5)
# Shortest interval of an --every schedule, and the most missed cron ticks counted one by one.
SCHEDULE_EVERY_MIN = timedelta(seconds=1)
SCHEDULE_EVERY_MAX = timedelta(days=366)
SCHEDULE_MISSED_COUNT_MAX = 10_000
# Retention: finished jobs older than these (since finished_at) are deleted with their attempts and steps, by
# batches of RETENTION_BATCH_MAX rows in short statements, at most RETENTION_BATCHES_PER_PASS per pass.
RETENTION_INTERVAL = timedelta(seconds=10)
RETENTION_BATCH_MAX = 1_000
RETENTION_BATCHES_PER_PASS = 100
RETENTION_SUCCEEDED_DEFAULT = timedelta(days=7)
RETENTION_DEAD_LETTERED_DEFAULT = timedelta(days=30)
RETENTION_CANCELLED_DEFAULT = timedelta(days=7)
# A finished job holding an idempotency key is kept at least this long; pruning it frees the key (a later
# submit with it stores a new job). None (FAULTLINE_RETENTION_KEYED=forever) keeps keyed jobs for ever.
RETENTION_KEYED_DEFAULT: timedelta | None = timedelta(0)

# DATABASE_URL: the URL form that asyncpg accepts, and libpq's sslmode values.
DSN_SCHEMES = ("postgresql", "postgres")
DSN_SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
DSN_PORT_DEFAULT = 5432

_ADDR = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.\-]+):\d{1,5}$")


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryDefaults:
    """Backoff applied to jobs that bring no retry policy of their own."""

    base_ms: int = BACKOFF_BASE_MS_DEFAULT
    max_ms: int = BACKOFF_MAX_MS_DEFAULT
    multiplier: float = BACKOFF_MULTIPLIER_DEFAULT
    jitter: float = BACKOFF_JITTER_DEFAULT


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """The coordinator's whole configuration; build it with from_env()."""

    database_url: str | None
    grpc_addr: str = GRPC_ADDR_DEFAULT
    metrics_addr: str | None = METRICS_ADDR_DEFAULT
    retry: RetryDefaults = field(default_factory=RetryDefaults)
    lease_ttl_ms: int = LEASE_TTL_MS_DEFAULT
    max_attempts_default: int = MAX_ATTEMPTS_DEFAULT
    max_payload_bytes: int = MAX_PAYLOAD_BYTES_DEFAULT
    db_pool_min: int = DB_POOL_MIN_DEFAULT
    db_pool_max: int = DB_POOL_MAX_DEFAULT
    claim_batch_max: int = CLAIM_BATCH_MAX_DEFAULT
    drain_grace: timedelta = DRAIN_GRACE_DEFAULT
    embedded_data_dir: Path = EMBEDDED_DATA_DIR_DEFAULT
    reaper_interval: timedelta = REAPER_INTERVAL
    dispatch_poll: timedelta = DISPATCH_FALLBACK_POLL
    metrics_sample_interval: timedelta = METRICS_SAMPLE_INTERVAL
    # None: the coordinator does not vacuum or analyze (leave it to autovacuum or a scheduled job).
    maintenance_interval: timedelta | None = MAINTENANCE_INTERVAL
    # Lease a job to a waiting worker in the statement that inserts it (coordinator/grants.py).
    handoff: bool = True
    metric_label_values_max: int = METRIC_LABEL_VALUES_MAX_DEFAULT
    submit_inflight_max: int = SUBMIT_INFLIGHT_MAX_DEFAULT
    submit_inflight_bytes_max: int = SUBMIT_INFLIGHT_BYTES_MAX_DEFAULT
    # -- security: see the constants above and docs/security.md --
    auth: str = AUTH_OFF
    auth_off_any_address: bool = False
    key_refresh_interval: timedelta = KEY_REFRESH_INTERVAL
    reflection: bool = True
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    tls_client_scopes: tuple[str, ...] = (TLS_CLIENT_SCOPES_DEFAULT,)
    tls_client_queues: tuple[str, ...] = (TLS_CLIENT_QUEUES_DEFAULT,)
    # A second, plaintext listener that serves only grpc.health.v1, for probes that cannot speak TLS
    # (Kubernetes' gRPC probes); None: health is served on the main address only.
    health_addr: str | None = None

    @property
    def auth_required(self) -> bool:
        """Authentication is on: asked for, or implied by requiring client certificates."""
        return self.auth == AUTH_REQUIRED or self.tls_client_ca is not None

    # === Time (see the constants' block above) ===
    watch_poll: timedelta = WATCH_POLL_INTERVAL
    watchers_max: int = WATCHERS_MAX_DEFAULT
    watchers_per_client_max: int = WATCHERS_PER_CLIENT_MAX_DEFAULT
    schedule_misfire_grace: timedelta = SCHEDULE_MISFIRE_GRACE
    # False: this coordinator runs no scheduler (the others on the database do).
    scheduler: bool = True
    # None: the pruner is off. Per state, None keeps that state's jobs for ever.
    retention_interval: timedelta | None = RETENTION_INTERVAL
    retention_succeeded: timedelta | None = RETENTION_SUCCEEDED_DEFAULT
    retention_dead_lettered: timedelta | None = RETENTION_DEAD_LETTERED_DEFAULT
    retention_cancelled: timedelta | None = RETENTION_CANCELLED_DEFAULT
    retention_keyed: timedelta | None = RETENTION_KEYED_DEFAULT

    @property
    def heartbeat_interval_ms(self) -> int:
        # A third of the TTL leaves two heartbeats of slack before a lease can expire.
        return max(self.lease_ttl_ms // 3, 1)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Config:
        """Read FAULTLINE_* and DATABASE_URL; raise ConfigError naming the variable on bad input."""
        env = os.environ if env is None else env
        metrics = env.get("FAULTLINE_METRICS_ADDR", METRICS_ADDR_DEFAULT)
        retry = RetryDefaults(
            base_ms=_int(env, "FAULTLINE_BACKOFF_BASE_MS", BACKOFF_BASE_MS_DEFAULT, lo=1, hi=86_400_000),
            max_ms=_int(env, "FAULTLINE_BACKOFF_MAX_MS", BACKOFF_MAX_MS_DEFAULT, lo=1, hi=86_400_000),
            multiplier=_float(env, "FAULTLINE_BACKOFF_MULTIPLIER", BACKOFF_MULTIPLIER_DEFAULT, lo=1.0, hi=100.0),
            jitter=_float(env, "FAULTLINE_BACKOFF_JITTER", BACKOFF_JITTER_DEFAULT, lo=0.0, hi=1.0),
        )
        if retry.max_ms < retry.base_ms:
            raise ConfigError("FAULTLINE_BACKOFF_MAX_MS must be >= FAULTLINE_BACKOFF_BASE_MS")
        cfg = cls(
            database_url=_dsn(env, "DATABASE_URL"),
            grpc_addr=_addr(env, "FAULTLINE_GRPC_ADDR", GRPC_ADDR_DEFAULT),
            metrics_addr=None if metrics in ("", "off") else _addr(env, "FAULTLINE_METRICS_ADDR", metrics),
            retry=retry,
            lease_ttl_ms=_int(env, "FAULTLINE_LEASE_TTL_MS", LEASE_TTL_MS_DEFAULT, lo=100, hi=86_400_000),
            max_attempts_default=_int(env, "FAULTLINE_MAX_ATTEMPTS", MAX_ATTEMPTS_DEFAULT, lo=1, hi=1000),
            max_payload_bytes=_int(env, "FAULTLINE_MAX_PAYLOAD_BYTES", MAX_PAYLOAD_BYTES_DEFAULT, lo=1, hi=64 << 20),
            db_pool_min=_int(env, "FAULTLINE_DB_POOL_MIN", DB_POOL_MIN_DEFAULT, lo=1, hi=100),
            db_pool_max=_int(env, "FAULTLINE_DB_POOL_MAX", DB_POOL_MAX_DEFAULT, lo=2, hi=200),
            claim_batch_max=_int(env, "FAULTLINE_CLAIM_BATCH_MAX", CLAIM_BATCH_MAX_DEFAULT, lo=1, hi=10_000),
            drain_grace=timedelta(
                milliseconds=_int(env, "FAULTLINE_DRAIN_GRACE_MS", int(DRAIN_GRACE_DEFAULT.total_seconds() * 1000),
                                  lo=0, hi=3_600_000)
            ),
            embedded_data_dir=Path(env.get("FAULTLINE_EMBEDDED_DATA_DIR") or EMBEDDED_DATA_DIR_DEFAULT),
            reaper_interval=timedelta(
                milliseconds=_int(env, "FAULTLINE_REAPER_INTERVAL_MS", int(REAPER_INTERVAL.total_seconds() * 1000),
                                  lo=10, hi=60_000)
            ),
            metrics_sample_interval=timedelta(
                milliseconds=_int(env, "FAULTLINE_METRICS_SAMPLE_MS",
                                  int(METRICS_SAMPLE_INTERVAL.total_seconds() * 1000), lo=10, hi=600_000)
            ),
        )
        cfg = replace(cfg, handoff=_switch(env, "FAULTLINE_HANDOFF", default=True))
        cfg = replace(cfg, metric_label_values_max=_int(
            env, "FAULTLINE_METRIC_LABEL_VALUES_MAX", METRIC_LABEL_VALUES_MAX_DEFAULT, lo=1, hi=100_000))
        cfg = replace(
            cfg,
            submit_inflight_max=_int(env, "FAULTLINE_SUBMIT_INFLIGHT_MAX", SUBMIT_INFLIGHT_MAX_DEFAULT,
                                     lo=1, hi=100_000),
            submit_inflight_bytes_max=_int(env, "FAULTLINE_SUBMIT_INFLIGHT_BYTES", SUBMIT_INFLIGHT_BYTES_MAX_DEFAULT,
                                           lo=1 << 20, hi=16 << 30),
        )
        poll_ms = _int(env, "FAULTLINE_DISPATCH_POLL_MS", int(DISPATCH_FALLBACK_POLL.total_seconds() * 1000),
                       lo=10, hi=600_000)
        cfg = replace(cfg, dispatch_poll=timedelta(milliseconds=poll_ms))
        cfg = replace(cfg, maintenance_interval=_interval_or_off(
            env, "FAULTLINE_MAINTENANCE_INTERVAL_MS", MAINTENANCE_INTERVAL, lo_ms=100, hi_ms=3_600_000))
        cfg = _time_settings(env, cfg)
        if cfg.db_pool_min > cfg.db_pool_max:
            raise ConfigError("FAULTLINE_DB_POOL_MIN must be <= FAULTLINE_DB_POOL_MAX")
        return _security_from_env(cfg, env)


def _security_from_env(cfg: Config, env: Mapping[str, str]) -> Config:
    """The security block: FAULTLINE_AUTH, FAULTLINE_TLS_*, FAULTLINE_REFLECTION (see docs/security.md)."""
    from coordinator.auth.keys import check_queue_patterns, parse_scopes

    auth = (env.get("FAULTLINE_AUTH") or AUTH_OFF).strip().lower()
    if auth not in AUTH_MODES:
        raise ConfigError(f"FAULTLINE_AUTH must be one of {', '.join(AUTH_MODES)}, got {auth!r}")
    paths = {name: Path(env[name]) if env.get(name) else None
             for name in ("FAULTLINE_TLS_CERT", "FAULTLINE_TLS_KEY", "FAULTLINE_TLS_CLIENT_CA")}
    if (paths["FAULTLINE_TLS_CERT"] is None) != (paths["FAULTLINE_TLS_KEY"] is None):
        raise ConfigError("FAULTLINE_TLS_CERT and FAULTLINE_TLS_KEY go together: set both to serve TLS")
    if paths["FAULTLINE_TLS_CLIENT_CA"] is not None and paths["FAULTLINE_TLS_CERT"] is None:
        raise ConfigError("FAULTLINE_TLS_CLIENT_CA needs FAULTLINE_TLS_CERT and FAULTLINE_TLS_KEY (mTLS is TLS first)")
    for name, path in paths.items():
        if path is not None and not path.is_file():
            raise ConfigError(f"{name}: no such file {str(path)!r}")
    try:
        scopes = tuple(sorted(parse_scopes(env.get("FAULTLINE_TLS_CLIENT_SCOPES") or TLS_CLIENT_SCOPES_DEFAULT)))
    except FaultlineError as exc:
        raise ConfigError(f"FAULTLINE_TLS_CLIENT_SCOPES: {exc}") from None
    try:
        queues = check_queue_patterns(
            [q.strip() for q in (env.get("FAULTLINE_TLS_CLIENT_QUEUES") or TLS_CLIENT_QUEUES_DEFAULT).split(",")
             if q.strip()])
    except FaultlineError as exc:
        raise ConfigError(f"FAULTLINE_TLS_CLIENT_QUEUES: {exc}") from None
    refresh_ms = _int(env, "FAULTLINE_AUTH_REFRESH_MS", int(KEY_REFRESH_INTERVAL.total_seconds() * 1000),
                      lo=50, hi=600_000)
    health = env.get("FAULTLINE_HEALTH_ADDR") or ""
    return replace(
        cfg, health_addr=_addr(env, "FAULTLINE_HEALTH_ADDR", health) if health not in ("", "off") else None,
        auth=auth, auth_off_any_address=_switch(env, "FAULTLINE_AUTH_OFF_ANY_ADDRESS", default=False),
        key_refresh_interval=timedelta(milliseconds=refresh_ms),
        reflection=_switch(env, "FAULTLINE_REFLECTION", default=True),
        tls_cert=paths["FAULTLINE_TLS_CERT"], tls_key=paths["FAULTLINE_TLS_KEY"],
        tls_client_ca=paths["FAULTLINE_TLS_CLIENT_CA"], tls_client_scopes=scopes, tls_client_queues=queues,
    )


def _dsn(env: Mapping[str, str], name: str) -> str | None:
    """A postgresql:// URL, checked before the first connection: a typo is a configuration error, not an outage."""
    raw = env.get(name)
    if not raw:
        return None
    check_dsn(raw, name)
    return raw


def check_dsn(dsn: str, name: str = "DATABASE_URL") -> None:
    """Raise ConfigError naming `name` when dsn is not a URL that asyncpg can connect with."""
    shown = redact_dsn(dsn)
    usage = "postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE[?sslmode=...]"
    parts = urlsplit(dsn)
    if parts.scheme not in DSN_SCHEMES or not dsn.startswith(f"{parts.scheme}://"):
        raise ConfigError(f"{name} must be a URL of the form {usage}, got {shown!r}")
    hostlist = parts.netloc.rpartition("@")[2]
    for hostport in hostlist.split(",") if hostlist else []:
        host, port = _split_hostport(hostport)
        if port is not None and not (port.isdigit() and 0 < int(port) < 65536):
            raise ConfigError(f"{name} has an invalid port {port!r} (1-65535) in {shown!r}")
        if not host and port is not None:
            raise ConfigError(f"{name} has a port but no host in {shown!r}")
    try:
        query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:
        raise ConfigError(f"{name} has a malformed query string in {shown!r}") from None
    for mode in query.get("sslmode", []):
        if mode not in DSN_SSLMODES:
            raise ConfigError(f"{name} has an invalid sslmode {mode!r}: one of {', '.join(DSN_SSLMODES)}")
    for port in query.get("port", []):
        if not (port.isdigit() and 0 < int(port) < 65536):
            raise ConfigError(f"{name} has an invalid port {port!r} (1-65535) in {shown!r}")


def _split_hostport(hostport: str) -> tuple[str, str | None]:
    if hostport.startswith("["):  # [v6]:port
        host, _, rest = hostport[1:].partition("]")
        return host, rest[1:] if rest.startswith(":") else None
    host, sep, port = hostport.rpartition(":")
    return (host, port) if sep else (hostport, None)


def redact_dsn(dsn: str) -> str:
    """The DSN without its password, for messages and logs."""
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", dsn)


def dsn_target(dsn: str) -> str:
    """`host:port` (or the socket directory) of a checked DSN, for "not reachable" log lines."""
    parts = urlsplit(dsn)
    query = parse_qs(parts.query)
    hostlist = parts.netloc.rpartition("@")[2]
    targets: list[str] = []
    for hostport in hostlist.split(",") if hostlist else []:
        host, port = _split_hostport(hostport)
        targets.append(f"{unquote(host) or 'localhost'}:{port or query.get('port', [DSN_PORT_DEFAULT])[0]}")
    if not targets:
        host = query.get("host", [os.environ.get("PGHOST") or "localhost"])[0]
        targets.append(host if host.startswith("/") else f"{host}:{query.get('port', [DSN_PORT_DEFAULT])[0]}")
    return ",".join(targets)


def _switch(env: Mapping[str, str], name: str, *, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in ("on", "true", "1"):
        return True
    if value in ("off", "false", "0"):
        return False
    raise ConfigError(f"{name} must be on or off, got {raw!r}")


def _int(env: Mapping[str, str], name: str, default: int, *, lo: int, hi: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if not lo <= value <= hi:
        raise ConfigError(f"{name} must be in [{lo}, {hi}], got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, *, lo: float, hi: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if not lo <= value <= hi:
        raise ConfigError(f"{name} must be in [{lo}, {hi}], got {value}")
    return value


def _addr(env: Mapping[str, str], name: str, default: str) -> str:
    value = env.get(name) or default
    if not _ADDR.match(value) or not 0 < int(value.rsplit(":", 1)[1]) < 65536:
        raise ConfigError(f"{name} must be host:port, got {value!r}")
    return value


def _interval_or_off(
    env: Mapping[str, str], name: str, default: timedelta, *, lo_ms: int, hi_ms: int
) -> timedelta | None:
    """A period in milliseconds; `off` or 0 turns the feature off (None)."""
    raw = (env.get(name) or "").strip().lower()
    if raw in ("off", "0"):
        return None
    return timedelta(milliseconds=_int(env, name, int(default.total_seconds() * 1000), lo=lo_ms, hi=hi_ms))


def _time_settings(env: Mapping[str, str], cfg: Config) -> Config:
    """The Time block: watches, schedules, retention (README "Settings")."""
    day_ms = 86_400_000
    return replace(
        cfg,
        watch_poll=timedelta(milliseconds=_int(env, "FAULTLINE_WATCH_POLL_MS",
                                               int(WATCH_POLL_INTERVAL.total_seconds() * 1000), lo=10, hi=60_000)),
        watchers_max=_int(env, "FAULTLINE_WATCHERS_MAX", WATCHERS_MAX_DEFAULT, lo=1, hi=1_000_000),
        watchers_per_client_max=_int(env, "FAULTLINE_WATCHERS_PER_CLIENT_MAX", WATCHERS_PER_CLIENT_MAX_DEFAULT,
                                     lo=1, hi=1_000_000),
        schedule_misfire_grace=timedelta(milliseconds=_int(
            env, "FAULTLINE_SCHEDULE_MISFIRE_GRACE_MS", int(SCHEDULE_MISFIRE_GRACE.total_seconds() * 1000),
            lo=0, hi=day_ms)),
        scheduler=_switch(env, "FAULTLINE_SCHEDULER", default=True),
        retention_interval=_interval_or_off(env, "FAULTLINE_RETENTION_INTERVAL_MS", RETENTION_INTERVAL,
                                            lo_ms=100, hi_ms=3_600_000),
        retention_succeeded=_age_or_forever(env, "FAULTLINE_RETENTION_SUCCEEDED_MS", RETENTION_SUCCEEDED_DEFAULT),
        retention_dead_lettered=_age_or_forever(env, "FAULTLINE_RETENTION_DEAD_LETTERED_MS",
                                                RETENTION_DEAD_LETTERED_DEFAULT),
        retention_cancelled=_age_or_forever(env, "FAULTLINE_RETENTION_CANCELLED_MS", RETENTION_CANCELLED_DEFAULT),
        retention_keyed=_age_or_forever(env, "FAULTLINE_RETENTION_KEYED_MS", RETENTION_KEYED_DEFAULT),
    )


def _age_or_forever(env: Mapping[str, str], name: str, default: timedelta | None) -> timedelta | None:
    """An age in milliseconds (0 to 100 years); `forever` keeps the rows (None)."""
    raw = (env.get(name) or "").strip().lower()
    if raw == "forever":
        return None
    if not raw:
        return default
    return timedelta(milliseconds=_int(env, name, 0, lo=0, hi=100 * 366 * 86_400_000))
