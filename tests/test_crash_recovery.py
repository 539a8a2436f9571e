"""The gateway killed while clusters are being created, scaled and stopped: after a restart
every cluster reaches its target and no process is left over or duplicated."""

from __future__ import annotations

import signal
import time

from support.http_helpers import basic, call
from support.procs import cluster_processes

ALICE = basic("alice")


def test_sigkill_mid_flight_leaves_no_orphans(fresh_gateway):
    gw = fresh_gateway(["--LocalBackend.stop_clusters_on_shutdown=False"])
    gw.start()
    api = f"{gw.address}/api/v1/clusters"
    stable = call("POST", f"{api}/", {}, ALICE).json()["name"]
    stopping = call("POST", f"{api}/", {}, ALICE).json()["name"]
    for name in (stable, stopping):
        assert call("GET", f"{api}/{name}?wait", headers=ALICE).json()["status"] == "RUNNING"
    call("POST", f"{api}/{stable}/scale", {"count": 2}, ALICE)
    # In flight when the gateway dies: two new clusters, a scale-up, a stop.
    creating = [call("POST", f"{api}/", {}, ALICE).json()["name"] for _ in range(2)]
    call("POST", f"{api}/{stable}/scale", {"count": 3}, ALICE)
    call("DELETE", f"{api}/{stopping}", headers=ALICE)
    time.sleep(0.3)
    assert gw.stop(signal.SIGKILL) == -signal.SIGKILL

    gw.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        answers = {
            n: call("GET", f"{api}/{n}", headers=ALICE).json()
            for n in [stable, stopping, *creating]
        }
        assert all("status" in a for a in answers.values()), (answers, gw.log()[-4000:])
        states = {n: a["status"] for n, a in answers.items()}
        done = (
            states[stopping] == "STOPPED"
            and all(states[n] == "RUNNING" for n in [stable, *creating])
            and len(cluster_processes(stable, "worker")) == 3
        )
        if done:
            break
        time.sleep(0.2)
    assert done, (states, gw.log()[-4000:])
    # Exactly one scheduler per running cluster, the asked-for workers, nothing of the
    # stopped one.
    for name in [stable, *creating]:
        assert len(cluster_processes(name, "scheduler")) == 1, name
    assert len(cluster_processes(stable, "worker")) == 3
    assert cluster_processes(stopping, "scheduler") == []
    assert cluster_processes(stopping, "worker") == []
    listing = call("GET", f"{api}/", headers=ALICE).json()
    assert sorted(listing) == sorted([stable, *creating])
