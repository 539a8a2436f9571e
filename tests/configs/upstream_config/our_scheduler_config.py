# The public server's test configuration, but its clusters run OUR scheduler side: the
# `dask` command of our venv, so `--preload dask_gateway.scheduler_preload` loads our preload.
# The test sets OURS_DASK to that command.
import os

exec(open(os.path.join(os.path.dirname(__file__), "dask_gateway_config.py")).read())

c.ClusterConfig.scheduler_cmd = [os.environ["OURS_DASK"], "scheduler"]
c.ClusterConfig.worker_cmd = [os.environ["OURS_DASK"], "worker"]
