# shellcheck shell=bash
# Sourced by scripts/demo, scripts/test and .ci/run: makes sure .venv exists with the project
# installed (editable, with the dev extras) and puts it first on PATH.
#
# The install runs only when pyproject.toml (or the Python) changed since the last successful one,
# so a second run costs a fraction of a second. Set PYTHON=/path/to/python3.x to choose the interpreter.

CLAZAR_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CLAZAR_VENV="$CLAZAR_ROOT/.venv"

_clazar_say() { printf '[bootstrap] %s\n' "$*" >&2; }

# Prints the first interpreter that is Python 3.11 or 3.12 (what pyproject.toml accepts).
_clazar_find_python() {
    local cand
    for cand in "${PYTHON:-}" python3.11 python3.12 python3; do
        [[ -n "$cand" ]] || continue
        command -v "$cand" >/dev/null 2>&1 || continue
        if "$cand" -c 'import sys; sys.exit(0 if (3, 11) <= sys.version_info[:2] < (3, 13) else 1)' \
            2>/dev/null; then
            command -v "$cand"
            return 0
        fi
    done
    return 1
}

_clazar_make_venv() {
    local py
    if ! py="$(_clazar_find_python)"; then
        _clazar_say "error: Python 3.11 or 3.12 is needed (python3.11 / python3 on PATH, or set PYTHON=...)."
        _clazar_say "On Debian/Ubuntu: sudo apt-get install python3 python3-venv"
        return 1
    fi
    _clazar_say "creating .venv with $py ($("$py" -c 'import platform; print(platform.python_version())'))"
    if ! "$py" -m venv "$CLAZAR_VENV" >/dev/null 2>&1; then
        rm -rf "$CLAZAR_VENV"
        # Debian's Python ships venv's pip bootstrap separately.
        if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
            local ver
            ver="$("$py" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
            _clazar_say "installing python${ver}-venv with apt-get"
            DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null &&
                DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "python${ver}-venv" >/dev/null ||
                DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null || true
        fi
        if ! "$py" -m venv "$CLAZAR_VENV"; then
            rm -rf "$CLAZAR_VENV"
            _clazar_say "error: could not create .venv (on Debian/Ubuntu: sudo apt-get install python3-venv)"
            return 1
        fi
    fi
}

# What the stamp records: the hash of pyproject.toml and the interpreter version.
_clazar_fingerprint() {
    "$CLAZAR_VENV/bin/python" - "$CLAZAR_ROOT/pyproject.toml" <<'PY'
import hashlib, sys
with open(sys.argv[1], "rb") as f:
    print(hashlib.sha256(f.read()).hexdigest(), sys.version.split()[0])
PY
}

_clazar_install() {
    local stamp="$CLAZAR_VENV/.clazar-install-stamp" want log
    want="$(_clazar_fingerprint)" || return 1
    if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
        return 0
    fi
    _clazar_say "installing the project and its dev dependencies into .venv (pyproject.toml changed or first run)..."
    log="$(mktemp)"
    if ! (cd "$CLAZAR_ROOT" &&
        "$CLAZAR_VENV/bin/python" -m pip install --disable-pip-version-check --no-input -q \
            -e ".[dev]") >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log" "$stamp"
        _clazar_say "error: pip install failed (output above)"
        return 1
    fi
    rm -f "$log"
    printf '%s\n' "$want" >"$stamp"
    _clazar_say "dependencies installed"
}

clazar_bootstrap() {
    if [[ -x "$CLAZAR_VENV/bin/python" ]] && ! "$CLAZAR_VENV/bin/python" -c '' 2>/dev/null; then
        _clazar_say ".venv is broken (its Python no longer runs): recreating it"
        rm -rf "$CLAZAR_VENV"
    fi
    if [[ ! -x "$CLAZAR_VENV/bin/python" ]]; then
        _clazar_make_venv || return 1
    fi
    # One installer at a time (two scripts started together share the venv).
    if command -v flock >/dev/null 2>&1; then
        (
            flock 9
            _clazar_install
        ) 9>"$CLAZAR_VENV/.clazar-install.lock" || return 1
    else
        _clazar_install || return 1
    fi
    export VIRTUAL_ENV="$CLAZAR_VENV"
    export PATH="$CLAZAR_VENV/bin:$PATH"
    unset PYTHONHOME
}

if ! clazar_bootstrap; then
    _clazar_say "bootstrap failed"
    # shellcheck disable=SC2317  # exit only when run directly rather than sourced
    return 1 2>/dev/null || exit 1
fi
