"""Operator commands of `faultline`: submit, jobs (ls, show, cancel, cancel-matching, requeue-matching, watch), dlq,
queues, workers, schedules, whoami.

They talk to a coordinator over gRPC only, through the SDK's Client; none of them touches Postgres.
Output is an aligned table (or a key/value block for one job) by default and JSON with --json.
Every failure is one line on stderr and exit code 1: an unreachable coordinator, the server's own
message for NotFound, InvalidArgument and FailedPrecondition, or `jobs cancel` of a job that already
finished. Usage errors exit 2 (argparse): every flag is range-checked here (int32 fields, a finite
--timeout, a host:port --addr, UTF-8 text), so no bad argument reaches the wire or a traceback.
Text output never carries control characters from stored data (labels, errors, worker ids): they are
shown escaped, as \x1b; --json escapes them as JSON does.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import math
import os
import re
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import fields, is_dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum
from pathlib import Path
from typing import Any

from worker_sdk import (
    AttemptAudit,
    Client,
    Job,
    JobSpec,
    JobState,
    QueueSettings,
    QueueStats,
    Schedule,
    UnavailableError,
    WorkerSDKError,
)

ADDR_ENV = "FAULTLINE_ADDR"
ADDR_DEFAULT = "127.0.0.1:50051"
TIMEOUT_S_DEFAULT = 10.0
LIST_LIMIT_DEFAULT = 50
# Page size asked of ListJobs; the server caps it too.
PAGE_SIZE_MAX = 500
# Widest cell in a table before it is cut with an ellipsis (errors can be kilobytes).
CELL_MAX_CHARS = 60
EXIT_OK = 0
EXIT_ERROR = 1
# Flags that become int32 proto fields are range-checked against it; the server narrows further.
INT32_MAX = 2**31 - 1
TIMEOUT_S_MAX = 86_400.0
LIST_LIMIT_MAX = 1_000_000
# Columns of `faultline queues`, in lifecycle order.
QUEUE_STATES = (JobState.QUEUED, JobState.SCHEDULED, JobState.RUNNING, JobState.RETRYING, JobState.DEAD_LETTERED)

Handler = Callable[[Client, argparse.Namespace], Awaitable[Any]]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--addr", type=_addr, default=os.environ.get(ADDR_ENV) or ADDR_DEFAULT,
                        help=f"coordinator gRPC address (default: ${ADDR_ENV} or {ADDR_DEFAULT})")
    common.add_argument("--json", action="store_true", help="print JSON instead of a table")
    common.add_argument("--timeout", type=_seconds, default=TIMEOUT_S_DEFAULT,
                        help="seconds per call (default: %(default)s)")
    common.add_argument("--api-key", type=_text, default=None,
                        help="API key sent as a bearer token (default: $FAULTLINE_API_KEY)")
    common.add_argument("--tls", action="store_true", default=None,
                        help="use TLS trusting the system's roots (implied by --ca-cert or --client-cert)")
    common.add_argument("--ca-cert", type=Path, default=None,
                        help="PEM file of the CA to trust (default: $FAULTLINE_TLS_CA)")
    common.add_argument("--client-cert", type=Path, default=None,
                        help="PEM client certificate for mTLS (default: $FAULTLINE_TLS_CLIENT_CERT)")
    common.add_argument("--client-key", type=Path, default=None,
                        help="PEM key of --client-cert (default: $FAULTLINE_TLS_CLIENT_KEY)")

    p = sub.add_parser("submit", parents=[common], help="submit one job")
    p.add_argument("kind", type=_text)
    body = p.add_mutually_exclusive_group()
    body.add_argument("--payload", type=_text, default="", help="payload as text (UTF-8)")
    body.add_argument("--payload-file", type=Path, help="payload read from a file ('-' for stdin)")
    p.add_argument("--queue", type=_text, default="default")
    p.add_argument("--key", dest="idempotency_key", type=_text,
                   help="idempotency key: a repeat returns the same job")
    p.add_argument("--max-attempts", type=_int_in(1, INT32_MAX), help="attempts allowed (default: the coordinator's)")
    p.add_argument("--priority", type=_int_in(-INT32_MAX - 1, INT32_MAX), default=0,
                   help="higher runs first within a queue")
    p.add_argument("--label", type=_label, action="append", default=[], metavar="K=V", help="a label (repeatable)")
    p.add_argument("--concurrency-key", type=_text,
                   help="key the queue's per-key concurrency cap counts (a customer id)")
    p.add_argument("--require", type=_label, action="append", default=[], metavar="K=V",
                   help="a label the worker must have to run the job (repeatable)")
    window = p.add_mutually_exclusive_group()
    window.add_argument("--dedup-period", type=_every, metavar="DURATION",
                        help="the --key names its job only this long after its submit (1s to 366d)")
    window.add_argument("--dedup-unfinished", action="store_true",
                        help="the --key names its job only while that job is unfinished")
    _bind(p, _submit)

    jobs = sub.add_parser("jobs", help="list, show and cancel jobs").add_subparsers(dest="jobs_command", required=True,
                                                                                  metavar="ACTION")
    ls = jobs.add_parser("ls", parents=[common], help="list jobs, newest first")
    _list_filters(ls)
    ls.add_argument("--state", choices=[s.value for s in JobState])
    _bind(ls, _jobs_ls)
    show = jobs.add_parser("show", parents=[common], help="one job in full")
    show.add_argument("id", type=_text)
    _bind(show, _jobs_show)
    cancel = jobs.add_parser("cancel", parents=[common], help="cancel a job (a running job's worker is told to stop)")
    cancel.add_argument("id", type=_text)
    _bind(cancel, _jobs_cancel)
    for action, about, handler in (
        ("cancel-matching", "cancel every job matching the filter (running jobs' workers are told to stop)",
         _jobs_cancel_matching),
        ("requeue-matching", "send every dead-lettered or cancelled job matching the filter back to its queue",
         _jobs_requeue_matching),
    ):
        bulk = jobs.add_parser(action, parents=[common], help=about)
        bulk.add_argument("--queue", type=_text)
        bulk.add_argument("--kind", type=_text)
        bulk.add_argument("--state", choices=[s.value for s in (
            (JobState.DEAD_LETTERED, JobState.CANCELLED) if handler is _jobs_requeue_matching else JobState)])
        bulk.add_argument("--label", type=_label, action="append", default=[], metavar="K=V",
                          help="only jobs with this label (repeatable: all must match)")
        if handler is _jobs_requeue_matching:
            bulk.add_argument("--extra-attempts", type=_int_in(0, INT32_MAX), default=0,
                              help="attempts granted to each on top of those already spent (default: 1)")
        _bind(bulk, handler)
    watch = jobs.add_parser("watch", parents=[common],
                            help="follow a job until it finishes (a progress bar for jobs that report progress); "
                                 "exit 0 when it succeeded, 1 otherwise")
    watch.add_argument("id", type=_text)
    _bind(watch, _jobs_watch)

    dlq = sub.add_parser("dlq", help="the dead-letter queue").add_subparsers(dest="dlq_command", required=True,
                                                                             metavar="ACTION")
    dls = dlq.add_parser("ls", parents=[common], help="list dead-lettered jobs, newest first")
    _list_filters(dls)
    _bind(dls, _dlq_ls)
    rq = dlq.add_parser("requeue", parents=[common], help="send a dead-lettered or cancelled job back to its queue")
    rq.add_argument("id", type=_text)
    rq.add_argument("--extra-attempts", type=_int_in(0, INT32_MAX), default=0,
                    help="attempts granted on top of those already spent (default: 1)")
    _bind(rq, _dlq_requeue)

    q = sub.add_parser("queues", parents=[common],
                       help="per queue: depth by state, oldest ready job's age, jobs finished in the last minute, "
                            "flow limits; or pause, resume or limit a queue")
    _bind(q, _queues)
    qs = q.add_subparsers(dest="queues_command", required=False, metavar="ACTION")
    pause = qs.add_parser("pause", parents=[common], help="grant none of the queue's jobs, on every coordinator, until "
                                                           "resumed (Submits still queue up; running jobs finish)")
    pause.add_argument("queue", type=_text)
    _bind(pause, _queues_pause)
    resume = qs.add_parser("resume", parents=[common], help="grant a paused queue's jobs again")
    resume.add_argument("queue", type=_text)
    _bind(resume, _queues_resume)
    qset = qs.add_parser("set", parents=[common], help="change a queue's flow limits (0 clears one)")
    qset.add_argument("queue", type=_text)
    qset.add_argument("--per-key-concurrency", type=_int_in(0, INT32_MAX), metavar="N",
                      help="most running jobs per concurrency key (Submit's concurrency_key)")
    qset.add_argument("--max-running", type=_int_in(0, INT32_MAX), metavar="N", help="most running jobs in the queue")
    qset.add_argument("--rate", type=_rate, metavar="N/s", help="most grants per second, cluster-wide (e.g. 20/s)")
    qset.add_argument("--burst", type=_int_in(0, INT32_MAX), metavar="M",
                      help="most grants at once after a quiet spell (default: max(1, rate / 10))")
    _bind(qset, _queues_set)
    w = sub.add_parser("workers", parents=[common], help="connected workers and the leases they hold")
    _bind(w, _workers)
    me = sub.add_parser("whoami", parents=[common], help="who the coordinator takes you for: identity, scopes, queues")
    _bind(me, _whoami)
    _register_schedules(sub, common)


def _register_schedules(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                        common: argparse.ArgumentParser) -> None:
    sch = sub.add_parser("schedules", help="cron and interval schedules").add_subparsers(
        dest="schedules_command", required=True, metavar="ACTION")
    add = sch.add_parser("add", parents=[common], help="create a schedule that submits one job per tick")
    add.add_argument("name", type=_text)
    when = add.add_mutually_exclusive_group(required=True)
    when.add_argument("--cron", type=_text, metavar="EXPR",
                      help="5 fields (minute hour day month weekday), or 6 with seconds first")
    when.add_argument("--every", type=_every, metavar="DURATION", help="interval: 1s, 90s, 5m, 1h30m, 1d (>= 1s)")
    add.add_argument("--tz", type=_text, metavar="ZONE", help="IANA time zone of --cron (default UTC)")
    add.add_argument("--kind", type=_text, required=True)
    add.add_argument("--queue", type=_text, default="default")
    add.add_argument("--payload", type=_text, default="", help="payload of every job, as text (UTF-8)")
    add.add_argument("--priority", type=_int_in(-INT32_MAX - 1, INT32_MAX), default=0)
    add.add_argument("--max-attempts", type=_int_in(1, INT32_MAX), help="attempts of each job (default: the "
                                                                          "coordinator's)")
    add.add_argument("--label", type=_label, action="append", default=[], metavar="K=V", help="a label (repeatable)")
    add.add_argument("--catchup", choices=["skip", "run_once"], default="skip",
                     help="missed ticks: submit nothing (skip) or one job for all of them (run_once)")
    add.add_argument("--overlap", choices=["skip", "allow"], default="skip",
                     help="a tick while the previous job is unfinished: skip it, or allow it")
    _bind(add, _schedules_add)
    ls = sch.add_parser("ls", parents=[common], help="every schedule with its next tick and last run")
    _bind(ls, _schedules_ls)
    for action, about, handler in (
        ("show", "one schedule in full", _schedules_show),
        ("pause", "stop a schedule's ticks", _schedules_pause),
        ("resume", "start a paused schedule again from its next tick", _schedules_resume),
        ("rm", "delete a schedule (its jobs stay)", _schedules_rm),
        ("trigger", "submit one job of the schedule now", _schedules_trigger),
    ):
        p = sch.add_parser(action, parents=[common], help=about)
        p.add_argument("name", type=_text)
        _bind(p, handler)


def _list_filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--queue", type=_text)
    p.add_argument("--kind", type=_text)
    p.add_argument("--label", type=_label, action="append", default=[], metavar="K=V",
                   help="only jobs with this label (repeatable: all must match)")
    p.add_argument("--idempotency-key", type=_text, help="only the job with this idempotency key")
    p.add_argument("--limit", type=_int_in(1, LIST_LIMIT_MAX), default=LIST_LIMIT_DEFAULT,
                   help="most jobs shown (default: %(default)s)")


# ---- argument types: a bad value is argparse's one-line usage error (exit 2) ------------------


def _text(value: str) -> str:
    """UTF-8 text: argv that is not valid UTF-8 arrives with surrogate escapes, which protobuf cannot send."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError(
            f"not valid UTF-8: {value.encode('utf-8', 'surrogateescape')!r} (use --payload-file for bytes)") from None
    return value


