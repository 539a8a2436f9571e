"""The REST API: tornado handlers speaking the public dask-gateway wire format.

JSON in, JSON out; every error a client can cause is a JSON ``{"error": ...}`` with a 4xx
status. Handlers know the authenticator and the reconciler, never processes or SQL.
"""

from __future__ import annotations

from ..metrics import MetricsHandler
from .clusters import (
    AdaptHandler,
    ClusterHandler,
    ClustersHandler,
    OptionsHandler,
    ScaleHandler,
    WorkersHandler,
)
from .heartbeat import HeartbeatHandler
from .login import OAuthCallbackHandler
from .server import HealthHandler, OpenAPIHandler, VersionHandler


def api_handlers(prefix: str) -> list:
    """The API routes under ``prefix`` (the proxy prefix, "" by default)."""
    p = prefix.rstrip("/")
    name = r"([^/]+)"
    return [
        (rf"{p}/api/health", HealthHandler),
        (rf"{p}/api/version", VersionHandler),
        (rf"{p}/api/openapi.json", OpenAPIHandler),
        (rf"{p}/api/v1/options", OptionsHandler),
        (rf"{p}/api/v1/clusters/", ClustersHandler),
        (rf"{p}/api/v1/clusters/{name}", ClusterHandler),
        (rf"{p}/api/v1/clusters/{name}/scale", ScaleHandler),
        (rf"{p}/api/v1/clusters/{name}/adapt", AdaptHandler),
        (rf"{p}/api/v1/clusters/{name}/workers", WorkersHandler),
        (rf"{p}/api/v1/clusters/{name}/heartbeat", HeartbeatHandler),
        (rf"{p}/oauth_callback", OAuthCallbackHandler),
        (rf"{p}/metrics", MetricsHandler),
    ]
