#!/usr/bin/env bash
# Quick start, part one: install unionstore into .venv (first run only) and serve the embedded
# default: every sub-folder of ./data is a bucket, on http://127.0.0.1:9900.
#
#     bash scripts/serve.sh [unionstore serve flags...]
#
# The gateway prints the endpoint and the credentials to use.
set -euo pipefail
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$REPO_ROOT/.venv"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    if [[ $(id -u) == 0 ]]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq </dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv </dev/null
    else
        echo "python3-venv is missing: sudo apt-get install python3-venv" >&2
        exit 1
    fi
fi
if ! "$VENV/bin/python" -c 'import unionstore, hypercorn' >/dev/null 2>&1; then
    echo "==> installing unionstore into $VENV (first run only)"
    [[ -x $VENV/bin/python ]] || python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q -U pip setuptools wheel
    "$VENV/bin/python" -m pip install -q -e "$REPO_ROOT"
fi
exec "$VENV/bin/unionstore" serve "$@"