def _label(value: str) -> tuple[str, str]:
    key, sep, val = _text(value).partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"must be K=V, got {_safe(value)!r}")
    return key, val


def _int_in(lo: int, hi: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        try:
            n = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {_safe(value)!r}") from None
        if not lo <= n <= hi:
            raise argparse.ArgumentTypeError(f"{n} is out of range [{lo}, {hi}]")
        return n

    parse.__name__ = "integer"  # argparse names the type in its message
    return parse


def _rate(value: str) -> float:
    """A rate as N/s (or plain N), N a finite number >= 0; 0 clears the limit."""
    text = value[:-2] if value.endswith("/s") else value
    try:
        rate = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a rate like 20/s, got {_safe(value)!r}") from None
    if not (math.isfinite(rate) and rate >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite rate >= 0 (0 clears it), got {_safe(value)!r}")
    return rate


def _seconds(value: str) -> float:
    try:
        s = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {_safe(value)!r}") from None
    if not (math.isfinite(s) and 0 < s <= TIMEOUT_S_MAX):
        raise argparse.ArgumentTypeError(f"must be a number of seconds in (0, {TIMEOUT_S_MAX:.0f}], got {value!r}")
    return s


_HOSTPORT = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9._\-]+):(\d{1,5})$")


def _addr(value: str) -> str:
    """host:port with a port in 1-65535; gRPC target URIs (dns:, unix:, ipv4:, ipv6:) pass through."""
    if re.match(r"^(dns|unix|unix-abstract|ipv4|ipv6|vsock):", value):
        return _text(value)
    m = _HOSTPORT.match(value)
    if not m or not 0 < int(m[2]) < 65536:
        raise argparse.ArgumentTypeError(f"must be HOST:PORT with a port in 1-65535, got {_safe(value)!r}")
    return value


