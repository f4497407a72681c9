"""Grant policy: the one place that decides whether a job may become leased, for both grant paths.

A job becomes leased in exactly two places, and both ask this module:

    dispatcher claim  -> GrantPolicy.claim(queue, kinds, labels, slots)
                           queue not limited -> claim_jobs           (one statement, as before)
                           queue limited     -> claim_jobs_limited   (under the queue row's lock)
    hand-off at insert -> GrantPolicy.may_hand_off(spec, session)    (Python: which session to offer)
                           insert_jobs leases only if the queue is not limited and the labels match (SQL)

Every limit lives in Postgres (faultline_queues, see queries.sql "flow control"), so it holds for any
number of coordinators: a pause, a cap or a rate set through one coordinator binds all of them, and
survives their restarts. The settings kept here are only a cache that picks the cheaper statement; it
is never trusted for a limit. claim_jobs and insert_jobs refuse a limited queue in SQL, so a stale cache
costs a claim that finds nothing, never a grant past a limit. The cache is reloaded when this
coordinator changes a setting, on the dispatcher's fallback rounds, and after a plain claim comes back
short (at most every SETTINGS_RELOAD_MIN), which is how a change made through another coordinator is
picked up within one wake-up.

Labels: a job with required_labels goes only to a worker whose hello labels contain every one of them
(`required_labels <@ labels` in SQL, model.labels_match here). The dispatcher claims per group of
sessions with the same labels, so the claim itself filters, and a job no connected worker matches stays
queued (ListQueues counts it; its oldest-ready age keeps growing).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from coordinator import metrics
from coordinator.config import SETTINGS_RELOAD_MIN
from coordinator.db.store import Store
from coordinator.model import Job, JobSpec, QueueSettings, SettingsChange, labels_match
from coordinator.sessions import Session

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Claim:
    """What one claim leased; retry_in says when to claim the queue again though nothing wakes the dispatcher
    (the rate limit cut it short: the next token is due then)."""

    jobs: list[tuple[Job, int]]
    retry_in: timedelta | None = None


class GrantPolicy:
    """Owns the queue settings cache and the choice of claim statement; see the module docstring."""

    def __init__(self, *, store: Store, reload_min: timedelta = SETTINGS_RELOAD_MIN) -> None:
        self._store = store
        self._reload_min_s = reload_min.total_seconds()
        # Only used from the event loop: the last settings read from Postgres, by queue, and when.
        self._settings: dict[str, QueueSettings] = {}
        self._loaded_at = float("-inf")

    # -- settings -----------------------------------------------------------------------------------

    async def reload(self) -> None:
        """Read every queue's settings (a small table) and remember them."""
        rows = await self._store.queue_settings()
        self._settings = {s.queue: s for s in rows}
        self._loaded_at = time.monotonic()
        for s in rows:
            metrics.QUEUE_PAUSED.labels(s.queue).set(1 if s.paused else 0)

    def settings(self, queue: str) -> QueueSettings:
        return self._settings.get(queue) or QueueSettings(queue=queue)

    def all_settings(self) -> list[QueueSettings]:
        return list(self._settings.values())

    def limited(self, queue: str) -> bool:
        s = self._settings.get(queue)
        return s is not None and s.limited

    def _remember(self, s: QueueSettings) -> QueueSettings:
        self._settings[s.queue] = s
        metrics.QUEUE_PAUSED.labels(s.queue).set(1 if s.paused else 0)
        logger.info("queue settings changed", extra={
            "queue": s.queue, "paused": s.paused, "per_key_concurrency": s.per_key_concurrency,
            "max_running": s.max_running, "rate_per_s": s.rate_per_s, "burst": s.burst})
        return s

    async def pause(self, queue: str, *, paused: bool) -> QueueSettings:
        return self._remember(await self._store.pause_queue(queue, paused=paused))

    async def change(self, queue: str, change: SettingsChange) -> QueueSettings:
        return self._remember(await self._store.set_queue_settings(queue, change))

    # -- the two grant paths --------------------------------------------------------------------------

    def may_hand_off(self, spec: JobSpec, session: Session) -> bool:
        """Whether the hand-off may offer this job to this session (insert_jobs checks the same in SQL)."""
        return (spec.queue in session.queues and spec.kind in session.kinds
                and labels_match(spec.required_labels, session.labels) and not self.limited(spec.queue))

    async def claim(
        self, *, queue: str, kinds: Sequence[str], labels: dict[str, str], slots: Sequence[str], lease_ttl_ms: int,
    ) -> Claim:
        """Lease up to len(slots) jobs of `queue` for sessions with these labels, within the queue's limits."""
        if not self.limited(queue):
            jobs = await self._store.claim_jobs(queue=queue, kinds=kinds, slots=slots, lease_ttl_ms=lease_ttl_ms,
                                                labels=labels)
            if len(jobs) == len(slots) or time.monotonic() - self._loaded_at < self._reload_min_s:
                return Claim(jobs)
            # Short: the queue may be empty, or limited through another coordinator since the last reload.
            await self.reload()
            if not self.limited(queue):
                return Claim(jobs)
            rest = await self._claim_limited(queue, kinds, labels, slots[len(jobs):], lease_ttl_ms)
            return Claim(jobs + [(j, slot + len(jobs)) for j, slot in rest.jobs], rest.retry_in)
        return await self._claim_limited(queue, kinds, labels, slots, lease_ttl_ms)

    async def _claim_limited(
        self, queue: str, kinds: Sequence[str], labels: dict[str, str], slots: Sequence[str], lease_ttl_ms: int,
    ) -> Claim:
        got = await self._store.claim_jobs_limited(queue=queue, kinds=kinds, slots=slots, lease_ttl_ms=lease_ttl_ms,
                                                   labels=labels)
        if got.throttled:
            metrics.CLAIMS_THROTTLED.labels(queue).inc()
        return Claim(got.jobs, got.retry_in)
