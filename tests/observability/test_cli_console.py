"""The console-era `faultline` commands as subprocesses: whoami, jobs ls label/key filters, bulk by filter, show."""

from __future__ import annotations

import json
import uuid

from tests.observability.conftest import cli
from tests.observability.test_cli import ok, table


async def test_whoami_label_filters_cancel_matching_and_requeue_matching(addr: str) -> None:
    a = ["--addr", addr]
    queue = f"console-{uuid.uuid4().hex[:8]}"
    me = ok(await cli("whoami", *a))
    assert "name:     anonymous" in me.splitlines() and "auth:     off" in me.splitlines(), me
    assert json.loads(ok(await cli("whoami", *a, "--json")))["auth_enabled"] is False
    ids = [json.loads(ok(await cli("submit", "echo", *a, "--queue", queue, "--label", f"team={t}", "--label",
                                   "env=prod", "--key", f"k-{i}", "--json")))["job"]["id"]
           for i, t in enumerate(["a", "a", "b"])]
    _, rows = table(ok(await cli("jobs", "ls", *a, "--label", "team=a", "--label", "env=prod")))
    assert [r[0] for r in rows] == [ids[1], ids[0]]
    keyed = json.loads(ok(await cli("jobs", "ls", *a, "--queue", queue, "--idempotency-key", "k-2", "--json")))
    assert [j["id"] for j in keyed] == [ids[2]]

    usage = await cli("jobs", "cancel-matching", *a)
    assert usage.code == 1 and "at least one of" in usage.err, usage
    done = ok(await cli("jobs", "cancel-matching", *a, "--queue", queue, "--label", "team=a"))
    assert done == "2 jobs cancelled, 0 running jobs told to stop, 0 already finished (1 calls)\n", done
    again = json.loads(ok(await cli("jobs", "cancel-matching", *a, "--queue", queue, "--json")))
    assert (again["cancelled"], again["skipped"]) == (1, 2)
    back = ok(await cli("jobs", "requeue-matching", *a, "--queue", queue, "--state", "cancelled",
                        "--label", "team=b", "--extra-attempts", "2"))
    assert back.startswith("1 jobs requeued, 0 skipped"), back
    bad = await cli("jobs", "requeue-matching", *a, "--queue", queue, "--state", "queued")
    assert bad.code == 2, bad  # argparse: only dead_lettered or cancelled
    shown = ok(await cli("jobs", "show", *a, ids[0]))
    assert any(line.startswith("trace id:") for line in shown.splitlines()), shown
