"""API keys and principals: the token format, the stored hash, scopes, queue patterns, who is calling.

A key is shown once, at creation, as ``fl_<id>_<secret>``: ``id`` (12 hex digits) names the row in
faultline_api_keys and is not secret; ``secret`` is 32 random bytes (URL-safe base64). Postgres keeps
only ``HMAC-SHA256(salt, secret)`` with a random 16-byte salt per key, never the secret.

Why a keyed fast hash and not a slow one (scrypt, argon2): slow hashes exist to make guessing a
low-entropy password expensive. A 256-bit random secret cannot be guessed at any hash speed, so a slow
hash would only add milliseconds of CPU to every authenticated call (or force a cache of verified
secrets in memory). The per-key salt makes equal secrets store differently and a leaked table useless
for precomputation; compare_digest keeps the check constant-time.

Scopes (``Scope``): submit (Submit, SubmitBatch), read (GetJob, ListJobs, ListQueues, ListWorkers),
payloads (see payloads and results in what read and submit return; without it GetJob leaves them out
and a FULL view is refused), work (WorkerService.Connect, whose grants carry payloads), admin
(CancelJob, RequeueJob, BulkCancelJobs, BulkRequeueJobs and every RPC without a scope of its own; admin
implies every other scope). WhoAmI needs only an authenticated caller.
A key may be limited to queues: a pattern is a queue name, or a prefix ending in ``*`` (``team-a.*``);
``*`` (or no pattern) is every queue.

The principal of a call lives in a context variable (``current()``), set by the edge interceptor
(coordinator/api/auth.py) before a handler runs; handlers check queues against it.
"""

from __future__ import annotations

import contextvars
import enum
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from coordinator.errors import InvalidArgumentError, PermissionDeniedError

TOKEN_PREFIX = "fl"
KEY_ID_BYTES = 6
SECRET_BYTES = 32
SALT_BYTES = 16
KEY_NAME_MAX = 64
QUEUE_PATTERNS_MAX = 64
_KEY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_KEY_ID = re.compile(r"^[0-9a-f]{12}$")
_QUEUE_PATTERN = re.compile(r"^(\*|[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}\*?)$")
# The longest bearer token read from metadata; anything longer is not a Faultline key.
TOKEN_MAX_CHARS = 128


class Scope(enum.StrEnum):
    """What a key may do; see the module docstring."""

    SUBMIT = "submit"
    READ = "read"
    WORK = "work"
    PAYLOADS = "payloads"
    ADMIN = "admin"


def parse_scopes(raw: str | Iterable[str]) -> frozenset[Scope]:
    """`submit,read` (or a list of names) as scopes; InvalidArgumentError naming `scope` otherwise."""
    names = [s.strip() for s in (raw.split(",") if isinstance(raw, str) else raw)]
    out: set[Scope] = set()
    for name in names:
        if not name:
            continue
        try:
            out.add(Scope(name))
        except ValueError:
            raise InvalidArgumentError(
                "scope", f"unknown scope {name!r}; one of {', '.join(s.value for s in Scope)}") from None
    if not out:
        raise InvalidArgumentError("scope", "at least one scope is required")
    return frozenset(out)


def check_key_name(name: str) -> str:
    if not _KEY_NAME.match(name):
        raise InvalidArgumentError("name", f"must be 1-{KEY_NAME_MAX} characters of [A-Za-z0-9_.-] starting with a "
                                           f"letter or digit, got {name!r}")
    return name


def check_queue_patterns(patterns: Sequence[str]) -> tuple[str, ...]:
    if len(patterns) > QUEUE_PATTERNS_MAX:
        raise InvalidArgumentError("queue", f"at most {QUEUE_PATTERNS_MAX} patterns")
    for p in patterns:
        if not _QUEUE_PATTERN.match(p):
            raise InvalidArgumentError("queue", f"{p!r} is neither a queue name nor a prefix ending in '*'")
    return tuple(dict.fromkeys(patterns))


def queue_allowed(patterns: Sequence[str], queue: str) -> bool:
    """True when queue matches a pattern (a name, or a prefix ending in '*'); no patterns is every queue."""
    if not patterns:
        return True
    for p in patterns:
        if p.endswith("*"):
            if queue.startswith(p[:-1]):
                return True
        elif p == queue:
            return True
    return False


def new_key_id() -> str:
    return secrets.token_hex(KEY_ID_BYTES)


