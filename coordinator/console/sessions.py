"""Login sessions: the console's only holder of API keys, with CSRF tokens, idle expiry and a bound on their number.

A session is made by a login (the key checked with WhoAmI) or, when the coordinator runs with auth off, on the
first page. The browser holds only the session's random id, in an HttpOnly SameSite=Strict cookie; the key
never leaves this process. A session unused for `idle` is forgotten; beyond `max_sessions` a new one evicts
the least recently used.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

# Bytes of randomness in a session id and in a CSRF token.
TOKEN_BYTES = 32

SCOPE_READ = "read"
SCOPE_ADMIN = "admin"
SCOPE_PAYLOADS = "payloads"


@dataclass(frozen=True, slots=True)
class Identity:
    """Who the coordinator says a key is (WhoAmI)."""

    name: str
    identity: str
    scopes: frozenset[str]
    queues: tuple[str, ...]
    auth_enabled: bool


@dataclass(slots=True, eq=False)
class Session:
    """One browser's login. Mutable fields are owned by the SessionStore and the request handling its id."""

    id: str
    key: str | None
    who: Identity
    csrf: str
    last_used: float
    #: SSE streams open now (app.py counts them).
    streams: int = 0
    #: One message to show on the next page (after a POST's redirect).
    flash: tuple[str, str] | None = None
    #: Bulk operation ids this session started, oldest first (bulk.py owns the operations).
    ops: list[str] = field(default_factory=list)

    @property
    def admin(self) -> bool:
        return SCOPE_ADMIN in self.who.scopes

    @property
    def payloads(self) -> bool:
        return SCOPE_PAYLOADS in self.who.scopes

    @property
    def key_id(self) -> str:
        """What the live readers share a poller by: the key itself (anonymous with auth off)."""
        return self.key or ""


class SessionStore:
    """Owns every session, by id; the only place keys are kept."""

    def __init__(self, *, idle: timedelta, max_sessions: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._idle_s = idle.total_seconds()
        self._clock = clock
        self._max = max_sessions
        # Least recently used first. Owned by this object.
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    def create(self, key: str | None, who: Identity) -> Session:
        self._expire()
        while len(self._sessions) >= self._max:
            self._sessions.popitem(last=False)
        s = Session(id=secrets.token_urlsafe(TOKEN_BYTES), key=key, who=who,
                    csrf=secrets.token_urlsafe(TOKEN_BYTES), last_used=self._clock())
        self._sessions[s.id] = s
        return s

    def get(self, session_id: str | None) -> Session | None:
        """The live session with this id, marked used; None when unknown or idle too long."""
        if not session_id:
            return None
        s = self._sessions.get(session_id)
        if s is None:
            return None
        now = self._clock()
        if now - s.last_used > self._idle_s and s.streams == 0:
            del self._sessions[session_id]
            return None
        s.last_used = now
        self._sessions.move_to_end(session_id)
        return s

    def alive(self, session: Session) -> bool:
        """Whether the session is still held (not logged out, evicted or dropped); does not mark it used."""
        return self._sessions.get(session.id) is session

    def drop(self, session_id: str) -> Session | None:
        return self._sessions.pop(session_id, None)

    def drop_key(self, key: str | None) -> None:
        """Forget every session of a key the coordinator no longer accepts."""
        for sid in [sid for sid, s in self._sessions.items() if s.key == key]:
            del self._sessions[sid]

    def _expire(self) -> None:
        now = self._clock()
        for sid in [sid for sid, s in self._sessions.items() if now - s.last_used > self._idle_s and not s.streams]:
            del self._sessions[sid]