_EVERY_PART = re.compile(r"(\d+)([smhd])")
_EVERY_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
EVERY_MAX_S = 366 * 86400


def _every(value: str) -> timedelta:
    """1s, 90s, 5m, 1h30m, 2d: whole seconds, 1 s to 366 days."""
    text = value.strip().lower()
    parts = _EVERY_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise argparse.ArgumentTypeError(f"{value!r} is not a duration like 1s, 90s, 5m, 1h30m or 1d")
    seconds = sum(int(n) * _EVERY_UNITS[u] for n, u in parts)
    if not 1 <= seconds <= EVERY_MAX_S:
        raise argparse.ArgumentTypeError(f"{value!r} must be from 1s to 366d")
    return timedelta(seconds=seconds)


def _bind(p: argparse.ArgumentParser, handler: Handler) -> None:
    p.set_defaults(func=lambda args: run(handler, args))


def run(handler: Handler, args: argparse.Namespace) -> int:
    """Call the coordinator and print; every expected failure is one stderr line and exit code 1."""
    async def go() -> Any:
        async with Client(args.addr, timeout=timedelta(seconds=args.timeout), api_key=args.api_key, tls=args.tls,
                          ca_cert=args.ca_cert, client_cert=args.client_cert, client_key=args.client_key) as client:
            return await handler(client, args)

    try:
        out = asyncio.run(go())
    except UnavailableError as exc:
        return _fail(f"coordinator unavailable at {args.addr}: {_first_line(exc)}")
    except WorkerSDKError as exc:
        return _fail(_first_line(exc))
    except OSError as exc:  # --payload-file
        return _fail(str(exc))
    except KeyboardInterrupt:
        return 130
    if isinstance(out, _Printed):
        return EXIT_OK
    if args.json:
        print(json.dumps(_jsonable(out), indent=2, sort_keys=True))
    else:
        print(_render(out))
    return EXIT_OK


