"""The console without a browser: escaping, previews, the overview's sample, sessions' expiry, no Postgres access."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from coordinator.console.config import PREVIEW_BYTES_MAX
from coordinator.console.html import Html, esc, t
from coordinator.console.pages import overview_fragment, preview
from coordinator.console.sessions import Identity
from worker_sdk._proto.faultline.v1 import job_service_pb2 as jpb

READER = Identity(name="viewer", identity="key:viewer", scopes=frozenset({"read"}), queues=(), auth_enabled=True)
ADMIN = Identity(name="ops", identity="key:ops", scopes=frozenset({"read", "admin"}), queues=(), auth_enabled=True)


def test_values_are_escaped_for_text_and_attributes_but_html_is_kept() -> None:
    hostile = '"><img src=x onerror=alert(1)>&\''
    out = t('<a title="{v}">{v}</a>{safe}', v=hostile, safe=Html("<b>ok</b>"))
    assert "<img" not in out and "&quot;&gt;&lt;img" in out and "&#x27;" in out and out.endswith("<b>ok</b>")
    assert esc(esc("<")) == "&lt;"  # Html is never escaped twice


def test_previews_are_text_when_utf8_else_hex_and_at_most_4_kib() -> None:
    assert "pre class=\"preview text\"" in preview("héllo <b>".encode())
    assert "&lt;b&gt;" in preview(b"<b>")
    # Cut inside a multi-byte character at the 4 KiB boundary: still text.
    text = ("x" * (PREVIEW_BYTES_MAX - 1) + "é" * 10).encode()
    out = preview(text)
    assert "preview text" in out and "first 4,096 shown" in out
    out = preview(bytes(range(256)))
    assert "preview hex" in out and "00000000  00 01 02" in out
    assert "(empty)" in preview(b"")


def _queue(**kw: object) -> jpb.QueueStats:
    q = jpb.QueueStats(name="emails", depth={"queued": 1234, "dead_lettered": 5}, **kw)  # type: ignore[arg-type]
    return q


def test_the_overview_shows_sampled_history_flow_state_and_actions_for_admins_only() -> None:
    now = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
    sampled = Timestamp()
    sampled.FromDatetime(now - timedelta(seconds=3))
    minute = jpb.QueueMinute(succeeded=40, failed=2, wait_p50=Duration(nanos=12_000_000),
                             wait_p95=Duration(seconds=1, nanos=500_000_000), run_p50=Duration(seconds=2),
                             run_p95=Duration(seconds=9))
    q = _queue(sampled_at=sampled, workers_connected=3, history=[minute, minute], waiting_on_key=7,
               settings=jpb.QueueSettings(name="emails", paused=True, rate_per_second=5, burst=10, max_running=3))
    out = overview_fragment(jpb.ListQueuesResponse(queues=[q]), READER, "tok", now=now)
    assert "Sampled 3.0 s ago" in out and "1,234" in out and "80 / 4" in out
    assert "12 ms / 1.5 s" in out and "2.0 s / 9.0 s" in out
    assert "paused" in out and "rate 5/s, burst 10" in out and "max running 3" in out and "7 waiting on key" in out
    assert 'class="num workers">3<' in out
    assert "Pause" not in out and "Resume" not in out and "backlog" not in out
    q.oldest_ready_age.FromTimedelta(timedelta(minutes=5))
    assert 'class="num backlog">5 m 0 s<' in overview_fragment(jpb.ListQueuesResponse(queues=[q]), READER, "", now=now)
    admin = overview_fragment(jpb.ListQueuesResponse(queues=[q]), ADMIN, "tok", now=now)
    assert "/queues/emails/resume" in admin and 'value="tok"' in admin
    assert "Several coordinators" not in admin
    several = overview_fragment(jpb.ListQueuesResponse(queues=[q]), READER, "", now=now, coordinators=2)
    assert "those of the first that answered" in several


def test_the_console_never_reaches_postgres_itself() -> None:
    """Data only through the gRPC API: no module of the console imports the Store, the pool or asyncpg."""
    import ast
    from pathlib import Path

    import coordinator.console

    root = Path(coordinator.console.__file__).parent
    for path in root.glob("*.py"):
        tree = ast.parse(path.read_text())
        names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        assert not [m for m in names if m.startswith(("asyncpg", "coordinator.db"))], path.name


def test_sessions_expire_when_idle_and_open_streams_keep_them() -> None:
    from coordinator.console.sessions import SessionStore

    now = [0.0]
    store = SessionStore(idle=timedelta(minutes=30), max_sessions=10, clock=lambda: now[0])
    a, b = store.create("key-a", READER), store.create("key-b", READER)
    assert a.id != b.id and a.csrf != b.csrf and len(a.id) >= 40
    now[0] += 29 * 60
    assert store.get(a.id) is a  # used: its idle time starts again
    b.streams = 1  # a page with a live stream is open
    now[0] += 31 * 60
    assert store.get(a.id) is None
    assert store.get(b.id) is b
    store.drop_key("key-b")
    assert store.get(b.id) is None and len(store) == 0


def test_a_bare_carriage_return_in_job_text_cannot_start_an_sse_field() -> None:
    from coordinator.console.app import sse_frame

    frame = sse_frame("update", "<pre>boom\revent: final\r\nid: 9\nretry: 1</pre>").decode()
    assert frame == ("event: update\ndata: <pre>boom\ndata: event: final\ndata: id: 9\ndata: retry: 1</pre>\n\n")
