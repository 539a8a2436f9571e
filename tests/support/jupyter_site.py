"""One real gateway and a Jupyter server per user, each server holding its own user's gateway
credentials: the frame of the server extension's tests with two users and an admin."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from support.gateway_process import GatewayProcess, _kill_leftovers
from support.jupyter_server import JupyterServerProcess, gateway_env


class Site:
    """The gateway, and each user's Jupyter server."""

    def __init__(self, gateway: GatewayProcess, servers: dict[str, JupyterServerProcess]):
        self.gateway = gateway
        self.servers = servers

    def request(
        self,
        whose: str,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        timeout: float = 90,
        **kwargs: Any,
    ) -> httpx.Response:
        """A request to a route of ``whose`` server extension, as a script with the Jupyter
        token would send it (in the query: the Authorization header stays free for other
        credentials a test sends along)."""
        server = self.servers[whose]
        return httpx.request(
            method,
            f"{server.url}/dask-gateway/{path}",
            params={"token": server.token, **(params or {})},
            timeout=timeout,
            **kwargs,
        )

    def get(
        self, whose: str, path: str, headers: dict | None = None, timeout: float = 90, **params
    ) -> httpx.Response:
        """GET a route of ``whose`` server (``params``: its query)."""
        return self.request(whose, "GET", path, params=params, headers=headers, timeout=timeout)

    def post(self, whose: str, path: str, body: dict) -> httpx.Response:
        return self.request(whose, "POST", path, json=body)

    def client(self, user: str):
        """A gateway client of ``user``'s own (what their Python in a notebook would use)."""
        from dask_gateway.auth import BasicAuth

        return self.gateway.new_gateway(auth=BasicAuth(user))


@contextlib.contextmanager
def running_site(
    root: Path,
    users: Iterable[str],
    config: str,
    gateway_environ: dict[str, str] | None = None,
) -> Iterator[Site]:
    """Start a gateway with the config file text ``config`` (its environment extended by
    ``gateway_environ``) and a Jupyter server per user; stop them all at the end and check
    that no server logged a traceback."""
    config_path = root / "gateway_config.py"
    config_path.write_text(config)
    gw = GatewayProcess(root / "gateway", config=config_path)
    servers: dict[str, JupyterServerProcess] = {}
    try:
        with pytest.MonkeyPatch.context() as env:
            for key, value in (gateway_environ or {}).items():
                env.setenv(key, value)
            gw.start()
        for user in users:
            servers[user] = JupyterServerProcess(
                root / user, gateway_env(gw.address, user), token=f"{user}-token"
            )
            servers[user].start()
        yield Site(gw, servers)
    finally:
        for server in servers.values():
            server.stop()
        gw.stop()
        _kill_leftovers(gw.data_dir)
    for server in servers.values():
        assert "Traceback" not in server.log(), server.log()


def error_of(r: httpx.Response, status: int) -> str:
    """The JSON error of a refused request, checked to be of the expected status."""
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json"), r.text
    message = r.json()["error"]
    assert message and "Traceback" not in message
    return message
