"""The console's web server: routes, sessions at the door, CSRF and Origin checks, security headers, error pages.

Request path: Host check (a loopback console answers only to loopback names, against DNS rebinding) ->
session (a cookie naming a server-side session; with the coordinator's auth off one is made on the first
page) -> for a POST, Origin must be this console and the form's csrf field the session's token -> the
handler, which reaches data only through rpc.Coordinators. A coordinator's refusal (RpcError) becomes a page
that says so with a matching HTTP status; nothing else escapes as a stack trace.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc
from aiohttp import web
from multidict import MultiDictProxy

from coordinator.console import pages
from coordinator.console.bulk import BulkAction, BulkRunner, Target, TooManyOperationsError
from coordinator.console.config import (
    API_KEY_MAX_CHARS,
    BULK_IDS_MAX,
    COOKIE_NAME,
    FORM_FIELD_MAX_CHARS,
    JOBS_PAGE_SIZE,
    LABEL_FILTERS_MAX,
    REQUEST_BODY_MAX_BYTES,
    REQUEUE_EXTRA_ATTEMPTS,
    SSE_KEEPALIVE,
    SSE_PER_SESSION_MAX,
    SSE_TOTAL_MAX,
    ConsoleConfig,
)
from coordinator.console.html import Html, esc, layout, path_part, t
from coordinator.console.live import Listener, LiveEvent, LiveHub
from coordinator.console.rpc import JOB_STATES, Coordinators, RpcError, state_name
from coordinator.console.sessions import SCOPE_READ, Identity, Session, SessionStore
from worker_sdk._proto.faultline.v1 import job_pb2
from worker_sdk._proto.faultline.v1 import job_service_pb2 as jpb

logger = logging.getLogger(__name__)

#: How long the console trusts what it learned about the coordinator's auth mode (for visitors without a session).
AUTH_PROBE_TTL_S = 10.0
# A job id is a decimal string.
JOB_ID_RE = re.compile(r"^[0-9]{1,20}$")
LIVE_TOPIC_RE = re.compile(r"^(overview|job:[0-9]{1,20})$")
SSE_LINE_BREAK = re.compile(r"\r\n|\r|\n")
PUBLIC_PREFIXES = ("/login", "/static/", "/healthz")

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
ANONYMOUS = Identity(name="anonymous", identity="", scopes=frozenset({"submit", "read", "payloads", "work", "admin"}),
                     queues=(), auth_enabled=False)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(slots=True)
class _AuthProbe:
    auth_enabled: bool | None = None
    at: float = 0.0


class Console:
    """The console's parts and their lifetimes: channels, sessions, live readers, bulk operations."""

    def __init__(self, cfg: ConsoleConfig) -> None:
        self.cfg = cfg
        self.coordinators = Coordinators(cfg.coordinators, credentials=cfg.credentials)
        self.sessions = SessionStore(idle=cfg.session_idle, max_sessions=cfg.sessions_max)
        self.hub = LiveHub(render=self._render_live, render_error=_render_live_error, interval=cfg.poll_interval)
        self.bulk = BulkRunner(self.coordinators)
        # What the last probe said about the coordinator's auth; owned by _auth_enabled().
        self._probe = _AuthProbe()
        #: SSE streams open now, every session together; owned by the events handler.
        self.streams = 0

    async def start(self) -> None:
        await self.coordinators.start()

    async def close(self) -> None:
        await self.hub.close()
        await self.bulk.close()
        await self.coordinators.close()

    def forget_auth_probe(self) -> None:
        self._probe = _AuthProbe()

    async def auth_enabled(self) -> bool:
        """Whether the coordinator wants keys: WhoAmI without one (ListQueues for a coordinator without WhoAmI)."""
        now = time.monotonic()
        if self._probe.auth_enabled is not None and now - self._probe.at < AUTH_PROBE_TTL_S:
            return self._probe.auth_enabled
        try:
            who = await self.coordinators.call("WhoAmI", jpb.WhoAmIRequest(), None)
            enabled = bool(who.auth_enabled)
        except RpcError as exc:
            if exc.code is grpc.StatusCode.UNAUTHENTICATED:
                enabled = True
            elif exc.code is grpc.StatusCode.UNIMPLEMENTED:
                try:
                    await self.coordinators.call("ListQueues", jpb.ListQueuesRequest(), None)
                    enabled = False
                except RpcError as inner:
                    if inner.code is not grpc.StatusCode.UNAUTHENTICATED:
                        raise
                    enabled = True
            else:
                raise
        self._probe = _AuthProbe(auth_enabled=enabled, at=now)
        return enabled

    async def _render_live(self, topic: str, key: str | None, who: Identity) -> LiveEvent:
        if topic == "overview":
            resp = await self.coordinators.call("ListQueues", jpb.ListQueuesRequest(), key)
            return LiveEvent(pages.overview_fragment(resp, who, "", coordinators=len(self.cfg.coordinators)))
        job_id = topic.removeprefix("job:")
        got = await self.coordinators.call("GetJob", jpb.GetJobRequest(id=job_id), key)
        return LiveEvent(pages.job_fragment(got, who, "", jaeger_url=self.cfg.jaeger_url),
                         final=got.job.state in pages.TERMINAL_STATES)


