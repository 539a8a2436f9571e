#!/usr/bin/env bash
# Stop the test KDC started by start-kdc.sh and remove its realm.
set -u
KDC_DIR=${KDC_DIR:-/tmp/dask-gateway-test-kdc}
if [ -s "$KDC_DIR/kdc.pid" ]; then
    kill "$(cat "$KDC_DIR/kdc.pid")" 2>/dev/null
    sleep 0.2
fi
rm -rf "$KDC_DIR"
