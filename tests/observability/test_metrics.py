"""Prometheus: after jobs have run, the coordinator's and the worker's /metrics hold every family and pass promtool."""

from __future__ import annotations

import asyncio
import json
import re
import urllib.request
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.procs import ROOT, Proc, free_port
from tests.helpers.wait import eventually
from tests.observability.conftest import promtool_check
from worker_sdk import Client, ConnState, InvalidArgumentError, JobContext, JobState, RetryJob, Worker
from worker_sdk._metrics import METRICS_PORT_ENV, WorkerMetrics, resolve_address

SAMPLE_INTERVAL_MS = "50"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "faultline.json"
# Labels that Prometheus adds at scrape time, or that histogram_quantile consumes.
SCRAPE_LABELS = {"instance", "job", "le"}

# Every family the issue names (counters as exposed, with _total), with the labels each must carry.
COORDINATOR_FAMILIES = {
    "faultline_jobs_submitted_total": {"queue", "kind"},
    "faultline_jobs_completed_total": {"queue", "kind", "outcome"},
    "faultline_job_duration_seconds_bucket": {"queue", "kind", "le"},
    "faultline_job_wait_seconds_bucket": {"queue", "le"},
    "faultline_queue_depth": {"queue", "state"},
    "faultline_oldest_ready_job_age_seconds": {"queue"},
    "faultline_retries_total": {"queue", "kind"},
    "faultline_lease_expirations_total": {"reason"},
    "faultline_stale_completions_rejected_total": {"frame"},
    "faultline_recoveries_total": {"kind"},
    "faultline_workers_connected": set(),
    "faultline_leases_active": set(),
    "faultline_actor_restarts_total": {"actor"},
    "faultline_db_pool_connections": {"use"},
    "faultline_db_pool_max_connections": set(),
    "faultline_maintenance_runs_total": {"table", "op"},
    "faultline_maintenance_duration_seconds_bucket": {"table", "op", "le"},
    "faultline_jobs_waiting_on_key": {"queue"},
    "faultline_jobs_requiring_labels": {"queue"},
}
WORKER_FAMILIES = {
    "faultline_worker_handler_duration_seconds_bucket": {"queue", "kind", "le"},
    "faultline_worker_jobs_in_flight": {"queue", "kind"},
    "faultline_worker_jobs_total": {"queue", "kind", "outcome"},
    "faultline_worker_reconnects_total": set(),
    "faultline_worker_connected": set(),
}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:  # loopback only
        body: bytes = resp.read()
    return body.decode()


def samples(text: str) -> Samples:
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def value(got: Samples, name: str, **labels: str) -> float | None:
    return got.get((name, frozenset(labels.items())))


def assert_families(got: Samples, expected: dict[str, set[str]]) -> None:
    for name, labels in expected.items():
        series = [dict(k[1]) for k in got if k[0] == name]
        assert series, f"{name} has no series"
        assert all(set(s) == labels for s in series), f"{name} labels {series[0]} != {labels}"


def assert_dashboard_matches(got: Samples) -> None:
    """Every series a Grafana query names is exported, and every `by (...)` label is one of its labels."""
    labels_of: dict[str, set[str]] = {}
    for name, labels in got:
        labels_of.setdefault(name, set()).update(k for k, _ in labels)
    exprs = [t["expr"] for panel in json.loads(DASHBOARD.read_text())["panels"] for t in panel.get("targets", [])]
    assert exprs
    for expr in exprs:
        names = re.findall(r"\bfaultline_\w+", expr)
        assert names, expr
        for name in names:
            assert name in labels_of, f"dashboard query uses {name}, which /metrics does not export: {expr}"
            for group in re.findall(r"\bby \(([^)]*)\)", expr):
                missing = {g.strip() for g in group.split(",")} - SCRAPE_LABELS - labels_of[name]
                assert not missing, f"{name} has no label {missing}: {expr}"


