#!/usr/bin/env bash
# The one command that installs everything the tests need and runs the whole suite:
#
#     bash scripts/test.sh [pytest args...]
#
# Works from any directory, as root or with passwordless sudo (apt step), and under CI
# (CI=true, no stdin). Every step skips what is already there. Exits with pytest's code.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO_ROOT=$(pwd)
VENV="$REPO_ROOT/.venv"

export DEBIAN_FRONTEND=noninteractive
export PIP_DISABLE_PIP_VERSION_CHECK=1
export PIP_NO_INPUT=1
export PYTHONUNBUFFERED=1

step() { printf '\n==> %s\n' "$*"; }
note() { printf '    %s\n' "$*"; }

# ---- 1. system packages ------------------------------------------------------------------
step "system packages"
APT_PACKAGES=(fuse3 libfuse3-dev pkg-config rclone s3fs mariadb-server iperf3 git)
missing=()
command -v java >/dev/null 2>&1 || missing+=(openjdk-17-jre-headless)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
for pkg in "${APT_PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$pkg")
    fi
done
if ((${#missing[@]} == 0)); then
    note "all present"
else
    SUDO=()
    if [[ $(id -u) != 0 ]]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
            SUDO=(sudo -n env DEBIAN_FRONTEND=noninteractive)
        else
            SUDO=(none)
        fi
    fi
    if [[ ${SUDO[0]:-} == none ]]; then
        note "missing: ${missing[*]} (not root and no passwordless sudo: install them yourself)"
    else
        note "installing: ${missing[*]}"
        "${SUDO[@]}" apt-get update -qq </dev/null
        "${SUDO[@]}" apt-get install -y -qq --no-install-recommends \
            -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
            "${missing[@]}" </dev/null
    fi
fi

# ---- 2. virtualenv -----------------------------------------------------------------------
step "virtualenv $VENV"
if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "python3 is $(python3 -V 2>&1); unionstore needs Python >= 3.11" >&2
    exit 1
fi
if ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
    note "creating"
    rm -rf "$VENV"
    python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
# Reinstall only when pyproject.toml changed since the last successful install.
STAMP="$VENV/.unionstore-test-deps"
want=$( { sha256sum pyproject.toml; "$PY" -V; } | sha256sum | cut -d' ' -f1)
if [[ -f $STAMP && $(cat "$STAMP") == "$want" ]] && "$PY" -c 'import unionstore, pytest' 2>/dev/null; then
    note "dependencies up to date"
else
    "$PY" -m pip install -q -U pip setuptools wheel
    "$PY" -m pip install -q -e '.[test]'
    echo "$want" >"$STAMP"
    note "installed"
fi

# ---- 3. Hadoop jars ----------------------------------------------------------------------
step "Hadoop jars"
"$PY" -m tests.support.hadoop

# ---- 3b. the JavaScript SDK the suite drives ----------------------------------------------
step "JavaScript SDK (tests/js)"
JS_STAMP="tests/js/node_modules/.unionstore-stamp"
js_want=$(sha256sum tests/js/package.json tests/js/package-lock.json | sha256sum | cut -d' ' -f1)
if [[ -f $JS_STAMP && $(cat "$JS_STAMP") == "$js_want" ]]; then
    note "up to date"
else
    (cd tests/js && npm ci --no-audit --no-fund --loglevel=error </dev/null)
    echo "$js_want" >"$JS_STAMP"
    note "installed"
fi

# ---- 4. lint, types, tests ---------------------------------------------------------------
step "ruff check"
"$VENV/bin/ruff" check .
step "mypy"
"$VENV/bin/mypy"
step "pytest $*"
set +e
"$PY" -m pytest "$@"
rc=$?
set -e
exit "$rc"
