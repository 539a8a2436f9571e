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
listener and the tunnels live in a long-lived child process (see ``process.py``,
whose ``ProxyLink`` the gateway then uses as its :class:`PublicPort`) so clients'
scheduler connections outlive a gateway restart; HTTP connections are then passed
to the gateway's :class:`Proxy` as file descriptors. This module never imports
``process``.
"""

from __future__ import annotations

import asyncio
import functools
import os
import socket
import ssl
import struct
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple, Protocol
from urllib.parse import urlsplit

from tornado import netutil, web
from tornado.httpserver import HTTPServer
from tornado.iostream import IOStream, SSLIOStream
from tornado.simple_httpclient import SimpleAsyncHTTPClient
from traitlets import Bool, Float, Integer, TraitError, Unicode, observe, validate
from traitlets.config import LoggingConfigurable

from ..logs import about
from .dashboard import (
    DashboardAccessHook,
    DashboardGrants,
    DashboardProxyHandler,
    DashboardSource,
)
from .sni import SNI_PREFIX, TLS_HANDSHAKE, ClientHelloError, parse_client_hello
from .tunnels import HAVE_SPLICE, RelayCounts, SpliceTunnel, Tunnel

__all__ = ["HTTP_LIMITS", "Proxy", "PublicPort", "RelayCounts", "Route"]

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
    if first[0] != TLS_HANDSHAKE:
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


class Route(NamedTuple):
    """A cluster's routes as :meth:`Proxy.add_route` keeps them (the dashboard key apart)."""

    target: str  # the scheduler's "host:port"
    dashboard: str | None  # the dashboard's base URL
    handoff: str | None  # the scheduler's handoff socket
    handoff_uid: int | None  # the only user (besides root and us) it may be handed to


