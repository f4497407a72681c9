# shellcheck shell=bash
# Shared by scripts/demo, scripts/test and .ci/run: repo root, section headers, venv set-up, apt installs.
# Sourced, not executed. Needs only bash and python3 >= 3.11 on a fresh machine.

FAULTLINE_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$FAULTLINE_ROOT/.venv"
# Holds the hash of what the venv was installed from; a different hash means reinstall.
VENV_STAMP="$VENV/.faultline-install-stamp"
MIN_PYTHON="3.11"

section() { printf '\n==> %s\n' "$*"; }
note() { printf '    %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

is_root() { [ "$(id -u)" = 0 ]; }

# apt installs are allowed only as root on a Debian-like machine, and never when FAULTLINE_NO_APT=1.
can_apt() { is_root && command -v apt-get >/dev/null 2>&1 && [ "${FAULTLINE_NO_APT:-0}" != 1 ]; }

_APT_UPDATED=0
apt_install() {
    can_apt || return 1
    local log
    log="$(mktemp)"
    if [ "$_APT_UPDATED" = 0 ]; then
        note "apt-get update"
        if ! apt-get update -qq >"$log" 2>&1; then
            cat "$log" >&2; rm -f "$log"; return 1
        fi
        _APT_UPDATED=1
    fi
    note "apt-get install $*"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >"$log" 2>&1; then
        cat "$log" >&2; rm -f "$log"; return 1
    fi
    rm -f "$log"
}

find_python() {
    local candidate
    for candidate in "${PYTHON:-}" python3 python3.13 python3.12 python3.11; do
        [ -n "$candidate" ] || continue
        command -v "$candidate" >/dev/null 2>&1 || continue
        if "$candidate" -c "import sys; sys.exit(sys.version_info < tuple(map(int, '$MIN_PYTHON'.split('.'))))" 2>/dev/null; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

# Creates .venv when missing and installs the project editable with its dev extras. Skips the install
# when the stamp matches pyproject.toml and the interpreter, so a second run costs well under a second.
ensure_venv() {
    local py want
    if [ ! -x "$VENV/bin/python" ]; then
        py="$(find_python)" || die "need python3 >= $MIN_PYTHON on PATH (or PYTHON=/path/to/python3)"
        note "creating .venv with $("$py" --version 2>&1)"
        if ! "$py" -m venv "$VENV" 2>/dev/null; then
            # Debian and Ubuntu ship venv (ensurepip) separately from python3.
            rm -rf "$VENV"
            apt_install python3-venv || die "'$py -m venv' failed: install your distribution's python3-venv package"
            "$py" -m venv "$VENV" || die "'$py -m venv' failed"
        fi
    fi
    want="$("$VENV/bin/python" - "$FAULTLINE_ROOT/pyproject.toml" <<'PY'
import hashlib, sys
print(hashlib.sha256(open(sys.argv[1], "rb").read() + sys.version.encode()).hexdigest())
PY
)"
    if [ -f "$VENV_STAMP" ] && [ "$(cat "$VENV_STAMP")" = "$want" ] && [ -x "$VENV/bin/faultline" ]; then
        note ".venv up to date"
        return 0
    fi
    local log="$VENV/pip-install.log"
    note "pip install -e '.[dev]' (first run takes a minute or two; log: ${log#"$FAULTLINE_ROOT"/})"
    if ! "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "${FAULTLINE_ROOT}[dev]" >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        die "pip install -e '.[dev]' failed (full log: $log)"
    fi
    echo "$want" >"$VENV_STAMP"
}