def _render_live_error(exc: RpcError) -> LiveEvent:
    # A key the coordinator no longer accepts will not recover: end the stream (the next page asks for a login).
    return LiveEvent(pages.error_box(exc), final=exc.code is grpc.StatusCode.UNAUTHENTICATED)


CONSOLE = web.AppKey("console", Console)
SESSION = web.RequestKey("session", Session)


def build_app(cfg: ConsoleConfig) -> web.Application:
    """The aiohttp application; its startup opens the channels and its cleanup closes everything."""
    console = Console(cfg)
    app = web.Application(client_max_size=REQUEST_BODY_MAX_BYTES,
                          middlewares=[_errors_middleware, _host_middleware, _session_middleware, _csrf_middleware])
    app[CONSOLE] = console

    async def on_startup(_app: web.Application) -> None:
        await console.start()

    async def on_shutdown(_app: web.Application) -> None:
        await console.close()

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    app.on_response_prepare.append(_security_headers)
    r = app.router
    r.add_get("/", overview)
    r.add_get("/events", events)
    r.add_get("/jobs", jobs)
    r.add_get("/dlq", dlq)
    r.add_post("/jobs/bulk", jobs_bulk)
    r.add_get("/jobs/{id}", job)
    r.add_post("/jobs/{id}/cancel", job_cancel)
    r.add_post("/jobs/{id}/requeue", job_requeue)
    r.add_get("/ops/{id}", op)
    r.add_get("/ops/{id}/fragment", op_fragment)
    r.add_get("/queues/{name}", queue)
    r.add_post("/queues/{name}/pause", queue_pause)
    r.add_post("/queues/{name}/resume", queue_resume)
    r.add_post("/queues/{name}/settings", queue_settings)
    r.add_get("/workers", workers)
    r.add_get("/schedules", schedules)
    r.add_post("/schedules/{name}/{action:pause|resume|trigger}", schedule_action)
    r.add_get("/healthz", healthz)
    r.add_get("/login", login_form)
    r.add_post("/login", login)
    r.add_post("/logout", logout)
    static = Path(str(resources.files("coordinator.console").joinpath("static")))
    r.add_static("/static/", static, follow_symlinks=False)
    return app


# --- middleware ---------------------------------------------------------------------------------------------

async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    h = response.headers
    h["Content-Security-Policy"] = CSP
    h["X-Frame-Options"] = "DENY"
    h["X-Content-Type-Options"] = "nosniff"
    h["Referrer-Policy"] = "same-origin"
    h["Cross-Origin-Opener-Policy"] = "same-origin"
    if not request.path.startswith("/static/"):
        h["Cache-Control"] = "no-store"


@web.middleware
async def _errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except RpcError as exc:
        session: Session | None = request.get(SESSION)
        console = request.app[CONSOLE]
        if exc.code is grpc.StatusCode.UNAUTHENTICATED and session is not None:
            # The key was revoked, or the coordinator turned auth on under an anonymous session: log in again.
            if session.key:
                console.sessions.drop_key(session.key)
            else:
                console.sessions.drop(session.id)
            console.forget_auth_probe()
            raise web.HTTPSeeOther("/login?expired=1") from None
        return _page(request, exc.title, pages.error_box(exc), status=exc.http_status)
    except web.HTTPException:
        raise
    except asyncio.CancelledError:
        raise
    except Exception:  # the request boundary: log it, show a plain page, never a traceback
        logger.exception("console request failed", extra={"path": request.path})
        return _page(request, "Console error", Html('<div class="error" role="alert">The console failed to handle '
                                                    'this request; the details are in its log.</div>'), status=500)


