"""Job-queue backends under the module paths of the public dask-gateway server, so that its
config files (``c.DaskGateway.backend_class = "dask_gateway_server.backends.jobqueue.slurm.
SlurmBackend"``) work unchanged."""
