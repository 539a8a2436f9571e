# The configuration the tests run the gateway with: small limits, fast timers.
import sys

from dask_gateway_server.options import Float, Integer, Options, Select


def options_handler(options):
    return {
        "worker_cores": options.worker_cores,
        "worker_memory": int(options.worker_memory * 2**30),
        "python": options.python,
    }


c.Backend.cluster_options = Options(
    Integer("worker_cores", default=1, min=1, max=4, label="Worker Cores"),
    Float("worker_memory", default=1, min=0.25, max=4, label="Worker Memory (GiB)"),
    Select(
        "environment",
        [("basic", sys.executable), ("tensorflow", sys.executable)],
        label="Environment",
        target="python",
    ),
    handler=options_handler,
)
c.ClusterConfig.cluster_max_workers = 10
c.LocalBackend.cluster_heartbeat_period = 2
c.LocalBackend.cluster_status_period = 0.5
c.LocalBackend.worker_status_period = 0.5
c.LocalBackend.cluster_start_timeout = 30
c.LocalBackend.worker_start_timeout = 30
c.LocalBackend.sigint_timeout = 2
