# The one configuration bench/slurm_compare.py gives BOTH servers (ours and the public one):
# bench/compare_config.py's (the same log levels, ports, password, database and `dask`
# commands), then the Slurm backend under the public module path, the same cluster sizes
# and limits, every timer at its (shared) default.
# Set by slurm_compare.py: BENCH_HOME, BENCH_PORT, BENCH_API_PORT, BENCH_PASSWORD,
# BENCH_DB_KEY, BENCH_DEFAULT_CMDS (0/1), BENCH_FAKE=0.
import os
import sys

from dask_gateway_server.options import Options

exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "compare_config.py")).read())

c.DaskGateway.backend_class = "dask_gateway_server.backends.jobqueue.slurm.SlurmBackend"
# Slurm jobs report to the private API: a fixed port (the jobs run on this machine).
c.DaskGateway.address = "127.0.0.1:" + os.environ["BENCH_API_PORT"]

# No user options: every cluster gets the sizes below (the Slurm node has 16 CPUs, 16 GB).
c.Backend.cluster_options = Options()
c.ClusterConfig.scheduler_cores = 1
c.ClusterConfig.scheduler_memory = "1 G"
c.ClusterConfig.worker_cores = 1
c.ClusterConfig.worker_memory = "1 G"
c.ClusterConfig.cluster_max_workers = 10

# The public backend runs `sudo -nHu USER dask-gateway-jobqueue-launcher`, found on PATH by
# default; its venv's own (ours has no such script, and no such setting).
launcher = os.path.join(sys.prefix, "bin", "dask-gateway-jobqueue-launcher")
if os.path.exists(launcher):
    c.JobQueueBackend.dask_gateway_jobqueue_launcher = launcher
