# The public server's test configuration with its in-process backend: schedulers and workers
# run inside the gateway process, built by dask_gateway_server.backends.inprocess, which
# imports GatewaySchedulerService and make_gateway_client from dask_gateway.scheduler_preload.
import os

exec(open(os.path.join(os.path.dirname(__file__), "dask_gateway_config.py")).read())

c.DaskGateway.backend_class = "dask_gateway_server.backends.inprocess.InProcessBackend"
c.InProcessBackend.clusters_directory = os.environ["UPSTREAM_CLUSTERS_DIR"]
