"""Tell the JupyterLab sidebar which cluster this notebook's kernel made or connected to.

Inside a Jupyter kernel, ``GatewayCluster`` opens a Jupyter comm (target ``dask-gateway``,
data ``{"cluster": name, "address": gateway address}``) once the gateway has confirmed the
cluster; the lab extension registers that target on every notebook kernel and selects the
cluster in its sidebar. One message pushed when it happens: nothing runs per cell, nothing
waits for an answer (the extension closes the comm).

Only when a frontend says it listens: the Jupyter server extension sets ``ENV_FLAG`` in its
environment, which the kernels it starts inherit. Elsewhere (plain Python, a terminal
IPython, nbclient/papermill, the public JupyterLab, VS Code) nothing is sent, so no frontend
logs an unknown comm target. Announcing never fails, prints or blocks the caller.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

__all__ = ["COMM_TARGET", "ENV_FLAG", "announce_cluster"]

logger = logging.getLogger(__name__)

#: The comm target the lab extension registers on notebook kernels.
COMM_TARGET = "dask-gateway"
#: Set to "1" (by the server extension, or by hand) when the frontend registers the target.
ENV_FLAG = "DASK_GATEWAY_JUPYTERLAB_COMM"


def _kernel() -> Any:
    """The running IPython kernel, or None (never imports IPython: a kernel has already)."""
    if "IPython" not in sys.modules:
        return None
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    shell = get_ipython()
    return None if shell is None else getattr(shell, "kernel", None)


def _open_comm(data: dict[str, str]) -> Any:
    """Open a comm carrying ``data`` (ipykernel >= 6.18 through the ``comm`` package)."""
    try:
        from comm import create_comm
    except ImportError:  # an older ipykernel, before the comm package
        from ipykernel.comm import Comm

        return Comm(target_name=COMM_TARGET, data=data)
    return create_comm(target_name=COMM_TARGET, data=data)


def announce_cluster(name: str, address: str) -> bool:
    """Tell the frontend (if one listens) that this kernel now uses cluster ``name``.

    Returns whether a comm was opened. Never raises: the cluster works without it.
    """
    try:
        if os.environ.get(ENV_FLAG) != "1" or _kernel() is None:
            return False
        _open_comm({"cluster": name, "address": address})
        return True
    except Exception:  # a courtesy to the sidebar: never the cluster's problem
        logger.debug("Could not announce cluster %s to the frontend", name, exc_info=True)
        return False
