#!/usr/bin/env bash
# A throwaway PostgreSQL for the tests, on 127.0.0.1:$PG_PORT (default 25432), without systemd.
# Prints the SQLAlchemy URL of database "gateway" (user/password gateway/gateway) on its last line.
set -euo pipefail
PG_DIR=${PG_DIR:-/tmp/dask-gateway-test-pg}
PG_PORT=${PG_PORT:-25432}
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends postgresql >/dev/null
fi
PG_DIR=$PG_DIR bash "$(dirname "$0")/stop-pg.sh"
BIN=$(dirname "$(ls /usr/lib/postgresql/*/bin/initdb | sort -V | tail -1)")
install -d -o postgres -g postgres -m 0700 "$PG_DIR"
# initdb will not run as root; the package made a postgres user for this.
runuser -u postgres -- "$BIN/initdb" -D "$PG_DIR/data" -U postgres -A trust -E UTF8 --no-sync \
    >"$PG_DIR/initdb.log"
runuser -u postgres -- "$BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w -t 30 start \
    -o "-p $PG_PORT -k $PG_DIR -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off" \
    >/dev/null
for _ in $(seq 100); do "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" && break; sleep 0.1; done
"$BIN/psql" -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -v ON_ERROR_STOP=1 \
    -c "CREATE ROLE gateway LOGIN PASSWORD 'gateway'" -c "CREATE DATABASE gateway OWNER gateway"
echo "postgresql+psycopg://gateway:gateway@127.0.0.1:$PG_PORT/gateway"
