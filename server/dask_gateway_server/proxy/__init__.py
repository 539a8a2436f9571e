"""The gateway's public port (see ``core.py``); with ``Proxy.separate_process`` it lives in a
process of its own (``process.py``)."""

from .core import HTTP_LIMITS, Proxy
from .dashboard import DashboardProxyHandler
from .sni import ClientHelloError, parse_client_hello

__all__ = [
    "HTTP_LIMITS",
    "ClientHelloError",
    "DashboardProxyHandler",
    "Proxy",
    "parse_client_hello",
]