@web.middleware
async def _host_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    allowed = request.app[CONSOLE].cfg.allowed_hosts
    if allowed and request.host not in allowed:
        return _plain("This console answers only to its own address (Host header refused).", 421)
    return await handler(request)


@web.middleware
async def _session_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    console = request.app[CONSOLE]
    session = console.sessions.get(request.cookies.get(COOKIE_NAME))
    created = False
    if session is None and not request.path.startswith(PUBLIC_PREFIXES):
        if not await console.auth_enabled():
            session = console.sessions.create(None, ANONYMOUS)
            created = True
        elif request.method == "GET" and request.path != "/events":
            raise web.HTTPSeeOther("/login")
        else:
            return _plain("Not logged in (or the session expired): log in again.", 401)
    if session is not None:
        request[SESSION] = session
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        if created and session is not None:
            _set_cookie(request, exc, session)
        raise
    if created and session is not None and not response.prepared:
        _set_cookie(request, response, session)
    return response


@web.middleware
async def _csrf_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.method != "POST":
        return await handler(request)
    origin = request.headers.get("Origin")
    if origin is None:
        referer = request.headers.get("Referer")
        origin = f"{urlsplit(referer).scheme}://{urlsplit(referer).netloc}" if referer else None
    own = {f"{request.scheme}://{request.host}"}
    if request.app[CONSOLE].cfg.secure_cookie:
        own.add(f"https://{request.host}")  # behind a TLS-terminating proxy the browser's origin is https
    if origin not in own:
        return _plain("Cross-site request refused (its Origin is not this console).", 403)
    if request.path != "/login":
        session: Session | None = request.get(SESSION)
        form = await request.post()
        token = form.get("csrf")
        if session is None or not isinstance(token, str) or not hmac.compare_digest(token, session.csrf):
            return _plain("Request refused: its CSRF token is missing or wrong (reload the page and try again).", 403)
    return await handler(request)


def _set_cookie(request: web.Request, response: web.StreamResponse, session: Session) -> None:
    response.set_cookie(COOKIE_NAME, session.id, httponly=True, samesite="Strict", path="/",
                        secure=request.app[CONSOLE].cfg.secure_cookie)


def _plain(text: str, status: int) -> web.Response:
    return web.Response(text=text + "\n", status=status, content_type="text/plain")


# --- helpers ------------------------------------------------------------------------------------------------

def _session(request: web.Request) -> Session:
    session: Session | None = request.get(SESSION)
    if session is None:
        raise web.HTTPSeeOther("/login")
    return session


def _page(request: web.Request, title: str, body: Html, *, status: int = 200) -> web.Response:
    session: Session | None = request.get(SESSION)
    if session is not None:
        flash = pages.flash_box(session.flash)
        session.flash = None
        who, csrf = pages.who_html(session.who, session.csrf), session.csrf
    else:
        flash, who, csrf = Html(""), Html(""), ""
    text = layout(title=esc(title), body=body, flash=flash, who=who, csrf=esc(csrf))
    return web.Response(text=text, status=status, content_type="text/html", charset="utf-8")


def _need_admin(request: web.Request, session: Session) -> web.Response | None:
    if session.admin:
        return None
    return _page(request, "Permission denied", Html('<div class="error" role="alert">This action needs a key with the '
                                                    'admin scope.</div>'), status=403)


def _back(request: web.Request, default: str) -> str:
    """Where a POST came from (same origin only), else default."""
    ref = urlsplit(request.headers.get("Referer", ""))
    if ref.netloc == request.host and ref.path.startswith("/") and not ref.path.startswith("//"):
        return ref.path + (f"?{ref.query}" if ref.query else "")
    return default


def _done(request: web.Request, session: Session, text: str, default: str) -> web.HTTPSeeOther:
    session.flash = ("ok", text)
    return web.HTTPSeeOther(_back(request, default))


def _bad(request: web.Request, text: str) -> web.Response:
    return _page(request, "Invalid request", t('<div class="error" role="alert">{e}</div>', e=text), status=400)


