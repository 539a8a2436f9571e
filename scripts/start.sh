#!/usr/bin/env bash
# Start the product on this machine: a gateway on http://127.0.0.1:8000 and JupyterLab on
# http://127.0.0.1:8888 with the Dask Gateway sidebar and server extension configured to use it
# (notebooks reach it with `Gateway()` too). Prints the URL to open. Ctrl-C (or SIGTERM to
# this script) stops everything it started: JupyterLab and its kernels, then the gateway and
# every cluster's scheduler and workers.
#
# It installs the project with its `all` extra (gateway, JupyterLab, sidebar, what the
# notebooks use) into the venv, and again only when the sources changed since (a stamp in the
# venv holds their hash).
#
# Environment: VENV (default ./.venv), GATEWAY_PORT (8000), LAB_PORT (8888), DATA_DIR (the
# gateway's database and cluster directories; ./.dask-gateway), SKIP_INSTALL=1 to use the
# venv as it is, FORCE_INSTALL=1 to reinstall, JUPYTER_ARGS for more `jupyter lab` options.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${VENV:-$ROOT/.venv}
GATEWAY_PORT=${GATEWAY_PORT:-8000}
LAB_PORT=${LAB_PORT:-8888}
DATA_DIR=${DATA_DIR:-$ROOT/.dask-gateway}
EXTRA=all
STAMP=$VENV/.dask-gateway-ng-installed

say() { echo "start.sh: $*"; }
fail() { echo "start.sh: $*" >&2; exit 1; }

for tool in python3 curl; do
    command -v "$tool" >/dev/null || fail "needs $tool (e.g. apt-get install $tool)"
done

# -- 1. The ports, before anything is installed or started. ------------------------------------
# A bind test, as the servers will bind (SO_REUSEADDR): it fails only when something listens.
port_problem() {
    python3 - "$1" <<'PY'
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError as e:
    print(e.strerror or e)
PY
}
[ "$GATEWAY_PORT" != "$LAB_PORT" ] || fail "GATEWAY_PORT and LAB_PORT are both $LAB_PORT"
for spec in "GATEWAY_PORT:$GATEWAY_PORT:the gateway" "LAB_PORT:$LAB_PORT:JupyterLab"; do
    IFS=: read -r var port what <<<"$spec"
    problem=$(port_problem "$port")
    if [ -n "$problem" ]; then
        fail "port $port for $what is taken ($problem): is an earlier start.sh still" \
             "running? Stop it, or choose another port, e.g. $var=$((port + 1)) bash scripts/start.sh"
    fi
done

# -- 2. The venv, installed once per version of the sources. -----------------------------------
sources_hash() {
    # What `pip install .` builds code from (not build outputs, not README.md), and the Python
    # and extra it is for.
    {
        find pyproject.toml dask_gateway server jupyter_ext \
            \( -name __pycache__ -o -path jupyter_ext/node_modules -o -path jupyter_ext/lib \
               -o -path jupyter_ext/labextension -o -name '*.tsbuildinfo' \) -prune \
            -o -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
        echo "extra=$EXTRA"
        "$VENV/bin/python" -c 'import sys; print(sys.version)'
    } | sha256sum | cut -d' ' -f1
}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
if [ "${SKIP_INSTALL:-0}" = 1 ]; then
    say "using $VENV as it is (SKIP_INSTALL=1)"
else
    want=$(sources_hash)
    have=$(cat "$STAMP" 2>/dev/null || true)
    if [ "${FORCE_INSTALL:-0}" != 1 ] && [ "$want" = "$have" ] \
            && [ -x "$VENV/bin/dask-gateway-server" ] && [ -x "$VENV/bin/jupyter" ]; then
        say "$VENV is up to date with the sources: not reinstalling"
    else
        say "installing .[$EXTRA] into $VENV (builds the JupyterLab sidebar with npm the" \
            "first time; a few minutes)..."
        rm -f "$STAMP"
        "$VENV/bin/python" -m pip install -q --upgrade pip
        "$VENV/bin/python" -m pip install -q ".[$EXTRA]"
        echo "$want" >"$STAMP"
    fi
fi

# -- 3. The gateway and JupyterLab, stopped with everything they started. ----------------------
# The gateway and everything that talks to it (the Jupyter server extension and the
# notebooks' kernels) share this dask config.
export DASK_GATEWAY__ADDRESS=http://127.0.0.1:$GATEWAY_PORT
export DASK_GATEWAY__AUTH__TYPE=basic
CLUSTERS_DIR=$DATA_DIR/clusters
mkdir -p "$DATA_DIR" notebooks

alive() { kill -0 "$1" 2>/dev/null; }

