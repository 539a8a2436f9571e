"""Client for dask-gateway servers: create, scale and connect to shared Dask clusters."""

from importlib.metadata import PackageNotFoundError as _NotInstalled
from importlib.metadata import version as _version

try:  # written once, in jupyter_ext/package.json; the installed distribution carries it
    __version__ = _version("dask-gateway-ng")
except _NotInstalled:  # a source tree that was never installed
    __version__ = "0+unknown"

from . import comm as _comm  # noqa: F401  (registers the gateway:// comm)
from .config import _register_defaults

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