def _field(form: MultiDictProxy[Any], name: str) -> str:
    value = form.get(name, "")
    if not isinstance(value, str):
        return ""
    return value.strip()[:FORM_FIELD_MAX_CHARS]


def _job_id(request: web.Request) -> str:
    job_id = request.match_info["id"]
    if not JOB_ID_RE.match(job_id):
        raise web.HTTPNotFound(text="No such job: a job id is a decimal number.\n")
    return job_id


def _labels(values: list[str]) -> list[tuple[str, str]] | str:
    """k=v pairs, or why they are invalid."""
    out: list[tuple[str, str]] = []
    for raw in values:
        raw = raw.strip()[:FORM_FIELD_MAX_CHARS]
        if not raw:
            continue
        k, sep, v = raw.partition("=")
        if not sep or not k.strip():
            return f"label filter {raw!r} is not key=value"
        out.append((k.strip(), v.strip()))
    if len(out) > LABEL_FILTERS_MAX:
        return f"at most {LABEL_FILTERS_MAX} label filters"
    return out


# --- pages --------------------------------------------------------------------------------------------------

async def overview(request: web.Request) -> web.StreamResponse:
    console, session = request.app[CONSOLE], _session(request)
    resp = await console.coordinators.call("ListQueues", jpb.ListQueuesRequest(), session.key)
    fragment = pages.overview_fragment(resp, session.who, session.csrf, coordinators=len(console.cfg.coordinators))
    return _page(request, "Queues", pages.overview_page(fragment))


async def events(request: web.Request) -> web.StreamResponse:
    """Server-sent events of one live topic; the key's shared poller feeds them."""
    console, session = request.app[CONSOLE], _session(request)
    topic = request.query.get("topic", "")
    if not LIVE_TOPIC_RE.match(topic):
        return _plain("unknown live topic", 400)
    if session.streams >= SSE_PER_SESSION_MAX:
        return _plain(f"Too many live views open in this session (at most {SSE_PER_SESSION_MAX}); close some tabs.",
                      429)
    if console.streams >= SSE_TOTAL_MAX:
        return _plain("The console has as many live views open as it serves; reload later.", 503)
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "X-Accel-Buffering": "no"})
    await response.prepare(request)
    session.streams += 1
    console.streams += 1
    listener: Listener = console.hub.subscribe(key_id=session.key_id, key=session.key, who=session.who, topic=topic)
    try:
        while console.sessions.alive(session):
            try:
                event = await asyncio.wait_for(listener.inbox.get(), SSE_KEEPALIVE.total_seconds())
            except TimeoutError:
                await response.write(b": keepalive\n\n")
                continue
            if event.final and not event.html:
                break  # the console is stopping
            await response.write(sse_frame("final" if event.final else "update", event.html))
            if event.final:
                break
    except (ConnectionResetError, ConnectionError):
        pass  # the browser went away
    finally:
        console.hub.unsubscribe(listener)
        session.streams -= 1
        console.streams -= 1
    return response


def sse_frame(name: str, data: str) -> bytes:
    """One server-sent event. Every line break SSE knows (CR, LF, CRLF) starts a new data line, so that text
    from a job (an error with a bare CR) can never begin a field of its own."""
    lines = SSE_LINE_BREAK.split(data)
    return (f"event: {name}\n" + "".join(f"data: {line}\n" for line in lines) + "\n").encode()