class PublicPort(Protocol):
    """The gateway's public port as the application and the reconciler use it.

    :class:`Proxy` when it listens in the gateway's process; ``process.ProxyLink`` when a
    separate proxy process listens (``Proxy.separate_process``). ``app.py`` picks one.
    """

    @property
    def public_url(self) -> str: ...

    def add_route(
        self,
        cluster_name: str,
        scheduler_address: str,
        dashboard_address: str | None,
        handoff: str | None = None,
        handoff_uid: int | None = None,
        dashboard_key: str | None = None,
    ) -> None: ...

    def remove_route(self, cluster_name: str) -> None: ...

    async def relay_counts(self) -> dict[str, int] | None: ...

    async def start(self, app: web.Application) -> None: ...

    async def stop(self, keep_separate_process: bool = False) -> None: ...


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
        self.check_dashboard_access: DashboardAccessHook | None = None
        self._sni_routes: dict[str, str] = {}
        self._handoffs: dict[str, str] = {}
        self._handoff_uids: dict[str, int] = {}
        self._dashboard_routes: dict[str, str] = {}
        self._dashboard_keys: dict[str, str] = {}  # in this process only, never the link's
        self.grants = DashboardGrants()
        self._sockets: list[socket.socket] = []
        self._remove_accept: list[Callable[[], None]] = []
        self._pending: set[asyncio.Task[None]] = set()
        self._tunnels: set[Tunnel | SpliceTunnel] = set()
        #: Handoffs, tunnels and the tunnels' bytes so far (see :meth:`relay_counts`).
        self.counts = RelayCounts()
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

    async def relay_counts(self) -> dict[str, int] | None:
        """:class:`RelayCounts` of the process that routes scheduler connections, plus
        ``open_tunnels``: here, this one (``process.ProxyLink`` asks its proxy process)."""
        return {**self.counts.as_dict(), "open_tunnels": len(self._tunnels)}

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
        self.grants.forget(cluster_name)

    def route(self, cluster_name: str) -> Route | None:
        """``cluster_name``'s routes, as normalised by :meth:`add_route`."""
        target = self._sni_routes.get(cluster_name)
        if target is None:
            return None
        return Route(
            target,
            self._dashboard_routes.get(cluster_name),
            self._handoffs.get(cluster_name),
            self._handoff_uids.get(cluster_name),
        )

    def routes(self) -> dict[str, Route]:
        """Every cluster's routes (what a separate proxy process is sent)."""
        return {name: route for name in self._sni_routes if (route := self.route(name)) is not None}

    @property
    def http_client(self) -> SimpleAsyncHTTPClient | None:
        """The dashboards' HTTP client (see ``DashboardSource``)."""
        return self._http_client

    @property
    def websockets(self) -> set[DashboardProxyHandler]:
        """The dashboards' open websockets (see ``DashboardSource``)."""
        return self._websockets

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
        source: DashboardSource = self  # checked here: the handler's kwargs are not
        return [(pattern, DashboardProxyHandler, {"proxy": source})]

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
                netutil.add_accept_handler(s, functools.partial(self._on_accept, mode=mode))
            )
        return host, bound

    async def start(
        self, app: web.Application, listen: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        """Serve ``app`` on the public port (and the optional SNI-only one).

        By default this process binds them. ``listen`` is for when another process
        does (``process.ProxyLink``): it makes that process's HTTP connections reach
        :meth:`handle_http` and reports the bound addresses with :meth:`listening_on`.
        """
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
            if listen is not None:
                await listen()
            else:
                self._listen()
        except Exception as exc:
            if listen is None and isinstance(exc, OSError):
                await self._hint_separate_process()
            await self.stop()
            raise
        self._started = True
        self.log.info(
            "Gateway public port listening on %s (scheduler traffic on %s)",
            self.public_url,
            self.tcp_address_bound,
        )

    async def _hint_separate_process(self) -> None:
        """Binding failed: say so if a separate proxy process left running may hold the port."""
        if not self.state_dir:
            return
        pid_file = os.path.join(self.state_dir, "proxy.pid")  # process.pid_file
        if await asyncio.to_thread(os.path.exists, pid_file):
            self.log.error(
                "A separate proxy process (see %s) may hold the port: set "
                "Proxy.separate_process = True, or stop that process",
                pid_file,
            )

    def listening_on(self, http: tuple[str, int], tcp: tuple[str, int]) -> None:
        """Where another process listens for this proxy (see :meth:`start`'s ``listen``)."""
        (self._http_host, self._http_port), (self._tcp_host, self._tcp_port) = http, tcp

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

        ``keep_separate_process`` is for ``process.ProxyLink`` (whose proxy process may
        outlive the gateway): here nothing outlives this process.
        """
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
            self.handle_http(conn, address)
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
            self.handle_http(sock, address)
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
        if handoff is not None:
            if await self._hand_off(sock, handoff, name):
                self.counts.handoffs += 1
                self.log.debug(
                    "Connection from %s handed to the scheduler of cluster %s",
                    address,
                    name,
                    extra=about(name),
                )
                return
            self.counts.handoff_fallbacks += 1
        host, port = _split_hostport(target)
        if self._kernel_splice:
            await self._open_splice_tunnel(sock, host, port, name, address)
            return
        loop = asyncio.get_running_loop()
        tunnel = Tunnel(self._tunnels, name, self.counts)
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
        self.counts.tunnels += 1
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
    _kernel_splice = HAVE_SPLICE

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
            tunnel = SpliceTunnel(self._tunnels, self.log, sock, upstream, self.counts)
        except OSError as exc:
            self.log.warning("Cannot open tunnel to cluster %s: %r", name, exc, extra=about(name))
            upstream.close()
            sock.close()
            return
        self._tunnels.add(tunnel)
        self.counts.tunnels += 1
        tunnel.start()
        self.log.debug(
            "Tunnel open %s -> cluster %s (%s:%s)", address, name, host, port, extra=about(name)
        )

    def handle_http(self, sock: socket.socket, address: Any) -> None:
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
