r"""One-for-one supervision of long-lived actors: restart with backoff, escalate past an intensity limit.

    start -> running --crash--> waiting(backoff) -> running ...
                       \--more than RESTART_INTENSITY crashes in RESTART_WINDOW--> escalate (process exits 1)

A crash is any exception other than CancelledError. The delay grows exponentially with the
number of recent crashes and resets after the actor has been healthy for RESTART_HEALTHY_AFTER.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol

from coordinator import backoff
from coordinator.config import (
    RESTART_BACKOFF_BASE,
    RESTART_BACKOFF_MAX,
    RESTART_HEALTHY_AFTER,
    RESTART_INTENSITY,
    RESTART_WINDOW,
)
from coordinator.errors import RestartIntensityExceeded

logger = logging.getLogger(__name__)


class Actor(Protocol):
    """A long-lived unit of work that owns its state and runs until cancelled."""

    name: str

    async def run(self) -> None: ...


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """How to (re)build one supervised actor. The factory gets a fresh instance each restart;
    whatever must survive a restart (inboxes, registries) is passed in by the composition root."""

    name: str
    factory: Callable[[], Actor]


@dataclass(frozen=True, slots=True, kw_only=True)
class SupervisorConfig:
    """Restart policy."""

    intensity: int = RESTART_INTENSITY
    window: timedelta = RESTART_WINDOW
    backoff_base: timedelta = RESTART_BACKOFF_BASE
    backoff_max: timedelta = RESTART_BACKOFF_MAX
    healthy_after: timedelta = RESTART_HEALTHY_AFTER

    def __post_init__(self) -> None:
        if self.intensity < 1:
            raise ValueError("intensity must be >= 1")


class Supervisor:
    """Runs each child in its own task and restarts it when it crashes."""

    def __init__(
        self,
        children: list[ChildSpec],
        *,
        config: SupervisorConfig | None = None,
        on_restart: Callable[[str], None] | None = None,
    ) -> None:
        self._children = children
        self._config = config or SupervisorConfig()
        self._on_restart = on_restart
        # Only used by the child's own supervision task.
        self.restarts: dict[str, int] = {c.name: 0 for c in children}

    async def run(self) -> None:
        """Supervise every child; returns never, raises RestartIntensityExceeded to escalate."""
        async with asyncio.TaskGroup() as tg:
            for spec in self._children:
                tg.create_task(self._supervise(spec), name=f"supervise:{spec.name}")

    async def _supervise(self, spec: ChildSpec) -> None:
        cfg = self._config
        crashes: deque[float] = deque()
        while True:
            started = time.monotonic()
            try:
                await spec.factory().run()
                logger.warning("actor returned; restarting", extra={"actor": spec.name})
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.error("actor crashed", extra={"actor": spec.name}, exc_info=True)
            now = time.monotonic()
            if now - started >= cfg.healthy_after.total_seconds():
                crashes.clear()
            crashes.append(now)
            while crashes and now - crashes[0] > cfg.window.total_seconds():
                crashes.popleft()
            if len(crashes) > cfg.intensity:
                raise RestartIntensityExceeded(
                    f"actor {spec.name} crashed {len(crashes)} times in {cfg.window.total_seconds():.0f}s"
                )
            delay = backoff.exponential(len(crashes), base=cfg.backoff_base, cap=cfg.backoff_max)
            self.restarts[spec.name] += 1
            if self._on_restart is not None:
                self._on_restart(spec.name)
            logger.info(
                "actor restart scheduled",
                extra={"actor": spec.name, "delay_s": round(delay.total_seconds(), 3), "recent_crashes": len(crashes)},
            )
            await asyncio.sleep(delay.total_seconds())
