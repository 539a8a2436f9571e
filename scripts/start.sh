#!/usr/bin/env bash
# Start the product on this machine: a gateway on http://127.0.0.1:8000 and JupyterLab on
# http://127.0.0.1:8888 whose notebooks reach it with `Gateway()`. Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-$PWD/.venv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q ".[server,jupyter]"

export DASK_GATEWAY__ADDRESS=http://127.0.0.1:8000
export DASK_GATEWAY__AUTH__TYPE=basic
mkdir -p .dask-gateway
"$VENV/bin/dask-gateway-server" --DaskGateway.data_dir="$PWD/.dask-gateway" &
GATEWAY=$!
trap 'kill $GATEWAY 2>/dev/null; wait $GATEWAY 2>/dev/null' EXIT
for _ in $(seq 100); do
    curl -sf http://127.0.0.1:8000/api/health >/dev/null && break
    sleep 0.1
done
echo "Gateway ready at http://127.0.0.1:8000"
mkdir -p notebooks
"$VENV/bin/jupyter" lab --no-browser --ip=127.0.0.1 --port=8888 --notebook-dir=notebooks \
    ${JUPYTER_ARGS:-}
