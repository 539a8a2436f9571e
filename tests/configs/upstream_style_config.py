# A dask_gateway_config.py as an admin of the PUBLIC dask-gateway-server would write it
# (traits of its documented configuration), loaded unchanged by our server in
# tests/test_upstream_style_config.py. Site-specific values come from the environment, as in
# many real deployments: GATEWAY_HOME (a writable directory), GATEWAY_HTTP_PORT,
# GATEWAY_TCP_PORT, GATEWAY_API_PORT, GATEWAY_PASSWORD, GATEWAY_DB_KEY.
import os
import sys

from dask_gateway_server.options import Bool, Float, Integer, Mapping, Options, Select, String

home = os.environ["GATEWAY_HOME"]
dask = os.path.join(sys.prefix, "bin", "dask")  # the dask of the gateway's environment

# --- The gateway ------------------------------------------------------------------------
c.DaskGateway.address = "127.0.0.1:" + os.environ["GATEWAY_API_PORT"]
c.DaskGateway.backend_class = "dask_gateway_server.backends.local.UnsafeLocalBackend"
c.DaskGateway.authenticator_class = "dask_gateway_server.auth.SimpleAuthenticator"
c.DaskGateway.log_level = "DEBUG"
c.DaskGateway.log_format = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# --- The proxy: web on one port, scheduler traffic on another, under a prefix ------------
c.Proxy.address = "127.0.0.1:" + os.environ["GATEWAY_HTTP_PORT"]
c.Proxy.tcp_address = "127.0.0.1:" + os.environ["GATEWAY_TCP_PORT"]
c.Proxy.prefix = "/services/dask-gateway"
c.Proxy.gateway_url = "http://127.0.0.1:" + os.environ["GATEWAY_API_PORT"]
c.Proxy.api_token = "0123456789abcdef0123456789abcdef"
c.Proxy.log_level = "info"
c.Proxy.proxy_status_period = 10

# --- Authentication ---------------------------------------------------------------------
c.SimpleAuthenticator.password = os.environ["GATEWAY_PASSWORD"]
c.Authenticator.cache_max_age = 600
# Kept for the day the hub takes over authentication (not the active authenticator now).
c.JupyterHubAuthenticator.jupyterhub_api_url = "http://127.0.0.1:8081/hub/api"
c.JupyterHubAuthenticator.jupyterhub_api_token = "not-a-real-token"
c.JupyterHubAuthenticator.jupyterhub_service_name = "dask-gateway"
c.JupyterHubAuthenticator.use_service_access_scopes = True
c.JupyterHubAuthenticator.tls_ca = ""
c.JupyterHubAuthenticator.tls_cert = ""
c.JupyterHubAuthenticator.tls_key = ""


# --- Cluster options --------------------------------------------------------------------
def options_handler(options, user):
    """Map the user's choices to ClusterConfig settings (the public server's handler form)."""
    return {
        "worker_cores": options.worker_cores,
        "worker_memory": f"{options.worker_memory:f}G",
        "environment": {
            "SITE_PROFILE": options.profile,
            "SITE_USER": user.name,
            "SITE_LABEL": options.label,
            "SITE_DEBUG": "1" if options.debug else "0",
            **options.extra_env,
        },
    }


c.Backend.cluster_options = Options(
    Integer("worker_cores", default=1, min=1, max=2, label="Worker Cores"),
    Float("worker_memory", default=0.5, min=0.25, max=1, label="Worker Memory (GiB)"),
    Select("profile", ["small", "large"], default="small", label="Profile"),
    String("label", default="", label="Label"),
    Bool("debug", default=False, label="Debug"),
    Mapping("extra_env", default={}, label="Extra Environment"),
    handler=options_handler,
)

# --- Every cluster ----------------------------------------------------------------------
c.ClusterConfig.scheduler_cmd = [dask, "scheduler"]
c.ClusterConfig.worker_cmd = [dask, "worker"]
c.ClusterConfig.environment = {"SITE_NAME": "upstream-style"}
c.ClusterConfig.worker_memory = "512 M"
c.ClusterConfig.worker_cores = 1
c.ClusterConfig.scheduler_memory = "1 G"
c.ClusterConfig.scheduler_cores = 1
c.ClusterConfig.adaptive_period = 1
c.ClusterConfig.idle_timeout = 0
c.ClusterConfig.cluster_max_cores = 3
c.ClusterConfig.cluster_max_memory = "3 G"

# --- The local backend ------------------------------------------------------------------
c.LocalBackend.clusters_directory = os.path.join(home, "clusters")
c.LocalBackend.inherited_environment = ["PATH", "HOME", "LANG", "TMPDIR", "VIRTUAL_ENV"]
c.UnsafeLocalBackend.sigint_timeout = 3
c.UnsafeLocalBackend.sigterm_timeout = 2
c.UnsafeLocalBackend.sigkill_timeout = 2

# --- Database and timers ----------------------------------------------------------------
c.DBBackendBase.db_url = "sqlite:///" + os.path.join(home, "gateway.sqlite")
c.DBBackendBase.db_encrypt_keys = [os.environ["GATEWAY_DB_KEY"]]
c.DBBackendBase.db_debug = False
c.DBBackendBase.db_cleanup_period = 300
c.DBBackendBase.db_cluster_max_age = 3600
c.DBBackendBase.stop_clusters_on_shutdown = True
c.DBBackendBase.cluster_status_period = 2
c.DBBackendBase.worker_status_period = 2
c.DBBackendBase.cluster_heartbeat_period = 2
c.DBBackendBase.cluster_heartbeat_timeout = 10
c.DBBackendBase.cluster_start_timeout = 60
c.DBBackendBase.worker_start_timeout = 60
c.DBBackendBase.check_timeouts_period = 2
c.DBBackendBase.worker_start_failure_limit = 3
c.DBBackendBase.parallelism = 10
c.DBBackendBase.backoff_base_delay = 0.1
c.DBBackendBase.backoff_max_delay = 60

# --- Leftovers from a Kubernetes deployment of the same site (not used by a local backend).
c.KubeClusterConfig.image = "daskgateway/dask-gateway:latest"
c.KubeBackend.gateway_instance = "site-gateway"