async def _list_jobs(request: web.Request, *, title: str, base: str, fixed_state: str = "") -> web.StreamResponse:
    console, session = request.app[CONSOLE], _session(request)
    q = request.query
    params = {k: q.get(k, "").strip()[:FORM_FIELD_MAX_CHARS] for k in ("queue", "kind", "state", "find", "page_token")}
    if fixed_state:
        params["state"] = fixed_state
    labels = _labels(q.getall("label", []))
    if isinstance(labels, str):
        return _bad(request, labels)
    if params["state"] and params["state"] not in JOB_STATES:
        return _bad(request, f"unknown state {params['state']!r}")
    jobs: list[job_pb2.Job] = []
    next_token = ""
    note = Html("")
    find = params["find"]
    if find:
        if JOB_ID_RE.match(find):
            try:
                await console.coordinators.call("GetJob", jpb.GetJobRequest(id=find), session.key)
                raise web.HTTPSeeOther(f"/jobs/{path_part(find)}")
            except RpcError as exc:
                if exc.code is not grpc.StatusCode.NOT_FOUND:
                    raise
        resp = await console.coordinators.call(
            "ListJobs", jpb.ListJobsRequest(queue=params["queue"], idempotency_key=find, page_size=JOBS_PAGE_SIZE),
            session.key)
        jobs = list(resp.jobs)
        note = t('<p class="muted">Jobs with idempotency key {k} (no job has that id).</p>', k=find)
    else:
        req = jpb.ListJobsRequest(queue=params["queue"], kind=params["kind"], page_size=JOBS_PAGE_SIZE,
                                  page_token=params["page_token"], labels=dict(labels))
        if params["state"]:
            req.state = JOB_STATES[params["state"]]  # type: ignore[assignment]
        resp = await console.coordinators.call("ListJobs", req, session.key)
        jobs, next_token = list(resp.jobs), resp.next_page_token
    body = pages.jobs_page(jobs=jobs, next_token=next_token, params=params, labels=labels, who=session.who,
                           csrf=session.csrf, base=base, fixed_state=fixed_state, found_note=note)
    return _page(request, title, body)


async def jobs(request: web.Request) -> web.StreamResponse:
    return await _list_jobs(request, title="Jobs", base="/jobs")


async def dlq(request: web.Request) -> web.StreamResponse:
    return await _list_jobs(request, title="Dead-lettered jobs", base="/dlq", fixed_state="dead_lettered")


async def job(request: web.Request) -> web.StreamResponse:
    console, session = request.app[CONSOLE], _session(request)
    job_id = _job_id(request)
    got = await console.coordinators.call("GetJob", jpb.GetJobRequest(id=job_id), session.key)
    fragment = pages.job_fragment(got, session.who, session.csrf, jaeger_url=console.cfg.jaeger_url)
    live = got.job.state not in pages.TERMINAL_STATES
    return _page(request, f"Job {job_id}", pages.job_page(job_id, fragment, live=live))


async def job_cancel(request: web.Request) -> web.StreamResponse:
    console, session = request.app[CONSOLE], _session(request)
    if (denied := _need_admin(request, session)) is not None:
        return denied
    job_id = _job_id(request)
    resp = await console.coordinators.call("CancelJob", jpb.CancelJobRequest(id=job_id), session.key)
    what = "cancel requested (its worker was told to stop)" if resp.job.cancel_requested and \
        resp.job.state == job_pb2.JOB_STATE_RUNNING else "cancelled"
    raise _done(request, session, f"Job {job_id}: {what}.", f"/jobs/{path_part(job_id)}")


async def job_requeue(request: web.Request) -> web.StreamResponse:
    console, session = request.app[CONSOLE], _session(request)
    if (denied := _need_admin(request, session)) is not None:
        return denied
    job_id = _job_id(request)
    await console.coordinators.call("RequeueJob", jpb.RequeueJobRequest(id=job_id,
                                                                        extra_attempts=REQUEUE_EXTRA_ATTEMPTS),
                                    session.key)
    raise _done(request, session, f"Job {job_id} requeued.", f"/jobs/{path_part(job_id)}")


BULK_ACTIONS = {"cancel-selected": (BulkAction.CANCEL, False), "requeue-selected": (BulkAction.REQUEUE, False),
                "cancel-matching": (BulkAction.CANCEL, True), "requeue-matching": (BulkAction.REQUEUE, True)}


