"""Clusters move PENDING -> RUNNING -> STOPPING -> STOPPED, fail when their scheduler dies,
and get lost workers replaced."""

from __future__ import annotations

import functools
import os
import signal
import time

from support import waiting
from support.http_helpers import basic, call, create
from support.procs import cluster_processes

ALICE = basic("alice")


wait_for = functools.partial(waiting.wait_for, timeout=30, interval=0.05)


def status(gw, name) -> str:
    return call("GET", f"{gw.address}/api/v1/clusters/{name}", headers=ALICE).json()["status"]


def test_status_transitions(gateway):
    name = create(gateway, ALICE)
    seen = [status(gateway, name)]
    assert seen == ["PENDING"]
    wait_for(lambda: status(gateway, name) == "RUNNING", what="RUNNING")
    assert len(cluster_processes(name, "scheduler")) == 1
    r = call("DELETE", f"{gateway.address}/api/v1/clusters/{name}", headers=ALICE)
    assert r.status == 204
    seen = {status(gateway, name)}
    wait_for(lambda: seen.add(status(gateway, name)) or "STOPPED" in seen, what="STOPPED")
    assert seen <= {"STOPPING", "STOPPED"}
    model = call("GET", f"{gateway.address}/api/v1/clusters/{name}", headers=ALICE).json()
    assert model["stop_time"] >= model["start_time"]
    assert model["tls_key"] is None and model["dashboard_route"] is None
    assert cluster_processes(name, "scheduler") == []
    # Stopped clusters leave the default listing but remain visible by status.
    assert name not in call("GET", f"{gateway.address}/api/v1/clusters/", headers=ALICE).json()
    stopped = call("GET", f"{gateway.address}/api/v1/clusters/?status=stopped", headers=ALICE)
    assert name in stopped.json()


def test_stop_while_pending(gateway):
    name = create(gateway, ALICE)
    call("DELETE", f"{gateway.address}/api/v1/clusters/{name}", headers=ALICE)
    wait_for(lambda: status(gateway, name) == "STOPPED", what="STOPPED")
    time.sleep(0.5)
    assert cluster_processes(name, "scheduler") == []


def test_scheduler_death_fails_cluster(gateway):
    name = create(gateway, ALICE)
    wait_for(lambda: status(gateway, name) == "RUNNING", what="RUNNING")
    (pid,) = cluster_processes(name, "scheduler")
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: status(gateway, name) == "FAILED", timeout=15, what="FAILED")
    assert name not in call("GET", f"{gateway.address}/api/v1/clusters/", headers=ALICE).json()


def test_killed_worker_is_replaced(gateway):
    name = create(gateway, ALICE)
    wait_for(lambda: status(gateway, name) == "RUNNING", what="RUNNING")
    r = call("POST", f"{gateway.address}/api/v1/clusters/{name}/scale", {"count": 2}, ALICE)
    assert r.json() == {"ok": True, "msg": None}
    first = wait_for(
        lambda: len(cluster_processes(name, "worker")) == 2 and cluster_processes(name, "worker"),
        what="two workers",
    )
    os.kill(first[0], signal.SIGKILL)
    wait_for(
        lambda: (
            (pids := cluster_processes(name, "worker")) and len(pids) == 2 and first[0] not in pids
        ),
        timeout=20,
        what="a replacement worker",
    )
    assert status(gateway, name) == "RUNNING"
    call("POST", f"{gateway.address}/api/v1/clusters/{name}/scale", {"count": 0}, ALICE)
    wait_for(lambda: cluster_processes(name, "worker") == [], timeout=20, what="workers retired")
    call("DELETE", f"{gateway.address}/api/v1/clusters/{name}", headers=ALICE)
    wait_for(lambda: status(gateway, name) == "STOPPED", what="STOPPED")
