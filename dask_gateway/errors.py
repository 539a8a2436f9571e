"""The errors and warnings the client raises, in a module of their own.

Kept apart from ``client`` so that ``options`` and the widgets can use them without
importing the client. They are also importable from ``dask_gateway`` and
``dask_gateway.client``, as in the public dask-gateway.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "GatewayClusterError",
    "GatewayRequestError",
    "GatewayServerError",
    "GatewayUnsupportedError",
    "GatewayWarning",
]


class GatewayClusterError(Exception):
    """A cluster is in a state that does not allow the request (HTTP 409, failed start).

    ``events``: for a start that failed (or a cluster found stopped), the cluster's history
    that the message was made of (``ClusterEvent``s; empty when the gateway keeps none).
    """

    events: tuple[Any, ...] = ()


class GatewayRequestError(ValueError):
    """The gateway refused a request (HTTP 404 or 422, or 429: a quota over time is used up);
    ``status`` tells which, for proxies."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


class GatewayServerError(Exception):
    """The gateway failed internally (HTTP 500)."""


class GatewayUnsupportedError(GatewayServerError):
    """The gateway has no route for the request: a server that does not offer the feature
    (the public dask-gateway-server, or an older version of this one)."""


class GatewayWarning(UserWarning):
    """The gateway applied a request only partially, e.g. scaling clamped to a limit, or a
    quota over time is nearly (or fully) used."""
