# The multi-node Slurm tests' gateway (tests/test_slurm_multinode.py): the Slurm backend with
# the Slurm of scripts/services/start-slurm-multinode.sh (SLURM_CONF in the gateway's
# environment), whose jobs run in the nodes' network namespaces. The jobs' Python is the
# shared venv every user can run (DASK_GATEWAY_TEST_SHARED_VENV); the launcher, standard
# library only, the system's. A user may pin the scheduler to a node; workers then avoid it
# (as a site might keep schedulers on service nodes), so that a test knows which node to fail.
import os

from dask_gateway_server.options import Float, Integer, Options, Select

c.DaskGateway.backend_class = "dask_gateway_server.backends.slurm.SlurmBackend"

SHARED_VENV = os.environ.get("DASK_GATEWAY_TEST_SHARED_VENV", "/opt/dask-gateway-test/venv")
NODES = [f"node{i}" for i in range(1, int(os.environ.get("MN_NODES", "3")) + 1)]


def options_handler(options):
    config = {
        "worker_cores": options.worker_cores,
        "worker_memory": int(options.worker_memory * 2**30),
        "python": f"{SHARED_VENV}/bin/python",
    }
    scheduler_sbatch = []
    if options.scheduler_node != "any":
        scheduler_sbatch.append(f"--nodelist={options.scheduler_node}")
        config["worker_sbatch_options"] = [f"--exclude={options.scheduler_node}"]
    if options.start == "held":
        # Held when submitted, then (released) running without a scheduler until the test
        # creates a file: the window in which only a forger could send a first heartbeat.
        scheduler_sbatch.append("--hold")
        config["scheduler_setup"] = "until [ -e release-scheduler ]; do sleep 0.1; done"
    config["scheduler_sbatch_options"] = scheduler_sbatch
    return config


c.SlurmBackend.cluster_options = Options(
    Integer("worker_cores", default=1, min=1, max=2, label="Worker Cores"),
    Float("worker_memory", default=0.5, min=0.25, max=2, label="Worker Memory (GiB)"),
    Select("scheduler_node", ["any", *NODES], label="Node of the scheduler"),
    Select("start", ["now", "held"], label="Start"),
    handler=options_handler,
)
c.SlurmBackend.launcher_python = "/usr/bin/python3"
c.SlurmClusterConfig.scheduler_memory = "1 G"
c.SlurmClusterConfig.cluster_max_workers = 6
c.SlurmBackend.cluster_heartbeat_period = 2
# Heartbeats cross the bridge from jobs sharing 2 busy cores: 5 periods, not 2.
c.SlurmBackend.cluster_heartbeat_timeout = 10
c.SlurmBackend.cluster_status_period = 1
c.SlurmBackend.worker_status_period = 1
c.SlurmBackend.cluster_start_timeout = 90
c.SlurmBackend.worker_start_timeout = 90
# A node that dies silently sends no FIN: the scheduler learns its workers there are gone
# when TCP gives up on them (distributed's keepalive and user timeout): 12 s here (the
# least distributed takes), not 30.
c.SlurmClusterConfig.environment = {"DASK_DISTRIBUTED__COMM__TIMEOUTS__TCP": "12s"}
