"""Percentiles, medians over runs, and process CPU/RSS read from /proc (Linux only)."""

from __future__ import annotations

import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100.0 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def median(values: Sequence[float]) -> float:
    clean = [v for v in values if v == v]
    return statistics.median(clean) if clean else float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # After the command name: state is field 3, utime 14, stime 15 (1-based) -> index 11, 12 here.
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def postgres_cpu_seconds() -> float:
    """CPU seconds of every process named postgres on this machine (all databases, all clients)."""
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm") as f:
                if f.read().strip() != "postgres":
                    continue
            total += cpu_seconds(int(entry))
        except (OSError, ValueError, IndexError):
            continue
    return total


def self_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def rss_mb(pid: int) -> float:
    """Resident set size of one process, in MiB."""
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * _PAGE / (1 << 20)


@dataclass(slots=True)
class RunResult:
    """One run of one system: every figure the report prints."""

    system: str
    shape: str
    jobs: int
    completed: int = 0
    jobs_per_s: float = float("nan")
    submit_per_s: float = float("nan")
    idle_ms: dict[str, float] = field(default_factory=dict)
    load_ms: dict[str, float] = field(default_factory=dict)
    cpu_s_per_1k: float = float("nan")
    extra: dict[str, float] = field(default_factory=dict)


def latency_summary(samples_ms: Sequence[float]) -> dict[str, float]:
    return {"p50": percentile(samples_ms, 50), "p95": percentile(samples_ms, 95), "p99": percentile(samples_ms, 99),
            "n": float(len(samples_ms))}


def median_result(runs: Sequence[RunResult]) -> RunResult:
    """Field-by-field median of several runs of the same system and shape."""
    first = runs[0]
    out = RunResult(system=first.system, shape=first.shape, jobs=first.jobs)
    out.completed = int(median([r.completed for r in runs]))
    out.jobs_per_s = median([r.jobs_per_s for r in runs])
    out.submit_per_s = median([r.submit_per_s for r in runs])
    out.cpu_s_per_1k = median([r.cpu_s_per_1k for r in runs])
    for attr in ("idle_ms", "load_ms", "extra"):
        keys = {k for r in runs for k in getattr(r, attr)}
        setattr(out, attr, {k: median([getattr(r, attr).get(k, float("nan")) for r in runs]) for k in sorted(keys)})
    return out


def fmt(value: float, digits: int = 2) -> str:
    if value != value:
        return "n/a"
    return f"{value:,.{digits}f}"
