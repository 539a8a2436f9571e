"""The gateway's single public port.

One listener serves three kinds of traffic, told apart by peeking at the first
bytes of each connection (nothing is consumed, so nothing has to be replayed):

* TLS whose SNI starts with ``daskgateway-``: a dask client talking to a
  scheduler. The TLS session is end-to-end between client and scheduler; we
  only splice bytes (see ``dask_gateway``'s ``gateway://`` comm). On Linux
  the bytes move with splice(2) through a pipe, never entering Python; other
  platforms use asyncio transports with flow control.
* Anything else: handed untouched to a tornado ``HTTPServer`` (HTTPS when
  ``tls_cert``/``tls_key`` are set) serving the gateway's API app, including
  the dashboard reverse-proxy handlers from :meth:`Proxy.dashboard_handlers`.
* With a separate ``tcp_address``, that port only does SNI tunnels and closes
  everything else.

Unlike upstream dask-gateway there is no route API: the gateway calls
:meth:`Proxy.add_route`/:meth:`Proxy.remove_route` directly, so a route exists
as soon as the cluster is reported running. With ``separate_process`` the
listener and the tunnels live in a long-lived child process (see
``proxy_process.py``) so clients' scheduler connections outlive a gateway
restart; HTTP connections are then passed to the gateway as file descriptors.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import secrets
import socket
import ssl
import struct
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]
from urllib.parse import unquote, urlsplit, urlunsplit

from tornado import httputil, netutil, web, websocket
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.httpserver import HTTPServer
from tornado.iostream import IOStream, SSLIOStream, StreamClosedError
from tornado.simple_httpclient import SimpleAsyncHTTPClient
from traitlets import Bool, Float, Integer, TraitError, Unicode, observe, validate
from traitlets.config import LoggingConfigurable

from ..logs import about

__all__ = ["Proxy", "DashboardProxyHandler", "parse_client_hello", "ClientHelloError"]

SNI_PREFIX = "daskgateway-"

_TLS_HANDSHAKE = 0x16
_HELLO_TYPE = 0x01
# Upper bound on how many bytes we are willing to peek for a ClientHello.
# Real hellos are < 2 KiB (a few KiB with post-quantum key shares); this keeps
# a hostile peer from making us buffer a 16 MiB handshake message.
_MAX_HELLO_BYTES = 64 * 1024
_MAX_RECORD = 16384 + 2048

# Splice tuning: large reads amortise per-syscall/event-loop overhead; the
# write-buffer high-water mark bounds memory per direction while keeping both
# sockets busy.
_SPLICE_BUFSIZE = 256 * 1024
_SPLICE_HIGH_WATER = 1024 * 1024

_HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Proxy-Connection",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
    )
)
# Headers tornado's websocket client generates itself for the upstream handshake.
_WS_HANDSHAKE_HEADERS = frozenset(
    (
        "host",
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "sec-websocket-protocol",
        "sec-websocket-accept",
        "content-length",
    )
)
_WS_MAX_MESSAGE = 128 * 1024 * 1024
# The viewer's credentials: never sent to a scheduler.
_CREDENTIAL_HEADERS = frozenset(("authorization", "cookie", "cookie2"))

# Dashboards are the owner's code. Served in a sandbox with an opaque origin, their scripts
# run (bokeh needs them) but cannot act on this origin's API or cookies as the viewer.
DASHBOARD_CSP = "sandbox allow-scripts allow-forms allow-popups allow-downloads allow-modals"
# The scheduler's answers must not set or clear anything on the viewer's browser for this
# origin, nor ask the viewer's client for credentials.
_DROP_RESPONSE_HEADERS = frozenset(
    (
        "set-cookie",
        "set-cookie2",
        "www-authenticate",
        "clear-site-data",
        "service-worker-allowed",
        "strict-transport-security",
        "referrer-policy",
    )
)
# A sandboxed page's own requests carry no cookie (they are cross-site), so the page and
# what it loads are reached through a path holding a short-lived grant for that one cluster:
# ``{prefix}/clusters/{name}/~{grant}/...``, issued after the viewer's access was checked.
GRANT_MARK = "~"
_GRANT_IDLE = 3600.0  # seconds a grant stays valid after its last use
_GRANT_MAX = 12 * 3600.0  # and at most this long after it was issued
_GRANT_MAX_COUNT = 10000

#: The header carrying a cluster's dashboard key (``Cluster.dashboard_key``) to its
#: scheduler, whose preload refuses requests without it; never taken from a viewer.
DASHBOARD_KEY_HEADER = "X-Dask-Gateway-Dashboard-Key"


# ---------------------------------------------------------------------------
# ClientHello parsing
# ---------------------------------------------------------------------------


class ClientHelloError(ValueError):
    """The peeked bytes are not a well-formed (or acceptably small) ClientHello."""


def _u16(buf: bytes, pos: int) -> int:
    if pos + 2 > len(buf):
        raise ClientHelloError("truncated")
    return (buf[pos] << 8) | buf[pos + 1]


def _extract_sni(body: bytes) -> str | None:
    """Return the host_name from a ClientHello body (after the 4-byte header)."""
    pos = 2 + 32  # legacy_version, random
    if pos + 1 > len(body):
        raise ClientHelloError("truncated")
    pos += 1 + body[pos]  # session id
    pos += 2 + _u16(body, pos)  # cipher suites
    if pos + 1 > len(body):
        raise ClientHelloError("truncated")
    pos += 1 + body[pos]  # compression methods
    if pos > len(body):
        raise ClientHelloError("truncated")
    if pos == len(body):
        return None  # no extensions at all
    end = pos + 2 + _u16(body, pos)
    pos += 2
    if end > len(body):
        raise ClientHelloError("extensions overflow")
    while pos + 4 <= end:
        ext_type = _u16(body, pos)
        ext_len = _u16(body, pos + 2)
        pos += 4
        if pos + ext_len > end:
            raise ClientHelloError("extension overflow")
        if ext_type == 0:  # server_name
            list_end = pos + 2 + _u16(body, pos)
            q = pos + 2
            if list_end > pos + ext_len:
                raise ClientHelloError("server_name overflow")
            while q + 3 <= list_end:
                name_type = body[q]
                name_len = _u16(body, q + 1)
                q += 3
                if q + name_len > list_end:
                    raise ClientHelloError("server_name overflow")
                if name_type == 0:
                    try:
                        return body[q : q + name_len].decode("ascii")
                    except UnicodeDecodeError:
                        raise ClientHelloError("non-ascii server name") from None
                q += name_len
            return None
        pos += ext_len
    return None


def parse_client_hello(data: bytes) -> tuple[int, str | None]:
    """Parse TLS records at the start of ``data`` looking for a ClientHello.

    Returns ``(need, sni)``: ``need > 0`` means at least ``need`` bytes must be
    available before a verdict is possible (a hello may span several records
    and TCP segments); ``need == 0`` means the hello is complete and ``sni`` is
    its server name (or None). Raises :class:`ClientHelloError` when the bytes
    cannot be a ClientHello or it would exceed our size bound.
    """
    handshake = bytearray()
    hs_len: int | None = None
    pos = 0
    while True:
        if len(data) < pos + 5:
            return pos + 5, None
        if data[pos] != _TLS_HANDSHAKE:
            raise ClientHelloError("not a handshake record")
        if data[pos + 1] != 3:
            raise ClientHelloError("bad record version")
        rec_len = _u16(data, pos + 3)
        if rec_len == 0 or rec_len > _MAX_RECORD:
            raise ClientHelloError("bad record length")
        end = pos + 5 + rec_len
        if end > _MAX_HELLO_BYTES:
            raise ClientHelloError("ClientHello too large")
        if len(data) < end:
            return end, None
        handshake += data[pos + 5 : end]
        pos = end
        if hs_len is None and len(handshake) >= 4:
            if handshake[0] != _HELLO_TYPE:
                raise ClientHelloError("not a ClientHello")
            hs_len = int.from_bytes(handshake[1:4], "big")
            if hs_len + 4 > _MAX_HELLO_BYTES:
                raise ClientHelloError("ClientHello too large")
        if hs_len is not None and len(handshake) >= hs_len + 4:
            return 0, _extract_sni(bytes(handshake[4 : 4 + hs_len]))


# ---------------------------------------------------------------------------
# Byte splicing between a client and a scheduler
# ---------------------------------------------------------------------------


class _Pipe(asyncio.BufferedProtocol):
    """One socket of a tunnel; what it reads is written to its peer's socket.

    Flow control: when *our* transport's write buffer is full (peer reads
    faster than we can send) we stop the peer from reading, and resume when it
    drains, so memory stays bounded at the high-water mark per direction.
    """

    def __init__(self, tunnel: _Tunnel) -> None:
        self.tunnel = tunnel
        self.peer: _Pipe | None = None
        self.transport: asyncio.Transport | None = None
        self.eof = False
        self.closed = False
        self._buf = memoryview(bytearray(_SPLICE_BUFSIZE))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(high=_SPLICE_HIGH_WATER)  # type: ignore[attr-defined]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        if self.peer is None:
            # Not linked yet (upstream connected before the client was wrapped):
            # don't read until there is somewhere to put the bytes.
            transport.pause_reading()  # type: ignore[attr-defined]

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._buf

    def buffer_updated(self, nbytes: int) -> None:
        # transport.write sends immediately when it can and copies only the
        # unsent remainder, so reusing our buffer afterwards is safe.
        self.peer.transport.write(self._buf[:nbytes])  # type: ignore[union-attr]

    def eof_received(self) -> bool:
        self.eof = True
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.closed:
            if peer.eof:
                self.tunnel.close()
                return False
            if peer.transport.can_write_eof():
                peer.transport.write_eof()
            else:
                self.tunnel.close()
                return False
        return True  # keep our write side open: half-close

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.closed:
            if exc is None:
                peer.transport.close()  # flushes what is still buffered
            else:
                peer.transport.abort()
        self.tunnel.lost(self)


class _Tunnel:
    """A client<->scheduler byte splice; tracked so stop() can close it."""

    def __init__(self, proxy: Proxy, cluster_name: str) -> None:
        self.proxy = proxy
        self.cluster_name = cluster_name
        self.client = _Pipe(self)
        self.upstream = _Pipe(self)
        self.client.peer = self.upstream
        self.upstream.peer = self.client

    def close(self) -> None:
        for p in (self.client, self.upstream):
            if p.transport is not None and not p.closed:
                p.transport.close()

    def abort(self) -> None:
        for p in (self.client, self.upstream):
            if p.transport is not None and not p.closed:
                p.transport.abort()
        self.proxy._tunnels.discard(self)

    def lost(self, pipe: _Pipe) -> None:
        if all(p.closed or p.transport is None for p in (self.client, self.upstream)):
            self.proxy._tunnels.discard(self)


_HAVE_SPLICE = fcntl is not None and hasattr(os, "splice") and hasattr(fcntl, "F_SETPIPE_SZ")
_SPLICE_FLAGS = (os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK) if _HAVE_SPLICE else 0


class _SplicePump:
    """One direction of a kernel-splice tunnel: src socket -> pipe -> dst socket.

    Callback-driven on the event loop (no task per chunk); readable src fills
    the pipe, the pipe drains into dst; when the pipe is full we stop watching
    src, which is the flow control. EOF on src becomes shutdown(SHUT_WR) on
    dst once the pipe is empty (half-close).
    """

    def __init__(self, tunnel: _SpliceTunnel, src: socket.socket, dst: socket.socket) -> None:
        self.tunnel = tunnel
        self.loop = tunnel.loop
        self.src = src.fileno()
        self.dst_sock = dst
        self.dst = dst.fileno()
        self.pipe_r, self.pipe_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            fcntl.fcntl(self.pipe_w, fcntl.F_SETPIPE_SZ, _SPLICE_HIGH_WATER)
        except OSError:
            pass  # keep the default (64 KiB); still works, just more wakeups
        self.capacity = fcntl.fcntl(self.pipe_w, fcntl.F_GETPIPE_SZ)
        self.pending = 0
        self.reading = False
        self.writing = False
        self.eof = False
        self.done = False

    def start(self) -> None:
        self._want_read(True)

    def _want_read(self, on: bool) -> None:
        if on and not self.reading:
            self.loop.add_reader(self.src, self._on_readable)
        elif not on and self.reading:
            self.loop.remove_reader(self.src)
        self.reading = on

    def _want_write(self, on: bool) -> None:
        if on and not self.writing:
            self.loop.add_writer(self.dst, self._flush)
        elif not on and self.writing:
            self.loop.remove_writer(self.dst)
        self.writing = on

    def _on_readable(self) -> None:
        room = self.capacity - self.pending
        if room <= 0:
            self._want_read(False)
            return
        try:
            n = os.splice(self.src, self.pipe_w, room, flags=_SPLICE_FLAGS)
        except (BlockingIOError, InterruptedError):
            if self.pending:
                # The pipe counts slots, not bytes: it can be "full" before
                # `capacity` bytes. Stop watching src (a readable socket would
                # otherwise spin us) until the pipe drains a little.
                self._want_read(False)
            return
        except OSError as exc:
            self.tunnel.fail(exc)
            return
        if n == 0:
            self.eof = True
            self._want_read(False)
        self.pending += n
        self._flush()

    def _flush(self) -> None:
        while self.pending:
            try:
                m = os.splice(self.pipe_r, self.dst, self.pending, flags=_SPLICE_FLAGS)
            except (BlockingIOError, InterruptedError):
                self._want_write(True)  # dst is full; the pipe buffers meanwhile
                return
            except OSError as exc:
                self.tunnel.fail(exc)
                return
            self.pending -= m
            if not self.reading and not self.eof:
                self._want_read(True)  # room again in the pipe
        self._want_write(False)
        if self.eof:
            try:
                self.dst_sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            self.done = True
            self.tunnel.pump_done()

    def close(self) -> None:
        self._want_read(False)
        self._want_write(False)
        for fd in (self.pipe_r, self.pipe_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self.pipe_r = self.pipe_w = -1


class _SpliceTunnel:
    """A client<->scheduler tunnel using splice(2); tracked so stop() can close it."""

    def __init__(self, proxy: Proxy, client: socket.socket, upstream: socket.socket) -> None:
        self.proxy = proxy
        self.loop = asyncio.get_running_loop()
        self.client = client
        self.upstream = upstream
        for s in (client, upstream):
            try:
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        self.pumps: list[_SplicePump] = []
        self.closed = False
        try:  # pipes can run out (EMFILE): release what we got, let the caller close
            self.pumps.append(_SplicePump(self, client, upstream))
            self.pumps.append(_SplicePump(self, upstream, client))
        except OSError:
            for p in self.pumps:
                p.close()
            raise

    def start(self) -> None:
        for p in self.pumps:
            p.start()

    def pump_done(self) -> None:
        if all(p.done for p in self.pumps):
            self.close()

    def fail(self, exc: Exception) -> None:
        self.proxy.log.debug("Tunnel closed on error: %r", exc)
        self.abort()

    def abort(self) -> None:
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for p in self.pumps:
            p.close()
        self.client.close()
        self.upstream.close()
        self.proxy._tunnels.discard(self)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def _split_hostport(address: str) -> tuple[str, int]:
    """Split "host:port" / "[v6]:port" / ":port"; raises ValueError otherwise."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"Invalid address {address!r}, expected 'host:port'")
    host = host.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def _display_host(host: str) -> str:
    """Host to put in URLs: wildcard binds resolve to this machine's name."""
    if host in ("", "0.0.0.0", "::"):
        host = socket.gethostname()
    if ":" in host:
        host = f"[{host}]"
    return host


