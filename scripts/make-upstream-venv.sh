#!/usr/bin/env bash
# Create (or reuse) a separate virtualenv holding the *public* dask-gateway server and
# client from PyPI. tests/test_client_vs_upstream.py starts that server and drives it with
# our client, to prove wire compatibility (numpy: the workers run dask.array tasks; bokeh:
# schedulers serve dashboards, as in ours and in real deployments).
# Idempotent: re-running only re-checks the pins.
#
# Usage: scripts/make-upstream-venv.sh [VENV_DIR]   (default .venv-upstream in the repository, or
#        $DASK_GATEWAY_UPSTREAM_VENV)
set -euo pipefail

VENV="${1:-${DASK_GATEWAY_UPSTREAM_VENV:-$(cd "$(dirname "$0")/.." && pwd)/.venv-upstream}}"
PYTHON="${PYTHON:-python3}"
UPSTREAM_VERSION="${UPSTREAM_VERSION:-2026.3.0}"
DISTRIBUTED_VERSION="${DISTRIBUTED_VERSION:-2026.8.0}"

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi

# Nothing to do when the pins are already satisfied (keeps CI re-runs fast and offline).
if "$VENV/bin/python" - "$UPSTREAM_VERSION" "$DISTRIBUTED_VERSION" <<'PY' 2>/dev/null; then
import sys
from importlib.metadata import version
want_gw, want_dist = sys.argv[1:3]
ok = (
    version("dask-gateway-server") == want_gw
    and version("dask-gateway") == want_gw
    and version("distributed") == want_dist
    and version("sqlalchemy")
    and version("numpy")
    and version("bokeh")
)
sys.exit(0 if ok else 1)
PY
    echo "upstream venv $VENV is up to date"
    exit 0
fi

"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet \
    "dask-gateway-server[local]==${UPSTREAM_VERSION}" \
    "dask-gateway==${UPSTREAM_VERSION}" \
    "distributed==${DISTRIBUTED_VERSION}" \
    numpy "bokeh>=3.1"
"$VENV/bin/python" -c "import dask_gateway_server, os; \
p = os.path.join(os.path.dirname(dask_gateway_server.__file__), 'proxy', 'dask-gateway-proxy'); \
assert os.access(p, os.X_OK), 'the dask-gateway-server wheel has no Go proxy binary: ' + p"
echo "upstream venv ready at $VENV"
