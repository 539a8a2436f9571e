#!/usr/bin/env bash
# Install everything into a fresh venv, start what the tests need, and run the test suite.
# Usage: bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${VENV:-$ROOT/.venv}

# System packages: Kerberos (its headers build pykerberos; its KDC serves the tests).
need=()
[ -x /usr/sbin/krb5kdc ] || need+=(krb5-kdc krb5-admin-server)
command -v kinit >/dev/null || need+=(krb5-user)
[ -f /usr/include/gssapi/gssapi.h ] || need+=(libkrb5-dev)
if [ ${#need[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# Chromium for the JupyterLab browser tests (Playwright drives it via executable_path).
command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq chromium >/dev/null)

if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
# A regular (non-editable) install: tests run against what a user gets from `pip install`.
# One wheel, built once, for the test venv and the shared one below.
WHEELS=$(mktemp -d)
"$VENV/bin/python" -m pip wheel -q --no-deps -w "$WHEELS" .
WHEEL=$(ls "$WHEELS"/*.whl)
"$VENV/bin/python" -m pip install -q --force-reinstall --no-deps "$WHEEL"
"$VENV/bin/python" -m pip install -q "$WHEEL[test]"

# The security tests run a gateway as root whose schedulers and workers run as other local
# users, so their Python must be one every user can execute: not a venv under /root. Built
# from the system Python in a root-owned, world-readable place, as an admin would.
SHARED_VENV=${DASK_GATEWAY_TEST_SHARED_VENV:-/opt/dask-gateway-test/venv}
export DASK_GATEWAY_TEST_SHARED_VENV=$SHARED_VENV
if [ ! -x "$SHARED_VENV/bin/python" ]; then
    command -v /usr/bin/python3 >/dev/null && /usr/bin/python3 -c 'import ensurepip' 2>/dev/null \
        || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
            apt-get -o DPkg::Lock::Timeout=600 install -y -qq python3-venv >/dev/null)
    install -d -m 0755 "$(dirname "$SHARED_VENV")"
    /usr/bin/python3 -m venv "$SHARED_VENV"
fi
"$SHARED_VENV/bin/python" -m pip install -q --force-reinstall --no-deps "$WHEEL"
# The gateway host's extra: its clusters run in this Python (dashboards, arrays, dataframes).
"$SHARED_VENV/bin/python" -m pip install -q "$WHEEL[server]"
chmod -R go-w "$SHARED_VENV"
rm -rf "$WHEELS"

# The public dask-gateway, in its own venv, for the compatibility tests.
if [ -f scripts/make-upstream-venv.sh ]; then
    bash scripts/make-upstream-venv.sh
fi

# JupyterHub's proxy, for the tests that start a real hub.
if ! command -v configurable-http-proxy >/dev/null; then
    npm install -g --no-fund --no-audit configurable-http-proxy@5 >/dev/null 2>&1
fi

# Services the tests talk to, started for real and stopped on exit.
cleanup() {
    bash scripts/services/stop-pg.sh
    bash scripts/services/stop-kdc.sh
    bash scripts/services/stop-slurm.sh
    # Started and stopped by tests/test_slurm_multinode.py itself; this only clears what
    # an interrupted run left (namespaces, bridge, daemons).
    bash scripts/services/stop-slurm-multinode.sh
}
trap cleanup EXIT
TEST_POSTGRES_URL=$(bash scripts/services/start-pg.sh | tail -1)
export TEST_POSTGRES_URL
eval "$(bash scripts/services/start-kdc.sh | tail -1)"
# A single-node Slurm (installs slurm-wlm and munge if missing) for tests/test_slurm.py, with
# its default proctrack (pgid); that module restarts it with linuxproc and cgroup too, to run
# under each, and leaves it as started here.
bash scripts/services/start-slurm.sh
# The multi-node Slurm (scripts/services/start-slurm-multinode.sh: three slurmd nodes in
# network namespaces on a bridge, beside this one) is started by tests/test_slurm_multinode.py
# for its own tests and stopped after them (2 s each way): nothing else uses it, and a node
# failure test must not leave a half-dead cluster to the modules after it.

cd "$ROOT"
"$VENV/bin/pytest" -p no:cacheprovider "$@"
