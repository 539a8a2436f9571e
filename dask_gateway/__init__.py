"""Client for dask-gateway servers: create, scale and connect to shared Dask clusters."""

from . import comm as _comm  # noqa: F401  (registers the gateway:// comm)
from ._version import __version__
from .config import _register_defaults

_register_defaults()

from .auth import BasicAuth, JupyterHubAuth, KerberosAuth  # noqa: E402
from .client import Gateway, GatewayCluster  # noqa: E402
from .errors import (  # noqa: E402
    GatewayClusterError,
    GatewayServerError,
    GatewayUnsupportedError,
    GatewayWarning,
)
from .events import ClusterEvent  # noqa: E402
from .options import Options  # noqa: E402

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
