#!/usr/bin/env bash
# Start the product on this machine: a gateway on http://127.0.0.1:8000 and JupyterLab on
# http://127.0.0.1:8888 with the Dask Gateway sidebar and server extension configured to use it
# (notebooks reach it with `Gateway()` too). Prints the URL to open. Ctrl-C stops both.
#
# Environment: VENV (default ./.venv), GATEWAY_PORT (8000), LAB_PORT (8888),
# SKIP_INSTALL=1 to reuse the venv as it is, JUPYTER_ARGS for more `jupyter lab` options.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-$PWD/.venv}
GATEWAY_PORT=${GATEWAY_PORT:-8000}
LAB_PORT=${LAB_PORT:-8888}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
if [ "${SKIP_INSTALL:-0}" != 1 ]; then
    echo "Installing into $VENV (builds the JupyterLab sidebar with npm the first time)..."
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q ".[server,jupyter]"
fi

# The gateway and everything that talks to it (the Jupyter server extension and the
# notebooks' kernels) share this dask config.
export DASK_GATEWAY__ADDRESS=http://127.0.0.1:$GATEWAY_PORT
export DASK_GATEWAY__AUTH__TYPE=basic
mkdir -p .dask-gateway notebooks

GATEWAY= LAB=
cleanup() {
    [ -n "$LAB" ] && kill "$LAB" 2>/dev/null && wait "$LAB" 2>/dev/null
    [ -n "$GATEWAY" ] && kill "$GATEWAY" 2>/dev/null && wait "$GATEWAY" 2>/dev/null
    true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

"$VENV/bin/dask-gateway-server" --DaskGateway.data_dir="$PWD/.dask-gateway" \
    --Proxy.address="127.0.0.1:$GATEWAY_PORT" &
GATEWAY=$!
for _ in $(seq 300); do
    curl -sf "$DASK_GATEWAY__ADDRESS/api/health" >/dev/null && break
    kill -0 "$GATEWAY" 2>/dev/null || { echo "The gateway failed to start" >&2; exit 1; }
    sleep 0.1
done
echo "Gateway ready at $DASK_GATEWAY__ADDRESS"

ROOT_ARGS=()
[ "$(id -u)" = 0 ] && ROOT_ARGS=(--allow-root)  # e.g. in a container
TOKEN=${JUPYTER_TOKEN:-$("$VENV/bin/python" -c 'import secrets; print(secrets.token_hex(16))')}
"$VENV/bin/jupyter" lab --no-browser --ip=127.0.0.1 --port="$LAB_PORT" \
    --ServerApp.port_retries=0 --IdentityProvider.token="$TOKEN" \
    --ServerApp.root_dir="$PWD/notebooks" "${ROOT_ARGS[@]}" ${JUPYTER_ARGS:-} &
LAB=$!
for _ in $(seq 600); do
    curl -sf "http://127.0.0.1:$LAB_PORT/api/status?token=$TOKEN" >/dev/null && break
    kill -0 "$LAB" 2>/dev/null || { echo "JupyterLab failed to start" >&2; exit 1; }
    sleep 0.1
done
if ! curl -sf -H "Authorization: token $TOKEN" \
        "http://127.0.0.1:$LAB_PORT/dask-gateway/clusters" >/dev/null; then
    echo "Warning: the Dask Gateway server extension did not answer; see the log above" >&2
fi
cat <<EOF

  Dask Gateway + JupyterLab are running. Open:

      http://127.0.0.1:$LAB_PORT/lab?token=$TOKEN

  The Dask Gateway panel is in the left sidebar. Ctrl-C stops everything.

EOF
wait "$LAB"
