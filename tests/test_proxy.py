"""Tests for the gateway's single public port (dask_gateway_server.proxy)."""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import ssl
import sys

import pytest
from support.gateway_process import free_port
from support.tls import write_self_signed
from support.waiting import wait_for_async
from tornado import httpserver, netutil, web, websocket
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from traitlets import TraitError

from dask_gateway_server.proxy import ClientHelloError, Proxy, parse_client_hello

# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def client_context(cert: str, key: str | None = None) -> ssl.SSLContext:
    """Like dask_gateway's GatewaySecurity: pin the cert as CA, no hostname check."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cert)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    if key:
        ctx.load_cert_chain(cert, key)
    return ctx


def server_context(cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


def client_hello(server_hostname: str) -> bytes:
    """The exact ClientHello bytes Python's ssl would send for this SNI."""
    ctx = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


async def start_server(handler, ssl_ctx=None) -> tuple[asyncio.AbstractServer, int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=ssl_ctx)
    return server, server.sockets[0].getsockname()[1]


async def echo_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        writer.close()


async def read_all(sock: socket.socket, timeout: float = 5) -> bytes:
    loop = asyncio.get_running_loop()
    chunks = []
    while True:
        data = await asyncio.wait_for(loop.sock_recv(sock, 65536), timeout)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


async def closed_by_peer(sock: socket.socket, timeout: float = 5) -> bool:
    """True if the peer closes without sending anything (FIN or RST)."""
    try:
        return await read_all(sock, timeout) == b""
    except ConnectionResetError:
        return True  # closing with our unread bytes queued sends an RST


async def raw_connect(port: int) -> socket.socket:
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    return sock


class HealthHandler(web.RequestHandler):
    def get(self):
        self.write({"status": "ok", "path": self.request.path, "protocol": self.request.protocol})


def make_app(proxy: Proxy) -> web.Application:
    return web.Application(
        [(proxy.prefix + r"/api/health", HealthHandler)] + proxy.dashboard_handlers()
    )


# ---------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> tuple[str, str]:
    return write_self_signed(str(tmp_path_factory.mktemp("certs")), ["c1", "localhost"])


@pytest.fixture
async def proxy():
    p = Proxy(address="127.0.0.1:0")
    await p.start(make_app(p))
    try:
        yield p
    finally:
        await p.stop()


@pytest.fixture
async def http():
    client = AsyncHTTPClient(force_instance=True)
    try:
        yield client
    finally:
        client.close()


# ---------------------------------------------------------------------------
# ClientHello parsing
# ---------------------------------------------------------------------------


def test_parse_client_hello():
    hello = client_hello("daskgateway-abc")
    assert parse_client_hello(hello) == (0, "daskgateway-abc")
    # Every truncation asks for more bytes than it has.
    for n in range(len(hello)):
        need, sni = parse_client_hello(hello[:n])
        assert need > n and sni is None
    # Same hello re-framed as one handshake split over three records.
    body = hello[5:]
    parts = [body[:7], body[7:100], body[100:]]
    multi = b"".join(b"\x16\x03\x01" + len(p).to_bytes(2, "big") + p for p in parts)
    assert parse_client_hello(multi) == (0, "daskgateway-abc")
    # Malformed input raises ClientHelloError, never anything else.
    rng = random.Random(0)
    for _ in range(500):
        data = bytearray(hello)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        try:
            parse_client_hello(bytes(data))
        except ClientHelloError:
            pass
    with pytest.raises(ClientHelloError):
        parse_client_hello(b"\x16\x03\x01\xff\xff" + b"\x01" * 10)  # record too long
    with pytest.raises(ClientHelloError):
        parse_client_hello(b"\x16\x03\x01\x00\x04\x02\x00\x00\x00")  # ServerHello


# ---------------------------------------------------------------------------
# HTTP side
# ---------------------------------------------------------------------------


