"""Pure delay functions for the SDK's retries (stream reconnects, UNAVAILABLE replies); no I/O."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import timedelta

#: First reconnect delay bound; doubled per failed attempt.
RECONNECT_BACKOFF_BASE_DEFAULT = timedelta(milliseconds=100)
#: Largest reconnect delay bound.
RECONNECT_BACKOFF_CAP_DEFAULT = timedelta(seconds=5)
#: A session that lived this long resets the reconnect attempt counter.
RECONNECT_HEALTHY_AFTER_DEFAULT = timedelta(seconds=10)
#: First delay bound before re-sending a frame the coordinator answered UNAVAILABLE.
UNAVAILABLE_RETRY_BASE_DEFAULT = timedelta(milliseconds=100)
#: Largest delay bound before re-sending a frame the coordinator answered UNAVAILABLE.
UNAVAILABLE_RETRY_CAP_DEFAULT = timedelta(seconds=5)
# Keeps 2**attempt finite; any attempt past this is capped anyway.
_MAX_EXPONENT = 32


def full_jitter(
    attempt: int,
    *,
    base: timedelta,
    cap: timedelta,
    rand: Callable[[], float] = random.random,
) -> timedelta:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base * 2**attempt)).

    Full jitter (rather than +-10%) spreads a fleet of workers that lost the same coordinator,
    so they do not reconnect in lockstep.
    """
    if attempt < 0:
        raise ValueError("attempt must be >= 0")
    bound = min(cap, base * (1 << min(attempt, _MAX_EXPONENT)))
    return bound * rand()
