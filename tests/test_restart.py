"""The gateway restarts (SIGTERM, SIGKILL) without losing running clusters."""

from __future__ import annotations

import signal
import time

import pytest
from support.procs import cluster_processes


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_cluster_survives_gateway_restart(fresh_gateway, sig):
    from dask_gateway import Gateway

    gw_proc = fresh_gateway(["--LocalBackend.stop_clusters_on_shutdown=False"])
    gw_proc.start()
    with Gateway(gw_proc.address, auth="basic") as gw:
        cluster = gw.new_cluster(shutdown_on_close=False)
        cluster.scale(1)
        client = cluster.get_client()
        client.wait_for_workers(1, timeout=60)
        assert client.submit(lambda: 41 + 1).result() == 42
        name = cluster.name
        client.close()
        cluster.close()
    scheduler = cluster_processes(name, "scheduler")
    workers = cluster_processes(name, "worker")
    assert len(scheduler) == 1 and len(workers) == 1

    code = gw_proc.stop(sig)
    assert code == (0 if sig == signal.SIGTERM else -signal.SIGKILL), gw_proc.log()
    # Nothing of the cluster was stopped with the gateway.
    assert cluster_processes(name, "scheduler") == scheduler
    assert cluster_processes(name, "worker") == workers

    gw_proc.start()
    # Longer than the heartbeat timeout (2 x 2 s here): the schedulers found the new gateway.
    time.sleep(6)
    with Gateway(gw_proc.address, auth="basic") as gw:
        assert [c.name for c in gw.list_clusters()] == [name]
        assert gw.get_cluster(name).status.name == "RUNNING"
        cluster = gw.connect(name)
        client = cluster.get_client()
        assert client.submit(lambda: 6 * 7).result() == 42
        assert len(client.scheduler_info()["workers"]) == 1
        # The same processes, not new ones.
        assert cluster_processes(name, "scheduler") == scheduler
        assert cluster_processes(name, "worker") == workers
        # The restarted gateway still drives the cluster: scale and stop it.
        cluster.scale(2)
        client.wait_for_workers(2, timeout=60)
        cluster.shutdown()
        for _ in range(300):
            if gw.get_cluster(name).status.name == "STOPPED":
                break
            time.sleep(0.05)
        assert gw.get_cluster(name).status.name == "STOPPED"
    assert cluster_processes(name, "scheduler") == []
    assert cluster_processes(name, "worker") == []