async def _wait_readable(sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    fd = sock.fileno()

    def ready() -> None:
        if not fut.done():
            fut.set_result(None)

    loop.add_reader(fd, ready)
    try:
        await fut
    finally:
        loop.remove_reader(fd)


async def _classify(sock: socket.socket) -> tuple[str, str | None]:
    """Peek (MSG_PEEK) at a fresh connection; returns (kind, sni).

    kind is "eof", "other" (not TLS) or "tls" (sni may be None). Raises
    ClientHelloError for bytes that start like TLS but are malformed.
    """
    while True:
        await _wait_readable(sock)
        try:
            first = sock.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            continue
        break
    if not first:
        return "eof", None
    if first[0] != _TLS_HANDSHAKE:
        return "other", None
    need = 5
    delay = 0.001
    while True:
        try:
            data = sock.recv(need, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            data = None
        if data == b"":
            return "eof", None
        if data:
            need, sni = parse_client_hello(data)
            if need == 0:
                return "tls", sni
        # A hello split over segments: the socket stays readable while the
        # first part sits unconsumed, so poll with a short backoff instead of
        # waiting for readability (which would spin). Rare in practice.
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)


# ---------------------------------------------------------------------------
# The proxy
# ---------------------------------------------------------------------------


#: Bounds that keep one slow or hostile client from tying up the public port: headers must
#: arrive within 30 s (slowloris), bodies within 60 s, and neither may be huge.
HTTP_LIMITS = dict(
    max_header_size=64 * 1024,
    max_body_size=16 * 1024 * 1024,
    idle_connection_timeout=30,
    body_timeout=60,
)


class Proxy(LoggingConfigurable):
    """The gateway's public port: HTTP(S) API, dashboards, and SNI tunnels."""

    address = Unicode(
        "127.0.0.1:8000",
        help="""The public address ("host:port") for HTTP(S) and, unless
        tcp_address is set, scheduler (TLS/SNI) traffic. ":8000" listens on all
        interfaces; port 0 picks a free port.""",
        config=True,
    )
    tcp_address = Unicode(
        "",
        help="""A separate address for scheduler (TLS/SNI) traffic only.
        Empty means share `address`.""",
        config=True,
    )
    prefix = Unicode(
        "",
        help="URL prefix for the gateway's HTTP routes; must start with '/'.",
        config=True,
    )
    tls_cert = Unicode("", help="Certificate file for HTTPS on `address`.", config=True)
    tls_key = Unicode("", help="Private key file for HTTPS on `address`.", config=True)
    peek_timeout = Float(
        10.0,
        help="Seconds a new connection has to send its first bytes (or full ClientHello).",
        config=True,
    )
    connect_timeout = Float(10.0, help="Seconds to connect to a scheduler.", config=True)
    separate_process = Bool(
        False,
        help="""Run the public port's listener and the scheduler (TLS/SNI)
        tunnels in a process of their own, started by the gateway in its own
        session. The gateway re-attaches to it after a restart (through a unix
        socket in DaskGateway.data_dir), so the clients' connections tunnelled
        to their schedulers survive the gateway's restart, SIGKILL included,
        and the port keeps accepting meanwhile. HTTP
        connections are handed to the gateway as file descriptors and served
        as before. The process is stopped with the gateway when the backend
        stops clusters on shutdown, and kept running otherwise (its pid is in
        data_dir/proxy.pid).""",
        config=True,
    )
    separate_process_hold_timeout = Float(
        30.0,
        help="""With separate_process: seconds a new HTTP connection is held
        while no gateway is attached (during a restart) before it is answered
        503. Scheduler connections are routed meanwhile by the last known
        routes.""",
        config=True,
    )

    # Traits of upstream's external-proxy setup, accepted so existing config
    # files keep loading. The proxy is the gateway's own: in its process, or
    # (separate_process) in a child process attached through a unix socket.
    gateway_url = Unicode(
        "",
        help="Unused (public dask-gateway config): the URL its proxy called the gateway "
        "at. Ours is part of the gateway, or talks to it over a unix socket "
        "(separate_process).",
        config=True,
    )
    api_token = Unicode(
        "",
        help="Unused (public dask-gateway config): the token its proxy authenticated "
        "with. Ours needs none: a separate_process proxy accepts only its own user's "
        "gateway on its unix socket.",
        config=True,
    )
    max_events = Integer(
        100,
        help="Unused (public dask-gateway config): routes are pushed to the proxy as "
        "they change, not fetched as events.",
        config=True,
    )
    externally_managed = Bool(
        False,
        help="Unused (public dask-gateway config): the gateway always runs its proxy "
        "itself (in its process, or with separate_process in one it starts); True only logs "
        "a warning.",
        config=True,
    )
    proxy_status_period = Float(
        30,
        help="Unused (public dask-gateway config): how often its gateway checked its "
        "proxy. With separate_process the gateway notices at once that the proxy process "
        "closed its socket, and attaches again; in-process there is nothing to check.",
        config=True,
    )
    log_level = Unicode(
        "warn",
        help="Unused (public dask-gateway config): the proxy, also with "
        "separate_process, logs at the gateway's DaskGateway.log_level.",
        config=True,
    )

    @observe(
        "gateway_url",
        "api_token",
        "max_events",
        "externally_managed",
        "proxy_status_period",
        "log_level",
    )
    def _warn_unused(self, change: dict[str, Any]) -> None:
        if change["name"] == "externally_managed" and change["new"]:
            self.log.warning(
                "Proxy.externally_managed=True is not supported: the proxy always "
                "runs inside the gateway process; ignoring it."
            )
        else:
            self.log.warning(
                "Config option `Proxy.%s` is ignored: the proxy runs inside the gateway process",
                change["name"],
            )

    @validate("prefix")
    def _validate_prefix(self, proposal: dict[str, Any]) -> str:
        prefix = proposal["value"]
        if prefix and not prefix.startswith("/"):
            raise TraitError("Proxy.prefix must start with a '/'")
        return prefix.rstrip("/")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        #: Optional ``check_dashboard_access(handler, cluster_name)`` returning
        #: a bool or an awaitable of one. None leaves dashboards open (as
        #: upstream). False -> 403; the hook may raise
        #: ``tornado.web.HTTPError(401)`` itself to ask for credentials.
        self.check_dashboard_access: (
            Callable[[web.RequestHandler, str], Awaitable[bool] | bool] | None
        ) = None
        self._sni_routes: dict[str, str] = {}
        self._handoffs: dict[str, str] = {}
        self._handoff_uids: dict[str, int] = {}
        self._dashboard_routes: dict[str, str] = {}
        self._dashboard_keys: dict[str, str] = {}  # in this process only, never the link's
        #: dashboard grant -> (cluster, idle deadline, hard deadline), oldest first
        self._grants: OrderedDict[str, tuple[str, float, float]] = OrderedDict()
        self._sockets: list[socket.socket] = []
        self._remove_accept: list[Callable[[], None]] = []
        self._pending: set[asyncio.Task[None]] = set()
        self._tunnels: set[_Tunnel | _SpliceTunnel] = set()
        self._websockets: set[DashboardProxyHandler] = set()
        self._http_server: HTTPServer | None = None
        self._http_client: SimpleAsyncHTTPClient | None = None
        self._ssl_ctx: ssl.SSLContext | None = None
        self._http_port = 0
        self._tcp_port = 0
        self._http_host = ""
        self._tcp_host = ""
        self._started = False
        #: Where the separate proxy process keeps its socket and pid file (the
        #: gateway's data_dir; set by the application).
        self.state_dir = ""
        self._link: Any = None  # proxy_process.ProxyLink when separate_process

    # -- properties ----------------------------------------------------------

    @property
    def http_port(self) -> int:
        """The bound public port (after start)."""
        return self._http_port

    @property
    def tcp_port(self) -> int:
        """The bound SNI port (== http_port when shared)."""
        return self._tcp_port

    @property
    def public_url(self) -> str:
        scheme = "https" if self._ssl_ctx is not None else "http"
        host = self._http_host
        port = self._http_port
        if not self._started:
            host, port = _split_hostport(self.address)
        return f"{scheme}://{_display_host(host)}:{port}{self.prefix}"

    @property
    def tcp_address_bound(self) -> str:
        if not self._started:
            return self.tcp_address or self.address
        return f"{_display_host(self._tcp_host)}:{self._tcp_port}"

    @property
    def open_tunnels(self) -> int:
        """Number of live scheduler tunnels."""
        return len(self._tunnels)

    # -- routes --------------------------------------------------------------

    def add_route(
        self,
        cluster_name: str,
        scheduler_address: str,
        dashboard_address: str | None,
        handoff: str | None = None,
        handoff_uid: int | None = None,
        dashboard_key: str | None = None,
    ) -> None:
        """Route SNI ``daskgateway-<name>`` and ``{prefix}/clusters/<name>``.

        ``handoff``: a unix socket address where the scheduler takes over client connections
        (see :meth:`Backend.handoff_address`); tunnels are the fallback. Only a listener of
        ``handoff_uid`` (or root, or this process's user) gets them. ``dashboard_key``:
        sent to the dashboard with every request (see ``DASHBOARD_KEY_HEADER``).
        """
        target = scheduler_address
        if "://" in target:
            scheme, _, target = target.partition("://")
            if scheme not in ("tls", "tcp"):
                raise ValueError(f"Unsupported scheduler address {scheduler_address!r}")
        _split_hostport(target)  # validate early, not on first connect
        self._sni_routes[cluster_name] = target
        if handoff:
            self._handoffs[cluster_name] = handoff
        else:
            self._handoffs.pop(cluster_name, None)
        if handoff and handoff_uid is not None:
            self._handoff_uids[cluster_name] = handoff_uid
        else:
            self._handoff_uids.pop(cluster_name, None)
        if dashboard_address:
            if "://" not in dashboard_address:
                dashboard_address = "http://" + dashboard_address
            if urlsplit(dashboard_address).scheme not in ("http", "https"):
                raise ValueError(f"Unsupported dashboard address {dashboard_address!r}")
            self._dashboard_routes[cluster_name] = dashboard_address.rstrip("/")
        else:
            self._dashboard_routes.pop(cluster_name, None)
        if dashboard_key:
            self._dashboard_keys[cluster_name] = dashboard_key
        else:
            self._dashboard_keys.pop(cluster_name, None)
        if self._link is not None:
            self._link.add_route(
                cluster_name,
                target,
                self._dashboard_routes.get(cluster_name),
                self._handoffs.get(cluster_name),
                self._handoff_uids.get(cluster_name),
            )
        self.log.debug(
            "Added routes for cluster %s -> %s", cluster_name, target, extra=about(cluster_name)
        )

    def remove_route(self, cluster_name: str) -> None:
        """Forget a cluster's routes (live tunnels are left to end on their own)."""
        self._sni_routes.pop(cluster_name, None)
        self._handoffs.pop(cluster_name, None)
        self._handoff_uids.pop(cluster_name, None)
        self._dashboard_routes.pop(cluster_name, None)
        self._dashboard_keys.pop(cluster_name, None)
        for grant in [g for g, v in self._grants.items() if v[0] == cluster_name]:
            del self._grants[grant]
        if self._link is not None:
            self._link.remove_route(cluster_name)

    def grant_dashboard(self, cluster_name: str) -> str:
        """A new grant to ``cluster_name``'s dashboard, for a viewer already allowed."""
        now = time.monotonic()
        while self._grants:
            oldest, (_, idle, hard) = next(iter(self._grants.items()))
            if len(self._grants) < _GRANT_MAX_COUNT and min(idle, hard) > now:
                break
            del self._grants[oldest]
        grant = secrets.token_urlsafe(24)
        self._grants[grant] = (cluster_name, now + _GRANT_IDLE, now + _GRANT_MAX)
        return grant

    def check_grant(self, grant: str, cluster_name: str) -> bool:
        """Whether ``grant`` opens ``cluster_name``'s dashboard now (and keep it alive)."""
        entry = self._grants.get(grant)
        now = time.monotonic()
        if entry is None or entry[0] != cluster_name:
            return False
        if min(entry[1], entry[2]) <= now:
            del self._grants[grant]
            return False
        self._grants[grant] = (cluster_name, now + _GRANT_IDLE, entry[2])
        return True

    def get_dashboard_target(self, name: str) -> str | None:
        return self._dashboard_routes.get(name)

    def get_dashboard_key(self, name: str) -> str | None:
        return self._dashboard_keys.get(name)

    def get_scheduler_target(self, name: str) -> str | None:
        return self._sni_routes.get(name)

    def dashboard_handlers(self) -> list[tuple[str, type, dict[str, Any]]]:
        """Tornado URL specs serving ``{prefix}/clusters/{name}(/.*)?``."""
        import re

        pattern = re.escape(self.prefix) + r"/clusters/([^/]+)(/.*)?"
        return [(pattern, DashboardProxyHandler, {"proxy": self})]

    # -- lifecycle -----------------------------------------------------------

    def _make_ssl_context(self) -> ssl.SSLContext | None:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("Proxy.tls_cert and Proxy.tls_key must be set together")
        if not self.tls_cert:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.tls_cert, self.tls_key)
        ctx.set_alpn_protocols(["http/1.1"])
        return ctx

    def _bind(self, address: str, mode: str) -> tuple[str, int]:
        """Listen on address; mode is "shared" (peek + route), "http" or "sni"."""
        host, port = _split_hostport(address)
        socks = netutil.bind_sockets(port, address=host or None, backlog=1024)
        bound = socks[0].getsockname()[1]
        for s in socks:
            self._sockets.append(s)
            self._remove_accept.append(
                netutil.add_accept_handler(s, lambda c, a, mode=mode: self._on_accept(c, a, mode))
            )
        return host, bound

    async def start(self, app: web.Application) -> None:
        """Bind the public (and optional SNI-only) port and serve ``app``."""
        if self._started:
            raise RuntimeError("Proxy already started")
        self._ssl_ctx = self._make_ssl_context()
        self._http_server = HTTPServer(app, **HTTP_LIMITS)
        self._http_client = SimpleAsyncHTTPClient(
            force_instance=True,
            max_clients=1000,
            max_buffer_size=64 * 1024 * 1024,
            max_body_size=1 << 40,
        )
        try:
            if self.separate_process:
                from .process import ProxyLink

                self._link = await ProxyLink.attach(self)
            else:
                self._listen()
        except Exception as exc:
            pid_file = os.path.join(self.state_dir, "proxy.pid") if self.state_dir else ""
            if isinstance(exc, OSError) and pid_file and os.path.exists(pid_file):
                self.log.error(
                    "A separate proxy process (see %s) may hold the port: set "
                    "Proxy.separate_process = True, or stop that process",
                    pid_file,
                )
            await self.stop()
            raise
        self._started = True
        self.log.info(
            "Gateway public port listening on %s (scheduler traffic on %s)",
            self.public_url,
            self.tcp_address_bound,
        )

    def _listen(self) -> None:
        """Bind the public port (and the SNI-only one, if any) in this process."""
        # With a separate SNI port the public port is plain HTTP(S): no
        # peeking needed there.
        mode = "http" if self.tcp_address else "shared"
        self._http_host, self._http_port = self._bind(self.address, mode)
        if self.tcp_address:
            self._tcp_host, self._tcp_port = self._bind(self.tcp_address, "sni")
        else:
            self._tcp_host, self._tcp_port = self._http_host, self._http_port

    async def stop(self, keep_separate_process: bool = False) -> None:
        """Close the listeners, pending handshakes, tunnels and HTTP connections.

        With ``separate_process``, ``keep_separate_process`` detaches from the
        proxy process instead of stopping it, so its tunnels stay open.
        """
        link, self._link = self._link, None
        if link is not None:
            await link.close(stop_process=not keep_separate_process)
        for remove in self._remove_accept:
            remove()
        self._remove_accept.clear()
        for s in self._sockets:
            s.close()
        self._sockets.clear()
        for task in list(self._pending):
            task.cancel()
        for tunnel in list(self._tunnels):
            tunnel.abort()
        self._tunnels.clear()
        for ws in list(self._websockets):
            ws.close(1001, "Gateway shutting down")
        self._websockets.clear()
        if self._http_server is not None:
            try:
                await asyncio.wait_for(self._http_server.close_all_connections(), 5)
            except asyncio.TimeoutError:
                self.log.warning("Timed out closing HTTP connections")
            self._http_server = None
        if self._http_client is not None:
            self._http_client.close()
            self._http_client = None
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        self._started = False

    # -- connection handling -------------------------------------------------

    def _on_accept(self, conn: socket.socket, address: Any, mode: str) -> None:
        conn.setblocking(False)  # accepted sockets start out blocking
        if mode == "http":
            self._handoff_http(conn, address)
            return
        task = asyncio.ensure_future(self._handle_connection(conn, address, mode == "shared"))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _handle_connection(self, sock: socket.socket, address: Any, shared: bool) -> None:
        try:
            kind, sni = await asyncio.wait_for(_classify(sock), self.peek_timeout)
        except asyncio.TimeoutError:
            self.log.debug("Closing connection from %s: no handshake in time", address)
            sock.close()
            return
        except ClientHelloError as exc:
            self.log.debug("Closing connection from %s: bad ClientHello (%s)", address, exc)
            sock.close()
            return
        except asyncio.CancelledError:
            sock.close()
            raise
        except Exception as exc:  # socket errors, e.g. reset before any bytes
            self.log.debug("Closing connection from %s: %r", address, exc)
            sock.close()
            return
        if kind == "eof":
            sock.close()
            return
        if kind == "tls" and sni is not None and sni.startswith(SNI_PREFIX):
            try:
                await self._open_tunnel(sock, sni[len(SNI_PREFIX) :], address)
            except asyncio.CancelledError:
                sock.close()
                raise
            except Exception:
                self.log.exception(
                    "Error opening tunnel for %s", sni, extra=about(sni[len(SNI_PREFIX) :])
                )
                sock.close()
            return
        if shared:
            self._handoff_http(sock, address)
        else:
            self.log.debug("Closing non-scheduler connection from %s on SNI-only port", address)
            sock.close()

    async def _open_tunnel(self, sock: socket.socket, name: str, address: Any) -> None:
        target = self._sni_routes.get(name)
        if target is None:
            self.log.debug(
                "No route for cluster %r (from %s); closing", name, address, extra=about(name)
            )
            sock.close()
            return
        handoff = self._handoffs.get(name)
        if handoff is not None and await self._hand_off(sock, handoff, name):
            self.log.debug(
                "Connection from %s handed to the scheduler of cluster %s",
                address,
                name,
                extra=about(name),
            )
            return
        host, port = _split_hostport(target)
        if self._kernel_splice:
            await self._open_splice_tunnel(sock, host, port, name, address)
            return
        loop = asyncio.get_running_loop()
        tunnel = _Tunnel(self, name)
        try:
            await asyncio.wait_for(
                loop.create_connection(lambda: tunnel.upstream, host, port),
                self.connect_timeout,
            )
        except (OSError, asyncio.TimeoutError) as exc:
            self.log.warning(
                "Cannot reach scheduler of cluster %s at %s: %r",
                name,
                target,
                exc,
                extra=about(name),
            )
            sock.close()
            return
        self._tunnels.add(tunnel)
        try:
            await loop.connect_accepted_socket(lambda: tunnel.client, sock)
        except BaseException:
            tunnel.abort()
            sock.close()
            raise
        # Both linked: let the upstream side read (it was paused until now).
        if not tunnel.upstream.closed:
            tunnel.upstream.transport.resume_reading()  # type: ignore[union-attr]
        self.log.debug(
            "Tunnel open %s -> cluster %s (%s)", address, name, target, extra=about(name)
        )

    async def _hand_off(self, sock: socket.socket, handoff: str, name: str) -> bool:
        """Pass the client's socket (its ClientHello still unread) to the scheduler over a
        unix socket; True once the scheduler owns it. The bytes then flow client <->
        scheduler directly: direct-connection speed, and independent of this process."""
        loop = asyncio.get_running_loop()
        address = "\0" + handoff[1:] if handoff.startswith("@") else handoff
        unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        unix.setblocking(False)
        try:
            try:
                await asyncio.wait_for(loop.sock_connect(unix, address), self.connect_timeout)
                # Whoever listens on the name gets the connection: after a scheduler died,
                # any local user may have bound it. Only the cluster's user (or root, or us).
                creds = unix.getsockopt(
                    socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")
                )
                peer_uid = struct.unpack("3i", creds)[1]
                allowed = {0, os.geteuid(), self._handoff_uids.get(name, 0)}
                if peer_uid not in allowed:
                    self.log.warning(
                        "The handoff socket of cluster %s is held by uid %d, not "
                        "the cluster's user: tunnelling instead",
                        name,
                        peer_uid,
                        extra=about(name),
                    )
                    return False
                socket.send_fds(unix, [b"H"], [sock.fileno()])
            except (OSError, asyncio.TimeoutError) as exc:
                self.log.debug(
                    "No handoff to cluster %s (%r); tunnelling instead",
                    name,
                    exc,
                    extra=about(name),
                )
                return False  # nothing was passed: the tunnel is safe
            try:
                ack = await asyncio.wait_for(loop.sock_recv(unix, 1), self.connect_timeout)
            except (OSError, asyncio.TimeoutError):
                ack = b""
        finally:
            unix.close()
        if ack == b"0":
            return False  # declined, and the scheduler closed its copy
        # Taken ("1"), or unknown: the scheduler may hold the connection, so it must not be
        # tunnelled as well (two readers would corrupt the stream).
        sock.close()
        if ack != b"1":
            self.log.warning(
                "Handoff to cluster %s unconfirmed; connection dropped", name, extra=about(name)
            )
        return True

    # Linux splice(2) moves bytes socket -> pipe -> socket inside the kernel;
    # measured clearly faster (and far lighter on CPU) than asyncio transports,
    # which matters because the proxy shares cores with the gateway.
    _kernel_splice = _HAVE_SPLICE

    async def _open_splice_tunnel(
        self, sock: socket.socket, host: str, port: int, name: str, address: Any
    ) -> None:
        loop = asyncio.get_running_loop()
        upstream: socket.socket | None = None
        try:
            infos = await asyncio.wait_for(
                loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), self.connect_timeout
            )
            last_exc: Exception | None = None
            deadline = loop.time() + self.connect_timeout
            for family, type_, proto, _, sockaddr in infos:
                upstream = socket.socket(family, type_, proto)
                upstream.setblocking(False)
                try:
                    await asyncio.wait_for(
                        loop.sock_connect(upstream, sockaddr), max(deadline - loop.time(), 0.01)
                    )
                    break
                except (OSError, asyncio.TimeoutError) as exc:
                    last_exc = exc
                    upstream.close()
                    upstream = None
            if upstream is None:
                raise last_exc or OSError("no addresses")
        except (OSError, asyncio.TimeoutError) as exc:
            self.log.warning(
                "Cannot reach scheduler of cluster %s at %s:%s: %r",
                name,
                host,
                port,
                exc,
                extra=about(name),
            )
            sock.close()
            return
        except BaseException:
            if upstream is not None:
                upstream.close()
            sock.close()
            raise
        try:
            tunnel = _SpliceTunnel(self, sock, upstream)
        except OSError as exc:
            self.log.warning("Cannot open tunnel to cluster %s: %r", name, exc, extra=about(name))
            upstream.close()
            sock.close()
            return
        self._tunnels.add(tunnel)  # type: ignore[arg-type]
        tunnel.start()
        self.log.debug(
            "Tunnel open %s -> cluster %s (%s:%s)", address, name, host, port, extra=about(name)
        )

    def _handoff_http(self, sock: socket.socket, address: Any) -> None:
        """Give an untouched accepted socket to the tornado HTTP(S) server."""
        if self._http_server is None:  # stopping
            sock.close()
            return
        try:
            stream: IOStream
            if self._ssl_ctx is not None:
                tls_sock = self._ssl_ctx.wrap_socket(
                    sock, server_side=True, do_handshake_on_connect=False
                )
                stream = SSLIOStream(tls_sock)
            else:
                stream = IOStream(sock)
            self._http_server.handle_stream(stream, address)
        except Exception as exc:
            self.log.debug("Could not serve HTTP connection from %s: %r", address, exc)
            sock.close()


