"""The time commands of `faultline` as processes: schedules add/ls/show/pause/resume/trigger/rm, jobs watch,
submit with a dedup window."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from tests.observability.conftest import cli, faultline_cli
from worker_sdk import Client


async def test_schedules_commands_round_trip(addr: str) -> None:
    a = ["--addr", addr]
    added = await cli("schedules", "add", "nightly", "--cron", "30 2 * * *", "--tz", "Europe/Berlin",
                      "--kind", "backup", "--catchup", "run_once", *a)
    assert added.code == 0 and "schedule nightly created; next run" in added.out, added
    listed = await cli("schedules", "ls", *a)
    assert listed.code == 0 and "cron 30 2 * * * Europe/Berlin" in listed.out, listed
    trig = await cli("schedules", "trigger", "nightly", "--json", *a)
    assert trig.code == 0 and json.loads(trig.out)["schedule"]["fired"] == 1, trig
    assert (await cli("schedules", "rm", "nightly", *a)).code == 0
    bad = await cli("schedules", "add", "x", "--cron", "61 * * * *", "--kind", "k", *a)
    assert bad.code == 1 and bad.err.startswith("faultline: spec.cron:"), bad


async def test_jobs_watch_prints_each_change_and_exits_1_unless_it_succeeded(addr: str, db: Any) -> None:
    async with Client(addr) as client:
        job = await client.submit("parked")
    proc = await asyncio.create_subprocess_exec(*faultline_cli(), "jobs", "watch", job.id, "--addr", addr,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    try:
        first = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        assert f"job {job.id}  queued" in first, first
        await db.execute("UPDATE faultline_jobs SET state = 'running', attempts = 1, lease_token = 1, "
                         "lease_expires_at = now() + interval '1 minute', progress_fraction = 0.5, "
                         "progress_message = 'half', updated_at = now() WHERE id = $1", int(job.id))
        progress = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        assert "running" in progress and "[##########----------]  50% half" in progress, progress
        await db.execute("UPDATE faultline_jobs SET state = 'cancelled', finished_at = now(), lease_expires_at = NULL, "
                         "updated_at = now() WHERE id = $1", int(job.id))
        rest, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
    assert proc.returncode == 1 and f"job {job.id} ended cancelled" in err.decode(), err
    assert "cancelled" in rest.decode().splitlines()[-1], rest


async def test_submit_with_a_dedup_window_says_which_job_and_why(addr: str) -> None:
    a = ["--addr", addr]
    first = await cli("submit", "sync", "--key", "u-7", "--dedup-unfinished", "--json", *a)
    again = await cli("submit", "sync", "--key", "u-7", "--dedup-unfinished", *a)
    job_id = json.loads(first.out)["job"]["id"]
    assert json.loads(first.out)["outcome"] == "created"
    assert again.code == 0 and f"job {job_id} already submitted: job {job_id} holds the idempotency key" in again.out
    assert "while it is unfinished" in again.out


def test_bad_time_arguments_are_usage_errors(capsys: Any) -> None:
    import pytest

    from coordinator.cli import main

    for args, flag in ((["schedules", "add", "x", "--every", "0s", "--kind", "k"], "--every"),
                       (["schedules", "add", "x", "--every", "5 minutes", "--kind", "k"], "--every"),
                       (["schedules", "add", "x", "--kind", "k"], "--cron"),
                       (["submit", "k", "--dedup-period", "0s", "--key", "a"], "--dedup-period")):
        with pytest.raises(SystemExit) as exit_:
            main(args)
        assert exit_.value.code == 2 and flag in capsys.readouterr().err, args
