# The test gateway's config, plus two environments for tests of phases, failure reasons and
# logs: "no-distributed", whose scheduler cannot import distributed (its Python starts without
# site-packages), and "gated", whose scheduler waits until the file named by the gateway's
# DGJ_SCHEDULER_GATE exists (a cluster stays pending for as long as a test needs).
import os
import sys

from dask_gateway_server.options import Float, Integer, Options, Select

load_subconfig(os.path.join(os.path.dirname(__file__), "gateway_config.py"))

SCHEDULER = [sys.executable, "-m", "distributed.cli.dask_scheduler"]
NO_DISTRIBUTED = [sys.executable, "-S", "-m", "distributed.cli.dask_scheduler"]
GATED = ["sh", "-c", 'while [ ! -e "$DGJ_GATE" ]; do sleep 0.2; done; exec "$0" "$@"', *SCHEDULER]
GATE = os.environ.get("DGJ_SCHEDULER_GATE", "")


def options_handler(options):
    out = {
        "worker_cores": options.worker_cores,
        "worker_memory": int(options.worker_memory * 2**30),
    }
    if options.environment == "no-distributed":
        out["scheduler_cmd"] = NO_DISTRIBUTED
    elif options.environment == "gated":
        if not GATE:
            raise ValueError("the gateway was started without DGJ_SCHEDULER_GATE")
        out["scheduler_cmd"] = GATED
        out["environment"] = {"DGJ_GATE": GATE}
    return out


c.Backend.cluster_options = Options(
    Integer("worker_cores", default=1, min=1, max=4, label="Worker Cores"),
    Float("worker_memory", default=1, min=0.25, max=4, label="Worker Memory (GiB)"),
    Select("environment", ["basic", "no-distributed", "gated"], label="Environment"),
    handler=options_handler,
)
# A gated scheduler may wait for its test: do not fail its start meanwhile.
c.LocalBackend.cluster_start_timeout = 120
