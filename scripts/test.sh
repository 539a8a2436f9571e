#!/usr/bin/env bash
# Install everything into a fresh venv, start what the tests need, and run the test suite.
# Usage: bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${VENV:-$ROOT/.venv}

if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
# A regular (non-editable) install: tests run against what a user gets from `pip install`.
"$VENV/bin/python" -m pip install -q --force-reinstall --no-deps .
"$VENV/bin/python" -m pip install -q ".[test]"

# The public dask-gateway, in its own venv, for the compatibility tests.
if [ -f scripts/make-upstream-venv.sh ]; then
    bash scripts/make-upstream-venv.sh
fi

cd "$ROOT"
exec "$VENV/bin/pytest" -p no:cacheprovider "$@"
