"""The shared live readers: one poller per distinct API key, serving every browser that uses the key.

A poller exists only while someone listens. Subscribing to a topic ("overview", "job:<id>") starts the key's
poller if it is not running and wakes it, so the new listener gets a first event at once; the poller then
reads each topic it has listeners for once per interval and hands the rendered fragment to every listener.
When the last listener of its last topic leaves, the loop ends and the poller is gone:

    (no poller) --subscribe--> POLLING --interval--> POLLING ... --last unsubscribe--> (no poller)

Listeners get samples, not a queue: each holds at most the latest event, so a slow browser never builds a
backlog here. Page views never cause polls; only open streams do, and N browsers on one key cost one poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta

from coordinator.console.rpc import RpcError
from coordinator.console.sessions import Identity

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LiveEvent:
    """One rendered update of a topic."""

    html: str
    #: True when the topic will not change again (a finished job): the browser may close the stream.
    final: bool = False


#: Offered to every listener when the console stops: the stream ends without a last update.
CLOSING = LiveEvent(html="", final=True)

#: render(topic, key, identity) -> the topic's fragment now; RpcError when the coordinator refused.
Render = Callable[[str, str | None, Identity], Awaitable[LiveEvent]]
#: render_error(exc) -> the fragment that says so.
RenderError = Callable[[RpcError], LiveEvent]


@dataclass(eq=False, slots=True)
class Listener:
    """One open stream's mailbox: holds the latest event only."""

    key_id: str
    topic: str
    inbox: asyncio.Queue[LiveEvent] = field(default_factory=lambda: asyncio.Queue(maxsize=1))

    def offer(self, event: LiveEvent) -> None:
        if self.inbox.full():
            self.inbox.get_nowait()
        self.inbox.put_nowait(event)


@dataclass(eq=False, slots=True)
class _Poller:
    key: str | None
    who: Identity
    # topic -> its listeners. Owned by the LiveHub (mutated only by subscribe/unsubscribe on the loop).
    topics: dict[str, set[Listener]] = field(default_factory=dict)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class LiveHub:
    """Owns the pollers, keyed by API key; each poller's task is owned by its entry here."""

    def __init__(self, *, render: Render, render_error: RenderError, interval: timedelta) -> None:
        self._render = render
        self._render_error = render_error
        self._interval_s = interval.total_seconds()
        self._pollers: dict[str, _Poller] = {}
        #: Coordinator reads made by all pollers so far (tests and the bench read it).
        self.polls = 0

    @property
    def pollers(self) -> int:
        """Pollers running now."""
        return len(self._pollers)

    def subscribe(self, *, key_id: str, key: str | None, who: Identity, topic: str) -> Listener:
        poller = self._pollers.get(key_id)
        if poller is None:
            poller = _Poller(key=key, who=who)
            self._pollers[key_id] = poller
            poller.task = asyncio.get_running_loop().create_task(self._run(key_id, poller),
                                                                 name=f"console-poller-{len(self._pollers)}")
        listener = Listener(key_id=key_id, topic=topic)
        poller.topics.setdefault(topic, set()).add(listener)
        poller.wake.set()
        return listener

    def unsubscribe(self, listener: Listener) -> None:
        poller = self._pollers.get(listener.key_id)
        if poller is None:
            return
        listeners = poller.topics.get(listener.topic)
        if listeners is not None:
            listeners.discard(listener)
            if not listeners:
                del poller.topics[listener.topic]
        if not poller.topics:
            poller.wake.set()  # let it see that nobody listens, and end now rather than after an interval

    async def close(self) -> None:
        """End every stream (each listener gets an empty final event) and stop the pollers."""
        for poller in self._pollers.values():
            for listeners in poller.topics.values():
                for listener in listeners:
                    listener.offer(CLOSING)
        tasks = [p.task for p in self._pollers.values() if p.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._pollers.clear()

    async def _run(self, key_id: str, poller: _Poller) -> None:
        try:
            while poller.topics:
                poller.wake.clear()
                for topic in list(poller.topics):
                    try:
                        event = await self._render(topic, poller.key, poller.who)
                    except RpcError as exc:
                        event = self._render_error(exc)
                    except Exception:  # a loop boundary: one bad render must not end every browser's updates
                        logger.exception("console live render failed", extra={"topic": topic})
                        continue
                    self.polls += 1
                    for listener in list(poller.topics.get(topic, ())):
                        listener.offer(event)
                if not poller.topics:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(poller.wake.wait(), self._interval_s)
        finally:
            if self._pollers.get(key_id) is poller:
                del self._pollers[key_id]