children_of() {  # pids whose parent is $1, from /proc (no procps needed)
    local parent=$1 stat fields
    for stat in /proc/[0-9]*/stat; do
        read -r fields <"$stat" 2>/dev/null || continue
        fields=${fields##*) }  # the fields after the command name, which may hold spaces
        # shellcheck disable=SC2086
        set -- $fields
        if [ "${2:-}" = "$parent" ]; then
            stat=${stat#/proc/}
            echo "${stat%/stat}"
        fi
    done
}

stop_process() {  # pid, what, seconds: SIGTERM, then SIGKILL once that many seconds passed
    local pid=$1 what=$2 seconds=$3 i
    if [ -z "$pid" ] || ! alive "$pid"; then
        return 0
    fi
    say "stopping $what..."
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < seconds * 10; i++)); do
        alive "$pid" || break
        sleep 0.1
    done
    if alive "$pid"; then
        say "$what did not stop within $seconds s: killing it"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

kill_left_in_clusters_dir() {  # schedulers and workers of a gateway that had to be killed
    local d cwd
    for d in /proc/[0-9]*; do
        cwd=$(readlink "$d/cwd" 2>/dev/null) || continue
        case "$cwd" in
            "$CLUSTERS_DIR"/*)
                say "killing leftover process ${d#/proc/} ($cwd)"
                kill -KILL "${d#/proc/}" 2>/dev/null || true ;;
        esac
    done
}

GATEWAY='' LAB=''
cleanup() {
    trap '' INT TERM HUP  # a second Ctrl-C must not cut the clean-up short
    local kernels='' pid
    if [ -n "$LAB" ]; then
        # Kernels run in sessions of their own: JupyterLab shuts them down as it stops; any
        # it could not are killed here.
        kernels=$(children_of "$LAB")
        stop_process "$LAB" "JupyterLab and its kernels" 30
        for pid in $kernels; do
            if alive "$pid"; then
                say "killing kernel $pid"
                kill -KILL "$pid" 2>/dev/null || true
            fi
        done
    fi
    # Then the gateway (kernels' clusters are shut down through it as they exit). It stops
    # every cluster's scheduler and workers (their own sessions) before it exits.
    if [ -n "$GATEWAY" ]; then
        stop_process "$GATEWAY" "the gateway and its clusters" 60
        kill_left_in_clusters_dir
    fi
    say "stopped"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# Both run in sessions of their own, so Ctrl-C in the terminal reaches only this script,
# which stops them in order: JupyterLab (and its kernels) first, while the gateway they talk
# to still runs, then the gateway.
SETSID=()
command -v setsid >/dev/null && SETSID=(setsid)

"${SETSID[@]}" "$VENV/bin/dask-gateway-server" --DaskGateway.data_dir="$DATA_DIR" \
    --Proxy.address="127.0.0.1:$GATEWAY_PORT" \
    --LocalBackend.clusters_directory="$CLUSTERS_DIR" </dev/null &
GATEWAY=$!

# JupyterLab starts meanwhile: it needs the gateway only when the sidebar or a notebook asks.
ROOT_ARGS=()
[ "$(id -u)" = 0 ] && ROOT_ARGS=(--allow-root)  # e.g. in a container
TOKEN=${JUPYTER_TOKEN:-$("$VENV/bin/python" -c 'import secrets; print(secrets.token_hex(16))')}
# stdin from /dev/null: no "Shutdown this Jupyter server (y/[n])?" question on a signal.
# shellcheck disable=SC2086
"${SETSID[@]}" "$VENV/bin/jupyter" lab --no-browser --ip=127.0.0.1 --port="$LAB_PORT" \
    --ServerApp.port_retries=0 --IdentityProvider.token="$TOKEN" \
    --ServerApp.root_dir="$ROOT/notebooks" "${ROOT_ARGS[@]}" ${JUPYTER_ARGS:-} </dev/null &
LAB=$!

until curl -sf "$DASK_GATEWAY__ADDRESS/api/health" >/dev/null; do
    alive "$GATEWAY" || fail "the gateway failed to start (its log is above)"
    sleep 0.1
done
say "gateway ready at $DASK_GATEWAY__ADDRESS"
until curl -sf "http://127.0.0.1:$LAB_PORT/api/status?token=$TOKEN" >/dev/null; do
    alive "$LAB" || fail "JupyterLab failed to start (its log is above)"
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
# Until Ctrl-C, or until either of them exits.
while alive "$LAB" && alive "$GATEWAY"; do
    wait -n 2>/dev/null || true
done
alive "$GATEWAY" || say "the gateway exited"
alive "$LAB" || say "JupyterLab exited"
exit 1
