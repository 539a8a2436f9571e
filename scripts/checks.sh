#!/usr/bin/env bash
# The static checks and the TypeScript unit tests, as CI runs them (.ci/run, after
# scripts/test.sh has built .venv): ruff, mypy, import layers, eslint and prettier through the
# pre-commit hooks of .pre-commit-config.yaml, then the sidebar's vitest suite.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-$PWD/.venv}
export PATH="$VENV/bin:$PATH"
command -v pre-commit >/dev/null || {
    echo "checks.sh: no pre-commit in $VENV: run scripts/test.sh once (it installs the [test]"
    echo "extra, which includes [dev]) or pip install -e '.[dev]' into it" >&2
    exit 1
}
[ -d jupyter_ext/node_modules ] || npm ci --prefix jupyter_ext --no-fund --no-audit
# A clean clone is not always a checkout pre-commit can stash in (CI runs as root on a fresh
# clone); --all-files checks the tree as it is.
pre-commit run --all-files --show-diff-on-failure
npm --prefix jupyter_ext run --silent test
