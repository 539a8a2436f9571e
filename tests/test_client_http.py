"""The client's HTTP layer against a real gateway: kept-alive connections, an HTTP proxy,
and the errors a user sees when nothing answers."""

from __future__ import annotations

import asyncio
import socket
import threading

import pytest
from support.gateway_process import free_port
from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.httpserver import HTTPServer


class _ForwardProxy(web.RequestHandler):
    """A minimal HTTP forward proxy: requests arrive with absolute URIs."""

    SUPPORTED_METHODS = ("GET", "POST", "DELETE")

    def initialize(self, seen: list[str]) -> None:
        self.seen = seen

    def check_xsrf_cookie(self) -> None:
        pass

    async def _forward(self) -> None:
        uri = self.request.uri
        assert uri.startswith("http://"), uri  # a proxy request, not a direct one
        self.seen.append(f"{self.request.method} {uri}")
        headers = {
            k: v
            for k, v in self.request.headers.get_all()
            if k.lower() not in ("proxy-connection", "host", "connection")
        }
        resp = await AsyncHTTPClient().fetch(
            HTTPRequest(
                uri,
                method=self.request.method,
                headers=headers,
                body=self.request.body if self.request.method == "POST" else None,
                follow_redirects=False,
            ),
            raise_error=False,
        )
        self.set_status(resp.code, resp.reason)
        self.clear_header("Content-Type")
        for k, v in resp.headers.get_all():
            if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                self.add_header(k, v)
        self.finish(resp.body if resp.body and resp.code != 204 else None)

    get = post = delete = _forward


@pytest.fixture
def forward_proxy():
    """A forward proxy on its own thread and loop; yields (url, requests seen)."""
    seen: list[str] = []
    started = threading.Event()
    state: dict = {}

    def run() -> None:
        async def main() -> None:
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sock.listen(16)
            sock.setblocking(False)
            server = HTTPServer(web.Application([(r".*", _ForwardProxy, {"seen": seen})]))
            server.add_sockets([sock])
            state["url"] = f"http://127.0.0.1:{sock.getsockname()[1]}"
            state["stop"] = asyncio.Event()
            started.set()
            await state["stop"].wait()
            server.stop()

        loop = asyncio.new_event_loop()
        state["loop"] = loop
        loop.run_until_complete(main())
        loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(10)
    yield state["url"], seen
    state["loop"].call_soon_threadsafe(state["stop"].set)
    thread.join(10)


def test_api_calls_go_through_a_configured_http_proxy(gateway, forward_proxy):
    import dask

    from dask_gateway import Gateway

    proxy_url, seen = forward_proxy
    with dask.config.set({"gateway.http-client.proxy": proxy_url}):
        with Gateway(gateway.address, auth="basic") as gw:
            name = gw.submit()
            assert name in [c.name for c in gw.list_clusters()]
            gw.stop_cluster(name)
    assert f"POST {gateway.address}/api/v1/clusters/" in seen
    assert f"DELETE {gateway.address}/api/v1/clusters/{name}" in seen


def test_connections_are_reused(gateway):
    """Many calls, few TCP connections: the gateway sees one kept-alive connection."""
    from dask_gateway import Gateway

    with Gateway(gateway.address, auth="basic") as gw:
        gw.list_clusters()
        conns = gw._http._connector._conns  # idle pooled connections, by host key
        assert sum(len(v) for v in conns.values()) == 1
        first = next(iter(conns.values()))[0][0]
        for _ in range(20):
            gw.list_clusters()
        assert next(iter(conns.values()))[0][0] is first


def test_nothing_listening_is_a_plain_connection_error():
    from dask_gateway import Gateway

    port = free_port()
    with Gateway(f"http://127.0.0.1:{port}", auth="basic") as gw:
        with pytest.raises(ConnectionRefusedError):
            gw.list_clusters()
