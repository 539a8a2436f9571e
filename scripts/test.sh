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

# Services the tests talk to, started for real and stopped on exit.
cleanup() { bash scripts/services/stop-pg.sh; }
trap cleanup EXIT
TEST_POSTGRES_URL=$(bash scripts/services/start-pg.sh | tail -1)
export TEST_POSTGRES_URL

cd "$ROOT"
"$VENV/bin/pytest" -p no:cacheprovider "$@"
