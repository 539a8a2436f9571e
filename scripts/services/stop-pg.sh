#!/usr/bin/env bash
# Stop the test PostgreSQL started by start-pg.sh and remove its files.
set -u
PG_DIR=${PG_DIR:-/tmp/dask-gateway-test-pg}
alive() { local s; s=$(ps -o stat= -p "$1" 2>/dev/null) || return 1; [[ $s != Z* ]]; }
if [ -s "$PG_DIR/data/postmaster.pid" ]; then
    pid=$(head -1 "$PG_DIR/data/postmaster.pid")
    if alive "$pid"; then
        kill -INT "$pid"   # "fast" shutdown
        for _ in $(seq 100); do alive "$pid" || break; sleep 0.1; done
        alive "$pid" && kill -QUIT "$pid"
    fi
fi
rm -rf "$PG_DIR"
