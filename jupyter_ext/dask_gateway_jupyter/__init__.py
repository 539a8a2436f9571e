"""Jupyter server extension for the Dask Gateway sidebar.

The browser talks only to these routes; they call the gateway with the dask-gateway
client's configuration (``gateway.address``, ``gateway.auth.*``; inside JupyterHub the
user's ``JUPYTERHUB_API_TOKEN``), so the user's gateway credentials stay on the server.
"""

from __future__ import annotations

import os
from importlib.metadata import PackageNotFoundError as _NotInstalled
from importlib.metadata import version as _version
from typing import Any

try:  # written once, in jupyter_ext/package.json; the installed distribution carries it
    __version__ = _version("dask-gateway-ng")
except _NotInstalled:  # a source tree that was never installed
    __version__ = "0+unknown"

#: npm package name of the sidebar; also its folder under share/jupyter/labextensions.
LABEXTENSION_NAME = "dask-gateway-jupyterlab"


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "dask_gateway_jupyter"}]


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    # Used by `jupyter labextension develop` from a source checkout.
    return [{"src": "../labextension", "dest": LABEXTENSION_NAME}]


def _load_jupyter_server_extension(server_app: Any) -> None:
    """Register the REST routes under the server's base URL, and tell the kernels this
    server starts that the sidebar listens for their clusters (they inherit the flag)."""
    from dask_gateway.jupyter_comm import ENV_FLAG

    from .handlers import setup_handlers

    setup_handlers(server_app.web_app, server_app.log)
    os.environ.setdefault(ENV_FLAG, "1")  # "0" set by hand keeps the kernels quiet
    server_app.log.info("dask_gateway_jupyter: Dask Gateway routes loaded")
