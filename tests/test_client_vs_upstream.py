"""Our client against the *public* dask-gateway server (wire compatibility).

The server, its Go proxy, and the schedulers/workers it starts come from a separate
virtualenv holding the PyPI releases (create it with ``scripts/make-upstream-venv.sh``;
override its location with ``DASK_GATEWAY_UPSTREAM_VENV``). This test never skips: a
missing venv is a failure, so CI cannot silently lose the compatibility check.
"""

from __future__ import annotations

import functools
import subprocess
import sys
import textwrap

import dask.array as da
import pytest
from support import waiting
from support.upstream_server import UPSTREAM_CONFIG as CONFIG
from support.upstream_server import upstream_server
from tornado.httpclient import HTTPClientError

from dask_gateway import (
    BasicAuth,
    Gateway,
    GatewayCluster,
    GatewayClusterError,
    GatewayWarning,
)
from dask_gateway.client import ClusterStatus

PASSWORD = "compat-test-password"

pytestmark = [pytest.mark.interop, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def upstream_dir(tmp_path_factory):
    """The public server's directory: ``server.log``, ``clusters/NAME/logs/scheduler.log``."""
    return tmp_path_factory.mktemp("upstream")


@pytest.fixture(scope="module")
def upstream(upstream_dir):
    """The public dask-gateway-server with tests/configs/upstream_config; yields its address."""
    with upstream_server(upstream_dir, PASSWORD, CONFIG) as address:
        yield address


@pytest.fixture
def gateway(upstream):
    with Gateway(upstream, auth=BasicAuth("alice", PASSWORD)) as gateway:
        yield gateway


_wait_for = functools.partial(waiting.wait_for, timeout=60, interval=0.2)


def test_basics_and_errors(upstream, gateway):
    assert gateway.get_versions()["server"] == {"version": "2026.3.0"}
    assert gateway.proxy_address == "gateway://" + upstream.split("://")[1]
    assert gateway.list_clusters() == []
    opts = gateway.cluster_options()
    assert dict(opts) == {"worker_cores": 1, "worker_memory": 1.0, "environment": "basic"}
    with pytest.raises(ValueError, match="worker_cores must be <= 4"):
        opts.worker_cores = 10
    # the server validates too; its message keeps upstream's formatting
    with pytest.raises(ValueError, match=r"worker_cores must be <= 4.000000, got 10"):
        gateway.submit(worker_cores=10)
    with pytest.raises(ValueError, match="not found"):
        gateway.get_cluster("0123456789abcdef0123456789abcdef")
    with pytest.raises(ValueError, match="not a valid ClusterStatus"):
        gateway.list_clusters(status="bogus")
    with Gateway(upstream, auth=BasicAuth("alice", "wrong")) as bad:
        with pytest.raises(HTTPClientError) as info:
            bad.list_clusters()
        assert info.value.code == 401


def test_full_workflow(gateway):
    opts = gateway.cluster_options()
    opts.worker_cores = 2
    opts.environment = "tensorflow"
    cluster = gateway.new_cluster(opts)
    try:
        assert repr(cluster) == f"GatewayCluster<{cluster.name}, status=running>"
        assert cluster.scheduler_address == f"{gateway.proxy_address}/{cluster.name}"
        assert cluster.dashboard_link == f"{gateway.address}/clusters/{cluster.name}/status"
        assert cluster.name in cluster._repr_html_()
        [report] = gateway.list_clusters()
        assert report.name == cluster.name and report.status is ClusterStatus.RUNNING
        assert report.options == {
            "worker_cores": 2,
            "worker_memory": 1.0,
            "environment": "tensorflow",
        }

        client = cluster.get_client()
        assert client.scheduler.address == cluster.scheduler_address
        with pytest.warns(GatewayWarning, match="exceed resource limit of 3 workers"):
            cluster.scale(5)
        cluster.scale(2)
        client.wait_for_workers(2, timeout=120)
        _wait_for(lambda: len(cluster.scheduler_info["workers"]) == 2, what="scheduler_info")
        assert {w["nthreads"] for w in cluster.scheduler_info["workers"].values()} == {2}
        result = da.random.normal(size=(1000, 1000), chunks=(500, 500)).mean().compute()
        assert abs(result) < 0.05

        # adaptive with nothing to do settles at the minimum
        cluster.adapt(minimum=1, maximum=2)
        _wait_for(
            lambda: len(cluster.scheduler_info["workers"]) == 1,
            timeout=120,
            what="adapt to 1 worker",
        )
        cluster.adapt(active=False)
    finally:
        cluster.shutdown()
    assert cluster.status == "closed"
    assert client.status == "closed"  # clients from get_client close with the cluster
    assert gateway.list_clusters() == []
    assert gateway.get_cluster(cluster.name).status in (
        ClusterStatus.STOPPING,
        ClusterStatus.STOPPED,
    )


def test_public_scheduler_gets_no_op_it_lacks(upstream_dir, gateway):
    """Schedulers of the public server run the public preload, which has no handler for our
    lease op: our client must not send it (it would log a KeyError traceback per cluster)."""
    cluster = gateway.new_cluster()  # shutdown_on_close=True: the case that leases
    try:
        client = cluster.get_client(set_as_default=False)
        # A round trip through the scheduler after the client's start-up messages.
        assert client.run_on_scheduler(lambda: 1 + 1) == 2
        assert cluster._lease_comm is None
        assert "dask_gateway_features" not in cluster.scheduler_info
        log = (upstream_dir / "clusters" / cluster.name / "logs" / "scheduler.log").read_text()
        assert "Scheduler at:" in log, log  # the right log, and the scheduler is up
        for noise in ("Traceback", "No handler", "KeyError"):
            assert noise not in log, log
    finally:
        cluster.shutdown()
    for noise in ("Traceback", "Exception"):
        assert noise not in (upstream_dir / "server.log").read_text()


def test_subclass_hooks_and_cleanup_lingering_clusters(upstream, gateway):
    """A GatewayCluster subclass extends _start_async/_stop_async (called, as by the public
    client); cleanup_lingering_clusters (the atexit hook) closes what is still open."""
    from dask_gateway.client import cleanup_lingering_clusters

    calls = []

    class Tracked(GatewayCluster):
        async def _start_async(self):
            await super()._start_async()
            calls.append(("started", self.status, self.scheduler_comm is not None))

        async def _stop_async(self):
            calls.append(("stopping", self.status))
            await super()._stop_async()
            calls.append(("stopped", self.scheduler_comm.status.name))

    kept = Tracked(upstream, auth=BasicAuth("alice", PASSWORD), shutdown_on_close=False)
    dropped = Tracked(upstream, auth=BasicAuth("alice", PASSWORD))
    assert calls == [("started", "running", True)] * 2
    kept.close()  # not shut down, but the hook runs when disconnecting too
    assert calls[2:] == [("stopping", "running"), ("stopped", "closed")]
    assert gateway.get_cluster(kept.name).status is ClusterStatus.RUNNING
    cleanup_lingering_clusters()  # what runs at exit: closes (and so stops) `dropped`
    assert dropped.status == "closed"
    assert calls[4:] == [("stopping", "running"), ("stopped", "closed")]
    assert gateway.get_cluster(dropped.name).status in (
        ClusterStatus.STOPPING,
        ClusterStatus.STOPPED,
    )
    gateway.stop_cluster(kept.name)


def test_context_manager_and_distributed_client(upstream, gateway):
    from distributed import Client

    with GatewayCluster(upstream, auth=BasicAuth("alice", PASSWORD), worker_cores=1) as cluster:
        name = cluster.name
        cluster.scale(1)
        with Client(cluster) as client:
            assert client.submit(lambda x: x + 1, 1).result(timeout=120) == 2
    assert cluster.status == "closed"
    assert name not in {c.name for c in gateway.list_clusters()}


def test_shutdown_on_close_false_and_connect(gateway):
    cluster = gateway.new_cluster(shutdown_on_close=False)
    name = cluster.name
    cluster.close()
    assert cluster.status == "closed"
    assert gateway.get_cluster(name).status is ClusterStatus.RUNNING
    again = gateway.connect(name)
    try:
        assert again.name == name and again.status == "running"
        assert again.shutdown_on_close is False
    finally:
        again.shutdown()
    assert gateway.list_clusters() == []
    with pytest.raises(GatewayClusterError, match=f"Cluster '{name}' is already stopped"):
        _wait_for(lambda: gateway.get_cluster(name).status is ClusterStatus.STOPPED)
        gateway.connect(name)


async def test_asynchronous(upstream):
    async with Gateway(upstream, auth=BasicAuth("alice", PASSWORD), asynchronous=True) as gateway:
        opts = await gateway.cluster_options()
        async with gateway.new_cluster(opts) as cluster:
            assert cluster.status == "running"
            await cluster.scale(1)
            async with cluster.get_client(set_as_default=False) as client:
                await client.wait_for_workers(1, timeout=120)
                x = da.ones((100, 100), chunks=(50, 50)).sum()
                assert await client.compute(x) == 10000
            reports = await gateway.list_clusters()
            assert [r.name for r in reports] == [cluster.name]
        assert cluster.status == "closed"
        assert await gateway.list_clusters() == []


def test_forgotten_clusters_are_stopped_at_exit(upstream, gateway):
    # A host name rather than an IP: name lookups must still work inside atexit hooks.
    address = upstream.replace("127.0.0.1", "localhost")
    script = textwrap.dedent(
        f"""
        from dask_gateway import Gateway, BasicAuth
        gateway = Gateway({address!r}, auth=BasicAuth("alice", {PASSWORD!r}))
        kept = gateway.new_cluster(shutdown_on_close=False)
        dropped = gateway.new_cluster()
        client = dropped.get_client()
        print(kept.name, dropped.name, flush=True)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=180
    )
    assert proc.returncode == 0, proc.stderr
    kept, dropped = proc.stdout.split()
    for noise in ("Traceback", "Exception ignored", "Failed to close", "Error"):
        assert noise not in proc.stderr, proc.stderr
    assert gateway.get_cluster(dropped).status in (ClusterStatus.STOPPING, ClusterStatus.STOPPED)
    assert gateway.get_cluster(kept).status is ClusterStatus.RUNNING
    gateway.stop_cluster(kept)