async def test_http_api_and_properties(proxy, http):
    assert proxy.http_port > 0 and proxy.tcp_port == proxy.http_port
    assert proxy.public_url == f"http://127.0.0.1:{proxy.http_port}"
    assert proxy.tcp_address_bound == f"127.0.0.1:{proxy.http_port}"
    resp = await http.fetch(proxy.public_url + "/api/health")
    assert json.loads(resp.body) == {"status": "ok", "path": "/api/health", "protocol": "http"}
    # Keep-alive: a second request over the client's pooled connection.
    resp = await http.fetch(proxy.public_url + "/api/health")
    assert resp.code == 200


async def test_prefix(http):
    with pytest.raises(TraitError):
        Proxy(prefix="gateway")
    p = Proxy(address="127.0.0.1:0", prefix="/gateway/")
    assert p.prefix == "/gateway"
    await p.start(make_app(p))
    try:
        assert p.public_url.endswith(f":{p.http_port}/gateway")
        resp = await http.fetch(p.public_url + "/api/health")
        assert json.loads(resp.body)["path"] == "/gateway/api/health"
        resp = await http.fetch(p.public_url + "/clusters/nope/", raise_error=False)
        assert resp.code == 404
        assert json.loads(resp.body) == {"error": "Cluster nope not found or not running"}
        resp = await http.fetch(f"http://127.0.0.1:{p.http_port}/clusters/nope/", raise_error=False)
        assert resp.code == 404 and b"not found or not running" not in resp.body
    finally:
        await p.stop()


def test_config_validation_and_unused_traits(caplog):
    p = Proxy(tls_cert="/x.pem")
    with pytest.raises(ValueError):
        p._make_ssl_context()
    assert Proxy(address=":8000").public_url == f"http://{socket.gethostname()}:8000"
    assert Proxy(address="[::1]:8000", prefix="/x").public_url == "http://[::1]:8000/x"
    with caplog.at_level("INFO"):
        Proxy(api_token="abc", gateway_url="http://x", externally_managed=True)
    assert "api_token" in caplog.text and "externally_managed" in caplog.text


async def test_https_public_port(certs, http):
    cert, key = certs
    echo, echo_port = await start_server(echo_handler, server_context(cert, key))
    p = Proxy(address="127.0.0.1:0", tls_cert=cert, tls_key=key)
    await p.start(make_app(p))
    try:
        assert p.public_url.startswith("https://")
        resp = await http.fetch(HTTPRequest(p.public_url + "/api/health", ca_certs=cert))
        assert json.loads(resp.body)["protocol"] == "https"
        # Plain HTTP on an HTTPS port does not reach the app.
        with pytest.raises(OSError):
            await http.fetch(f"http://127.0.0.1:{p.http_port}/api/health")
        # SNI tunnels still share the same port.
        p.add_route("c1", f"tls://127.0.0.1:{echo_port}", None)
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", p.http_port, ssl=client_context(cert), server_hostname="daskgateway-c1"
        )
        writer.write(b"hello")
        assert await reader.readexactly(5) == b"hello"
        writer.close()
    finally:
        await p.stop()
        echo.close()


# ---------------------------------------------------------------------------
# SNI side
# ---------------------------------------------------------------------------


def test_kernel_splice_is_used_on_linux():
    """The fast path this project's machines rely on."""
    assert not sys.platform.startswith("linux") or Proxy._kernel_splice


# Kernel splice(2) and the portable fallback; only the fallback where there is no splice.
@pytest.fixture(params=["splice", "transport"] if Proxy._kernel_splice else ["transport"])
def splice_mode(request, monkeypatch):
    """Run tunnel tests with kernel splice(2) and with the portable fallback."""
    monkeypatch.setattr(Proxy, "_kernel_splice", request.param == "splice")
    return request.param


async def test_sni_tls_echo(splice_mode, proxy, certs):
    cert, key = certs
    echo, echo_port = await start_server(echo_handler, server_context(cert, key))
    try:
        proxy.add_route("c1", f"tls://127.0.0.1:{echo_port}", None)
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", proxy.http_port, ssl=client_context(cert), server_hostname="daskgateway-c1"
        )
        payload = os.urandom(1024 * 1024)
        writer.write(payload)
        got = await asyncio.wait_for(reader.readexactly(len(payload)), 10)
        assert got == payload
        assert proxy.open_tunnels == 1
        writer.close()
        await wait_for_async(
            lambda: proxy.open_tunnels == 0, timeout=5, interval=0.01, what="tunnels closed"
        )
    finally:
        echo.close()