async def jobs_bulk(request: web.Request) -> web.StreamResponse:
    console, session = request.app[CONSOLE], _session(request)
    if (denied := _need_admin(request, session)) is not None:
        return denied
    form = await request.post()
    choice = BULK_ACTIONS.get(_field(form, "action"))
    if choice is None:
        return _bad(request, "unknown bulk action")
    action, matching = choice
    if not matching:
        ids = [i for i in (v.strip() for v in form.getall("id", []) if isinstance(v, str)) if i]
        if not ids:
            return _bad(request, "select at least one job first")
        if len(ids) > BULK_IDS_MAX or any(not JOB_ID_RE.match(i) for i in ids):
            return _bad(request, f"select at most {BULK_IDS_MAX} jobs by their ids")
        target = Target(ids=tuple(dict.fromkeys(ids)))
    else:
        labels = _labels([v for v in form.getall("f_label", []) if isinstance(v, str)])
        if isinstance(labels, str):
            return _bad(request, labels)
        state = _field(form, "f_state")
        if state and state not in JOB_STATES:
            return _bad(request, f"unknown state {state!r}")
        target = Target(queue=_field(form, "f_queue"), kind=_field(form, "f_kind"),
                        state=JOB_STATES.get(state, 0), labels=tuple(labels))
        if not (target.queue or target.kind or target.state or target.labels):
            return _bad(request, "a bulk action over every matching job needs a filter (queue, kind, state or label)")
        if action is BulkAction.REQUEUE and state and state not in ("dead_lettered", "cancelled"):
            return _bad(request, "only dead-lettered or cancelled jobs can be requeued: filter on one of those states")
        if _field(form, "confirm") != "1":
            estimate = await _estimate(console, session, target)
            fields = [("f_queue", target.queue), ("f_kind", target.kind), ("f_state", state),
                      *(("f_label", f"{k}={v}") for k, v in target.labels)]
            body = pages.bulk_confirm_page(action=_field(form, "action"), describe=target.describe(), fields=fields,
                                           csrf=session.csrf, estimate=estimate)
            return _page(request, "Confirm bulk action", body)
    try:
        started = console.bulk.start(session, action, target)
    except TooManyOperationsError as exc:
        return _page(request, "Too many operations", t('<div class="error" role="alert">{e}</div>', e=str(exc)),
                     status=429)
    raise web.HTTPSeeOther(f"/ops/{path_part(started.id)}")


async def _estimate(console: Console, session: Session, target: Target) -> int | None:
    """Matching jobs by the sampler's last figures, when the filter is queue and/or state only."""
    if target.kind or target.labels or not target.state:
        return None
    resp = await console.coordinators.call("ListQueues", jpb.ListQueuesRequest(), session.key)
    name = state_name(target.state)
    return int(sum(q.depth.get(name, 0) for q in resp.queues if not target.queue or q.name == target.queue))


async def op(request: web.Request) -> web.StreamResponse:
    console, session = request.app[CONSOLE], _session(request)
    found = console.bulk.get(request.match_info["id"])
    if found is None or found.session_id != session.id:
        raise web.HTTPNotFound(text="No such operation in this session.\n")
    return _page(request, f"Bulk {found.action.value}", pages.op_page(found.id))


async def op_fragment(request: web.Request) -> web.StreamResponse:
    console, session = request.app[CONSOLE], _session(request)
    found = console.bulk.get(request.match_info["id"])
    if found is None or found.session_id != session.id:
        raise web.HTTPNotFound(text="No such operation in this session.\n")
    return web.Response(text=pages.op_fragment(found), content_type="text/html", charset="utf-8")


async def queue(request: web.Request) -> web.StreamResponse:
    console, session = request.app[CONSOLE], _session(request)
    name = request.match_info["name"]
    resp = await console.coordinators.call("ListQueues", jpb.ListQueuesRequest(), session.key)
    found = next((q for q in resp.queues if q.name == name), None)
    return _page(request, f"Queue {name}", pages.queue_page(found, name, session.who, session.csrf))


async def queue_pause(request: web.Request) -> web.StreamResponse:
    console, session = request.app[CONSOLE], _session(request)
    if (denied := _need_admin(request, session)) is not None:
        return denied
    name = request.match_info["name"]
    await console.coordinators.call("PauseQueue", jpb.PauseQueueRequest(queue=name), session.key)
    raise _done(request, session, f"Queue {name} paused: no coordinator grants its jobs until it is resumed.", "/")


async def queue_resume(request: web.Request) -> web.StreamResponse:
    console, session = request.app[CONSOLE], _session(request)
    if (denied := _need_admin(request, session)) is not None:
        return denied
    name = request.match_info["name"]
    await console.coordinators.call("ResumeQueue", jpb.ResumeQueueRequest(queue=name), session.key)
    raise _done(request, session, f"Queue {name} resumed.", "/")


