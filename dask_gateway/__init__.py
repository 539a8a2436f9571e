"""Client for dask-gateway servers: create, scale and connect to shared Dask clusters.

``Gateway`` and ``GatewayCluster`` are imported on first use: the client pulls in aiohttp
(hundreds of ms, much of it building an SSL context), and every scheduler imports this
package for its preload (``dask_gateway.scheduler_preload``), which needs none of it.
"""

from typing import TYPE_CHECKING, Any

from . import comm as _comm  # noqa: F401  (registers the gateway:// comm)
from ._version import __version__
from .config import _register_defaults

_register_defaults()

from .auth import BasicAuth, JupyterHubAuth, KerberosAuth  # noqa: E402
from .errors import (  # noqa: E402
    GatewayClusterError,
    GatewayServerError,
    GatewayUnsupportedError,
    GatewayWarning,
)
from .events import ClusterEvent  # noqa: E402
from .options import Options  # noqa: E402

if TYPE_CHECKING:
    from .client import Gateway, GatewayCluster

__all__ = [
    "BasicAuth",
    "ClusterEvent",
    "Gateway",
    "GatewayCluster",
    "GatewayClusterError",
    "GatewayServerError",
    "GatewayUnsupportedError",
    "GatewayWarning",
    "JupyterHubAuth",
    "KerberosAuth",
    "Options",
    "__version__",
]


def __getattr__(name: str) -> Any:
    """``Gateway`` and ``GatewayCluster``, from the client module, imported on first use."""
    if name in ("Gateway", "GatewayCluster"):
        from . import client

        value = getattr(client, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
