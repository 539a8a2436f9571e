# The one configuration bench/compare.py gives BOTH servers (ours and the public one):
# only traits both document, so the two runs differ by the server alone. Each server runs
# schedulers and workers with the `dask` command of its own environment.
# Set by compare.py: BENCH_HOME, BENCH_PORT, BENCH_PASSWORD, BENCH_DB_KEY, BENCH_FAKE (0/1),
# BENCH_DEFAULT_CMDS (0/1), BENCH_FAKE_DEFAULT_PERIODS (0/1).
import os
import sys

from dask_gateway_server.options import Float, Integer, Options

home = os.environ["BENCH_HOME"]
dask = os.path.join(sys.prefix, "bin", "dask")

c.DaskGateway.address = "127.0.0.1:0"
c.DaskGateway.log_level = "INFO"
c.Proxy.address = "127.0.0.1:" + os.environ["BENCH_PORT"]
c.Proxy.log_level = "warn"
c.SimpleAuthenticator.password = os.environ["BENCH_PASSWORD"]

c.DBBackendBase.db_url = "sqlite:///" + os.path.join(home, "gateway.sqlite")
c.DBBackendBase.db_encrypt_keys = [os.environ["BENCH_DB_KEY"]]


def options_handler(options):
    return {"worker_cores": options.worker_cores, "worker_memory": f"{options.worker_memory:f}G"}


c.Backend.cluster_options = Options(
    Integer("worker_cores", default=1, min=1, max=2, label="Worker Cores"),
    Float("worker_memory", default=2, min=0.5, max=4, label="Worker Memory (GiB)"),
    handler=options_handler,
)
if os.environ.get("BENCH_DEFAULT_CMDS") != "1":  # compare.py --ours-defaults unsets them
    c.ClusterConfig.scheduler_cmd = [dask, "scheduler"]
    c.ClusterConfig.worker_cmd = [dask, "worker"]
c.ClusterConfig.cluster_max_workers = 4

c.LocalBackend.clusters_directory = os.path.join(home, "clusters")
c.LocalBackend.sigint_timeout = 5
c.LocalBackend.sigterm_timeout = 2
c.LocalBackend.sigkill_timeout = 2

if os.environ.get("BENCH_FAKE") == "1":
    # Cheap fake clusters (tests/support/fake_backend.py): one heartbeat each, never timed out.
    tests = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests")
    sys.path.insert(0, tests)
    c.DaskGateway.backend_class = "support.fake_backend.FakeBackend"
    c.DBBackendBase.cluster_heartbeat_timeout = 24 * 3600
    if os.environ.get("BENCH_FAKE_DEFAULT_PERIODS") != "1":  # many_clusters.py: defaults
        c.DBBackendBase.cluster_status_period = 3600
