"""The installed version, read once (``client`` needs it without importing the package)."""

from importlib.metadata import PackageNotFoundError as _NotInstalled
from importlib.metadata import version as _version

try:  # written once, in jupyter_ext/package.json; the installed distribution carries it
    __version__ = _version("dask-gateway-ng")
except _NotInstalled:  # a source tree that was never installed
    __version__ = "0+unknown"
