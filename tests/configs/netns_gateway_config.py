# The test configuration with every cluster on a "remote host": its scheduler and workers run
# in the network namespace named by $DGW_NETNS (tests/support/netns.py makes it), listening on
# its address $DGW_NETNS_IP. No handoff: clients' scheduler traffic goes through the gateway's
# tunnel, as for a scheduler on another machine. The gateway must listen on an address the
# namespace reaches (NetnsGatewayProcess sets Proxy.address to the host end of the pair).
import ipaddress
import os

from dask_gateway_server.addresses import AddressRefused
from dask_gateway_server.backends.local import UnsafeLocalBackend

load_subconfig(os.path.join(os.path.dirname(os.path.abspath(__file__)), "gateway_config.py"))

NETNS = os.environ["DGW_NETNS"]
NETNS_IP = ipaddress.ip_address(os.environ["DGW_NETNS_IP"])


class NetnsBackend(UnsafeLocalBackend):
    """Local processes, started in the namespace (``ip netns exec`` execs the command, so
    the pid the backend tracks is the scheduler's or worker's own)."""

    bind_host = str(NETNS_IP)

    def scheduler_command(self, cluster, config):
        return ["ip", "netns", "exec", NETNS, *super().scheduler_command(cluster, config)]

    def worker_command(self, cluster, config, worker):
        return ["ip", "netns", "exec", NETNS, *super().worker_command(cluster, config, worker)]

    def handoff_address(self, cluster):
        return None  # not on the gateway's host (as far as its network goes)

    async def validate_addresses(self, cluster, addresses):
        # What the backend can confirm: the host it started the scheduler on.
        for addr in addresses:
            if addr.ip != NETNS_IP:
                raise AddressRefused(f"{addr} is not on the cluster's host {NETNS_IP}")


c.DaskGateway.backend_class = NetnsBackend
# Large transfers (the tunnel test's, the bench's 200 MB) keep a scheduler's event loop busy
# for seconds on a loaded machine: its heartbeats must not be missed for that (the default
# config's 4 s would fail the cluster in the middle of a transfer).
c.LocalBackend.cluster_heartbeat_timeout = 120
