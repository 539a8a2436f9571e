"""Interactive notebook views of ``Options``, ``GatewayCluster`` and ``Gateway``.

ipywidgets is optional: this package imports it only when a widget is built, and the
display hooks (``_repr_mimebundle_`` on the client objects) fall back to the plain
text/HTML reprs when it is missing or when no Jupyter kernel is running.

One module per view: ``options`` (the options form), ``cluster`` (one cluster), ``gateway``
(the user's clusters); ``_common`` holds what they share. This module holds the display
hooks that ``client`` and ``options`` import lazily.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .cluster import ClusterWidget, default_adapt_range
from .gateway import GatewayWidget
from .options import OptionsWidget

if TYPE_CHECKING:  # pragma: no cover
    from ..client import Gateway, GatewayCluster
    from ..options import Options

__all__ = [
    "ClusterWidget",
    "GatewayWidget",
    "OptionsWidget",
    "default_adapt_range",
    "widgets_available",
]

logger = logging.getLogger(__name__)


def widgets_available() -> bool:
    """True when widgets can be shown: ipywidgets installed and a Jupyter kernel running.

    Outside a kernel (plain Python, terminal IPython) a widget would only print as
    ``VBox(...)``, so the text/HTML reprs are the better display there.
    """
    try:
        import ipywidgets  # noqa: F401
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def _mimebundle(obj: Any, build: Callable[[Any], Any], **kwargs: Any) -> dict | None:
    """The widget's mime bundle, or None so IPython falls back to the other reprs.

    The widget is built once per object and cached on it, so displaying an object
    twice shows two live views of the same state. Any failure falls back silently:
    a repr must never raise.
    """
    if not widgets_available():
        return None
    try:
        view = obj.__dict__.get("_widget_view")
        if view is None:
            view = build(obj)
            obj.__dict__["_widget_view"] = view
        return view.widget._repr_mimebundle_(**kwargs)
    except Exception:
        logger.debug("Could not build a widget for %r", obj, exc_info=True)
        return None


def options_mimebundle(options: Options, **kwargs: Any) -> dict | None:
    return _mimebundle(options, OptionsWidget, **kwargs)


def cluster_mimebundle(cluster: GatewayCluster, **kwargs: Any) -> dict | None:
    if cluster._asynchronous:  # buttons would block the loop they need; use the HTML repr
        return None
    return _mimebundle(cluster, ClusterWidget, **kwargs)


def gateway_mimebundle(gateway: Gateway, **kwargs: Any) -> dict | None:
    if gateway._asynchronous:
        return None
    return _mimebundle(gateway, GatewayWidget, **kwargs)
