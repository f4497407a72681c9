"""`faultline` as an outsider runs it: bad arguments are one-line usage errors, stored control characters never
reach the terminal raw, `jobs cancel` of a finished job fails by the README's rule, `--version` answers."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest

from coordinator import __version__
from tests.helpers.wait import eventually
from tests.observability.conftest import Ran, faultline_cli, run
from worker_sdk import Client, InvalidArgumentError, JobContext, JobState, NonRetryableError, Worker

# Raw bytes that must never reach a terminal: ESC (CSI colour, OSC title), BEL, C1 CSI, a bidi override.
HOSTILE = "\x1b[31mred\x1b]0;pwned\x07\x9b2J\u202etxt"
RAW = ("\x1b", "\x07", "\x9b", "\u202e")


def usage_error(r: Ran, flag: str) -> str:
    """Exit 2, nothing on stdout, one stderr line that names the flag, no traceback."""
    assert r.code == 2, r
    assert r.out == "" and "Traceback" not in r.err, r
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("faultline ") and flag in lines[0], r.err
    return lines[0]


async def cli_bytes(*args: str | bytes, env: dict[str, str] | None = None) -> Ran:
    return await run([*faultline_cli(), *args], env=env)  # type: ignore[list-item]


@pytest.mark.parametrize("args,flag", [
    (["dlq", "requeue", "1", "--extra-attempts", "99999999999"], "--extra-attempts"),
    (["dlq", "requeue", "1", "--extra-attempts", "-1"], "--extra-attempts"),
    (["jobs", "ls", "--timeout", "nan"], "--timeout"),
    (["jobs", "ls", "--timeout", "inf"], "--timeout"),
    (["jobs", "ls", "--timeout", "0"], "--timeout"),
    (["jobs", "ls", "--addr", ":99999"], "--addr"),
    (["jobs", "ls", "--addr", "127.0.0.1:0"], "--addr"),
    (["jobs", "ls", "--addr", "no-port"], "--addr"),
    (["jobs", "ls", "--limit", "0"], "--limit"),
    (["submit", "echo", "--priority", str(2**31)], "--priority"),
    (["submit", "echo", "--max-attempts", "0"], "--max-attempts"),
    (["submit", "echo", "--max-attempts", "many"], "--max-attempts"),
    (["submit", "echo", "--label", "novalue"], "--label"),
])
async def test_bad_arguments_are_one_line_usage_errors(args: list[str], flag: str) -> None:
    usage_error(await cli_bytes(*args), flag)


async def test_non_utf8_text_arguments_are_usage_errors() -> None:
    usage_error(await cli_bytes("submit", "echo", "--payload", b"\xff\xfe"), "--payload")
    usage_error(await cli_bytes("submit", b"ki\xffnd"), "kind")
    usage_error(await cli_bytes("jobs", "ls", "--queue", b"\xc3("), "--queue")


async def test_a_bad_addr_from_the_environment_is_a_usage_error() -> None:
    usage_error(await cli_bytes("queues", env={"FAULTLINE_ADDR": "localhost:99999"}), "--addr")


async def test_version_and_help() -> None:
    version = await cli_bytes("--version")
    assert version.code == 0 and version.out.strip() == f"faultline {__version__} (faultline-jobs)", version
    helped = await cli_bytes("--help")
    assert helped.code == 0 and "coordinator" in helped.out and "jobs" in helped.out, helped


async def test_stored_control_characters_are_escaped_in_text_and_json(addr: str) -> None:
    queue = f"esc-{uuid.uuid4().hex[:8]}"
    worker = Worker(addr, queues=[queue], concurrency=1, worker_id="esc-worker", handle_signals=False)

    @worker.handler("poison")
    async def poison(ctx: JobContext) -> bytes:
        raise NonRetryableError(f"boom {HOSTILE}")

    async with Client(addr) as client:
        # Labels with control characters are refused at the edge; a worker's error text is stored as sent.
        with pytest.raises(InvalidArgumentError, match=r"labels\[note\]"):
            await client.submit("poison", b"x", queue=queue, labels={"note": HOSTILE})
        job = await client.submit("poison", b"x", queue=queue)
        run_task = asyncio.create_task(worker.run())
        try:
            async def dead() -> bool:
                return (await client.get(job.id)).state is JobState.DEAD_LETTERED

            await eventually(dead, timeout=30, message="the poison job is dead-lettered")
        finally:
            await worker.stop()
            await run_task
    a = ["--addr", addr]
    shown, listed, dlq, as_json = await asyncio.gather(
        cli_bytes("jobs", "show", *a, job.id), cli_bytes("jobs", "ls", *a, "--queue", queue),
        cli_bytes("dlq", "ls", *a, "--queue", queue), cli_bytes("jobs", "show", *a, job.id, "--json"))
    for r in (shown, listed, dlq, as_json):
        assert r.code == 0 and not r.err, r
        for raw in RAW:
            assert raw not in r.out, (raw, r.out)
    # Shown escaped, so an operator still sees what is stored.
    assert "boom \\x1b[31mred\\x1b]0;pwned\\x07\\x9b2J\\u202etxt" in shown.out, shown.out
    assert "boom \\x1b[31mred" in shown.out and "boom \\x1b[31mred" in dlq.out, (shown.out, dlq.out)
    stored = json.loads(as_json.out)
    assert HOSTILE in stored["last_error"], stored


async def test_cancel_of_a_finished_job_is_a_one_line_failure(addr: str) -> None:
    queue = f"fin-{uuid.uuid4().hex[:8]}"
    worker = Worker(addr, queues=[queue], concurrency=1, handle_signals=False)

    @worker.handler("echo")
    async def echo(ctx: JobContext) -> bytes:
        return ctx.payload

    async with Client(addr) as client:
        job = await client.submit("echo", b"hi", queue=queue)
        run_task = asyncio.create_task(worker.run())
        try:
            async def done() -> bool:
                return (await client.get(job.id)).state is JobState.SUCCEEDED

            await eventually(done, timeout=30, message="the job succeeds")
        finally:
            await worker.stop()
            await run_task
    r = await cli_bytes("jobs", "cancel", "--addr", addr, job.id)
    assert r.code == 1 and r.out == "" and "Traceback" not in r.err, r
    lines = r.err.strip().splitlines()
    assert lines == [f"faultline: job {job.id} not cancelled: it already finished (succeeded)"], r.err