async def test_sni_split_hello_and_half_close(splice_mode, proxy):
    """The ClientHello arrives in pieces, bytes pass unchanged, EOF propagates."""
    received = asyncio.get_running_loop().create_future()

    async def sink(reader, writer):
        data = await reader.read()  # until the client's half-close arrives
        received.set_result(data)
        writer.write(b"got %d" % len(data))
        await writer.drain()
        writer.close()

    server, port = await start_server(sink)
    try:
        proxy.add_route("c2", f"127.0.0.1:{port}", None)
        hello = client_hello("daskgateway-c2")
        sock = await raw_connect(proxy.http_port)
        loop = asyncio.get_running_loop()
        for piece in (hello[:3], hello[3:50], hello[50:]):
            await loop.sock_sendall(sock, piece)
            await asyncio.sleep(0.05)
        await loop.sock_sendall(sock, b"tail")
        sock.shutdown(socket.SHUT_WR)
        reply = await read_all(sock)
        sock.close()
        assert await received == hello + b"tail"
        assert reply == b"got %d" % (len(hello) + 4)
    finally:
        server.close()


async def test_sni_unknown_and_bad_input_closed(proxy, certs):
    cert, _ = certs
    # Unknown cluster: the proxy closes, the handshake fails.
    with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError, OSError)):
        reader, writer = await asyncio.open_connection(
            "127.0.0.1",
            proxy.http_port,
            ssl=client_context(cert),
            server_hostname="daskgateway-nope",
        )
        await reader.read()
    # Malformed TLS record: closed without a reply.
    sock = await raw_connect(proxy.http_port)
    await asyncio.get_running_loop().sock_sendall(sock, b"\x16\x03\x01\xff\xff" + b"x" * 20)
    assert await closed_by_peer(sock)
    sock.close()
    # Scheduler not listening: the client is closed, nothing leaks.
    dead_port = free_port()
    proxy.add_route("dead", f"tls://127.0.0.1:{dead_port}", None)
    sock = await raw_connect(proxy.http_port)
    await asyncio.get_running_loop().sock_sendall(sock, client_hello("daskgateway-dead"))
    assert await closed_by_peer(sock)
    sock.close()
    assert proxy.open_tunnels == 0
    # Removed route: closed too.
    proxy.add_route("gone", "tls://127.0.0.1:1", None)
    proxy.remove_route("gone")
    proxy.remove_route("gone")  # idempotent
    sock = await raw_connect(proxy.http_port)
    await asyncio.get_running_loop().sock_sendall(sock, client_hello("daskgateway-gone"))
    assert await closed_by_peer(sock)
    sock.close()


async def test_separate_tcp_port(certs, http):
    cert, key = certs
    echo, echo_port = await start_server(echo_handler, server_context(cert, key))
    p = Proxy(address="127.0.0.1:0", tcp_address="127.0.0.1:0", peek_timeout=0.5)
    await p.start(make_app(p))
    try:
        assert p.tcp_port != p.http_port
        assert p.tcp_address_bound == f"127.0.0.1:{p.tcp_port}"
        loop = asyncio.get_running_loop()
        # Non-TLS garbage on the SNI-only port: closed.
        sock = await raw_connect(p.tcp_port)
        await loop.sock_sendall(sock, b"GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert await closed_by_peer(sock)
        sock.close()
        # TLS without a gateway SNI: closed as well.
        sock = await raw_connect(p.tcp_port)
        await loop.sock_sendall(sock, client_hello("example.com"))
        assert await closed_by_peer(sock)
        sock.close()
        # Silent client: closed after peek_timeout.
        sock = await raw_connect(p.tcp_port)
        assert await closed_by_peer(sock)
        sock.close()
        # Tunnels work on the tcp port, HTTP on the other one.
        p.add_route("c1", f"tls://127.0.0.1:{echo_port}", None)
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", p.tcp_port, ssl=client_context(cert), server_hostname="daskgateway-c1"
        )
        writer.write(b"ping")
        assert await reader.readexactly(4) == b"ping"
        resp = await http.fetch(p.public_url + "/api/health")
        assert resp.code == 200
        # stop() tears down live tunnels.
        assert p.open_tunnels == 1
        await p.stop()
        assert p.open_tunnels == 0
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
    finally:
        await p.stop()
        echo.close()


