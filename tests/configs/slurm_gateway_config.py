# The Slurm tests' gateway: the Slurm backend (under the public server's module path), fast
# timers, and options that map to Slurm settings the way a site's config would.
import sys

from dask_gateway_server.options import Float, Integer, Options, Select, String

c.DaskGateway.backend_class = "dask_gateway_server.backends.jobqueue.slurm.SlurmBackend"

ENVIRONMENTS = {
    # The project's own venv: the tests make it reachable for the test user.
    "default": {"python": sys.executable},
    # A site's broken environment: its activation fails, so the job fails.
    "broken": {
        "python": sys.executable,
        "scheduler_setup": "echo 'activating the broken environment' >&2; exit 3",
    },
    # Held when submitted, then waiting for a file the test creates before the scheduler
    # starts: the job stays pending, and then running without a scheduler, as long as the
    # test needs (as a busy queue and a slow environment would make it).
    "held": {
        "python": sys.executable,
        "scheduler_sbatch_options": ["--hold"],
        "scheduler_setup": "until [ -e release-scheduler ]; do sleep 0.1; done",
    },
}


def options_handler(options):
    return {
        "worker_cores": options.worker_cores,
        "worker_memory": int(options.worker_memory * 2**30),
        "partition": options.partition,
        "idle_timeout": options.idle_timeout,
        **options.environment,
    }


c.SlurmBackend.cluster_options = Options(
    Integer("worker_cores", default=1, min=1, max=4, label="Worker Cores"),
    # More than the Slurm node has is allowed here so that the tests can ask for it.
    Float("worker_memory", default=0.5, min=0.25, max=64, label="Worker Memory (GiB)"),
    String("partition", default="", label="Slurm partition"),
    Float("idle_timeout", default=0, min=0, label="Idle timeout (s)"),
    Select("environment", list(ENVIRONMENTS.items()), label="Environment"),
    handler=options_handler,
)
c.SlurmClusterConfig.scheduler_memory = "1 G"
c.SlurmClusterConfig.cluster_max_workers = 10
c.SlurmBackend.cluster_heartbeat_period = 2
c.SlurmBackend.cluster_status_period = 1
c.SlurmBackend.worker_status_period = 1
c.SlurmBackend.cluster_start_timeout = 60
c.SlurmBackend.worker_start_timeout = 60
