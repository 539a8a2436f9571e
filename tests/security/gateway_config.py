# The security tests' gateway: run as root, each cluster's processes as its local user
# (LocalBackend), simple auth (the user name is the local account), one admin, fast timers.
c.DaskGateway.backend_class = "dask_gateway_server.backends.local.LocalBackend"
c.Authenticator.admin_users = {"dgwsec-admin"}
c.ClusterConfig.cluster_max_workers = 4
c.LocalBackend.cluster_heartbeat_period = 2
c.LocalBackend.cluster_status_period = 0.5
c.LocalBackend.worker_status_period = 0.5
c.LocalBackend.cluster_start_timeout = 30
c.LocalBackend.worker_start_timeout = 30
c.LocalBackend.sigint_timeout = 2