async def test_distributed_tls_scheduler(proxy, tmp_path):
    """A real TLS scheduler answers an rpc through the proxy, routed by SNI."""
    from distributed import Scheduler
    from distributed.comm import connect
    from distributed.security import Security

    cert, key = write_self_signed(str(tmp_path), ["sched1"])
    security = Security(
        tls_ca_file=cert,
        tls_scheduler_cert=cert,
        tls_scheduler_key=key,
        require_encryption=True,
    )
    async with Scheduler(
        security=security, protocol="tls", host="127.0.0.1", port=0, dashboard=False
    ) as scheduler:
        assert scheduler.address.startswith("tls://")
        proxy.add_route("sched1", scheduler.address, None)
        comm = await connect(
            f"tls://127.0.0.1:{proxy.tcp_port}",
            timeout=10,
            ssl_context=client_context(cert, key),
            server_hostname="daskgateway-sched1",
            require_encryption=True,
        )
        try:
            await comm.write({"op": "identity", "reply": True})
            identity = await comm.read()
        finally:
            await comm.close()
        assert identity["type"] == "Scheduler"
        assert identity["id"] == scheduler.id


# ---------------------------------------------------------------------------
# Dashboards
# ---------------------------------------------------------------------------


class EchoRequestHandler(web.RequestHandler):
    def _echo(self):
        self.write(
            {
                "method": self.request.method,
                "path": self.request.path,
                "query": self.request.query,
                "host": self.request.host,
                "xff": self.request.headers.get("X-Forwarded-For"),
                "xfproto": self.request.headers.get("X-Forwarded-Proto"),
                "connection": self.request.headers.get("Connection"),
                "body_len": len(self.request.body),
                "body_head": self.request.body[:16].decode("latin-1"),
            }
        )

    get = post = put = delete = head = _echo


class RedirectingHandler(web.RequestHandler):
    def get(self, kind):
        port = self.request.host.rsplit(":", 1)[1]
        target = {
            "abs": f"http://127.0.0.1:{port}/status?x=1",
            "root": "/status",
            "rel": "status",
            "away": "https://example.com/status",
        }[kind]
        self.redirect(target)


class BigHandler(web.RequestHandler):
    async def get(self):
        for _ in range(16):
            self.write(b"x" * 65536)
            await self.flush()


class WSEchoHandler(websocket.WebSocketHandler):
    def select_subprotocol(self, subprotocols):
        return subprotocols[0] if subprotocols else None

    def on_message(self, message):
        self.write_message(message, binary=isinstance(message, bytes))


@pytest.fixture
async def dashboard_backend():
    app = web.Application(
        [
            (r"/ws", WSEchoHandler),
            (r"/redirect/(\w+)", RedirectingHandler),
            (r"/big", BigHandler),
            (r"/.*", EchoRequestHandler),
        ]
    )
    server = httpserver.HTTPServer(app)
    sockets = netutil.bind_sockets(0, "127.0.0.1")
    server.add_sockets(sockets)
    try:
        yield sockets[0].getsockname()[1]
    finally:
        server.stop()
        await server.close_all_connections()


