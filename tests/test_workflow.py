"""The user's workflow of the core issue, run as written against a real gateway."""

from __future__ import annotations

import functools
import re
import subprocess
import sys
import textwrap

import pytest
from support import waiting
from support.procs import cluster_processes

wait_for = functools.partial(waiting.wait_for, timeout=30, interval=0.05)


def test_the_whole_workflow(gateway, basic_env):
    from dask_gateway import Gateway, GatewayCluster

    gw = Gateway(gateway.address, auth="basic")
    assert gw.list_clusters() == []

    cluster = gw.new_cluster()
    assert re.fullmatch(r"GatewayCluster<[0-9a-f]{32}, status=running>", repr(cluster))
    cluster.shutdown()

    cluster = GatewayCluster()  # from dask config
    assert cluster.status == "running"
    cluster.shutdown()

    options = gw.cluster_options()
    assert repr(options) == "Options<worker_cores=1, worker_memory=1.0, environment='basic'>"
    assert options.worker_cores == 1 and options["worker_cores"] == 1
    options.worker_cores = 2
    with pytest.raises(ValueError, match=r"^worker_cores must be <= 4, got 10$"):
        options.worker_cores = 10
    assert options.worker_cores == 2

    cluster = gw.new_cluster(options)
    assert gw.get_cluster(cluster.name).options["worker_cores"] == 2
    cluster.shutdown()
    cluster = GatewayCluster(cluster_options=options)
    cluster.shutdown()

    cluster = gw.new_cluster(worker_cores=2, environment="tensorflow")
    report = gw.get_cluster(cluster.name)
    assert report.options == {"worker_cores": 2, "worker_memory": 1.0, "environment": "tensorflow"}
    cluster.scale(2)
    cluster.adapt(minimum=2, maximum=10)
    cluster.adapt(active=False)
    client = cluster.get_client()
    client.wait_for_workers(2, timeout=60)
    # wait_for_workers(2) means "at least 2": adapt(minimum=2, maximum=10) may have asked for
    # more meanwhile. The repr below counts them, so wait for exactly 2.
    wait_for(
        lambda: len(client.scheduler_info()["workers"]) == 2, timeout=60, what="exactly 2 workers"
    )
    # distributed's own repr: the scheduler's address as it reports it, then the sizes.
    assert re.fullmatch(
        r"<Client: 'tls://127\.0\.0\.1:\d+' processes=2 threads=4, "
        r"memory=2\.00 GiB>",
        repr(client),
    ), repr(client)
    assert client.scheduler.address == f"{gateway.proxy_address}/{cluster.name}"
    import dask.array as da

    result = da.random.normal(size=(1000, 1000), chunks=(500, 500)).mean().compute()
    assert abs(result) < 0.01
    name = cluster.name
    cluster.shutdown()
    assert name not in [c.name for c in gw.list_clusters()]
    wait_for(lambda: gw.get_cluster(name).status.name == "STOPPED", what="STOPPED")
    assert cluster_processes(name, "scheduler") == []
    assert cluster_processes(name, "worker") == []

    with gw.new_cluster() as cluster:
        client = cluster.get_client()
        name = cluster.name
    assert gw.get_cluster(name).status.name in ("STOPPING", "STOPPED")

    cluster = gw.new_cluster(shutdown_on_close=False)
    name = cluster.name
    cluster.close()
    clusters = gw.list_clusters()
    assert [c.name for c in clusters] == [name]
    assert repr(clusters[0]) == f"ClusterReport<name={name}, status=RUNNING>"
    cluster = gw.connect(clusters[0].name)
    cluster.scale(1)
    client = cluster.get_client()
    assert client.submit(sum, [1, 2, 3]).result() == 6
    cluster.shutdown()
    assert gw.list_clusters() == []
    gw.close()


def test_lingering_clusters_are_shut_down_at_exit(gateway):
    """A script that forgets to shut its cluster down leaves nothing running, and no noise."""
    script = textwrap.dedent(f"""
        from dask_gateway import Gateway
        gw = Gateway("{gateway.address}", auth="basic")
        cluster = gw.new_cluster()
        keep = gw.new_cluster(shutdown_on_close=False)
        print(cluster.name, keep.name)
    """)
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "Exception ignored" not in out.stderr and "Traceback" not in out.stderr, out.stderr
    lingering, kept = out.stdout.split()

    from dask_gateway import Gateway

    with Gateway(gateway.address, auth="basic") as gw:
        wait_for(
            lambda: gw.get_cluster(lingering).status.name == "STOPPED",
            what="lingering cluster stopped",
        )
        assert gw.get_cluster(kept).status.name == "RUNNING"
        gw.stop_cluster(kept)
