"""Client for dask-gateway servers: create, scale and connect to shared Dask clusters."""

__version__ = "0.1.0"

from . import comm as _comm  # noqa: E402,F401  (registers the gateway:// comm)
from .config import _register_defaults  # noqa: E402

_register_defaults()

from .auth import BasicAuth, JupyterHubAuth, KerberosAuth  # noqa: E402
from .client import (  # noqa: E402
    Gateway,
    GatewayCluster,
    GatewayClusterError,
    GatewayServerError,
    GatewayWarning,
)
from .options import Options  # noqa: E402

__all__ = [
    "BasicAuth",
    "Gateway",
    "GatewayCluster",
    "GatewayClusterError",
    "GatewayServerError",
    "GatewayWarning",
    "JupyterHubAuth",
    "KerberosAuth",
    "Options",
    "__version__",
]
