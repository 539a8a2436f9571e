"""The gateway's public port.

``core`` (:class:`Proxy`: the port, routes, handoff, HTTP serving) uses ``sni`` (ClientHello
parsing), ``tunnels`` (client <-> scheduler byte pumps) and ``dashboard`` (the dashboards'
reverse proxy). ``process`` runs the port in a long-lived process of its own
(``Proxy.separate_process``; ``python -m dask_gateway_server.proxy``) and holds the gateway's
link to it; it imports ``core``, never the other way. The application picks :class:`Proxy` or
:class:`ProxyLink`, both a :class:`PublicPort`.
"""

from .core import HTTP_LIMITS, Proxy, PublicPort, Route
from .dashboard import DashboardProxyHandler
from .process import ProxyLink
from .sni import ClientHelloError, parse_client_hello

__all__ = [
    "HTTP_LIMITS",
    "ClientHelloError",
    "DashboardProxyHandler",
    "Proxy",
    "ProxyLink",
    "PublicPort",
    "Route",
    "parse_client_hello",
]