def _fail(message: str) -> int:
    print(f"faultline: {_safe(message)}", file=sys.stderr)
    return EXIT_ERROR


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


# ---- commands: each returns what to print (a _View or plain data) -----------------------------


class _View:
    """Text for humans next to the data that --json prints."""

    def __init__(self, data: object, text: str) -> None:
        self.data = data
        self.text = text


async def _submit(client: Client, args: argparse.Namespace) -> _View:
    labels: dict[str, str] = dict(args.label)
    if args.payload_file is not None:
        payload = sys.stdin.buffer.read() if str(args.payload_file) == "-" else args.payload_file.read_bytes()
    else:
        payload = args.payload.encode()
    if (args.dedup_period or args.dedup_unfinished) and not args.idempotency_key:
        raise _UsageError("--dedup-period and --dedup-unfinished need --key")
    result = await client.submit_spec(JobSpec(
        kind=args.kind, payload=payload, queue=args.queue, idempotency_key=args.idempotency_key,
        max_attempts=args.max_attempts, priority=args.priority, labels=labels or None,
        dedup_period=args.dedup_period, dedup_while_unfinished=args.dedup_unfinished,
        concurrency_key=args.concurrency_key, required_labels=dict(args.require) or None,
    ), full=True)
    job, created = result.job, result.created
    where = f"queue {_safe(job.queue)}, kind {_safe(job.kind)}, state {job.state.value}"
    if created:
        text = f"job {job.id} submitted ({where})"
    elif result.outcome == "duplicate_key":
        text = f"job {job.id} already submitted: idempotency key {_safe(job.idempotency_key or '')!r} matched ({where})"
    else:
        text = f"job {job.id} already submitted: {_safe(result.detail)} ({where})"
    return _View({"created": created, "outcome": result.outcome, "detail": result.detail, "job": job}, text)


