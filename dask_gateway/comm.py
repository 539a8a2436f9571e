"""The ``gateway://`` distributed comm: TLS to a scheduler through the gateway's proxy.

All schedulers share the proxy's public port; the proxy picks the scheduler from the SNI
name ``daskgateway-<cluster name>`` of the TLS ClientHello and passes the bytes through
unopened. So a connection is plain TCP to the proxy plus a TLS handshake carrying that
server name; the established stream is then an ordinary distributed TLS comm.

Addresses look like ``gateway://<proxy host>:<proxy port>/<cluster name>``.
"""

from __future__ import annotations

import ssl
from urllib.parse import urlsplit

from distributed.comm.addressing import parse_host_port, unparse_host_port
from distributed.comm.core import Comm, FatalCommClosedError
from distributed.comm.registry import Backend, backends
from distributed.comm.tcp import (
    MAX_BUFFER_SIZE,
    TLS,
    TLSConnector,
    convert_stream_closed_error,
    get_stream_address,
)
from distributed.utils import ensure_ip, get_ip
from tornado.iostream import StreamClosedError

__all__ = ["SNI_PREFIX", "GatewayBackend", "GatewayConnector", "parse_gateway_address"]

#: Prefix of the TLS server name the proxy routes on.
SNI_PREFIX = "daskgateway-"


def _split_address(loc: str) -> tuple[str, str]:
    """Split ``host:port/cluster_name`` (scheme optional) into its two parts."""
    if loc.startswith("gateway://"):
        loc = loc[len("gateway://") :]
    host_port, _, name = loc.partition("/")
    if not host_port or not name:
        raise ValueError(
            f"Invalid gateway address {loc!r}: expected "
            "'gateway://<proxy host>:<proxy port>/<cluster name>'"
        )
    return host_port, name


def parse_gateway_address(address: str) -> tuple[str | None, int | None, str]:
    """``(proxy host, proxy port or None, cluster name)`` of a gateway address (the
    ``gateway://`` scheme is optional), as the public client's function of that name."""
    host_port, name = _split_address(address)
    parts = urlsplit("//" + host_port)
    return parts.hostname, parts.port, name


class GatewayConnector(TLSConnector):
    """Connect-only comm factory for ``gateway://`` addresses."""

    async def connect(self, address: str, deserialize: bool = True, **connection_args) -> Comm:
        host_port, name = _split_address(address)
        ctx = connection_args.get("ssl_context")
        if not isinstance(ctx, ssl.SSLContext):
            raise TypeError(
                "gateway:// connections need the cluster's security settings "
                "(an `ssl_context` connection argument); pass "
                f"`security=cluster.security` to the Client. Got {ctx!r}"
            )
        host, port = parse_host_port(host_port)
        try:
            stream = await self.client.connect(host, port, max_buffer_size=int(MAX_BUFFER_SIZE))
            stream = await stream.start_tls(
                False, ssl_options=ctx, server_hostname=SNI_PREFIX + name
            )
            if stream.closed() and stream.error:
                raise StreamClosedError(stream.error)
        except StreamClosedError as exc:
            convert_stream_closed_error(self, exc)
        except ssl.SSLError as exc:
            raise FatalCommClosedError(
                f"TLS handshake with cluster {name!r} via {host_port} failed; the "
                "cluster's credentials may not match (was it restarted?)"
            ) from exc
        local_address = "tls://" + get_stream_address(stream)
        return TLS(stream, local_address, "gateway://" + address, deserialize)


class GatewayBackend(Backend):
    """Registered as ``distributed.comm.registry.backends["gateway"]``."""

    def get_connector(self) -> GatewayConnector:
        return GatewayConnector()

    def get_listener(self, loc, handle_comm, deserialize, **connection_args):
        raise NotImplementedError("gateway:// addresses can only be connected to, not listened on")

    def get_address_host(self, loc: str) -> str:
        return parse_host_port(_split_address(loc)[0])[0]

    def get_address_host_port(self, loc: str) -> tuple[str, int]:
        return parse_host_port(_split_address(loc)[0])

    def resolve_address(self, loc: str) -> str:
        # The proxy routes on the cluster name; the host needs no resolution.
        return loc

    def get_local_address_for(self, loc: str) -> str:
        host = self.get_address_host(loc)
        return unparse_host_port(get_ip(ensure_ip(host)), None)


backends["gateway"] = GatewayBackend()
