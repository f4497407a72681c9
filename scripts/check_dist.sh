#!/usr/bin/env bash
# The distribution as a user gets it: build the wheel and the sdist (python -m build), install each into a
# fresh virtual environment (not editable; run from a temporary directory, so no checkout is on sys.path),
# start a coordinator from it on a fresh database of FAULTLINE_TEST_DSN's server and run one job through the
# installed SDK. Then an SDK-only install (no extras): `faultline --help`, `--version` and `jobs ls` against
# that coordinator work, and `faultline coordinator` prints the one-line hint to install the extra.
# Needs .venv (scripts/_common.sh ensure_venv) and FAULTLINE_TEST_DSN; scripts/test runs it as a check.
set -euo pipefail
# shellcheck source=scripts/_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
cd "$FAULTLINE_ROOT"
: "${FAULTLINE_TEST_DSN:?FAULTLINE_TEST_DSN must name an admin DSN (scripts/test sets it)}"

# Seconds for an installed coordinator to serve and its job to finish.
SERVE_TIMEOUT_S=60
PY="$VENV/bin/python"
WORK="$(mktemp -d -t faultline-dist.XXXXXX)"
COORD_PID=""
DATABASES=()

cleanup() {
    if [ -n "$COORD_PID" ] && kill -0 "$COORD_PID" 2>/dev/null; then
        kill -TERM "$COORD_PID" 2>/dev/null || true
        wait "$COORD_PID" 2>/dev/null || true
    fi
    local db
    for db in "${DATABASES[@]}"; do
        "$PY" - "$FAULTLINE_TEST_DSN" "$db" <<'PY' || true
import asyncio, sys
import asyncpg

async def main() -> None:
    con = await asyncpg.connect(sys.argv[1])
    try:
        await con.execute(f'DROP DATABASE IF EXISTS "{sys.argv[2]}" WITH (FORCE)')
    finally:
        await con.close()

asyncio.run(main())
PY
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

# Prints the DSN of a new, empty database on FAULTLINE_TEST_DSN's server.
fresh_database() {
    "$PY" - "$FAULTLINE_TEST_DSN" "$1" <<'PY'
import asyncio, sys
from urllib.parse import urlsplit, urlunsplit
import asyncpg

async def main() -> None:
    con = await asyncpg.connect(sys.argv[1])
    try:
        await con.execute(f'DROP DATABASE IF EXISTS "{sys.argv[2]}" WITH (FORCE)')
        await con.execute(f'CREATE DATABASE "{sys.argv[2]}"')
    finally:
        await con.close()
    p = urlsplit(sys.argv[1])
    print(urlunsplit((p.scheme, p.netloc, "/" + sys.argv[2], p.query, "")))

asyncio.run(main())
PY
}

free_port() { "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# A venv without pip (faster), filled by .venv's pip (`pip --python`), from the pip cache where it can.
new_venv() {
    local dir="$WORK/$1"
    shift
    "$PY" -m venv --without-pip "$dir"
    "$PY" -m pip --python "$dir/bin/python" install -q --disable-pip-version-check "$@" >"$dir.pip.log" 2>&1 \
        || { tail -n 30 "$dir.pip.log" >&2; return 1; }
    echo "$dir"
}

# The environment an installed command sees: no checkout, no PYTHONPATH, no DATABASE_URL of the caller.
clean_env() { env -i PATH="/usr/bin:/bin" HOME="$WORK/home" LANG=C.UTF-8 "$@"; }

# Starts `faultline coordinator` from venv $1 on database DSN $2 and port $3; sets COORD_PID.
start_coordinator() {
    (cd "$WORK" && exec env -i PATH="/usr/bin:/bin" HOME="$WORK/home" DATABASE_URL="$2" \
        FAULTLINE_GRPC_ADDR="127.0.0.1:$3" FAULTLINE_METRICS_ADDR=off \
        "$1/bin/faultline" coordinator >"$WORK/coordinator-$3.log" 2>&1) &
    COORD_PID=$!
}

stop_coordinator() {
    kill -TERM "$COORD_PID"
    wait "$COORD_PID" || { note "coordinator exited non-zero after SIGTERM"; tail -n 20 "$WORK"/coordinator-*.log; return 1; }
    COORD_PID=""
}

# Runs one echo job through the SDK of venv $1 against 127.0.0.1:$2 (waiting for the coordinator to serve).
one_job() {
    cat >"$WORK/one_job.py" <<'PY'
import asyncio, sys, time
import coordinator, worker_sdk
from worker_sdk import Client, JobState, UnavailableError, Worker

addr, venv, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
for mod in (coordinator, worker_sdk):
    assert mod.__file__ and mod.__file__.startswith(venv), f"{mod.__name__} imported from {mod.__file__}"

async def main() -> None:
    worker = Worker(addr, queues=["dist"], concurrency=1, handle_signals=False)

    @worker.handler("echo")
    async def echo(ctx):
        return ctx.payload

    deadline = time.monotonic() + timeout
    async with Client(addr) as client:
        while True:
            try:
                job = await client.submit("echo", b"from the installed package", queue="dist")
                break
            except UnavailableError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
        run = asyncio.create_task(worker.run())
        while (job := await client.get(job.id)).state is not JobState.SUCCEEDED:
            assert time.monotonic() < deadline, f"job {job.id} is {job.state.value} after {timeout}s"
            await asyncio.sleep(0.1)
        await worker.stop()
        await run
    assert job.result == b"from the installed package", job.result
    print(f"    job {job.id} succeeded through {addr}")

asyncio.run(main())
PY
    (cd "$WORK" && clean_env "$1/bin/python" -I one_job.py "127.0.0.1:$2" "$1" "$SERVE_TIMEOUT_S")
}

# Serves `faultline console` from venv $1 against the coordinator on 127.0.0.1:$2 (auth off: no login), reads its
# overview (which must list the queue `dist`) and its script and style sheet, then stops it with SIGTERM.
console_from_wheel() {
    local cport cpid
    cport="$(free_port)"
    (cd "$WORK" && exec env -i PATH="/usr/bin:/bin" HOME="$WORK/home" \
        "$1/bin/faultline" console --addr "127.0.0.1:$cport" --coordinator "127.0.0.1:$2" \
        >"$WORK/console.log" 2>&1) &
    cpid=$!
    cat >"$WORK/console_get.py" <<'PY'
import sys, time, urllib.request
base, timeout = sys.argv[1], float(sys.argv[2])
deadline = time.monotonic() + timeout
while True:
    try:
        page = urllib.request.urlopen(base + "/", timeout=5).read().decode()
        break
    except OSError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.2)
assert ">dist<" in page, "the overview does not list the queue dist:\n" + page[:2000]
for asset in ("/static/console.js", "/static/console.css"):
    body = urllib.request.urlopen(base + asset, timeout=5).read()
    assert body, f"{asset} is empty"
print(f"    console at {base}: overview lists queue dist; console.js and console.css served from the wheel")
PY
    if ! (cd "$WORK" && clean_env "$1/bin/python" -I console_get.py "http://127.0.0.1:$cport" "$SERVE_TIMEOUT_S"); then
        kill -TERM "$cpid" 2>/dev/null || true
        tail -n 20 "$WORK/console.log" >&2
        return 1
    fi
    kill -TERM "$cpid"
    wait "$cpid" || { note "the console exited non-zero after SIGTERM"; tail -n 20 "$WORK/console.log" >&2; return 1; }
}

# Coordinator from venv $1 on a fresh database named $2, one job; leaves it running (port in PORT).
serve_and_run_one_job() {
    local dsn
    dsn="$(fresh_database "$2")"
    DATABASES+=("$2")
    PORT="$(free_port)"
    start_coordinator "$1" "$dsn" "$PORT"
    one_job "$1" "$PORT" || { tail -n 20 "$WORK/coordinator-$PORT.log" >&2; return 1; }
}

note "python -m build"
"$PY" -m build --outdir "$WORK/dist" . >"$WORK/build.log" 2>&1 || { tail -n 30 "$WORK/build.log" >&2; exit 1; }
WHEEL="$(ls "$WORK"/dist/*.whl)"
SDIST="$(ls "$WORK"/dist/*.tar.gz)"
note "built $(basename "$WHEEL") and $(basename "$SDIST")"
# The listing is read whole first: `zipfile -l | grep -q` let grep exit at its first match, zipfile died of
# SIGPIPE, and under pipefail the check failed on a wheel that had the file (one CI run in two).
listing="$("$PY" -m zipfile -l "$WHEEL")"
for f in coordinator/migrations/0001_create_jobs.sql coordinator/db/queries.sql; do
    grep -qF "$f" <<<"$listing" || { note "the wheel lacks $f"; exit 1; }
done

mkdir -p "$WORK/home"
note "venvs: wheel[coordinator], sdist[coordinator], wheel alone (the SDK install)"
new_venv wheel "$WHEEL[coordinator]" >/dev/null & p_wheel=$!
new_venv sdist "$SDIST[coordinator]" >/dev/null & p_sdist=$!
new_venv sdk "$WHEEL" >/dev/null & p_sdk=$!
wait "$p_wheel" && wait "$p_sdist" && wait "$p_sdk" || { note "a venv install failed"; exit 1; }
V_WHEEL="$WORK/wheel" V_SDIST="$WORK/sdist" V_SDK="$WORK/sdk"

note "wheel: coordinator on a fresh database, one job"
serve_and_run_one_job "$V_WHEEL" "faultline_dist_wheel_$$"

note "SDK-only install against it"
out="$(cd "$WORK" && clean_env "$V_SDK/bin/faultline" --help)" || { note "faultline --help failed"; exit 1; }
grep -q "submit" <<<"$out" || { note "faultline --help lists no operator commands"; exit 1; }
(cd "$WORK" && clean_env "$V_SDK/bin/faultline" --version) | sed 's/^/    /'
(cd "$WORK" && clean_env "$V_SDK/bin/faultline" jobs ls --addr "127.0.0.1:$PORT" --queue dist) | sed 's/^/    /'
set +e
hint="$(cd "$WORK" && clean_env "$V_SDK/bin/faultline" coordinator 2>&1)"
rc=$?
set -e
note "faultline coordinator (exit $rc): $hint"
if [ "$rc" = 0 ] || [ "$(printf '%s\n' "$hint" | wc -l)" != 1 ] || ! grep -q "faultline-jobs\[coordinator\]" <<<"$hint"; then
    note "expected one line naming the coordinator extra and a non-zero exit"
    exit 1
fi

note "wheel: the web console against it (templates and static files come from the package)"
console_from_wheel "$V_WHEEL" "$PORT"
stop_coordinator

note "sdist: coordinator on a fresh database, one job"
serve_and_run_one_job "$V_SDIST" "faultline_dist_sdist_$$"
stop_coordinator
