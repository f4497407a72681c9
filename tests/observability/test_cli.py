"""The `faultline` operator commands, run as real subprocesses against a coordinator over gRPC."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from typing import Any

from coordinator.app import Coordinator
from tests.helpers.procs import free_port
from tests.helpers.wait import eventually
from tests.observability.conftest import Ran, cli
from worker_sdk import Client, JobContext, JobState, NonRetryableError, Worker


def ok(r: Ran) -> str:
    assert r.code == 0 and not r.err, f"exit {r.code}\nstdout: {r.out}\nstderr: {r.err}"
    return r.out


def one_line_error(r: Ran) -> str:
    """Exit 1, nothing on stdout, one line on stderr, no traceback."""
    assert r.code == 1, r
    assert r.out == "" and "Traceback" not in r.err, r
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("faultline: "), r.err
    return lines[0]


def table(text: str) -> tuple[list[str], list[list[str]]]:
    """Header cells and rows of an aligned table (columns split on runs of two or more spaces)."""
    import re

    lines = [line for line in text.splitlines() if line.strip()]
    split = [re.split(r"\s{2,}", line.strip()) for line in lines]
    return split[0], split[1:]


async def test_submit_show_list_cancel_requeue_in_text_and_json(addr: str) -> None:
    queue = f"cli-{uuid.uuid4().hex[:8]}"
    a = ["--addr", addr]
    first = json.loads(ok(await cli("submit", "echo", *a, "--payload", "hello", "--queue", queue, "--key", "k1",
                                    "--label", "team=ops", "--max-attempts", "3", "--priority", "7", "--json")))
    job_id = first["job"]["id"]
    assert first["created"] is True
    assert first["job"]["payload"] == base64.b64encode(b"hello").decode()
    assert (first["job"]["labels"], first["job"]["max_attempts"], first["job"]["priority"]) == ({"team": "ops"}, 3, 7)
    again = ok(await cli("submit", "echo", *a, "--payload", "hello", "--queue", queue, "--key", "k1"))
    assert again == (f"job {job_id} already submitted: idempotency key 'k1' matched "
                     f"(queue {queue}, kind echo, state queued)\n")
    other = json.loads(ok(await cli("submit", "resize", *a, "--queue", queue, "--payload-file", "-", "--json",
                                    stdin=b"\x00\xffbinary")))
    assert base64.b64decode(other["job"]["payload"]) == b"\x00\xffbinary"

    listed, listed_json, shown = await asyncio.gather(
        cli("jobs", "ls", *a, "--queue", queue), cli("jobs", "ls", *a, "--queue", queue, "--kind", "echo", "--json"),
        cli("jobs", "show", *a, job_id))
    header, rows = table(ok(listed))
    assert header == ["ID", "STATE", "QUEUE", "KIND", "ATTEMPTS", "CREATED", "LAST ERROR"]
    assert [r[:5] for r in rows] == [[other["job"]["id"], "queued", queue, "resize", "0/5"],
                                     [job_id, "queued", queue, "echo", "0/3"]]
    assert [j["id"] for j in json.loads(ok(listed_json))] == [job_id]
    show = ok(shown)
    for line in (f"id:               {job_id}", "state:            queued", "payload:          hello",
                 "labels:           team=ops", "idempotency key:  k1"):
        assert line in show.splitlines(), show

    cancelled = ok(await cli("jobs", "cancel", *a, job_id))
    assert cancelled.splitlines()[0] == f"job {job_id}: cancelled"
    requeued = json.loads(ok(await cli("dlq", "requeue", *a, job_id, "--extra-attempts", "2", "--json")))
    assert (requeued["state"], requeued["max_attempts"]) == ("queued", 2)  # 0 spent + 2 granted
    limited = json.loads(ok(await cli("jobs", "ls", *a, "--queue", queue, "--state", "queued", "--limit", "1",
                                      "--json")))
    assert len(limited) == 1


async def test_errors_are_one_line_with_the_servers_message_and_exit_1(addr: str) -> None:
    missing, invalid, not_dead, unreachable = await asyncio.gather(
        cli("jobs", "show", "--addr", addr, "987654321"),
        cli("submit", "echo", "--addr", addr, "--priority", "5000"),
        cli("dlq", "requeue", "--addr", addr, "987654321"),
        cli("queues", "--addr", f"127.0.0.1:{free_port()}"),
    )
    assert "987654321" in one_line_error(missing)
    assert "priority" in one_line_error(invalid)
    assert "987654321" in one_line_error(not_dead)
    assert "coordinator unavailable at 127.0.0.1:" in one_line_error(unreachable)
    # A bad flag is a usage error (exit 2, one line) before any call: tests/observability/test_cli_args.py.
    usage = await cli("submit", "echo", "--addr", addr, "--label", "novalue")
    assert usage.code == 2 and "--label: must be K=V" in usage.err and len(usage.err.splitlines()) == 1, usage


async def test_dlq_queues_and_workers_show_what_the_coordinator_holds(coordinator: Coordinator) -> None:
    addr = f"127.0.0.1:{coordinator.port}"
    a = ["--addr", addr]
    queue = f"ops-{uuid.uuid4().hex[:8]}"
    release = asyncio.Event()
    # prefetch=0: the LEASES column shows held/announced capacity, which prefetch would raise to 6.
    worker = Worker(addr, queues=[queue], concurrency=4, prefetch=0, worker_id="cli-worker-1", handle_signals=False)

    @worker.handler("doomed")
    async def doomed(ctx: JobContext) -> bytes:
        raise NonRetryableError("bad input")

    @worker.handler("slow")
    async def slow(ctx: JobContext) -> bytes:
        await release.wait()
        return b"done"

    running = asyncio.create_task(worker.run())
    try:
        async with Client(addr) as client:
            dead = await client.submit("doomed", queue=queue)
            held = await client.submit("slow", queue=queue)
            await client.submit("nobody-handles-this", queue=queue)

            async def settled() -> bool:
                d, h = await client.get(dead.id), await client.get(held.id)
                return d.state is JobState.DEAD_LETTERED and h.state is JobState.RUNNING

            await eventually(settled, message="one job dead-lettered, one running")

            async def sampled() -> bool:  # `faultline queues` shows the last metrics sample: wait for one after
                stats = [q for q in await client.list_queues() if q.name == queue]
                return bool(stats) and {str(k): v for k, v in stats[0].depth.items()} == {
                    "queued": 1, "running": 1, "dead_lettered": 1}

            await eventually(sampled, message="a sample of the settled queue")

        dlq, queues, queues_json, workers, workers_json = await asyncio.gather(
            cli("dlq", "ls", *a, "--queue", queue), cli("queues", *a), cli("queues", *a, "--json"),
            cli("workers", *a), cli("workers", *a, "--json"))
        header, rows = table(ok(dlq))
        assert [(r[0], r[1], r[3], r[6]) for r in rows] == [(dead.id, "dead_lettered", "doomed",
                                                            "NonRetryableError: bad input")]

        header, rows = table(ok(queues))
        assert header == ["QUEUE", "QUEUED", "SCHEDULED", "RUNNING", "RETRYING", "DEAD_LETTERED", "OLDEST READY",
                          "FINISHED/1M", "FLOW", "WAITING ON KEY", "NEEDING LABELS", "WORKERS"]
        row = next(r for r in rows if r[0] == queue)
        assert row[1:6] == ["1", "0", "1", "0", "1"] and row[7] == "1", row
        stats: dict[str, Any] = next(q for q in json.loads(ok(queues_json)) if q["name"] == queue)
        assert stats["depth"] == {"queued": 1, "running": 1, "dead_lettered": 1}
        assert stats["finished_last_minute"] == 1 and stats["oldest_ready_age"] >= 0

        header, rows = table(ok(workers))
        assert header[:4] == ["WORKER", "QUEUES", "KINDS", "LEASES"]
        row = next(r for r in rows if r[0] == "cli-worker-1")
        assert (row[1], row[2], row[3]) == (queue, "doomed,slow", "1/4")
        assert row[-1].split(".")[0] == held.id, row  # lease ids are <job id>.<fencing token>
        info = next(w for w in json.loads(ok(workers_json)) if w["worker_id"] == "cli-worker-1")
        assert [lease.split(".")[0] for lease in info["lease_ids"]] == [held.id]
    finally:
        release.set()
        await worker.stop()
        await running


async def test_queues_pause_resume_and_set_in_text_and_json(addr: str) -> None:
    queue = f"flow-{uuid.uuid4().hex[:8]}"
    a = ["--addr", addr]
    paused = json.loads(ok(await cli("queues", "pause", queue, *a, "--json")))
    assert paused == {"name": queue, "paused": True, "per_key_concurrency": None, "max_running": None,
                      "rate_per_second": None, "burst": None}
    limited = json.loads(ok(await cli("queues", "set", queue, *a, "--rate", "20/s", "--burst", "5",
                                      "--per-key-concurrency", "2", "--max-running", "10", "--json")))
    assert (limited["paused"], limited["rate_per_second"], limited["burst"], limited["per_key_concurrency"],
            limited["max_running"]) == (True, 20.0, 5, 2, 10)
    ok(await cli("submit", "echo", *a, "--queue", queue, "--concurrency-key", "cust-1", "--require", "gpu=a100"))
    header, rows = table(ok(await cli("queues", *a)))
    row = dict(zip(header, next(r for r in rows if r[0] == queue), strict=True))
    assert row["FLOW"] == "paused key=2 max=10 rate=20/s burst=5" and row["NEEDING LABELS"] == "1", row
    stats = next(q for q in json.loads(ok(await cli("queues", *a, "--json"))) if q["name"] == queue)
    assert stats["settings"]["paused"] and stats["requiring_labels"] == 1
    assert "resumed" in ok(await cli("queues", "resume", queue, *a))
    cleared = json.loads(ok(await cli("queues", "set", queue, *a, "--rate", "0", "--max-running", "0", "--json")))
    assert (cleared["paused"], cleared["rate_per_second"], cleared["burst"], cleared["max_running"]) == \
        (False, None, None, None)
    assert "per_key_concurrency" in one_line_error(await cli("queues", "set", queue, *a, "--per-key-concurrency",
                                                             "200000"))
    r = await cli("queues", "set", queue, *a, "--rate", "fast")
    assert r.code == 2 and "rate" in r.err, r
