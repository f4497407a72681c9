"""A worker in another language (examples/node-worker, Node.js + @grpc/grpc-js, protos loaded at run time)
follows the wire contract: a few hundred jobs, a stale completion, a duplicate completion, a cancel and a drain.

The Node worker prints one JSON line per event; the Python Client submits and cancels. Node and the
npm packages are required: a missing `node` or `examples/node-worker/node_modules` is a failure
(scripts/test runs `npm ci` first), never a skip.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.procs import ROOT, Proc
from tests.helpers.wait import eventually
from worker_sdk import Client, JobState

NODE_DIR = ROOT / "examples" / "node-worker"
JOBS = 300
WAIT_S = 120.0


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is required (Debian packages nodejs npm; scripts/test installs them as root)")
    if not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir():
        pytest.fail(f"run `npm ci` in {NODE_DIR} first (scripts/test does)")
    return node


def _events(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def _start_node(node: str, addr: str, out_path: Path, err_path: Path) -> subprocess.Popen[bytes]:
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        return subprocess.Popen([node, str(NODE_DIR / "worker.js"), "--addr", addr, "--worker-id", "node-1",
                                 "--capacity", "8", "--protos", str(ROOT / "protos")],
                                stdout=out, stderr=err, cwd=NODE_DIR)


@pytest.mark.timeout(240)
async def test_node_worker_runs_the_protocol(coordinator_proc_factory: Callable[..., Awaitable[Proc]],
                                             tmp_path: Path) -> None:
    node = _node()
    coord = await coordinator_proc_factory()
    addr = str(coord.extra["addr"])
    out_path = tmp_path / "node-worker.jsonl"
    worker = _start_node(node, addr, out_path, tmp_path / "node-worker.err")
    try:
        def seen(event: str, **match: Any) -> list[dict[str, Any]]:
            return [e for e in _events(out_path) if e["event"] == event
                    and all(e.get(k) == v for k, v in match.items())]

        await eventually(lambda: seen("welcome"), timeout=30, message="the Node worker's welcome")
        async with Client(addr) as client:
            ids = [(await client.submit_ex("node-echo", json.dumps({"i": i}).encode()))[0].id for i in range(JOBS)]
            stale = (await client.submit_ex("node-echo", b'{"case": "stale"}'))[0].id
            dup = (await client.submit_ex("node-echo", b'{"case": "duplicate"}'))[0].id
            hold = (await client.submit_ex("node-echo", b'{"case": "hold"}'))[0].id

            async def done(job_ids: list[str]) -> bool:
                for j in job_ids:
                    if (await client.get(j)).state is not JobState.SUCCEEDED:
                        return False
                return True

            await eventually(lambda: done([*ids, stale, dup]), timeout=WAIT_S,
                             message=f"{JOBS + 2} jobs succeeded on the Node worker")
            job = await client.get(ids[7])
            assert job.result == json.dumps({"i": 7}).encode()

            await eventually(lambda: seen("lease", job_id=hold), timeout=30, message="the hold job leased")
            await client.cancel(hold)
            await eventually(lambda: seen("reply", what="fail", job_id=hold), timeout=30,
                             message="the Node worker's fail after CancelLease answered")
            assert (await client.get(hold)).state is JobState.CANCELLED

        stale_replies = seen("reply", what="stale complete", job_id=stale)
        assert [r["status"] for r in stale_replies] == ["REPLY_STATUS_STALE_LEASE"], stale_replies
        assert [r["status"] for r in seen("reply", what="complete", job_id=stale)] == ["REPLY_STATUS_ACCEPTED"]
        assert [r["status"] for r in seen("reply", what="complete", job_id=dup)] == ["REPLY_STATUS_ACCEPTED"]
        dup_replies = seen("reply", what="duplicate complete", job_id=dup)
        assert [(r["status"], r["job_state"]) for r in dup_replies] == [
            ("REPLY_STATUS_DUPLICATE", "JOB_STATE_SUCCEEDED")], dup_replies
        assert seen("cancel"), "no CancelLease frame reached the Node worker"
        assert len(seen("lease")) >= JOBS + 3

        # Drain: SIGTERM the coordinator; the worker gets Drain, half-closes, and the stream ends OK.
        coord.popen.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        await eventually(lambda: seen("end"), timeout=30, message="the Node worker's stream to end")
        assert seen("drain"), "no Drain frame reached the Node worker"
        assert seen("closing")
        assert [e["code"] for e in seen("end")] == ["OK"], seen("end")
        assert worker.wait(30) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(10)
