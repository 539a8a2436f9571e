"""The ``gateway.*`` dask config: defaults, environment templates and address inference."""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlparse

import dask.config
import yaml

_DEFAULTS_FILE = os.path.join(os.path.dirname(__file__), "gateway.yaml")


def _register_defaults() -> None:
    """Make ``gateway.*`` keys resolvable even when the user has no config file."""
    with open(_DEFAULTS_FILE) as f:
        dask.config.update_defaults(yaml.safe_load(f))


def format_template(value: Any) -> Any:
    """Fill ``"{ENV_VAR}"`` placeholders in strings (recursively) from ``os.environ``.

    Deployments put e.g. ``"{JUPYTERHUB_API_TOKEN}"`` in config so that secrets stay in
    the environment.
    """
    if isinstance(value, str):
        try:
            return value.format(**os.environ)
        except KeyError as exc:
            raise ValueError(
                f"Config value {value!r} refers to environment variable "
                f"{exc.args[0]!r}, which is not set"
            ) from None
    if isinstance(value, dict):
        return {k: format_template(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [format_template(v) for v in value]
    return value


def _config_value(key: str) -> Any:
    return format_template(dask.config.get(key, None))


def resolve_address(address: str | None) -> str:
    """The gateway URL from the argument or ``gateway.address``, without trailing ``/``."""
    if address is None:
        address = _config_value("gateway.address")
    if not address:
        raise ValueError(
            "No dask-gateway address provided or found in configuration; pass "
            "`address=...` or set `gateway.address` (env DASK_GATEWAY__ADDRESS)"
        )
    return address.rstrip("/")


def resolve_public_address(public_address: str | None, address: str) -> str:
    """Root for dashboard links: argument, ``gateway.public-address``, else ``address``."""
    if public_address is None:
        public_address = _config_value("gateway.public-address")
    return (public_address or address).rstrip("/")


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off", "none", ""}


def progress_setting() -> bool | str:
    """Config ``gateway.progress`` as True, False or ``"auto"`` (an environment variable
    gives a string): whether ``new_cluster()`` shows its start-up phases."""
    value = dask.config.get("gateway.progress", "auto")
    if value is None or isinstance(value, bool):
        return bool(value)
    text = str(value).strip().lower()
    if text == "auto":
        return "auto"
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"gateway.progress must be true, false or 'auto', got {value!r}")


_DEFAULT_PORTS = {"http": 80, "https": 443}


def resolve_proxy_address(proxy_address: str | int | None, address: str) -> str:
    """``gateway://host:port`` where scheduler (TLS/SNI) connections are sent.

    ``None`` uses the host and port of ``address`` (80/443 by scheme, 8786 otherwise);
    an int is a port on the host of ``address``; a string is ``host:port`` or a URL
    whose scheme is ignored.
    """
    if proxy_address is None:
        proxy_address = _config_value("gateway.proxy-address")
    if isinstance(proxy_address, str) and proxy_address.isdigit():
        proxy_address = int(proxy_address)
    parsed = urlparse(address)
    if proxy_address is None or isinstance(proxy_address, int):
        if isinstance(proxy_address, int):
            port = proxy_address
        else:
            port = parsed.port or _DEFAULT_PORTS.get(parsed.scheme, 8786)
        host = parsed.hostname
        if host is None:
            raise ValueError(f"Cannot infer a proxy address from gateway address {address!r}")
        if ":" in host:  # IPv6 literal
            host = f"[{host}]"
        return f"gateway://{host}:{port}"
    if not isinstance(proxy_address, str):
        raise TypeError(f"proxy_address must be a str or int, got {proxy_address!r}")
    if "://" in proxy_address:
        netloc = urlparse(proxy_address).netloc
    else:
        netloc = proxy_address
    if not netloc:
        raise ValueError(f"Invalid proxy address {proxy_address!r}")
    return f"gateway://{netloc}"


__all__ = [
    "format_template",
    "progress_setting",
    "resolve_address",
    "resolve_proxy_address",
    "resolve_public_address",
]
