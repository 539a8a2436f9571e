# The test configuration with JupyterHub auth, admins and per-user limits.
import os

exec(open(os.path.join(os.path.dirname(__file__), "gateway_config.py")).read())

c.DaskGateway.authenticator_class = "dask_gateway_server.auth.JupyterHubAuthenticator"
c.JupyterHubAuthenticator.jupyterhub_api_url = os.environ["TEST_HUB_API_URL"]
c.JupyterHubAuthenticator.jupyterhub_service_name = "dask-gateway"
c.JupyterHubAuthenticator.jupyterhub_api_token = os.environ["TEST_HUB_GATEWAY_TOKEN"]
# Long enough that a session cookie (it lives as long as the cache) outlasts a slow test on a
# loaded machine; test_revoked_token_stops_working_within_the_ttl runs its own short-TTL gateway.
c.JupyterHubAuthenticator.token_cache_ttl = 300
c.Authenticator.admin_groups = {"gateway-admins"}
c.UserLimits.users = {"carol": {"max_clusters": 1}, "erin": {"max_cores": 3}}
c.UserLimits.groups = {"small-mem": {"max_memory": "3 G"}}