# ---------------------------------------------------------------------------
# Dashboard reverse proxy
# ---------------------------------------------------------------------------


@web.stream_request_body
class DashboardProxyHandler(websocket.WebSocketHandler):
    """Reverse-proxy ``{prefix}/clusters/{name}/...`` to the cluster's dashboard.

    One handler does both plain HTTP (streamed both ways, redirects passed
    through) and WebSockets (Bokeh's live plots need them). It subclasses
    WebSocketHandler so an upgrade request can be accepted in place.
    """

    SUPPORTED_METHODS = ("GET", "HEAD", "POST", "DELETE", "PATCH", "PUT", "OPTIONS")

    def initialize(self, proxy: Proxy) -> None:  # type: ignore[override]
        self.proxy = proxy
        self._cluster: str | None = None
        self._public_base = ""
        self._target_base = ""
        self._body_queue: asyncio.Queue[bytes | None] | None = None
        self._fetch: asyncio.Future[Any] | None = None
        self._resp_start: httputil.ResponseStartLine | None = None
        self._resp_headers = httputil.HTTPHeaders()
        self._headers_applied = False
        self._client_gone = False
        self._upstream_ws: websocket.WebSocketClientConnection | None = None
        self._dashboard_key: str | None = None
        self._granted = False

    # -- request parsing -----------------------------------------------------

    def _is_upgrade(self) -> bool:
        return self.request.headers.get("Upgrade", "").lower() == "websocket"

    def _send_json_error(self, status: int, message: str) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"error": message}))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        message = httputil.responses.get(status_code, "Error")
        exc = (kwargs.get("exc_info") or (None, None, None))[1]
        if isinstance(exc, web.HTTPError) and exc.log_message:
            message = exc.log_message % exc.args if exc.args else exc.log_message
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"error": message}))

    def check_xsrf_cookie(self) -> None:
        """The dashboard is a foreign app; it does its own CSRF protection."""

    def set_default_headers(self) -> None:
        """Every answer, the scheduler's or ours, is sandboxed (see DASHBOARD_CSP); grants in
        its URL never leave in a Referer."""
        self.set_header("Content-Security-Policy", DASHBOARD_CSP)
        self.set_header("Referrer-Policy", "no-referrer")

    def check_origin(self, origin: str) -> bool:
        # Without an auth hook there is no ambient credential to abuse, so let
        # the dashboard (Bokeh checks allowed origins itself) decide. A grant in the
        # path is the credential itself (a sandboxed page's Origin is "null"). With
        # cookie-based auth, keep tornado's same-origin rule against cross-site
        # websocket hijacking.
        if self.proxy.check_dashboard_access is None or self._granted:
            return True
        return super().check_origin(origin)

    @property
    def max_message_size(self) -> int:
        return self.settings.get("websocket_max_message_size", _WS_MAX_MESSAGE)

    def _is_navigation(self) -> bool:
        """A browser loading a page (not a script's request): it gets a grant path."""
        if self.request.method != "GET" or self._is_upgrade():
            return False
        dest = self.request.headers.get("Sec-Fetch-Dest")
        if dest is not None:
            return dest in ("document", "iframe", "frame", "embed", "object")
        return "text/html" in self.request.headers.get("Accept", "")

    def _redirect_under(self, base: str, remainder: str) -> None:
        query = self.request.query
        self.redirect(base + "/" + remainder + ("?" + query if query else ""))

    async def prepare(self) -> None:
        self._granted = False
        prefix = self.proxy.prefix + "/clusters/"
        path = self.request.path
        rest = path[len(prefix) :] if path.startswith(prefix) else ""
        raw_name, slash, remainder = rest.partition("/")
        name = unquote(raw_name)
        target = self.proxy.get_dashboard_target(name)
        if target is None or not raw_name:
            self._send_json_error(404, f"Cluster {name} not found or not running")
            return
        if not slash:
            # Bokeh pages use relative URLs, which only resolve under the
            # cluster's "directory", so canonicalise to a trailing slash.
            self._redirect_under(path, "")
            return
        public_base = prefix + raw_name
        hook = self.proxy.check_dashboard_access
        if hook is not None and remainder.startswith(GRANT_MARK):
            grant, slash, remainder = remainder[len(GRANT_MARK) :].partition("/")
            if not self.proxy.check_grant(grant, name):
                if self._is_navigation():  # log in again, for a new grant
                    self._redirect_under(public_base, remainder)
                else:
                    self._send_json_error(
                        403,
                        f"This link to the dashboard of cluster {name} "
                        "has expired: reload the dashboard",
                    )
                return
            self._granted = True
            public_base += "/" + GRANT_MARK + grant
            if not slash:
                self._redirect_under(public_base, "")
                return
        elif hook is not None:
            try:
                allowed = hook(self, name)
                if inspect.isawaitable(allowed):
                    allowed = await allowed
            except web.HTTPError as e:
                # The hook's own status and message, e.g. 401 with a challenge header.
                for key, value in getattr(e, "headers", {}).items():
                    self.set_header(key, value)
                self._send_json_error(
                    e.status_code, getattr(e, "message", None) or e.log_message or "Not allowed"
                )
                return
            if self._finished:  # the hook answered itself (e.g. a redirect to log in)
                return
            if not allowed:
                self._send_json_error(403, f"Not allowed to access cluster {name}")
                return
            if self._is_navigation():
                grant = self.proxy.grant_dashboard(name)
                self._redirect_under(public_base + "/" + GRANT_MARK + grant, remainder)
                return
        self._cluster = name
        self._dashboard_key = self.proxy.get_dashboard_key(name)
        self._public_base = public_base
        self._target_base = target
        url = target + "/" + remainder
        if self.request.query:
            url += "?" + self.request.query
        self._target_url = url
        if not self._is_upgrade():
            self._start_fetch()

    # -- plain HTTP ----------------------------------------------------------

    def _forward_headers(self, exclude: frozenset[str]) -> httputil.HTTPHeaders:
        """What the scheduler (the owner's code) gets of the viewer's request: never the
        viewer's credentials (Authorization, cookies, Proxy-*)."""
        req = self.request
        headers = httputil.HTTPHeaders()
        connection_tokens = {
            t.strip().lower() for t in req.headers.get("Connection", "").split(",") if t.strip()
        }
        for k, v in req.headers.get_all():
            lk = k.lower()
            if (
                lk in exclude
                or lk in _HOP_BY_HOP
                or lk in connection_tokens
                or lk == "host"
                or lk in _CREDENTIAL_HEADERS
                or lk.startswith("proxy-")
            ):
                continue
            headers.add(k, v)
        remote = req.remote_ip or ""
        prior = req.headers.get("X-Forwarded-For")
        headers["X-Forwarded-For"] = f"{prior}, {remote}" if prior else remote
        if "X-Forwarded-Proto" not in headers:
            headers["X-Forwarded-Proto"] = req.protocol
        if "X-Forwarded-Host" not in headers:
            headers["X-Forwarded-Host"] = req.host
        headers["X-Forwarded-Prefix"] = self._public_base
        return headers

    def _upstream_headers(self, exclude: frozenset[str]) -> httputil.HTTPHeaders:
        """The forwarded headers plus the cluster's dashboard key: only the gateway sends
        it, whatever a viewer put in a header of that name."""
        headers = self._forward_headers(exclude)
        if DASHBOARD_KEY_HEADER in headers:
            del headers[DASHBOARD_KEY_HEADER]
        if self._dashboard_key:
            headers[DASHBOARD_KEY_HEADER] = self._dashboard_key
        return headers

    def _start_fetch(self) -> None:
        client = self.proxy._http_client
        assert client is not None
        req = self.request
        headers = self._upstream_headers(frozenset())
        has_body = "Content-Length" in req.headers or "Transfer-Encoding" in req.headers
        body_producer: Callable[[Callable[[bytes], Awaitable[None]]], Awaitable[None]] | None = None
        if has_body:
            self._body_queue = asyncio.Queue(maxsize=8)
            queue = self._body_queue

            async def produce(write: Callable[[bytes], Awaitable[None]]) -> None:
                while True:
                    chunk = await queue.get()
                    if chunk is None:
                        return
                    await write(chunk)

            body_producer = produce

            if "Content-Length" not in req.headers:
                headers.pop("Content-Length", None)
        request = HTTPRequest(
            self._target_url,
            method=req.method,
            headers=headers,
            body_producer=body_producer,
            follow_redirects=False,
            decompress_response=False,
            allow_nonstandard_methods=True,
            connect_timeout=self.proxy.connect_timeout,
            request_timeout=24 * 3600,
            header_callback=self._on_header_line,
            streaming_callback=self._on_chunk,
        )
        self._fetch = asyncio.ensure_future(client.fetch(request, raise_error=False))

    async def data_received(self, chunk: bytes | None) -> None:
        """Feed the upstream body producer; waiting here pushes back on the client."""
        queue, fetch = self._body_queue, self._fetch
        if queue is None or fetch is None or fetch.done():
            return  # no upstream (error already decided) - drop the body
        try:
            queue.put_nowait(chunk)
        except asyncio.QueueFull:
            put = asyncio.ensure_future(queue.put(chunk))
            await asyncio.wait([put, fetch], return_when=asyncio.FIRST_COMPLETED)
            if not put.done():
                put.cancel()

    def _on_header_line(self, line: str) -> None:
        line = line.rstrip("\r\n")
        if line.startswith("HTTP/"):
            self._resp_start = httputil.parse_response_start_line(line)
            self._resp_headers = httputil.HTTPHeaders()
        elif line:
            self._resp_headers.parse_line(line)
        elif self._resp_start is not None and not self._headers_applied:
            self._apply_response_headers()

    def _apply_response_headers(self) -> None:
        start = self._resp_start
        assert start is not None
        self._headers_applied = True
        self.set_status(start.code, start.reason or None)
        for name in ("Content-Type", "Server", "Date"):
            self.clear_header(name)
        tokens = {
            t.strip().lower()
            for t in self._resp_headers.get("Connection", "").split(",")
            if t.strip()
        }
        for k, v in self._resp_headers.get_all():
            lk = k.lower()
            if lk in _HOP_BY_HOP or lk in tokens or lk in _DROP_RESPONSE_HEADERS:
                continue
            if lk == "location":
                v = self._rewrite_location(v)
            try:
                self.add_header(k, v)
            except ValueError:
                pass

    def _rewrite_location(self, location: str) -> str:
        """Map redirects aimed at the dashboard's own URLs back to our public path."""
        target = urlsplit(self._target_base)
        loc = urlsplit(location)
        if loc.netloc:
            if loc.netloc.lower() != target.netloc.lower():
                return location  # somewhere else entirely
        elif not location.startswith("/"):
            return location  # relative: already resolves under our path
        path = loc.path or "/"
        base_path = target.path.rstrip("/")
        if base_path and (path == base_path or path.startswith(base_path + "/")):
            path = path[len(base_path) :] or "/"
        if path == self._public_base or path.startswith(self._public_base + "/"):
            new_path = path  # the dashboard already knows its public prefix
        else:
            new_path = self._public_base + path
        return urlunsplit(("", "", new_path, loc.query, loc.fragment))

    def _on_chunk(self, chunk: bytes) -> None:
        if self._client_gone:
            # Raising aborts the upstream request: nobody is listening.
            raise StreamClosedError()
        if not self._headers_applied and self._resp_start is not None:
            self._apply_response_headers()
        self.write(chunk)
        fut = self.flush()
        fut.add_done_callback(lambda f: f.exception())

    def on_connection_close(self) -> None:
        self._client_gone = True
        if self._body_queue is not None:
            try:
                self._body_queue.put_nowait(None)
            except asyncio.QueueFull:
                pass
        super().on_connection_close()

    async def _proxy_http(self) -> None:
        assert self._fetch is not None
        if self._body_queue is not None:
            await self.data_received(None)  # type: ignore[arg-type]  # end of body
        try:
            response = await self._fetch
        except Exception as exc:
            if not self._headers_applied:
                self.proxy.log.debug(
                    "Dashboard upstream %s failed: %r",
                    self._target_url,
                    exc,
                    extra=about(self._cluster),
                )
                self._send_json_error(502, f"Dashboard of cluster {self._cluster} is not reachable")
            else:
                self.request.connection.close()  # type: ignore[attr-defined]
            return
        if not self._headers_applied:
            if response.code == 599 or self._resp_start is None:
                self._send_json_error(502, f"Dashboard of cluster {self._cluster} is not reachable")
                return
            self._apply_response_headers()
        if not self._finished:
            self.finish()

    # -- methods -------------------------------------------------------------

    async def get(self, *args: Any, **kwargs: Any) -> None:
        if self._is_upgrade():
            await self._proxy_websocket(*args, **kwargs)
        else:
            await self._proxy_http()

    async def head(self, *args: Any, **kwargs: Any) -> None:
        await self._proxy_http()

    async def post(self, *args: Any, **kwargs: Any) -> None:
        await self._proxy_http()

    async def put(self, *args: Any, **kwargs: Any) -> None:
        await self._proxy_http()

    async def patch(self, *args: Any, **kwargs: Any) -> None:
        await self._proxy_http()

    async def delete(self, *args: Any, **kwargs: Any) -> None:
        await self._proxy_http()

    async def options(self, *args: Any, **kwargs: Any) -> None:
        await self._proxy_http()

    # -- websockets ----------------------------------------------------------

    async def _proxy_websocket(self, *args: Any, **kwargs: Any) -> None:
        url = "ws" + self._target_url[len("http") :]
        offered = self.request.headers.get("Sec-WebSocket-Protocol")
        subprotocols = [p.strip() for p in offered.split(",") if p.strip()] if offered else None
        request = HTTPRequest(
            url,
            headers=self._upstream_headers(_WS_HANDSHAKE_HEADERS),
            connect_timeout=self.proxy.connect_timeout,
            request_timeout=self.proxy.connect_timeout,
        )
        try:
            self._upstream_ws = await websocket.websocket_connect(
                request, subprotocols=subprotocols, max_message_size=_WS_MAX_MESSAGE
            )
        except HTTPClientError as exc:
            if exc.code != 599:
                self._send_json_error(exc.code, f"Dashboard refused the websocket ({exc.code})")
            else:
                self._send_json_error(502, f"Dashboard of cluster {self._cluster} is not reachable")
            return
        except Exception as exc:
            self.proxy.log.debug(
                "Dashboard websocket %s failed: %r", url, exc, extra=about(self._cluster)
            )
            self._send_json_error(502, f"Dashboard of cluster {self._cluster} is not reachable")
            return
        await super().get(*args, **kwargs)
        if self.ws_connection is None and self._upstream_ws is not None:
            self._upstream_ws.close()  # client handshake failed

    def select_subprotocol(self, subprotocols: list[str]) -> str | None:
        chosen = self._upstream_ws.selected_subprotocol if self._upstream_ws else None
        return chosen if chosen in subprotocols else None

    def open(self, *args: Any, **kwargs: Any) -> None:
        self.proxy._websockets.add(self)
        # Keep a reference: the loop only holds tasks weakly.
        self._pump_task = asyncio.ensure_future(self._pump_upstream())

    async def _pump_upstream(self) -> None:
        upstream = self._upstream_ws
        assert upstream is not None
        try:
            while True:
                msg = await upstream.read_message()
                if msg is None:
                    break
                await self.write_message(msg, binary=isinstance(msg, bytes))
        except websocket.WebSocketClosedError:
            pass
        finally:
            code = upstream.close_code
            if code is None or code in (1005, 1006, 1015):  # not sendable on the wire
                self.close()
            else:
                self.close(code, upstream.close_reason)

    async def on_message(self, message: str | bytes) -> None:
        if self._upstream_ws is not None:
            try:
                await self._upstream_ws.write_message(message, binary=isinstance(message, bytes))
            except websocket.WebSocketClosedError:
                self.close()

    def on_close(self) -> None:
        self.proxy._websockets.discard(self)
        if self._upstream_ws is not None:
            code = self.close_code
            if code is None or code in (1005, 1006, 1015):
                self._upstream_ws.close()
            else:
                self._upstream_ws.close(code, self.close_reason)
