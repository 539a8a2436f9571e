# The test gateway's config, plus an environment whose scheduler cannot import distributed
# (its Python starts without site-packages), for tests of failure reasons and logs.
import os
import sys

from dask_gateway_server.options import Float, Integer, Options, Select

load_subconfig(os.path.join(os.path.dirname(__file__), "gateway_config.py"))

NO_DISTRIBUTED = [sys.executable, "-S", "-m", "distributed.cli.dask_scheduler"]


def options_handler(options):
    out = {
        "worker_cores": options.worker_cores,
        "worker_memory": int(options.worker_memory * 2**30),
    }
    if options.environment == "no-distributed":
        out["scheduler_cmd"] = NO_DISTRIBUTED
    return out


c.Backend.cluster_options = Options(
    Integer("worker_cores", default=1, min=1, max=4, label="Worker Cores"),
    Float("worker_memory", default=1, min=0.25, max=4, label="Worker Memory (GiB)"),
    Select("environment", ["basic", "no-distributed"], label="Environment"),
    handler=options_handler,
)
