# Configuration of the *public* dask-gateway server used by tests/test_client_vs_upstream.py.
# The test fixture sets the environment variables read below before starting
# `dask-gateway-server -f <this file>` from the separate upstream virtualenv.
import os

from dask_gateway_server.options import Float, Integer, Options, Select

venv = os.environ["UPSTREAM_VENV"]

c.DaskGateway.address = "127.0.0.1:0"
c.DaskGateway.log_level = os.environ.get("UPSTREAM_LOG_LEVEL", "INFO")
# One public port for the HTTP API, dashboards and SNI-routed scheduler traffic.
c.Proxy.address = os.environ["UPSTREAM_PROXY_ADDRESS"]
c.Proxy.log_level = "warn"

# Default backend (UnsafeLocalBackend): schedulers and workers are local processes.
c.SimpleAuthenticator.password = os.environ["UPSTREAM_PASSWORD"]
c.ClusterConfig.scheduler_cmd = [f"{venv}/bin/dask", "scheduler"]
c.ClusterConfig.worker_cmd = [f"{venv}/bin/dask", "worker"]
c.ClusterConfig.cluster_max_workers = 3
c.ClusterConfig.adaptive_period = 0.5
c.UnsafeLocalBackend.clusters_directory = os.environ["UPSTREAM_CLUSTERS_DIR"]
# Keep process shutdown quick in tests.
c.UnsafeLocalBackend.sigint_timeout = 3
c.UnsafeLocalBackend.sigterm_timeout = 2


def options_handler(options):
    return {
        "worker_cores": options.worker_cores,
        "worker_memory": f"{options.worker_memory} G",
    }


c.Backend.cluster_options = Options(
    Integer("worker_cores", default=1, min=1, max=4, label="Worker Cores"),
    Float("worker_memory", default=1, min=1, max=8, label="Worker Memory (GiB)"),
    Select("environment", ["basic", "tensorflow"], label="Environment"),
    handler=options_handler,
)