async def test_dashboard_http(proxy, dashboard_backend, http):
    port = dashboard_backend
    proxy.add_route("c1", "tls://127.0.0.1:1", f"http://127.0.0.1:{port}")
    assert proxy.get_dashboard_target("c1") == f"http://127.0.0.1:{port}"
    base = proxy.public_url + "/clusters/c1"

    resp = await http.fetch(
        base + "/status/page?x=1&y=%2F", headers={"Connection": "keep-alive, X-Drop"}
    )
    info = json.loads(resp.body)
    assert info["path"] == "/status/page"
    assert info["query"] == "x=1&y=%2F"
    assert info["host"] == f"127.0.0.1:{port}"
    assert info["xff"] == "127.0.0.1" and info["xfproto"] == "http"
    assert info["connection"] != "keep-alive, X-Drop"

    body = os.urandom(1024 * 1024)
    resp = await http.fetch(
        base + "/upload",
        method="POST",
        body=body,
        headers={"Content-Type": "application/octet-stream"},
    )
    info = json.loads(resp.body)
    assert info["method"] == "POST" and info["body_len"] == len(body)
    resp = await http.fetch(base + "/x", method="DELETE")
    assert json.loads(resp.body)["method"] == "DELETE"

    resp = await http.fetch(base + "/big")
    assert len(resp.body) == 16 * 65536
    resp = await http.fetch(base + "/status", method="HEAD")
    assert resp.code == 200 and resp.body == b""

    # Redirects are passed through (not followed) with Location mapped back.
    expected = {
        "abs": "/clusters/c1/status?x=1",
        "root": "/clusters/c1/status",
        "rel": "status",
        "away": "https://example.com/status",
    }
    for kind, location in expected.items():
        resp = await http.fetch(
            base + f"/redirect/{kind}", follow_redirects=False, raise_error=False
        )
        assert resp.code == 302
        assert resp.headers["Location"] == location

    # No trailing slash: canonicalise so relative dashboard URLs resolve.
    resp = await http.fetch(base + "?a=b", follow_redirects=False, raise_error=False)
    assert resp.code == 302 and resp.headers["Location"] == "/clusters/c1/?a=b"
    resp = await http.fetch(base + "/")
    assert json.loads(resp.body)["path"] == "/"

    # Removed -> 404 JSON.
    proxy.remove_route("c1")
    resp = await http.fetch(base + "/status", raise_error=False)
    assert resp.code == 404
    assert json.loads(resp.body) == {"error": "Cluster c1 not found or not running"}


async def test_dashboard_websocket(proxy, dashboard_backend):
    proxy.add_route("c1", "tls://127.0.0.1:1", f"http://127.0.0.1:{dashboard_backend}")
    url = f"ws://127.0.0.1:{proxy.http_port}/clusters/c1/ws"
    conn = await websocket.websocket_connect(url, subprotocols=["bokeh", "token123"])
    try:
        assert conn.selected_subprotocol == "bokeh"
        await conn.write_message("hello")
        assert await conn.read_message() == "hello"
        blob = os.urandom(200_000)
        await conn.write_message(blob, binary=True)
        assert await conn.read_message() == blob
    finally:
        conn.close()
    await wait_for_async(
        lambda: not proxy._websockets, timeout=5, interval=0.01, what="websockets closed"
    )


async def test_dashboard_dead_target_and_access_hook(proxy, dashboard_backend, http):
    dead_port = free_port()
    proxy.add_route("dead", "tls://127.0.0.1:1", f"http://127.0.0.1:{dead_port}")
    resp = await http.fetch(proxy.public_url + "/clusters/dead/status", raise_error=False)
    assert resp.code == 502
    assert "error" in json.loads(resp.body)
    with pytest.raises(HTTPClientError, match="502"):
        await websocket.websocket_connect(f"ws://127.0.0.1:{proxy.http_port}/clusters/dead/ws")

    proxy.add_route("c1", "tls://127.0.0.1:1", f"http://127.0.0.1:{dashboard_backend}")
    calls = []

    async def check(handler, name):
        calls.append(name)
        return handler.request.headers.get("X-Allow") == "yes"

    proxy.check_dashboard_access = check
    resp = await http.fetch(proxy.public_url + "/clusters/c1/status", raise_error=False)
    assert resp.code == 403 and "error" in json.loads(resp.body)
    resp = await http.fetch(proxy.public_url + "/clusters/c1/status", headers={"X-Allow": "yes"})
    assert resp.code == 200
    assert calls == ["c1", "c1"]
