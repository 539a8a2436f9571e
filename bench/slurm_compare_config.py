# The one configuration bench/slurm_compare.py gives BOTH servers (ours and the public one):
# the Slurm backend under the public module path, the same cluster sizes and limits, every
# timer at its (shared) default. Each server's jobs run the `dask` command of its own
# environment (unless BENCH_DEFAULT_CMDS=1: ours then runs its own default commands).
# Set by slurm_compare.py: BENCH_HOME, BENCH_PORT, BENCH_API_PORT, BENCH_PASSWORD,
# BENCH_DB_KEY, BENCH_DEFAULT_CMDS (0/1).
import os
import sys

from dask_gateway_server.options import Options

home = os.environ["BENCH_HOME"]
dask = os.path.join(sys.prefix, "bin", "dask")

c.DaskGateway.backend_class = "dask_gateway_server.backends.jobqueue.slurm.SlurmBackend"
# Slurm jobs report to the private API: a fixed port (the jobs run on this machine).
c.DaskGateway.address = "127.0.0.1:" + os.environ["BENCH_API_PORT"]
c.DaskGateway.log_level = "INFO"
c.Proxy.address = "127.0.0.1:" + os.environ["BENCH_PORT"]
c.Proxy.log_level = "warn"
c.SimpleAuthenticator.password = os.environ["BENCH_PASSWORD"]

c.DBBackendBase.db_url = "sqlite:///" + os.path.join(home, "gateway.sqlite")
c.DBBackendBase.db_encrypt_keys = [os.environ["BENCH_DB_KEY"]]

# No user options: every cluster gets the sizes below (the Slurm node has 16 CPUs, 16 GB).
c.Backend.cluster_options = Options()
c.ClusterConfig.scheduler_cores = 1
c.ClusterConfig.scheduler_memory = "1 G"
c.ClusterConfig.worker_cores = 1
c.ClusterConfig.worker_memory = "1 G"
c.ClusterConfig.cluster_max_workers = 10
if os.environ.get("BENCH_DEFAULT_CMDS") != "1":  # slurm_compare.py --ours-defaults unsets them
    c.ClusterConfig.scheduler_cmd = [dask, "scheduler"]
    c.ClusterConfig.worker_cmd = [dask, "worker"]

# The public backend runs `sudo -nHu USER dask-gateway-jobqueue-launcher`, found on PATH by
# default; its venv's own (ours has no such script, and no such setting).
launcher = os.path.join(sys.prefix, "bin", "dask-gateway-jobqueue-launcher")
if os.path.exists(launcher):
    c.JobQueueBackend.dask_gateway_jobqueue_launcher = launcher
