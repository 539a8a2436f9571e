"""Parts the widgets share: the ipywidgets import, message styles and small HTML pieces."""

from __future__ import annotations

from html import escape
from typing import Any

_ERROR_STYLE = "color: #c62828"
_WARNING_STYLE = "color: #b26a00"
_INFO_STYLE = "color: #2e7d32"
_LABEL_WIDTH = "170px"


def _ipywidgets() -> Any:
    """Import ipywidgets, with a clear message when it is not installed."""
    try:
        import ipywidgets
    except ImportError:
        raise ImportError(
            "The dask-gateway notebook widgets need ipywidgets: "
            "`pip install ipywidgets` (or the `jupyter` extra)"
        ) from None
    return ipywidgets


def _message_html(text: str, style: str) -> str:
    return f'<div style="{style}; white-space: pre-wrap">{escape(text)}</div>' if text else ""


def _error_text(exc: BaseException) -> str:
    """What the user reads: the gateway's own message (its type name only if empty)."""
    return str(exc) or type(exc).__name__


def _link_html(url: str | None) -> str:
    if not url:
        return "Not Available"
    url = escape(url)
    return f'<a href="{url}" target="_blank">{url}</a>'
