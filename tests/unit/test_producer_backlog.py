"""The drill producer's backlog check waits for a ListQueues sample taken after its last batch."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from typing import Any

from coordinator.drills.producer import _queued
from worker_sdk import JobState, QueueStats


class _Client:
    def __init__(self, sampled_at: datetime) -> None:
        self.sampled_at = sampled_at

    async def list_queues(self) -> list[QueueStats]:
        return [QueueStats(name="default", depth={JobState.QUEUED: 7}, oldest_ready_age=timedelta(0),
                           finished_last_minute=0, sampled_at=self.sampled_at)]


async def test_a_sample_older_than_the_last_batch_is_not_trusted() -> None:
    now = datetime.now(UTC)
    client: Any = _Client(now - timedelta(seconds=1))
    assert await _queued(client, now) == sys.maxsize
    client.sampled_at = now + timedelta(milliseconds=200)
    assert await _queued(client, now) == 7
    assert await _queued(client, None) == 7