async def _list(client: Client, args: argparse.Namespace, state: JobState | None) -> _View:
    if args.limit < 1:
        raise _UsageError("--limit must be at least 1")
    jobs: list[Job] = []
    token: str | None = None
    while len(jobs) < args.limit:
        page, token = await client.list(queue=args.queue, kind=args.kind, state=state,
                                        page_size=min(args.limit - len(jobs), PAGE_SIZE_MAX), page_token=token,
                                        labels=dict(args.label) or None, idempotency_key=args.idempotency_key)
        jobs.extend(page)
        if token is None:
            break
    jobs = jobs[: args.limit]
    now = datetime.now(UTC)
    rows = [[j.id, j.state.value, j.queue, j.kind, f"{j.attempts}/{j.max_attempts}", _ago(j.created_at, now),
             _one_line(j.last_error)] for j in jobs]
    text = _table(["ID", "STATE", "QUEUE", "KIND", "ATTEMPTS", "CREATED", "LAST ERROR"], rows)
    return _View(jobs, text if jobs else "no jobs")


async def _jobs_ls(client: Client, args: argparse.Namespace) -> _View:
    return await _list(client, args, JobState(args.state) if args.state else None)


async def _dlq_ls(client: Client, args: argparse.Namespace) -> _View:
    return await _list(client, args, JobState.DEAD_LETTERED)


async def _jobs_show(client: Client, args: argparse.Namespace) -> _View:
    job = await client.get(args.id)
    return _View(job, _job_block(job))


async def _jobs_cancel(client: Client, args: argparse.Namespace) -> _View:
    job = await client.cancel(args.id)
    if job.state is JobState.CANCELLED:
        note = "cancelled"
    elif job.state is JobState.RUNNING:
        note = "cancel requested; its worker is told to stop"
    else:  # finished before the call: a failure by the README's rule (one line, exit 1), not a success
        raise _CommandError(f"job {job.id} not cancelled: it already finished ({job.state.value})")
    return _View(job, f"job {job.id}: {note}\n{_job_block(job)}")


def _bulk_filter(args: argparse.Namespace) -> dict[str, Any]:
    f = {"queue": args.queue, "kind": args.kind, "state": args.state, "labels": dict(args.label) or None}
    if not any(f.values()):
        raise _UsageError("give at least one of --queue, --kind, --state, --label")
    return f


async def _jobs_cancel_matching(client: Client, args: argparse.Namespace) -> _View:
    done = await client.bulk_cancel(**_bulk_filter(args))
    text = (f"{done.cancelled} jobs cancelled, {done.cancel_requested} running jobs told to stop, "
            f"{done.skipped} already finished ({done.calls} calls)")
    return _View(done, text)


async def _jobs_requeue_matching(client: Client, args: argparse.Namespace) -> _View:
    done = await client.bulk_requeue(**_bulk_filter(args), extra_attempts=args.extra_attempts)
    text = f"{done.requeued} jobs requeued, {done.skipped} skipped (neither dead-lettered nor cancelled) " \
           f"({done.calls} calls)"
    return _View(done, text)


