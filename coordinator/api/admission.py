"""SubmitAdmission: owns the count and bytes of Submit and SubmitBatch work in flight, and refuses past its bounds.

Every Submit holds the pool, the insert and its response until it answers; with no bound, 200 clients
sending 1 MiB each queued behind ten pooled connections, each holding its request all the while (4 s p50
and 690 MiB measured at 200 clients). Past either bound a request is refused at once with
RESOURCE_EXHAUSTED and a google.rpc.RetryInfo (api/status.py), so the client waits and not this
process. A request larger than the byte bound alone is admitted when nothing else is in flight.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import timedelta

from coordinator import metrics
from coordinator.errors import OverloadedError


class SubmitAdmission:
    """Counts what is admitted; admit() is a context manager around one request's work."""

    def __init__(self, *, max_requests: int, max_bytes: int, retry_after: timedelta) -> None:
        if max_requests < 1 or max_bytes < 1:
            raise ValueError("admission bounds must be >= 1")
        self._max_requests = max_requests
        self._max_bytes = max_bytes
        self._retry_after = retry_after
        # Only touched on the event loop.
        self._requests = 0
        self._bytes = 0

    @property
    def in_flight(self) -> tuple[int, int]:
        """(requests, bytes) admitted and not answered yet."""
        return self._requests, self._bytes

    @contextlib.contextmanager
    def admit(self, rpc: str, jobs: int, nbytes: int) -> Iterator[None]:
        if self._requests >= self._max_requests:
            reason = "requests"
        elif self._requests and self._bytes + nbytes > self._max_bytes:
            reason = "bytes"
        else:
            reason = ""
        if reason:
            metrics.SUBMITS_REFUSED.labels(reason).inc()
            raise OverloadedError(
                f"{rpc}: the coordinator has {self._requests} submits ({self._bytes} bytes) in flight, at its bound "
                f"of {self._max_requests} requests and {self._max_bytes} bytes; retry later",
                retry_after=self._retry_after)
        self._requests += 1
        self._bytes += nbytes
        try:
            yield
        finally:
            self._requests -= 1
            self._bytes -= nbytes
