"""The public dask-gateway-server running with *our* client installed beside it.

A site that installs this project's client into the environment of its public
dask-gateway-server (2026.3.0) must keep a working server: its in-process backend imports
``GatewaySchedulerService`` and ``make_gateway_client`` from our
``dask_gateway.scheduler_preload`` and builds the service with the public keyword arguments;
its local backend starts schedulers that load our preload.

The public ``LocalBackend`` proper (as root, clusters as their users) is not run: in 2026.3.0
its ``setup_working_directory`` extends its list of paths with the *characters* of the
certificate path and chowns each, starting with ``/``, to the cluster's user. Its subclass
``UnsafeLocalBackend`` (the public server's default, same process handling without the user
switch) is what runs here.
"""

from __future__ import annotations

import sys

import cloudpickle
import pytest
from support import waiting
from support.paths import CONFIGS
from support.public_server_env import make_public_server_env
from support.upstream_server import UPSTREAM_CONFIG, upstream_server

from dask_gateway import BasicAuth, Gateway
from dask_gateway.client import ClusterStatus

pytestmark = [pytest.mark.interop, pytest.mark.timeout(600)]

PASSWORD = "public-server-our-client"
INPROCESS_CONFIG = CONFIGS / "upstream_config" / "inprocess_config.py"
# Functions of this module run in the scheduler, which cannot import the tests.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

LOG_NOISE = (
    "Traceback",
    "No handler",
    "Task exception was never retrieved",
    "was never awaited",
    "Could not launch service",
    "Error starting gateway service",
)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """The public server 2026.3.0 and our client, in one environment."""
    return make_public_server_env(tmp_path_factory.mktemp("public-server-our-client") / "env")


def _service_info(dask_scheduler):
    """Runs inside the scheduler: what serves it, and from where."""
    service = dask_scheduler.services["gateway"]
    return {
        "class": f"{type(service).__module__}.{type(service).__qualname__}",
        "client_package": sys.modules["dask_gateway"].__file__,
        "port": service.port,
        "api_address": service.api_address,
        "in_identity": dask_scheduler.identity()["services"]["gateway"],
    }


def test_public_inprocess_backend_with_our_client(env, tmp_path):
    site_packages = next((env / "lib").glob("python3*/site-packages"))
    server_dir = tmp_path / "server"
    with (
        upstream_server(server_dir, PASSWORD, INPROCESS_CONFIG, venv=env) as address,
        Gateway(address, auth=BasicAuth("alice", PASSWORD)) as gateway,
    ):
        cluster = gateway.new_cluster()  # RUNNING: our service's first heartbeat arrived
        try:
            client = cluster.get_client(set_as_default=False)
            info = client.run_on_scheduler(_service_info)
            # The public backend built our adapter, in the gateway process itself.
            assert info["class"] == "dask_gateway.scheduler_preload.GatewaySchedulerService"
            assert info["client_package"].startswith(str(site_packages)), info
            assert isinstance(info["port"], int) and info["port"] > 0, info
            assert info["in_identity"] == info["port"]
            assert info["api_address"].endswith(f":{info['port']}"), info

            # scale goes gateway -> our service's API -> heartbeat -> a worker
            cluster.scale(1)
            client.wait_for_workers(1, timeout=120)
            assert client.submit(lambda x: x + 1, 41).result(timeout=60) == 42
            # adapt with nothing to do settles at the minimum
            cluster.adapt(minimum=0, maximum=1)
            waiting.wait_for(
                lambda: not client.scheduler_info()["workers"],
                timeout=120,
                interval=0.2,
                what="adapt down to 0 workers",
            )
            cluster.adapt(active=False)
            client.close()
        finally:
            cluster.shutdown()
        waiting.wait_for(
            lambda: gateway.get_cluster(cluster.name).status is ClusterStatus.STOPPED,
            timeout=60,
            interval=0.2,
            what="cluster STOPPED",
        )
    log = (server_dir / "server.log").read_text()
    assert f"Cluster {cluster.name} stopped" in log, log
    for noise in LOG_NOISE:
        assert noise not in log, log


def _scheduler_facts(dask_scheduler):
    return {
        "prefix": sys.prefix,
        "preload": sys.modules["dask_gateway.scheduler_preload"].__file__,
        "handlers": sorted(h for h in dask_scheduler.handlers if "gateway" in h),
    }


def test_public_local_backend_with_our_client(env, tmp_path):
    """UnsafeLocalBackend: schedulers and workers are processes of the environment, so they
    load our preload; our client drives them and holds the orphan lease it offers."""
    server_dir = tmp_path / "server"
    with (
        upstream_server(server_dir, PASSWORD, UPSTREAM_CONFIG, venv=env) as address,
        Gateway(address, auth=BasicAuth("alice", PASSWORD)) as gateway,
    ):
        cluster = gateway.new_cluster()
        name = cluster.name
        try:
            client = cluster.get_client(set_as_default=False)
            facts = client.run_on_scheduler(_scheduler_facts)
            assert facts["prefix"] == str(env)
            assert facts["preload"].startswith(str(env)), facts  # ours, not the public one
            assert facts["handlers"] == ["dask_gateway_lease"]
            assert cluster._lease_comm is not None  # offered, so held

            cluster.scale(2)
            client.wait_for_workers(2, timeout=120)
            assert sum(client.gather(client.map(lambda x: x * x, range(10)))) == 285
            cluster.adapt(minimum=1, maximum=1)
            waiting.wait_for(
                lambda: len(client.scheduler_info()["workers"]) == 1,
                timeout=120,
                interval=0.2,
                what="adapt down to 1 worker",
            )
            cluster.adapt(active=False)
            log = (server_dir / "clusters" / name / "logs" / "scheduler.log").read_text()
            assert "dask-gateway: scheduler API at" in log, log
            for noise in LOG_NOISE:
                assert noise not in log, log
            client.close()
        finally:
            cluster.shutdown()
        waiting.wait_for(
            lambda: gateway.get_cluster(name).status is ClusterStatus.STOPPED,
            timeout=60,
            interval=0.2,
            what="cluster STOPPED",
        )
    log = (server_dir / "server.log").read_text()
    assert f"Cluster {name} stopped" in log, log
    for noise in LOG_NOISE:
        assert noise not in log, log