async def test_metrics_after_jobs_have_run_hold_every_family_and_pass_promtool(
    coordinator_proc_factory: Callable[..., Awaitable[Proc]],
) -> None:
    metrics_port, worker_port = free_port(), free_port()
    # A real `python -m coordinator` configured by FAULTLINE_METRICS_ADDR, with a registry of its own.
    proc = await coordinator_proc_factory(env={"FAULTLINE_METRICS_ADDR": f"127.0.0.1:{metrics_port}",
                                               "FAULTLINE_METRICS_SAMPLE_MS": SAMPLE_INTERVAL_MS})
    addr = str(proc.extra["addr"])
    queue = f"obs-{uuid.uuid4().hex[:8]}"
    worker = Worker(addr, queues=[queue], handle_signals=False, metrics_port=worker_port)

    @worker.handler("flaky")
    async def flaky(ctx: JobContext) -> bytes:
        if ctx.attempt == 1:
            raise RetryJob(delay=timedelta(milliseconds=10))
        return b"ok"

    running = asyncio.create_task(worker.run())
    try:
        async with Client(addr) as client:
            job = await client.submit("flaky", queue=queue)

            async def done() -> bool:
                return (await client.get(job.id)).state is JobState.SUCCEEDED

            await eventually(done, message="flaky job succeeded on its second attempt")
            # Nobody handles this kind: it stays ready, so depth and oldest age have something to show.
            await client.submit("nobody-handles-this", queue=queue)

        def sampled() -> Samples | None:
            got = samples(scrape(metrics_port))
            return got if value(got, "faultline_queue_depth", queue=queue, state="queued") == 1 else None

        got = await eventually(sampled, message="queue depth sampled")
        text = scrape(metrics_port)
        worker_text = scrape(worker_port)
    finally:
        await worker.stop()
        await running

    assert_families(got, COORDINATOR_FAMILIES)
    assert value(got, "faultline_jobs_submitted_total", queue=queue, kind="flaky") == 1
    assert value(got, "faultline_jobs_submitted_total", queue=queue, kind="nobody-handles-this") == 1
    assert value(got, "faultline_jobs_completed_total", queue=queue, kind="flaky", outcome="failed") == 1
    assert value(got, "faultline_jobs_completed_total", queue=queue, kind="flaky", outcome="succeeded") == 1
    assert value(got, "faultline_retries_total", queue=queue, kind="flaky") == 1
    assert value(got, "faultline_job_duration_seconds_count", queue=queue, kind="flaky") == 2
    assert value(got, "faultline_job_wait_seconds_count", queue=queue) == 2
    age = value(got, "faultline_oldest_ready_job_age_seconds", queue=queue)
    assert age is not None and age >= 0
    assert value(got, "faultline_workers_connected") == 1
    for reason in ("lease_expired", "heartbeat_timeout", "execution_timeout"):
        assert value(got, "faultline_lease_expirations_total", reason=reason) is not None
    promtool_check(text)

    wgot = samples(worker_text)
    assert_families(wgot, WORKER_FAMILIES)
    assert value(wgot, "faultline_worker_jobs_total", queue=queue, kind="flaky", outcome="failed") == 1
    assert value(wgot, "faultline_worker_jobs_total", queue=queue, kind="flaky", outcome="succeeded") == 1
    assert value(wgot, "faultline_worker_handler_duration_seconds_count", queue=queue, kind="flaky") == 2
    assert value(wgot, "faultline_worker_jobs_in_flight", queue=queue, kind="flaky") == 0
    assert value(wgot, "faultline_worker_connected") == 1
    assert value(wgot, "faultline_worker_reconnects_total") == 0
    promtool_check(worker_text)
    assert_dashboard_matches({**got, **wgot})


def test_worker_metrics_count_reconnects_and_in_flight() -> None:
    m = WorkerMetrics(host="127.0.0.1", port=0)
    for state in (ConnState.READY, ConnState.BACKOFF, ConnState.READY, ConnState.BACKOFF, ConnState.READY):
        m.connection_changed(state)
    m.lease_started("k", "q")
    m.lease_started("k", "q")
    m.lease_finished("k", "q", "lost", 0.5)
    get = m.registry.get_sample_value
    assert get("faultline_worker_reconnects_total") == 2
    assert get("faultline_worker_connected") == 1
    assert get("faultline_worker_jobs_in_flight", {"queue": "q", "kind": "k"}) == 1
    assert get("faultline_worker_jobs_total", {"queue": "q", "kind": "k", "outcome": "lost"}) == 1


def test_worker_metrics_port_comes_from_the_argument_or_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(METRICS_PORT_ENV, raising=False)
    assert resolve_address(None) is None
    assert resolve_address(9465) == ("0.0.0.0", 9465)
    monkeypatch.setenv(METRICS_PORT_ENV, "9466")
    assert resolve_address(None) == ("0.0.0.0", 9466)
    monkeypatch.setenv(METRICS_PORT_ENV, "127.0.0.1:9467")
    assert resolve_address(None) == ("127.0.0.1", 9467)
    assert resolve_address(1234) == ("0.0.0.0", 1234)
    monkeypatch.setenv(METRICS_PORT_ENV, "nine")
    with pytest.raises(InvalidArgumentError, match=METRICS_PORT_ENV):
        resolve_address(None)
