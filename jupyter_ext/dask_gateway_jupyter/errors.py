"""Client exceptions as HTTP errors the browser can show."""

from __future__ import annotations

from tornado.httpclient import HTTPClientError

from dask_gateway import GatewayClusterError, GatewayServerError, GatewayUnsupportedError
from dask_gateway.client import GatewayRequestError


class RouteError(Exception):
    """An error to return to the browser as JSON with this status."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def translate_error(exc: BaseException, address: str | None) -> RouteError | None:
    """Map an exception of the gateway client to a status and a readable message."""
    where = f" at {address}" if address else ""
    if isinstance(exc, RouteError):
        return exc
    if isinstance(exc, GatewayRequestError):
        return RouteError(exc.status, str(exc))
    if isinstance(exc, GatewayClusterError):
        return RouteError(409, str(exc))
    if isinstance(exc, GatewayUnsupportedError):  # a gateway without the feature: not a fault
        return RouteError(501, str(exc))
    if isinstance(exc, GatewayServerError):
        return RouteError(500, f"The Dask Gateway failed: {exc}")
    if isinstance(exc, HTTPClientError):
        if exc.code == 599:  # tornado: timeout or no HTTP response at all
            return RouteError(502, f"Cannot reach the Dask Gateway{where}: {exc.message}")
        return RouteError(exc.code, exc.message or f"Dask Gateway error {exc.code}")
    if isinstance(exc, OSError):
        reason = exc.strerror or str(exc) or type(exc).__name__
        return RouteError(502, f"Cannot reach the Dask Gateway{where}: {reason}")
    return None
