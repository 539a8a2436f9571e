"""Client connections to local schedulers are handed to the scheduler itself: they do not
flow through the gateway, so they keep working, untouched, across a gateway restart."""

from __future__ import annotations

import signal

import pytest
from support.procs import cluster_processes


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_client_connection_survives_gateway_restart(fresh_gateway, sig):
    from dask_gateway import Gateway

    gw_proc = fresh_gateway(["--LocalBackend.stop_clusters_on_shutdown=False"])
    gw_proc.start()
    with Gateway(gw_proc.address, auth="basic") as gw:
        cluster = gw.new_cluster(shutdown_on_close=False)
        cluster.scale(1)
        client = cluster.get_client(set_as_default=False)
        client.wait_for_workers(1, timeout=60)
        assert client.submit(lambda: 41 + 1).result() == 42
        comm = client.scheduler_comm.comm
        scheduler = cluster_processes(cluster.name, "scheduler")

        assert gw_proc.stop(sig) == (0 if sig == signal.SIGTERM else -signal.SIGKILL)
        # Gateway down: the client still computes on its open connection.
        assert client.submit(lambda: 6 * 7, pure=False).result(timeout=30) == 42

        gw_proc.start()
        assert client.submit(lambda: 5 * 5, pure=False).result(timeout=30) == 25
        # The very same connection all along: never closed, never replaced.
        assert client.scheduler_comm.comm is comm and not comm.closed()
        assert cluster_processes(cluster.name, "scheduler") == scheduler
        assert client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.clients)) == 2

        client.close()
        # New connections after the restart are handed over too.
        with cluster.get_client(set_as_default=False) as again:
            assert again.submit(lambda: 1 + 1).result(timeout=30) == 2
        cluster.shutdown()