async def _whoami(client: Client, args: argparse.Namespace) -> _View:
    me = await client.whoami()
    rows: list[tuple[str, object]] = [
        ("name", me.name), ("identity", me.identity or "-"), ("scopes", ", ".join(sorted(me.scopes)) or "-"),
        ("queues", ", ".join(me.queues) or "every queue"), ("auth", "on" if me.auth_enabled else "off"),
    ]
    width = max(len(k) for k, _ in rows)
    return _View(me, "\n".join(f"{k + ':':<{width + 1}} {_safe(str(v))}" for k, v in rows))


async def _dlq_requeue(client: Client, args: argparse.Namespace) -> _View:
    job = await client.requeue(args.id, extra_attempts=args.extra_attempts)
    return _View(job, f"job {_safe(job.id)} requeued\n{_job_block(job)}")


async def _queues(client: Client, args: argparse.Namespace) -> _View:
    queues = sorted(await client.list_queues(), key=lambda q: q.name)
    rows = [[q.name, *(_depth(q, s) for s in QUEUE_STATES), _duration(q.oldest_ready_age), q.finished_last_minute,
             _limits(q.settings), q.waiting_on_key or "-", q.requiring_labels or "-", q.workers_connected]
            for q in queues]
    header = ["QUEUE", *(s.value.upper() for s in QUEUE_STATES), "OLDEST READY", "FINISHED/1M", "FLOW",
              "WAITING ON KEY", "NEEDING LABELS", "WORKERS"]
    return _View(queues, _table(header, rows) if queues else "no queues")


def _limits(s: QueueSettings | None) -> str:
    """A queue's flow settings in one cell: paused, key=N, max=N, rate=N/s (burst M); "-" when none."""
    if s is None:
        return "-"
    parts = ["paused"] if s.paused else []
    if s.per_key_concurrency:
        parts.append(f"key={s.per_key_concurrency}")
    if s.max_running:
        parts.append(f"max={s.max_running}")
    if s.rate_per_second:
        parts.append(f"rate={s.rate_per_second:g}/s" + (f" burst={s.burst}" if s.burst else ""))
    return " ".join(parts) or "-"


async def _queues_pause(client: Client, args: argparse.Namespace) -> _View:
    s = await client.pause_queue(args.queue)
    return _View(s, f"queue {_safe(s.name)} paused: nothing is granted until `faultline queues resume {_safe(s.name)}`")


async def _queues_resume(client: Client, args: argparse.Namespace) -> _View:
    s = await client.resume_queue(args.queue)
    return _View(s, f"queue {_safe(s.name)} resumed ({_limits(s)})")


async def _queues_set(client: Client, args: argparse.Namespace) -> _View:
    if all(v is None for v in (args.per_key_concurrency, args.max_running, args.rate, args.burst)):
        raise _UsageError("give at least one of --per-key-concurrency, --max-running, --rate, --burst")
    s = await client.set_queue_settings(args.queue, per_key_concurrency=args.per_key_concurrency,
                                        max_running=args.max_running, rate_per_second=args.rate, burst=args.burst)
    return _View(s, f"queue {_safe(s.name)}: {_limits(s)}")


async def _workers(client: Client, args: argparse.Namespace) -> _View:
    workers = sorted(await client.list_workers(), key=lambda w: (w.worker_id, w.session_id))
    now = datetime.now(UTC)
    rows = [[w.worker_id, ",".join(w.queues), ",".join(w.kinds) or "*", f"{len(w.lease_ids)}/{w.capacity}",
             w.credit, _ago(w.connected_at, now), _duration(w.since_heartbeat) if w.since_heartbeat else "-",
             "draining" if w.draining else "ready", _one_line(" ".join(w.lease_ids)) or "-"] for w in workers]
    header = ["WORKER", "QUEUES", "KINDS", "LEASES", "CREDIT", "CONNECTED", "LAST HEARTBEAT", "STATE", "LEASE IDS"]
    return _View(workers, _table(header, rows) if workers else "no workers connected")


class _Printed:
    """What a command returns when it printed as it went (jobs watch)."""


# Width of the `jobs watch` progress bar, in characters.
PROGRESS_BAR_WIDTH = 20


