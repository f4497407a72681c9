"""Cardinality: clients name queues and kinds, and cannot make the coordinator's /metrics grow without bound.

A real coordinator process with a small label budget; jobs with many distinct queues and kinds submitted
over gRPC; then a scrape of /metrics. Every family keeps at most the budget's values of each label, plus
"other", and no job goes uncounted.
"""

from __future__ import annotations

import urllib.request
from collections import defaultdict
from collections.abc import Awaitable, Callable

from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.procs import Proc, free_port
from tests.helpers.wait import eventually
from worker_sdk import Client, JobSpec

BUDGET = 20
DISTINCT = 300  # each job a queue and a kind of its own


def scrape(addr: str) -> str:
    with urllib.request.urlopen(f"http://{addr}/metrics", timeout=10) as r:  # loopback only
        return str(r.read().decode())


def label_values(text: str) -> dict[str, dict[str, set[str]]]:
    """family -> label -> values seen in the scrape."""
    out: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            for k, v in s.labels.items():
                out[fam.name][k].add(v)
    return out


async def test_distinct_queues_and_kinds_past_the_budget_share_the_other_series(
    coordinator_proc_factory: Callable[..., Awaitable[Proc]],
) -> None:
    metrics_addr = f"127.0.0.1:{free_port()}"
    coord = await coordinator_proc_factory(env={
        "FAULTLINE_METRICS_ADDR": metrics_addr, "FAULTLINE_METRIC_LABEL_VALUES_MAX": str(BUDGET),
        "FAULTLINE_METRICS_SAMPLE_MS": "50"})
    async with Client(str(coord.extra["addr"])) as client:
        await client.submit_batch([JobSpec(kind=f"kind-{i:04d}", payload=b"", queue=f"queue-{i:04d}")
                                   for i in range(DISTINCT)])

    def sampled() -> str | None:
        text = scrape(metrics_addr)
        return text if 'faultline_queue_depth{queue="other",state="queued"}' in text else None

    text = await eventually(sampled, timeout=30, message="the sampler published the other queue's depth")
    values = label_values(text)
    for family, labels in values.items():
        for label in ("queue", "kind"):
            if label in labels:
                assert len(labels[label]) <= BUDGET + 1, (family, label, len(labels[label]))
    submitted = values["faultline_jobs_submitted"]
    assert "other" in submitted["queue"] and "other" in submitted["kind"]
    assert len(submitted["queue"]) == BUDGET + 1
    total = 0.0
    depth_queued = 0.0
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "faultline_jobs_submitted_total":
                total += s.value
            if s.name == "faultline_queue_depth" and s.labels["state"] == "queued":
                depth_queued += s.value
    assert total == DISTINCT  # nothing uncounted: the rest is under "other"
    assert depth_queued == DISTINCT  # the sampler adds up the depths that share a series
    series = sum(1 for line in text.splitlines() if line and not line.startswith("#"))
    print(f"cardinality: {DISTINCT} distinct queues and kinds -> {series} series in the scrape (budget {BUDGET})")
