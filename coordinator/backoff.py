"""Pure delay functions (actor restarts, job retry preview); no I/O, no clocks."""

from __future__ import annotations

import random
from datetime import timedelta


def exponential(
    attempt: int,
    *,
    base: timedelta,
    cap: timedelta,
    multiplier: float = 2.0,
    jitter: float = 0.1,
    rng: random.Random | None = None,
) -> timedelta:
    """Delay before retry number `attempt` (1-based): base * multiplier^(attempt-1), capped, then +/- jitter."""
    if attempt < 1:
        raise ValueError("attempt is 1-based")
    draw = rng.random() if rng is not None else random.random()
    raw = base.total_seconds() * multiplier ** min(attempt - 1, 64)
    capped = min(raw, cap.total_seconds())
    factor = 1.0 + jitter * (2.0 * draw - 1.0)
    return timedelta(seconds=min(capped * factor, cap.total_seconds()))