def _watch_line(job: Job) -> str:
    now = _ts(datetime.now(UTC))
    line = f"{now}  job {job.id}  {job.state.value:<13}  attempt {job.attempts}/{job.max_attempts}"
    if job.progress_fraction or job.progress_message:
        filled = round(max(0.0, min(job.progress_fraction, 1.0)) * PROGRESS_BAR_WIDTH)
        bar = "#" * filled + "-" * (PROGRESS_BAR_WIDTH - filled)
        line += f"  [{bar}] {job.progress_fraction:>4.0%} {_safe(_one_line(job.progress_message))}"
    if job.cancel_requested and not job.state.terminal:
        line += "  (cancel requested)"
    if job.state.terminal and job.last_error:
        line += f"  error: {_safe(_cut(_one_line(job.last_error)))}"
    return line.rstrip()


async def _jobs_watch(client: Client, args: argparse.Namespace) -> _Printed:
    last: Job | None = None
    async for job in client.watch(args.id):
        last = job
        print(json.dumps(_jsonable(job), sort_keys=True) if args.json else _watch_line(job), flush=True)
    if last is not None and last.state is not JobState.SUCCEEDED:
        raise _CommandError(f"job {last.id} ended {last.state.value}"
                            + (f": {_one_line(last.last_error)}" if last.last_error else ""))
    return _Printed()


def _schedule_block(s: Schedule) -> str:
    rows: list[tuple[str, object]] = [
        ("name", s.name), ("id", s.id),
        ("when", f"cron {s.cron} ({s.time_zone})" if s.cron else f"every {_duration(s.every)}"),
        ("kind", s.kind), ("queue", s.queue), ("payload", _bytes_text(s.payload)), ("priority", s.priority),
        ("max attempts", s.max_attempts),
        ("labels", ", ".join(f"{k}={v}" for k, v in sorted(s.labels.items())) or "-"),
        ("catch-up", s.catchup), ("overlap", s.overlap), ("paused", "yes" if s.paused else "no"),
        ("next run", _ts(s.next_run_at)), ("last run", _ts(s.last_run_at)), ("last job", s.last_job_id or "-"),
        ("fired", s.fired), ("skipped", s.skipped), ("created", _ts(s.created_at)),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k + ':':<{width + 1}} {_safe(str(v))}" for k, v in rows)


async def _schedules_add(client: Client, args: argparse.Namespace) -> _View:
    if args.tz and not args.cron:
        raise _UsageError("--tz applies to --cron only")
    s = await client.create_schedule(
        args.name, args.kind, cron=args.cron, time_zone=args.tz, every=args.every, queue=args.queue,
        payload=args.payload.encode(), priority=args.priority, max_attempts=args.max_attempts,
        labels=dict(args.label) or None, catchup=args.catchup, overlap=args.overlap)
    return _View(s, f"schedule {_safe(s.name)} created; next run {_ts(s.next_run_at)}\n{_schedule_block(s)}")


async def _schedules_ls(client: Client, args: argparse.Namespace) -> _View:
    schedules = await client.list_schedules()
    rows = [[s.name, f"cron {s.cron} {s.time_zone}" if s.cron else f"every {_duration(s.every)}", s.kind, s.queue,
             "paused" if s.paused else _ts(s.next_run_at), _ts(s.last_run_at), s.last_job_id or "-", s.fired,
             s.skipped] for s in schedules]
    header = ["NAME", "WHEN", "KIND", "QUEUE", "NEXT RUN", "LAST RUN", "LAST JOB", "FIRED", "SKIPPED"]
    return _View(schedules, _table(header, rows) if schedules else "no schedules")


async def _schedules_show(client: Client, args: argparse.Namespace) -> _View:
    s = await client.get_schedule(args.name)
    return _View(s, _schedule_block(s))


async def _schedules_pause(client: Client, args: argparse.Namespace) -> _View:
    s = await client.pause_schedule(args.name)
    return _View(s, f"schedule {_safe(s.name)} paused")


async def _schedules_resume(client: Client, args: argparse.Namespace) -> _View:
    s = await client.resume_schedule(args.name)
    return _View(s, f"schedule {_safe(s.name)} resumed; next run {_ts(s.next_run_at)}")


async def _schedules_rm(client: Client, args: argparse.Namespace) -> _View:
    await client.delete_schedule(args.name)
    return _View({"deleted": args.name}, f"schedule {_safe(args.name)} deleted")


async def _schedules_trigger(client: Client, args: argparse.Namespace) -> _View:
    job, s = await client.trigger_schedule(args.name)
    return _View({"job": job, "schedule": s}, f"schedule {_safe(s.name)} triggered: job {job.id} ({job.state.value})")


