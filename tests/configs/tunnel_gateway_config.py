# The test configuration with every client connection tunnelled through the public port (as
# for schedulers on other machines), instead of handed to local schedulers.
import os

from dask_gateway_server.backends.local import UnsafeLocalBackend

load_subconfig(os.path.join(os.path.dirname(os.path.abspath(__file__)), "gateway_config.py"))


class TunnelledBackend(UnsafeLocalBackend):
    """Local processes, but no connection handoff: clients' traffic flows through the proxy."""

    def handoff_address(self, cluster):
        return None


c.DaskGateway.backend_class = TunnelledBackend