async def queue_settings(request: web.Request) -> web.StreamResponse:
    console, session = request.app[CONSOLE], _session(request)
    if (denied := _need_admin(request, session)) is not None:
        return denied
    name = request.match_info["name"]
    form = await request.post()
    req = jpb.SetQueueSettingsRequest(queue=name)
    try:
        for field in ("per_key_concurrency", "max_running", "burst"):
            if raw := _field(form, field):
                setattr(req, field, int(raw))
        if raw := _field(form, "rate_per_second"):
            req.rate_per_second = float(raw)
    except ValueError:
        return _bad(request, "limits are whole numbers (the rate may have a fraction)")
    await console.coordinators.call("SetQueueSettings", req, session.key)
    raise _done(request, session, f"Queue {name}: limits saved.", f"/queues/{path_part(name)}")


async def workers(request: web.Request) -> web.StreamResponse:
    console, session = request.app[CONSOLE], _session(request)
    answers = await console.coordinators.call_all("ListWorkers", jpb.ListWorkersRequest(), session.key)
    if all(a.error is not None for a in answers) and answers[0].error is not None:
        raise answers[0].error
    return _page(request, "Workers", pages.workers_page(answers))


async def schedules(request: web.Request) -> web.StreamResponse:
    console, session = request.app[CONSOLE], _session(request)
    resp = await console.coordinators.call("ListSchedules", jpb.ListSchedulesRequest(), session.key)
    return _page(request, "Schedules", pages.schedules_page(resp, session.who, session.csrf))


async def schedule_action(request: web.Request) -> web.StreamResponse:
    console, session = request.app[CONSOLE], _session(request)
    if (denied := _need_admin(request, session)) is not None:
        return denied
    name, action = request.match_info["name"], request.match_info["action"]
    if action == "pause":
        await console.coordinators.call("PauseSchedule", jpb.PauseScheduleRequest(name=name), session.key)
        text = f"Schedule {name} paused."
    elif action == "resume":
        await console.coordinators.call("ResumeSchedule", jpb.ResumeScheduleRequest(name=name), session.key)
        text = f"Schedule {name} resumed."
    else:
        resp = await console.coordinators.call("TriggerSchedule", jpb.TriggerScheduleRequest(name=name), session.key)
        text = f"Schedule {name} triggered: job {resp.job.id} submitted."
    raise _done(request, session, text, "/schedules")


async def healthz(request: web.Request) -> web.StreamResponse:
    """The console itself answers (for a load balancer or a process supervisor); it asks no coordinator."""
    return _plain("ok", 200)


# --- login --------------------------------------------------------------------------------------------------

async def login_form(request: web.Request) -> web.StreamResponse:
    console = request.app[CONSOLE]
    if not await console.auth_enabled():
        raise web.HTTPSeeOther("/")
    error = "The session's key is no longer accepted: log in again." if request.query.get("expired") else None
    return _page(request, "Log in", pages.login_page(error))


async def login(request: web.Request) -> web.StreamResponse:
    console = request.app[CONSOLE]
    form = await request.post()
    key = form.get("key", "")
    key = key.strip() if isinstance(key, str) else ""
    if not key or len(key) > API_KEY_MAX_CHARS or not key.isprintable() or any(c.isspace() for c in key):
        return _page(request, "Log in", pages.login_page("Enter an API key (as `faultline keys create` printed it)."),
                     status=400)
    try:
        who = await console.coordinators.call("WhoAmI", jpb.WhoAmIRequest(), key)
    except RpcError as exc:
        if exc.code is grpc.StatusCode.UNAUTHENTICATED:
            return _page(request, "Log in", pages.login_page("The coordinator does not accept this key."), status=401)
        return _page(request, "Log in", pages.login_page(exc.message), status=exc.http_status)
    identity = Identity(name=who.name, identity=who.identity, scopes=frozenset(who.scopes), queues=tuple(who.queues),
                        auth_enabled=who.auth_enabled)
    if identity.auth_enabled and SCOPE_READ not in identity.scopes:
        return _page(request, "Log in", pages.login_page("This key lacks the read scope, which the console needs."),
                     status=403)
    old = console.sessions.drop(request.cookies.get(COOKIE_NAME, ""))
    del old
    session = console.sessions.create(key if identity.auth_enabled else None,
                                      identity if identity.auth_enabled else ANONYMOUS)
    response = web.HTTPSeeOther("/")
    _set_cookie(request, response, session)
    raise response


async def logout(request: web.Request) -> web.StreamResponse:
    console, session = request.app[CONSOLE], _session(request)
    console.sessions.drop(session.id)
    response = web.HTTPSeeOther("/login")
    response.del_cookie(COOKIE_NAME, path="/")
    raise response
