# A JupyterHub for the tests: loopback only, any password logs in, no single-user servers,
# the gateway registered as the "dask-gateway" service.
import os

run_dir = os.environ["HUB_RUN_DIR"]
port = int(os.environ["HUB_PORT"])

c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = port
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = int(os.environ["HUB_API_PORT"])
c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{os.environ['HUB_PROXY_API_PORT']}"
c.ConfigurableHTTPProxy.pid_file = os.path.join(run_dir, "proxy.pid")
c.ConfigurableHTTPProxy.auth_token = "test-proxy-token"
c.JupyterHub.db_url = "sqlite:///" + os.path.join(run_dir, "jupyterhub.sqlite")
c.JupyterHub.cookie_secret_file = os.path.join(run_dir, "cookie_secret")
c.JupyterHub.pid_file = os.path.join(run_dir, "jupyterhub.pid")
c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.admin_users = {"hubadmin"}
c.JupyterHub.services = [
    # The tests' own service: creates users, groups and tokens through the REST API.
    {"name": "test-admin", "api_token": os.environ["HUB_ADMIN_TOKEN"]},
    {
        "name": "dask-gateway",
        "url": os.environ["GATEWAY_URL"],
        "api_token": os.environ["HUB_GATEWAY_TOKEN"],
        "oauth_redirect_uri": os.environ.get(
            "GATEWAY_OAUTH_REDIRECT_URI", os.environ["GATEWAY_URL"] + "/oauth_callback"
        ),
        "oauth_no_confirm": True,
    },
    {"name": "other-service", "api_token": os.environ["HUB_OTHER_TOKEN"]},
]
c.JupyterHub.load_roles = [
    {
        "name": "test-admin",
        "scopes": [
            "admin:users",
            "admin:groups",
            "tokens",
            "list:users",
            "read:users",
            "admin:auth_state",
        ],
        "services": ["test-admin"],
    },
    # Every user may use the gateway; other-service may too (a service token).
    {"name": "user", "scopes": ["self", "access:services!service=dask-gateway"]},
    {
        "name": "gateway-callers",
        "scopes": ["access:services!service=dask-gateway"],
        "services": ["other-service"],
    },
]
c.JupyterHub.redirect_to_server = False  # log in without starting a server
