"""Shared shape of the batching actors: a bounded inbox of requests, each answered through a future.

Batches form by themselves: while one flush is in the database, new requests queue up, and the
next flush takes all of them (up to max_items items). An idle actor answers a lone request at once.
A sender with several items at once (a worker's message of completions) hands them in as one Requests,
answered through one future with a list, so that the per-item cost is a list entry, not a future.
A batch whose statement refuses a value (StoreDataError) is written again one item at a time, so
the item that carried the value is refused alone and its neighbours are written as usual.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Generic, TypeVar

from coordinator.db.store import StoreDataError
from coordinator.errors import DatabaseUnavailableError

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Request(Generic[T, R]):
    """One item to flush and the future its answer goes to."""

    item: T
    reply: asyncio.Future[R]


@dataclass(frozen=True, slots=True)
class Requests(Generic[T, R]):
    """Several items of one sender and the one future their answers go to, as a list in the items' order."""

    items: list[T]
    reply: asyncio.Future[list[R]]


Inbox = asyncio.Queue[Request[T, R] | Requests[T, R]]


class BatchingActor(ABC, Generic[T, R]):
    """Drains its inbox into batches and flushes each batch in one round trip."""

    name = "batching"

    def __init__(self, *, inbox: Inbox[T, R], max_items: int) -> None:
        if max_items < 1:
            raise ValueError("max_items must be >= 1")
        self._inbox = inbox
        self._max_items = max_items

    async def run(self) -> None:
        while True:
            await self.run_once()

    async def run_once(self) -> int:
        first = await self._inbox.get()
        batch = [first]
        n = len(first.items) if isinstance(first, Requests) else 1
        while n < self._max_items and not self._inbox.empty():
            nxt = self._inbox.get_nowait()
            batch.append(nxt)
            n += len(nxt.items) if isinstance(nxt, Requests) else 1
        live = [r for r in batch if not r.reply.done()]
        if not live:
            return 0
        items: list[T] = []
        for r in live:
            if isinstance(r, Requests):
                items.extend(r.items)
            else:
                items.append(r.item)
        try:
            try:
                answers = await self.flush(items)
            except StoreDataError:
                answers = await self._flush_alone(items)
        except DatabaseUnavailableError as exc:
            self._answer_all(live, self.unavailable(str(exc)))
            return 0
        except BaseException as exc:
            # A bug or a cancellation: answer everyone so no session waits forever, then let the supervisor see it.
            self._answer_all(live, self.unavailable(f"coordinator error: {type(exc).__name__}"))
            raise
        if len(answers) != len(items):  # a bug: answer everyone, then let the supervisor see it
            self._answer_all(live, self.unavailable("coordinator error: answers do not match items"))
            raise RuntimeError(f"{self.name}: flush gave {len(answers)} answers for {len(items)} items")
        i = 0
        for r in live:
            if isinstance(r, Requests):
                k = len(r.items)
                if not r.reply.done():
                    r.reply.set_result(answers[i:i + k])
                i += k
            else:
                if not r.reply.done():
                    r.reply.set_result(answers[i])
                i += 1
        return len(items)

    @staticmethod
    def _answer_all(live: list[Request[T, R] | Requests[T, R]], answer: R) -> None:
        for r in live:
            if not r.reply.done():
                if isinstance(r, Requests):
                    r.reply.set_result([answer] * len(r.items))
                else:
                    r.reply.set_result(answer)

    async def _flush_alone(self, items: list[T]) -> list[R]:
        """Each item in a flush of its own; an item whose values the store refuses gets refused()."""
        answers: list[R] = []
        for item in items:
            try:
                [answer] = await self.flush([item])
            except StoreDataError as exc:
                logger.warning("item refused by the store", extra={"actor": self.name, "error": str(exc)})
                answer = self.refused(item, str(exc))
            answers.append(answer)
        return answers

    def refused(self, item: T, message: str) -> R:
        """The answer to an item whose values the store refused; by default the unavailable answer."""
        return self.unavailable(message)

    @abstractmethod
    async def flush(self, items: list[T]) -> list[R]:
        """Write the batch; return one answer per item, in order."""

    @abstractmethod
    def unavailable(self, message: str) -> R:
        """The answer when Postgres could not be reached."""
