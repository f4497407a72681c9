"""KeyRing: this coordinator's copy of the active API keys, their rate-limit buckets and revocation signals.

Postgres holds the keys; the ring reloads them every refresh interval (KeyRefresher, supervised like
every actor), and when a call names a key id it does not know (a key created a moment ago): such calls
wait for one shared reload, at most one per KEY_MISS_RELOAD_MIN, so random ids cost Postgres at most
four statements a second however fast they come. A key that leaves the active set (revoked) is
refused from the next call on, and its revocation event is set: the edge ends the streams it opened
(coordinator/api/auth.py). So a revocation reaches every coordinator within one refresh interval.

While Postgres is unreachable the ring keeps the keys it last loaded: known keys keep working, an unknown
key is answered UNAVAILABLE (it may be new), and revocations wait for the database.

Rate limits are token buckets kept here, one per key (jobs per second, bucket size burst), on each
coordinator separately: N coordinators behind a balancer admit up to N x rate in total. They are not
shared through Postgres on purpose: a shared bucket would cost a write per submit.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from coordinator.auth.keys import KeyRecord, Principal, parse_token, secret_matches
from coordinator.db.store import Store
from coordinator.errors import DatabaseUnavailableError, UnauthenticatedError

logger = logging.getLogger(__name__)

# The shortest gap between two reloads caused by unknown key ids, so a client sending random ids makes
# at most one extra statement per gap, however fast it sends.
KEY_MISS_RELOAD_MIN = timedelta(milliseconds=250)
UNAVAILABLE_PAUSE_S = 1.0


class TokenBucket:
    """rate tokens per second, at most burst; take(n) says how long to wait when there are not n tokens."""

    __slots__ = ("_burst", "_clock", "_rate", "_stamp", "_tokens")

    def __init__(self, *, rate_per_s: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self._rate = rate_per_s
        self._burst = float(burst)
        self._clock = clock
        self._tokens = float(burst)
        self._stamp = clock()

    @property
    def burst(self) -> int:
        return int(self._burst)

    def take(self, n: int) -> float:
        """Take n tokens and return 0.0, or take none and return the seconds until n are there."""
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        if self._tokens >= n:
            self._tokens -= n
            return 0.0
        return (n - self._tokens) / self._rate


@dataclass(frozen=True, slots=True)
class RefreshResult:
    """What one reload found."""

    keys: int
    revoked: int


class KeyRing:
    """See the module docstring. Everything here is owned by the event loop."""

    def __init__(self, *, store: Store, clock: Callable[[], float] = time.monotonic) -> None:
        self._store = store
        self._clock = clock
        self._keys: dict[str, KeyRecord] = {}
        self._principals: dict[str, Principal] = {}
        self._buckets: dict[str, TokenBucket] = {}
        # One event per key id that has an open stream; set when the key is revoked.
        self._revoked: dict[str, asyncio.Event] = {}
        self._watchers: dict[str, int] = {}
        self._loaded_at = -1e18
        self._lock = asyncio.Lock()
        # The reload that calls naming an unknown key id wait for (see _reload_for_miss); owned here.
        self._miss_reload: asyncio.Future[None] | None = None

    def __len__(self) -> int:
        return len(self._keys)

    async def reload(self) -> RefreshResult:
        """Load the active keys from Postgres; signal the revocation of every key that left the set."""
        async with self._lock:
            records = await self._store.api_keys_active()
            self._loaded_at = self._clock()
            keys = {r.key_id: r for r in records}
            gone = [k for k in self._keys if k not in keys]
            for key_id, rec in keys.items():
                old = self._keys.get(key_id)
                if old != rec:
                    self._principals[key_id] = rec.principal()
                    self._buckets.pop(key_id, None)  # rate or burst changed: a fresh bucket
            for key_id in gone:
                self._principals.pop(key_id, None)
                self._buckets.pop(key_id, None)
                event = self._revoked.get(key_id)
                if event is not None:
                    event.set()
                logger.info("api key revoked", extra={"key_id": key_id, "key": self._keys[key_id].name})
            self._keys = keys
            return RefreshResult(keys=len(keys), revoked=len(gone))

    async def authenticate(self, token: str) -> Principal:
        """The principal of a bearer token; UnauthenticatedError (never saying which part was wrong) otherwise."""
        parsed = parse_token(token)
        if parsed is None:
            raise UnauthenticatedError("malformed API key: expected fl_<id>_<secret>")
        key_id, secret = parsed
        rec = self._keys.get(key_id)
        if rec is None:
            try:
                await self._reload_for_miss()
            except DatabaseUnavailableError:
                raise DatabaseUnavailableError("cannot check the API key: the database is unavailable") from None
            rec = self._keys.get(key_id)
        if rec is None or not secret_matches(rec.salt, rec.secret_hash, secret):
            raise UnauthenticatedError("unknown or revoked API key")
        return self._principals[key_id]

    async def _reload_for_miss(self) -> None:
        """One reload shared by every call that missed meanwhile, no sooner than KEY_MISS_RELOAD_MIN after the last."""
        if self._miss_reload is None:
            self._miss_reload = asyncio.ensure_future(self._delayed_reload())
            self._miss_reload.add_done_callback(self._miss_reload_done)
        await asyncio.shield(self._miss_reload)

    async def _delayed_reload(self) -> None:
        wait = self._loaded_at + KEY_MISS_RELOAD_MIN.total_seconds() - self._clock()
        if wait > 0:
            await asyncio.sleep(wait)
        await self.reload()

    def _miss_reload_done(self, task: asyncio.Future[None]) -> None:
        self._miss_reload = None
        if not task.cancelled():
            task.exception()  # retrieved: each waiter got it through the shield

    def is_active(self, key_id: str) -> bool:
        return key_id in self._keys

    def throttle(self, principal: Principal, jobs: int) -> float:
        """0.0 when principal may create jobs now (the tokens are taken), else the seconds to wait."""
        if principal.key_id is None or principal.rate_per_s is None:
            return 0.0
        bucket = self._buckets.get(principal.key_id)
        if bucket is None:
            burst = principal.burst or max(1, int(principal.rate_per_s))
            bucket = self._buckets[principal.key_id] = TokenBucket(rate_per_s=principal.rate_per_s, burst=burst)
        return bucket.take(jobs)

    def burst_of(self, principal: Principal) -> int | None:
        if principal.rate_per_s is None:
            return None
        return principal.burst or max(1, int(principal.rate_per_s))

    def watch(self, key_id: str) -> asyncio.Event:
        """An event set when key_id is revoked; call unwatch() when the stream ends."""
        event = self._revoked.get(key_id)
        if event is None:
            event = self._revoked[key_id] = asyncio.Event()
        self._watchers[key_id] = self._watchers.get(key_id, 0) + 1
        if key_id not in self._keys:
            event.set()
        return event

    def unwatch(self, key_id: str) -> None:
        n = self._watchers.get(key_id, 0) - 1
        if n <= 0:
            self._watchers.pop(key_id, None)
            self._revoked.pop(key_id, None)
        else:
            self._watchers[key_id] = n


class KeyRefresher:
    """Reloads the key ring every interval; see the module docstring."""

    name = "key_refresher"

    def __init__(self, *, ring: KeyRing, interval_s: float) -> None:
        self._ring = ring
        self._interval_s = interval_s

    async def run(self) -> None:
        while True:
            try:
                await self.run_once()
                pause = self._interval_s
            except DatabaseUnavailableError as exc:
                logger.warning("key refresh paused: database unavailable", extra={"error": str(exc)})
                pause = min(self._interval_s, UNAVAILABLE_PAUSE_S)
            await asyncio.sleep(pause)

    async def run_once(self) -> RefreshResult:
        return await self._ring.reload()