class _UsageError(WorkerSDKError):
    """A flag value the coordinator would refuse anyway, caught before the call."""


class _CommandError(WorkerSDKError):
    """The call worked but did not do what was asked (cancel of a finished job)."""


def _depth(q: QueueStats, state: JobState) -> int:
    return int(q.depth.get(state, q.depth.get(state.value, 0)))


# ---- rendering ---------------------------------------------------------------------------------


def _render(out: object) -> str:
    return out.text if isinstance(out, _View) else str(out)


# C0 and C1 controls, DEL, bidi overrides and isolates, line and paragraph separators: each could move the
# cursor, recolour or rewrite the terminal, or reorder what an operator reads.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2028\u2029\u2066-\u2069]")


def _safe(text: str) -> str:
    """Stored text made safe for a terminal: unsafe characters shown as escapes (\\x1b, \\n, \\u202e)."""
    return _UNSAFE.sub(lambda m: m[0].encode("unicode_escape").decode("ascii"), text)


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [list(header), *([_cut(_safe(str(c))) for c in row] for row in rows)]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells)


def _cut(text: str) -> str:
    return text if len(text) <= CELL_MAX_CHARS else text[: CELL_MAX_CHARS - 1] + "\u2026"


def _one_line(text: str | None) -> str:
    return " ".join((text or "").split())


def _job_block(job: Job) -> str:
    rows: list[tuple[str, object]] = [
        ("id", job.id), ("state", job.state.value), ("queue", job.queue), ("kind", job.kind),
        ("attempts", f"{job.attempts}/{job.max_attempts}"), ("priority", job.priority),
        ("idempotency key", job.idempotency_key or "-"),
        ("labels", ", ".join(f"{k}={v}" for k, v in sorted(job.labels.items())) or "-"),
        ("payload", _bytes_text(job.payload)), ("result", _bytes_text(job.result)),
        ("last error", _one_line(job.last_error) or "-"),
        ("progress", f"{job.progress_fraction:.0%} {job.progress_message}".strip() if job.progress_fraction else "-"),
        ("cancel requested", "yes" if job.cancel_requested else "no"),
        ("created", _ts(job.created_at)), ("run at", _ts(job.run_at)), ("started", _ts(job.started_at)),
        ("finished", _ts(job.finished_at)),
        ("submitted by", job.submitted_by or "-"), ("cancelled by", job.cancelled_by or "-"),
        ("requeued by", job.requeued_by or "-"), ("trace id", job.trace_id or "-"),
        *((f"attempt {a.attempt}", _attempt_line(a)) for a in job.attempt_audit),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k + ':':<{width + 1}} {_safe(str(v))}" for k, v in rows)


def _attempt_line(a: AttemptAudit) -> str:
    """holder (outcome), its fencing token and times, and the first line of its error."""
    line = f"{a.worker_id or '-'} ({a.outcome or 'running'}) token {a.fencing_token}, {_ts(a.started_at)}"
    if a.ended_at is not None:
        line += f" to {_ts(a.ended_at)}"
    return line + (f": {_one_line(a.error)}" if a.error else "")


def _bytes_text(data: bytes) -> str:
    if not data:
        return "-"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return f"base64:{base64.b64encode(data).decode()}"
    return text if text.isprintable() else f"base64:{base64.b64encode(data).decode()}"


def _ts(value: datetime | None) -> str:
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z") if value else "-"


def _ago(value: datetime | None, now: datetime) -> str:
    return f"{_duration(now - value)} ago" if value else "-"


def _duration(value: timedelta | None) -> str:
    if value is None:
        return "-"
    s = max(value.total_seconds(), 0.0)
    if s < 60:
        return f"{s:.1f}s"
    if s < 3600:
        return f"{int(s // 60)}m{int(s % 60):02d}s"
    if s < 86400:
        return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"
    return f"{int(s // 86400)}d{int(s % 86400 // 3600):02d}h"


def _jsonable(value: object) -> object:
    """Dataclasses to objects; bytes as base64 (as in proto3 JSON), times as RFC 3339, durations in seconds."""
    if isinstance(value, _View):
        return _jsonable(value.data)
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, datetime):
        return _ts(value)
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Mapping):
        return {str(_jsonable(k)): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted(_jsonable(v) for v in value)  # type: ignore[type-var]
    return value
