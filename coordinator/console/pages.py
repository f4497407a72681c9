"""What each page shows: HTML bodies rendered from the coordinator's API responses, every value escaped (html.py).

Functions here take response messages and the viewer's Identity and return Html; they do no I/O. Forms carry
the session's CSRF token; fragments rendered for live streams (shared by every browser of a key) carry an
empty one, which console.js fills from the page's meta tag before a form is sent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta

from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from coordinator.console.bulk import BulkOp, OpState
from coordinator.console.config import CELL_MAX_CHARS, PREVIEW_BYTES_MAX
from coordinator.console.html import Html, esc, join, path_part, query, t
from coordinator.console.rpc import JOB_STATES, Answer, RpcError, state_name
from coordinator.console.sessions import Identity
from worker_sdk._proto.faultline.v1 import job_pb2
from worker_sdk._proto.faultline.v1 import job_service_pb2 as jpb

# Depth columns of the overview, in lifecycle order.
OVERVIEW_STATES = ("queued", "scheduled", "running", "retrying", "dead_lettered")
# Their column headings (narrow: the overview must fit 1280 px with every column).
STATE_HEADINGS = {"queued": "Queued", "scheduled": "Sched.", "running": "Running", "retrying": "Retrying",
                  "dead_lettered": "Dead"}
TERMINAL_STATES = frozenset({job_pb2.JOB_STATE_SUCCEEDED, job_pb2.JOB_STATE_DEAD_LETTERED,
                             job_pb2.JOB_STATE_CANCELLED})
REQUEUEABLE_STATES = frozenset({job_pb2.JOB_STATE_DEAD_LETTERED, job_pb2.JOB_STATE_CANCELLED})
# Minutes of history the overview's throughput columns sum.
THROUGHPUT_MINUTES = 5
SPARK = "▁▂▃▄▅▆▇█"
# Bytes per line of a hex preview.
HEX_LINE_BYTES = 16
# An oldest ready job older than this marks its queue as backing up.
BACKLOG_AGE_WARN = timedelta(minutes=1)
# Lease ids listed per worker before "and N more".
LEASES_SHOWN_MAX = 5

EMPTY = Html("")
DASH = Html("—")


# --- formatting ---------------------------------------------------------------------------------------------

def ts(msg: Message, name: str) -> Html:
    if not msg.HasField(name):
        return DASH
    value: Timestamp = getattr(msg, name)
    dt = value.ToDatetime(tzinfo=UTC)
    return t('<time datetime="{iso}">{text}</time>', iso=dt.isoformat(), text=dt.strftime("%Y-%m-%d %H:%M:%SZ"))


def dur(value: Duration | timedelta | None) -> str:
    if value is None:
        return "—"
    td = value if isinstance(value, timedelta) else value.ToTimedelta()
    s = td.total_seconds()
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)} m {int(s % 60)} s"
    if s < 86400:
        return f"{int(s // 3600)} h {int(s % 3600 // 60)} m"
    return f"{int(s // 86400)} d {int(s % 86400 // 3600)} h"


def cut(text: str, limit: int = CELL_MAX_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def state_badge(state: int) -> Html:
    name = state_name(state) if state else "unspecified"
    return t('<span class="state s-{name}">{label}</span>', name=name, label=name.replace("_", " "))


def labels_html(labels: Mapping[str, str]) -> Html:
    if not labels:
        return DASH
    return join((t('<span class="label">{k}={v}</span>', k=cut(k, 40), v=cut(v, 60))
                 for k, v in sorted(labels.items())), " ")


def preview(data: bytes, total: int | None = None) -> Html:
    """At most PREVIEW_BYTES_MAX bytes: as text when they are UTF-8, else as a hex dump."""
    size = len(data) if total is None else total
    if not data:
        return Html('<p class="muted">(empty)</p>')
    head = data[:PREVIEW_BYTES_MAX]
    note = t('<p class="muted">{n} bytes{more}</p>', n=f"{size:,}",
             more=f", first {PREVIEW_BYTES_MAX:,} shown" if size > PREVIEW_BYTES_MAX else "")
    text = _utf8(head, cut_off=size > len(head))
    if text is not None:
        return Html(note + t('<pre class="preview text">{text}</pre>', text=text))
    lines = []
    for off in range(0, len(head), HEX_LINE_BYTES):
        chunk = head[off:off + HEX_LINE_BYTES]
        ascii_ = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        lines.append(f"{off:08x}  {chunk.hex(' '):<{HEX_LINE_BYTES * 3}} {ascii_}")
    return Html(note + t('<pre class="preview hex">{text}</pre>', text="\n".join(lines)))


def _utf8(data: bytes, *, cut_off: bool) -> str | None:
    # A cut may split the last character: allow up to 3 trailing bytes of it.
    for trim in range(4 if cut_off else 1):
        try:
            return (data[: len(data) - trim] if trim else data).decode("utf-8")
        except UnicodeDecodeError:
            continue
    return None


def csrf_field(csrf: str) -> Html:
    return t('<input type="hidden" name="csrf" value="{csrf}">', csrf=csrf)


def button_form(action: str, label: str, csrf: str, *, cls: str = "", fields: Mapping[str, str] | None = None) -> Html:
    hidden = join(t('<input type="hidden" name="{k}" value="{v}">', k=k, v=v) for k, v in (fields or {}).items())
    return t('<form method="post" action="{action}" class="inline">{csrf}{hidden}'
             '<button type="submit" class="{cls}">{label}</button></form>',
             action=action, csrf=csrf_field(csrf), hidden=hidden, cls=cls, label=label)


def error_box(exc: RpcError) -> Html:
    return t('<div class="error" role="alert"><strong>{title}.</strong> {msg}</div>', title=exc.title, msg=exc.message)


def flash_box(flash: tuple[str, str] | None) -> Html:
    if flash is None:
        return EMPTY
    kind, text = flash
    return t('<div class="flash {kind}" role="status">{text}</div>', kind=kind, text=text)


def who_html(who: Identity, csrf: str) -> Html:
    if not who.auth_enabled:
        return Html('<span class="muted">auth off: every scope</span>')
    return t('<span>{name}</span> <span class="muted">{scopes}</span> {logout}', name=who.name,
             scopes=", ".join(sorted(who.scopes)), logout=button_form("/logout", "Log out", csrf, cls="link"))


# --- login --------------------------------------------------------------------------------------------------

def login_page(error: str | None) -> Html:
    return t('{err}<form method="post" action="/login" class="login">'
             '<label for="key">API key</label>'
             '<input id="key" name="key" type="password" autocomplete="off" required autofocus>'
             '<button type="submit">Log in</button>'
             '<p class="muted">A read key can look; actions need an admin key; payloads need the payloads scope. '
             'The key stays on the console server; the browser gets a session cookie only.</p></form>',
             err=t('<div class="error" role="alert">{e}</div>', e=error) if error else EMPTY)


# --- overview -----------------------------------------------------------------------------------------------

def overview_page(fragment: Html) -> Html:
    return t('<div data-live="overview">{f}</div>'
             '<noscript><p>Live updates need JavaScript; reload the page to refresh.</p></noscript>', f=fragment)


def overview_fragment(resp: jpb.ListQueuesResponse, who: Identity, csrf: str, *, now: datetime | None = None,
                      coordinators: int = 1) -> Html:
    now = now or datetime.now(UTC)
    # Depths and settings are the database's; throughput, latency and workers are one coordinator's view.
    scope = (Html('<p class="meta">Several coordinators are configured: throughput, latency and worker counts '
                  'below are those of the first that answered; the Workers page lists every one.</p>')
             if coordinators > 1 else EMPTY)
    sampled = [q.sampled_at.ToDatetime(tzinfo=UTC) for q in resp.queues if q.HasField("sampled_at")]
    if sampled:
        newest = max(sampled)
        head = t('<p class="meta" id="sampled">Sampled {ago} ago (at {at}) by the metrics sampler; '
                 'these counts never scan the jobs table per page view.</p>',
                 ago=dur(max(now - newest, timedelta(0))), at=newest.strftime("%H:%M:%SZ"))
    else:
        head = Html('<p class="meta" id="sampled">This coordinator does not report when its figures were sampled '
                    '(sampled_at missing).</p>')
    head = Html(head + scope)
    if not resp.queues:
        return Html(head + '<p>No queues yet.</p>')
    rows = join(_queue_row(q, who, csrf) for q in resp.queues)
    cols = join(t('<th scope="col" class="num" title="{s}">{h}</th>', s=s.replace("_", " "), h=STATE_HEADINGS[s])
                for s in OVERVIEW_STATES)
    return t('{head}<div class="scroll"><table class="queues"><thead><tr><th scope="col">Queue</th>{cols}'
             '<th scope="col" class="num">Oldest ready</th>'
             '<th scope="col">Last {m} min ok / failed</th><th scope="col">Wait p50 / p95</th>'
             '<th scope="col">Run p50 / p95</th><th scope="col" class="num">Workers</th><th scope="col">Flow</th>'
             '{act}</tr></thead><tbody>{rows}</tbody></table></div>',
             head=head, cols=cols, m=str(THROUGHPUT_MINUTES), rows=rows,
             act=Html('<th scope="col">Actions</th>') if who_admin(who) else EMPTY)


def who_admin(who: Identity) -> bool:
    return "admin" in who.scopes


def _depth_link(queue: str, state: str, n: int) -> Html:
    """A depth figure, linked to the list of those jobs when there are any."""
    if not n:
        return esc("0")
    base = "/dlq" if state == "dead_lettered" else "/jobs"
    qs = query(queue=queue) if state == "dead_lettered" else query(queue=queue, state=state)
    return t('<a href="{base}?{qs}">{n}</a>', base=base, qs=qs, n=f"{n:,}")


def _queue_row(q: jpb.QueueStats, who: Identity, csrf: str) -> Html:
    depth = join(t('<td class="num depth-{s}">{n}</td>', s=s, n=_depth_link(q.name, s, q.depth.get(s, 0)))
                 for s in OVERVIEW_STATES)
    hist = list(q.history)[-THROUGHPUT_MINUTES:]
    ok = sum(m.succeeded for m in hist)
    failed = sum(m.failed for m in hist)
    if hist:
        peak = max((m.succeeded + m.failed for m in q.history), default=0) or 1
        spark = "".join(SPARK[min(len(SPARK) - 1, (m.succeeded + m.failed) * (len(SPARK) - 1) // peak)]
                        for m in list(q.history))
        thr = t('<span class="spark" title="jobs per minute, last {n} minutes">{spark}</span> {ok} / {failed}',
                n=str(len(q.history)), spark=spark, ok=f"{ok:,}", failed=f"{failed:,}")
        # The latest minute that saw a start (wait) or an end (run); a quiet minute's zeros mean "no sample".
        waited = next((m for m in reversed(q.history) if m.wait_p95.ToTimedelta()), None)
        ran = next((m for m in reversed(q.history) if m.run_p95.ToTimedelta()), None)
        wait = f"{dur(waited.wait_p50)} / {dur(waited.wait_p95)}" if waited is not None else "—"
        run = f"{dur(ran.run_p50)} / {dur(ran.run_p95)}" if ran is not None else "—"
    else:
        thr = t('{n} done in the last min', n=f"{q.finished_last_minute:,}")
        wait = run = "—"
    s = q.settings
    flow: list[Html] = []
    if s.paused:
        flow.append(Html('<span class="badge paused">paused</span>'))
    if s.rate_per_second:
        flow.append(t('<span class="badge">rate {r}/s{b}</span>', r=f"{s.rate_per_second:g}",
                      b=f", burst {s.burst}" if s.burst else ""))
    if s.max_running:
        flow.append(t('<span class="badge">max running {n}</span>', n=str(s.max_running)))
    if s.per_key_concurrency:
        flow.append(t('<span class="badge">per key {n}</span>', n=str(s.per_key_concurrency)))
    if q.waiting_on_key:
        flow.append(t('<span class="badge warn">{n} waiting on key</span>', n=f"{q.waiting_on_key:,}"))
    if q.requiring_labels:
        flow.append(t('<span class="badge">{n} need labels</span>', n=f"{q.requiring_labels:,}"))
    actions = EMPTY
    if who_admin(who):
        toggle = (button_form(f"/queues/{path_part(q.name)}/resume", "Resume", csrf) if s.paused
                  else button_form(f"/queues/{path_part(q.name)}/pause", "Pause", csrf))
        actions = t('<td>{toggle}</td>', toggle=toggle)
        flow.append(t('<a href="/queues/{name}" class="small">limits</a>', name=path_part(q.name)))
    return t('<tr data-queue="{name}"><th scope="row"><a href="/jobs?{qs}">{name}</a></th>{depth}'
             '<td class="num{age_cls}">{age}</td><td>{thr}</td><td>{wait}</td><td>{run}</td>'
             '<td class="num workers">{workers}</td><td class="flow">{flow}</td>{actions}</tr>',
             name=q.name, qs=query(queue=q.name), depth=depth,
             age=dur(q.oldest_ready_age) if q.oldest_ready_age.ToTimedelta() else "—",
             age_cls=Html(" backlog") if q.oldest_ready_age.ToTimedelta() > BACKLOG_AGE_WARN else EMPTY,
             thr=thr, wait=wait, run=run, workers=str(q.workers_connected), flow=join(flow, " ") or DASH,
             actions=actions)


# --- queue limits -------------------------------------------------------------------------------------------

def queue_page(q: jpb.QueueStats | None, name: str, who: Identity, csrf: str) -> Html:
    s = q.settings if q is not None else jpb.QueueSettings(name=name)
    state = Html('<span class="badge paused">paused</span>') if s.paused else Html('<span class="badge">running</span>')
    if not who_admin(who):
        return t('<p>Queue {name} is {state}.</p><p class="muted">Changing limits needs an admin key.</p>',
                 name=name, state=state)
    base = f"/queues/{path_part(name)}"
    toggle = button_form(f"{base}/resume", "Resume", csrf) if s.paused else button_form(f"{base}/pause", "Pause", csrf)
    return t('<p>Queue <a href="/jobs?{qs}">{name}</a> is {state}. {toggle}</p>'
             '<form method="post" action="{base}/settings" class="settings">{csrf}'
             '<p class="muted">0 clears a limit. Limits hold for every coordinator on the database.</p>'
             '<label>Per-key concurrency <input name="per_key_concurrency" type="number" min="0" max="100000" '
             'value="{pk}"></label>'
             '<label>Max running <input name="max_running" type="number" min="0" max="1000000" value="{mr}"></label>'
             '<label>Rate (grants/s) <input name="rate_per_second" type="number" min="0" max="1000000" step="any" '
             'value="{rate}"></label>'
             '<label>Burst <input name="burst" type="number" min="0" max="1000000" value="{burst}"></label>'
             '<button type="submit">Save limits</button></form>',
             qs=query(queue=name), name=name, state=state, toggle=toggle, base=base, csrf=csrf_field(csrf),
             pk=str(s.per_key_concurrency), mr=str(s.max_running), rate=f"{s.rate_per_second:g}", burst=str(s.burst))


# --- jobs ---------------------------------------------------------------------------------------------------

def jobs_page(*, jobs: Sequence[job_pb2.Job], next_token: str, params: Mapping[str, str],
              labels: Sequence[tuple[str, str]], who: Identity, csrf: str, base: str, fixed_state: str = "",
              found_note: Html = EMPTY, error: Html = EMPTY) -> Html:
    state_opts = join(t('<option value="{v}"{sel}>{label}</option>', v=name,
                        sel=Html(" selected") if params.get("state") == name else EMPTY,
                        label=name.replace("_", " "))
                      for name in ["", *JOB_STATES])
    label_inputs = join(t('<input name="label" placeholder="key=value" value="{v}" aria-label="label filter">',
                          v=f"{k}={v}" if k else "") for k, v in [*labels, ("", "")])
    state_field = (t('<input type="hidden" name="state" value="{s}">', s=fixed_state) if fixed_state else
                   t('<label>State <select name="state">{opts}</select></label>', opts=state_opts))
    filters = t('<form method="get" action="{base}" class="filters" role="search">'
                '<label>Queue <input name="queue" value="{queue}"></label>'
                '<label>Kind <input name="kind" value="{kind}"></label>{state}'
                '<label>Labels {labels}</label>'
                '<label>Find by id or idempotency key <input name="find" value="{find}"></label>'
                '<button type="submit">Apply</button> <a href="{base}">Clear</a></form>',
                base=base, queue=params.get("queue", ""), kind=params.get("kind", ""), state=state_field,
                labels=label_inputs, find=params.get("find", ""))
    admin = who_admin(who)
    rows = join(_job_row(j, admin) for j in jobs)
    if not jobs:
        rows = Html('<tr><td colspan="9" class="muted">No jobs match.</td></tr>')
    has_filter = bool(params.get("queue") or params.get("kind") or params.get("state") or labels)
    hidden = join(t('<input type="hidden" name="f_{k}" value="{v}">', k=k, v=params.get(k, ""))
                  for k in ("queue", "kind", "state"))
    hidden = Html(hidden + join(t('<input type="hidden" name="f_label" value="{v}">', v=f"{k}={v}")
                                for k, v in labels))
    if admin:
        matching = (t('<button type="submit" name="action" value="cancel-matching">Cancel every matching job</button>'
                      '<button type="submit" name="action" value="requeue-matching">Requeue every matching job'
                      '</button>')
                    if has_filter else
                    Html('<span class="muted">Filter by queue, kind, state or label to act on every match.</span>'))
        actions = t('<div class="actions" role="group" aria-label="Bulk actions">'
                    '<button type="submit" name="action" value="cancel-selected">Cancel selected</button>'
                    '<button type="submit" name="action" value="requeue-selected">Requeue selected</button>'
                    '{matching}</div>', matching=matching)
    else:
        actions = EMPTY
    pager_qs = dict(params)
    pager_qs.pop("page_token", None)
    nav = []
    if params.get("page_token"):
        nav.append(t('<a href="{base}?{qs}">First page</a>', base=base,
                     qs=query(**pager_qs, label=[f"{k}={v}" for k, v in labels])))
    if next_token:
        nav.append(t('<a href="{base}?{qs}" rel="next">Next page</a>', base=base,
                     qs=query(**pager_qs, label=[f"{k}={v}" for k, v in labels], page_token=next_token)))
    check_all = Html('<th scope="col"><input type="checkbox" data-check-all aria-label="select every row shown">'
                     '</th>') if admin else Html('<th></th>')
    return t('{filters}{error}{found}<form method="post" action="/jobs/bulk" class="bulk">{csrf}{hidden}{actions}'
             '<div class="scroll"><table class="jobs"><thead><tr>{check}<th scope="col">Id</th>'
             '<th scope="col">Kind</th><th scope="col">Queue</th><th scope="col">State</th>'
             '<th scope="col" class="num">Attempts</th><th scope="col">Labels</th><th scope="col">Created</th>'
             '<th scope="col">Last error</th></tr></thead><tbody>{rows}</tbody></table></div></form>'
             '<nav class="pager" aria-label="Pages">{nav}</nav>',
             filters=filters, error=error, found=found_note, csrf=csrf_field(csrf), hidden=hidden, actions=actions,
             check=check_all, rows=rows, nav=join(nav, " "))


def _job_row(j: job_pb2.Job, admin: bool) -> Html:
    box = (t('<td><input type="checkbox" name="id" value="{id}" aria-label="select job {id}"></td>', id=j.id)
           if admin else Html("<td></td>"))
    return t('<tr data-job="{id}">{box}<td><a href="/jobs/{pid}">{id}</a></td><td class="kind">{kind}</td>'
             '<td>{queue}</td><td>{state}</td><td class="num">{att}/{max}</td><td>{labels}</td><td>{created}</td>'
             '<td class="err">{err}</td></tr>',
             id=j.id, box=box, pid=path_part(j.id), kind=cut(j.kind), queue=j.queue, state=state_badge(j.state),
             att=str(j.attempts), max=str(j.max_attempts), labels=labels_html(j.labels), created=ts(j, "created_at"),
             err=cut(j.last_error))


def bulk_confirm_page(*, action: str, describe: str, fields: Sequence[tuple[str, str]], csrf: str,
                      estimate: int | None) -> Html:
    hidden = join(t('<input type="hidden" name="{k}" value="{v}">', k=k, v=v) for k, v in fields)
    def values(name: str) -> list[str]:
        return [v for k, v in fields if k == f"f_{name}" and v]

    back = "/jobs?" + query(queue=values("queue"), kind=values("kind"), state=values("state"), label=values("label"))
    return t('<p>{verb} {what}?</p>{est}<form method="post" action="/jobs/bulk">{csrf}{hidden}'
             '<input type="hidden" name="confirm" value="1">'
             '<button type="submit" name="action" value="{action}">Yes, {verb_l} them</button> '
             '<a href="{back}">No, go back</a></form>',
             verb=action.split("-")[0].capitalize(), what=describe, csrf=csrf_field(csrf), hidden=hidden,
             action=action, verb_l=action.split("-")[0], back=back,
             est=t('<p class="muted">About {n} job(s), by the last sample. It runs in the background; '
                   'a progress page follows.</p>', n=f"{estimate:,}") if estimate is not None else EMPTY)


def op_page(op_id: str) -> Html:
    return t('<div data-poll="/ops/{id}/fragment" aria-live="polite"><p class="muted">Loading…</p></div>'
             '<noscript><p>Reload the page to refresh the progress.</p></noscript>', id=path_part(op_id))


def op_fragment(op: BulkOp) -> Html:
    verb = "cancelled" if op.action.value == "cancel" else "requeued"
    extra = (t(', {n} running job(s) told to stop', n=f"{op.cancel_requested:,}") if op.cancel_requested else EMPTY)
    status = {OpState.RUNNING: "running", OpState.DONE: "done", OpState.FAILED: "failed"}[op.state]
    return t('<div class="op op-{status}" id="op" {final}><p><strong>{action}</strong> {what}: '
             '<span class="op-state">{status}</span></p>'
             '<p><span class="op-count">{done}</span> {verb}{extra}, {skipped} skipped, in {calls} call(s), '
             '{elapsed}.</p>{progress}{err}</div>',
             status=status, final=Html('data-final="1"') if op.state is not OpState.RUNNING else EMPTY,
             action=op.action.value.capitalize(), what=op.target.describe(), done=f"{op.done:,}", verb=verb,
             extra=extra, skipped=f"{op.skipped:,}", calls=str(op.calls), elapsed=dur(timedelta(seconds=op.elapsed_s)),
             progress=Html('<progress aria-label="working"></progress>') if op.state is OpState.RUNNING else EMPTY,
             err=t('<div class="error" role="alert">{e}</div>', e=op.error) if op.error else EMPTY)


# --- one job ------------------------------------------------------------------------------------------------

def job_page(job_id: str, fragment: Html, *, live: bool) -> Html:
    if not live:
        return fragment
    return t('<div data-live="job:{id}">{f}</div>', id=job_id, f=fragment)


def job_fragment(resp: jpb.GetJobResponse, who: Identity, csrf: str, *, jaeger_url: str | None) -> Html:
    j = resp.job
    admin = who_admin(who)
    actions: list[Html] = []
    if admin and j.state not in TERMINAL_STATES:
        actions.append(button_form(f"/jobs/{path_part(j.id)}/cancel", "Cancel job", csrf))
    if admin and j.state in REQUEUEABLE_STATES:
        actions.append(button_form(f"/jobs/{path_part(j.id)}/requeue", "Requeue job", csrf))
    trace = EMPTY
    if resp.trace_id and jaeger_url:
        trace = t('<a href="{url}/trace/{tid}" rel="noopener noreferrer" target="_blank">Trace {tid}</a>',
                  url=jaeger_url.rstrip("/"), tid=resp.trace_id)
    elif resp.trace_id:
        trace = t('<span class="muted">trace {tid} (start the console with --jaeger-url to link it)</span>',
                  tid=resp.trace_id)
    fields = [
        ("Kind", t('<span class="kind">{k}</span>', k=j.kind)), ("Queue", esc(j.queue)),
        ("State", Html(state_badge(j.state) + (Html(' <span class="badge warn">cancel requested</span>')
                                               if j.cancel_requested else EMPTY))),
        ("Attempts", esc(f"{j.attempts} of {j.max_attempts}")), ("Priority", esc(j.priority)),
        ("Idempotency key", esc(j.idempotency_key) if j.idempotency_key else DASH),
        ("Concurrency key", esc(j.concurrency_key) if j.concurrency_key else DASH),
        ("Labels", labels_html(j.labels)), ("Required worker labels", labels_html(j.required_labels)),
        ("Created", ts(j, "created_at")), ("Run at", ts(j, "run_at")), ("Started", ts(j, "started_at")),
        ("Finished", ts(j, "finished_at")), ("Updated", ts(j, "updated_at")),
        ("Trace", trace or DASH),
    ]
    dl = join(t('<dt>{k}</dt><dd>{v}</dd>', k=k, v=v) for k, v in fields)
    progress = EMPTY
    if j.HasField("progress") and (j.progress.fraction or j.progress.message):
        progress = t('<section><h2>Progress</h2><progress id="progress" max="1" value="{f}">{pct}</progress> '
                     '<span id="progress-pct">{pct}</span> <span id="progress-msg">{msg}</span></section>',
                     f=f"{j.progress.fraction:.4f}", pct=f"{j.progress.fraction * 100:.0f}%", msg=j.progress.message)
    last_error = (t('<section><h2>Last error</h2><pre class="error-text">{e}</pre></section>', e=j.last_error)
                  if j.last_error else EMPTY)
    if who.auth_enabled and "payloads" not in who.scopes:
        data = Html('<section id="payload"><h2>Payload and result</h2><p class="muted">Hidden: your key lacks the '
                    'payloads scope.</p></section>')
    else:
        data = t('<section id="payload"><h2>Payload</h2>{p}</section><section id="result"><h2>Result</h2>{r}'
                 '</section>', p=preview(j.payload), r=preview(j.result))
    return t('<div class="job" data-state="{state}"><div class="actions">{actions}</div><dl class="fields">{dl}</dl>'
             '{progress}{last_error}{timeline}{audit}{data}</div>',
             state=state_name(j.state) if j.state else "", actions=join(actions, " "), dl=dl, progress=progress,
             last_error=last_error, timeline=_timeline(j, resp.audit), audit=_audit(resp.audit), data=data)


def _timeline(j: job_pb2.Job, audit: jpb.JobAudit) -> Html:
    events: list[Html] = [t('<li>{at} submitted to {q}</li>', at=ts(j, "created_at"), q=j.queue)]
    for a in audit.attempts:
        outcome = a.outcome or "running"
        events.append(t('<li>{at} attempt {n} started on <code>{w}</code> (fencing token {tok}){end}</li>',
                        at=ts(a, "started_at"), n=str(a.attempt), w=a.worker_id or "?", tok=str(a.fencing_token),
                        end=t(' → {at} <strong>{o}</strong>', at=ts(a, "ended_at"), o=outcome)
                        if a.outcome else Html(" → <strong>running</strong>")))
    if j.HasField("finished_at"):
        events.append(t('<li>{at} {s}</li>', at=ts(j, "finished_at"), s=state_badge(j.state)))
    rows = join(t('<tr><td class="num">{n}</td><td><code>{w}</code></td><td class="num">{tok}</td><td>{s}</td>'
                  '<td>{e}</td><td>{o}</td><td class="err">{err}</td></tr>',
                  n=str(a.attempt), w=a.worker_id, tok=str(a.fencing_token), s=ts(a, "started_at"),
                  e=ts(a, "ended_at"), o=a.outcome or "running", err=cut(a.error, 400) if a.error else DASH)
                for a in audit.attempts)
    table = (t('<div class="scroll"><table class="attempts"><thead><tr><th scope="col">Attempt</th>'
               '<th scope="col">Worker</th><th scope="col">Fencing token</th><th scope="col">Start</th>'
               '<th scope="col">End</th><th scope="col">Outcome</th><th scope="col">Error</th></tr></thead>'
               '<tbody>{rows}</tbody></table></div>', rows=rows) if audit.attempts
             else Html('<p class="muted">No attempt yet.</p>'))
    return t('<section><h2>Timeline</h2><ol class="timeline">{ev}</ol>{table}</section>', ev=join(events), table=table)


def _audit(audit: jpb.JobAudit) -> Html:
    rows = [("Submitted by", audit.submitted_by), ("Cancelled by", audit.cancelled_by),
            ("Requeued by", audit.requeued_by)]
    return t('<section><h2>Audit</h2><dl class="fields">{rows}</dl></section>',
             rows=join(t('<dt>{k}</dt><dd>{v}</dd>', k=k, v=v or "—") for k, v in rows))


# --- workers and schedules ----------------------------------------------------------------------------------

def workers_page(answers: Sequence[Answer[jpb.ListWorkersResponse]]) -> Html:
    errors = join(t('<div class="error" role="alert">{target}: {msg}</div>', target=a.target, msg=a.error.message)
                  for a in answers if a.error is not None)
    rows: list[Html] = []
    for a in answers:
        if a.response is None:
            continue
        for w in a.response.workers:
            leases = list(w.lease_ids)
            shown = join((t('<a href="/jobs/{p}">{id}</a>', p=path_part(i), id=i) for i in leases[:LEASES_SHOWN_MAX]),
                         " ")
            hidden = len(leases) - LEASES_SHOWN_MAX
            more = t(' and {n} more', n=str(hidden)) if hidden > 0 else EMPTY
            rows.append(t('<tr data-worker="{wid}"><td><code>{wid}</code></td><td><code>{sid}</code></td>'
                          '<td>{coord}</td><td>{queues}</td><td>{kinds}</td><td>{labels}</td>'
                          '<td class="num">{n}</td><td>{shown}{more}</td><td class="num">{credit}</td>'
                          '<td class="num">{cap}</td><td>{hb}</td><td>{since}</td><td>{drain}</td><td>{sdk}</td></tr>',
                          wid=w.worker_id, sid=w.session_id, coord=a.target, queues=", ".join(w.queues),
                          kinds=cut(", ".join(w.kinds)), labels=labels_html(w.labels), n=str(len(leases)),
                          shown=shown, more=more, credit=str(w.credit), cap=str(w.capacity),
                          hb=dur(w.since_heartbeat) + " ago", since=ts(w, "connected_at"),
                          drain=Html('<span class="badge warn">draining</span>') if w.draining else DASH, sdk=w.sdk))
    body = join(rows) or Html('<tr><td colspan="14" class="muted">No worker is connected.</td></tr>')
    return t('{errors}<div class="scroll"><table class="workers"><thead><tr><th scope="col">Worker</th>'
             '<th scope="col">Session</th><th scope="col">Coordinator</th><th scope="col">Queues</th>'
             '<th scope="col">Kinds</th><th scope="col">Labels</th><th scope="col" class="num">Leases</th>'
             '<th scope="col">Lease ids</th><th scope="col" class="num">Credit</th>'
             '<th scope="col" class="num">Capacity</th><th scope="col">Last heartbeat</th>'
             '<th scope="col">Connected</th><th scope="col">Draining</th><th scope="col">SDK</th></tr></thead>'
             '<tbody>{body}</tbody></table></div>', errors=errors, body=body)


def schedules_page(resp: jpb.ListSchedulesResponse, who: Identity, csrf: str) -> Html:
    admin = who_admin(who)
    rows: list[Html] = []
    for s in resp.schedules:
        spec = s.spec
        when = (f"cron {spec.cron}" + (f" ({spec.time_zone})" if spec.time_zone else "") if spec.cron
                else f"every {dur(spec.every)}")
        base = f"/schedules/{path_part(spec.name)}"
        acts = EMPTY
        if admin:
            toggle = (button_form(f"{base}/resume", "Resume", csrf) if s.paused
                      else button_form(f"{base}/pause", "Pause", csrf))
            acts = t('<td>{toggle} {trigger}</td>', toggle=toggle, trigger=button_form(f"{base}/trigger", "Trigger now",
                                                                                      csrf))
        last_job = t('<a href="/jobs/{p}">{id}</a>', p=path_part(s.last_job_id), id=s.last_job_id) \
            if s.last_job_id else DASH
        rows.append(t('<tr data-schedule="{name}"><th scope="row">{name}</th><td>{when}</td><td>{kind}</td>'
                      '<td>{queue}</td><td class="sched-state">{state}</td><td>{next}</td><td>{last}</td>'
                      '<td>{job}</td><td class="num">{fired}</td><td class="num">{skipped}</td>{acts}</tr>',
                      name=spec.name, when=when, kind=spec.kind, queue=spec.queue or "default",
                      state=Html('<span class="badge paused">paused</span>') if s.paused else Html("active"),
                      next=ts(s, "next_run_at"), last=ts(s, "last_run_at"), job=last_job, fired=f"{s.fired:,}",
                      skipped=f"{s.skipped:,}", acts=acts))
    body = join(rows) or Html('<tr><td colspan="11" class="muted">No schedules.</td></tr>')
    return t('<div class="scroll"><table class="schedules"><thead><tr><th scope="col">Name</th>'
             '<th scope="col">When</th><th scope="col">Kind</th><th scope="col">Queue</th><th scope="col">State</th>'
             '<th scope="col">Next run</th><th scope="col">Last run</th><th scope="col">Last job</th>'
             '<th scope="col" class="num">Fired</th><th scope="col" class="num">Skipped</th>{act}</tr></thead>'
             '<tbody>{body}</tbody></table></div>',
             act=Html('<th scope="col">Actions</th>') if admin else EMPTY, body=body)


