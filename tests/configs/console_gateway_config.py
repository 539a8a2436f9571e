# The test gateway (gateway_config.py) with one free-text option, so a cluster's options can
# carry any text a user types (the console's tests show hostile text as text), and users in
# groups (as JupyterHub gives them), so the console's group filter has something to find.
from dask_gateway_server.auth import SimpleAuthenticator
from dask_gateway_server.options import Float, Integer, Options, Select, String

load_subconfig("gateway_config.py")  # the loader gives config files load_subconfig and c


def options_handler(options):
    return {
        "worker_cores": options.worker_cores,
        "worker_memory": int(options.worker_memory * 2**30),
        "python": options.python,
    }


c.Backend.cluster_options = Options(
    Integer("worker_cores", default=1, min=1, max=4, label="Worker Cores"),
    Float("worker_memory", default=0.5, min=0.25, max=4, label="Worker Memory (GiB)"),
    Select(
        "environment",
        [("basic", __import__("sys").executable)],
        label="Environment",
        target="python",
    ),
    String("label", default="", label="Label"),
    handler=options_handler,
)

# A quota every user is far from (the console draws it as a bar and a level on its chart).
c.UsageQuotas.core_hours = 100

GROUPS = {"console-alice": {"physics"}, "console-bob": {"chemistry", "physics-students"}}


class SimpleAuthenticatorWithGroups(SimpleAuthenticator):
    """Simple auth whose users have the groups GROUPS lists for them."""

    def make_user(self, name, groups=(), admin=False):
        return super().make_user(name, GROUPS.get(name, groups), admin)


c.DaskGateway.authenticator_class = SimpleAuthenticatorWithGroups