def new_secret() -> str:
    return secrets.token_urlsafe(SECRET_BYTES)


def new_salt() -> bytes:
    return secrets.token_bytes(SALT_BYTES)


def format_token(key_id: str, secret: str) -> str:
    return f"{TOKEN_PREFIX}_{key_id}_{secret}"


def parse_token(token: str) -> tuple[str, str] | None:
    """(key id, secret) of a well-formed token, else None."""
    if len(token) > TOKEN_MAX_CHARS:
        return None
    prefix, sep, rest = token.partition("_")
    key_id, sep2, secret = rest.partition("_")
    if prefix != TOKEN_PREFIX or not sep or not sep2 or not secret or not _KEY_ID.match(key_id):
        return None
    return key_id, secret


def hash_secret(salt: bytes, secret: str) -> bytes:
    return hmac.new(salt, secret.encode("utf-8"), hashlib.sha256).digest()


def secret_matches(salt: bytes, stored: bytes, secret: str) -> bool:
    return hmac.compare_digest(hash_secret(salt, secret), stored)


@dataclass(frozen=True, slots=True, kw_only=True)
class Principal:
    """Who is calling: a key, a client certificate, or anonymous (auth off).

    identity: what worker ids are qualified with and audit columns record (``key:NAME``, ``cn:SUBJECT``);
    None for anonymous, whose worker ids stay as the worker claims them.
    """

    name: str
    identity: str | None
    scopes: frozenset[Scope]
    queues: tuple[str, ...] = ()
    key_id: str | None = None
    # Rate limit of job creation, jobs per second and bucket size; None is unlimited.
    rate_per_s: float | None = None
    burst: int | None = None

    def has(self, scope: Scope) -> bool:
        return scope in self.scopes or Scope.ADMIN in self.scopes

    def require(self, scope: Scope, what: str) -> None:
        if not self.has(scope):
            raise PermissionDeniedError(
                f"{what} needs scope {scope.value}; {self.name} has {', '.join(sorted(self.scopes)) or 'none'}")

    @property
    def restricted(self) -> bool:
        return bool(self.queues) and "*" not in self.queues

    def allows_queue(self, queue: str) -> bool:
        return not self.restricted or queue_allowed(self.queues, queue)

    def require_queue(self, queue: str, what: str) -> None:
        if not self.allows_queue(queue):
            raise PermissionDeniedError(
                f"{what}: {self.name} may not use queue {queue!r} (its queues: {', '.join(self.queues)})")

    def qualify(self, worker_id: str) -> str:
        """The worker id that Postgres records as a lease's holder: the claimed id under this identity."""
        return worker_id if self.identity is None else f"{self.identity}/{worker_id}"

    @property
    def audit(self) -> str | None:
        return self.identity


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyRecord:
    """One active key as stored: its hash and salt, never its secret."""

    key_id: str
    name: str
    salt: bytes
    secret_hash: bytes
    scopes: frozenset[Scope]
    queues: tuple[str, ...] = ()
    rate_per_s: float | None = None
    burst: int | None = None

    @classmethod
    def of(cls, r: Any) -> KeyRecord:
        # A scope this release does not know (written by a newer one) is dropped, never widened.
        scopes = frozenset(Scope(s) for s in r["scopes"] if s in Scope.__members__.values())
        return cls(key_id=r["id"], name=r["name"], salt=bytes(r["salt"]), secret_hash=bytes(r["secret_hash"]),
                   scopes=scopes, queues=tuple(r["queues"]), rate_per_s=r["rate_per_s"], burst=r["burst"])

    def principal(self) -> Principal:
        return Principal(name=f"key {self.name}", identity=f"key:{self.name}", scopes=self.scopes,
                         queues=self.queues, key_id=self.key_id, rate_per_s=self.rate_per_s, burst=self.burst)


ANONYMOUS = Principal(name="anonymous", identity=None, scopes=frozenset(Scope))

_CURRENT: contextvars.ContextVar[Principal] = contextvars.ContextVar("faultline_principal", default=ANONYMOUS)


def current() -> Principal:
    """The principal of the call being served (ANONYMOUS outside one, and when auth is off)."""
    return _CURRENT.get()


def bind(principal: Principal) -> contextvars.Token[Principal]:
    return _CURRENT.set(principal)


def unbind(token: contextvars.Token[Principal]) -> None:
    _CURRENT.reset(token)
