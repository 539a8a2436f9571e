"""The public port in a long-lived process of its own (``Proxy.separate_process``).

Why: a client's connection to a scheduler that cannot take it over itself (one
on another machine: no handoff, see ``Backend.handoff_address``) is a TCP tunnel
through the public port. If the process owning the port restarts, every tunnel
breaks, and while it is down the port refuses API calls, heartbeats and new
scheduler connections. Here the listener and the tunnels live in a small
process that the gateway starts in a session of its own and re-attaches to
after a restart (SIGKILL included): tunnels stay open, handoffs and new tunnels
go on by the last route table, HTTP waits for the next gateway.

The gateway and the proxy process talk over a ``SOCK_SEQPACKET`` unix socket in
the gateway's data directory (one JSON object per message, so no framing):

* gateway -> proxy: ``attach`` (answered by ``hello`` with the bound ports),
  ``reset`` + ``add``... + ``synced`` (the full route table, swapped in at once
  so routing never sees a half table), then ``add``/``remove``; ``shutdown``.
* gateway -> proxy ``stats``, answered by ``stats`` with the relay counts (``/metrics``;
  a process too old to answer is simply not counted).
* proxy -> gateway: ``http`` with the accepted connection's file descriptor
  (SCM_RIGHTS). Classification only peeks, so the gateway's tornado server
  reads the untouched byte stream: HTTP is served exactly as in-process, with
  no extra copy.

While no gateway is attached the proxy keeps every tunnel, routes new
scheduler connections by its last route table, and holds new HTTP connections
(up to ``separate_process_hold_timeout``) for the next gateway, then answers 503.
The classification and the splice tunnels are :class:`Proxy`'s own.

Two sides: :class:`ProxyLink`, the gateway's public port in this mode (``app.py`` picks it
instead of :class:`Proxy`), and ``_serve``/``main``, the process itself, started as
``python -m dask_gateway_server.proxy CONFIG_JSON``. A running process outlives gateway
upgrades: change the messages only with ``PROTOCOL``.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from tornado import web

from .core import Proxy, Route

__all__ = ["ProxyLink", "socket_address", "pid_file", "main"]

log = logging.getLogger("dask_gateway_server.proxy.process")

_MAX_MESSAGE = 64 * 1024
#: Bumped on incompatible message changes: a proxy process outlives gateway upgrades.
PROTOCOL = 2  # 2: routes carry handoff_uid
_MAX_HELD = 1024
_SPAWN_TIMEOUT = 30.0
_HELLO_TIMEOUT = 10.0


def socket_address(state_dir: str) -> str:
    """The proxy's unix socket: a file in ``state_dir``, or an abstract name if too long."""
    path = os.path.join(os.path.abspath(state_dir), "proxy.sock")
    if len(path.encode()) < 100:
        return path
    digest = hashlib.sha256(os.path.abspath(state_dir).encode()).hexdigest()[:24]
    return "\0dask-gateway-proxy-" + digest


def pid_file(state_dir: str) -> str:
    return os.path.join(state_dir, "proxy.pid")


def _same_user(sock: socket.socket) -> bool:
    """Only a process of our own user may attach (or be attached to)."""
    try:
        _pid, uid, _gid = struct.unpack(
            "3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        )
    except (OSError, AttributeError):
        return True  # no SO_PEERCRED: rely on the directory's permissions
    return uid == os.getuid()


class _Channel:
    """A non-blocking SEQPACKET socket on the event loop: JSON messages, optional fds."""

    def __init__(
        self,
        sock: socket.socket,
        on_message: Callable[[dict, list[int]], None],
        on_close: Callable[[list[socket.socket]], None],
    ) -> None:
        self.sock = sock
        sock.setblocking(False)
        self.loop = asyncio.get_running_loop()
        self.on_message = on_message
        self.on_close = on_close
        self._out: collections.deque[tuple[bytes, socket.socket | None]] = collections.deque()
        self._writing = False
        self.closed = False
        self._closed = asyncio.Event()
        self.loop.add_reader(sock.fileno(), self._on_readable)

    def send(self, msg: dict, conn: socket.socket | None = None) -> None:
        """Queue ``msg`` (and pass ``conn``'s fd, closing our copy once sent)."""
        if self.closed:
            if conn is not None:
                conn.close()
            return
        self._out.append((json.dumps(msg).encode(), conn))
        if not self._writing:
            self._flush()

    def _flush(self) -> None:
        while self._out and not self.closed:
            data, conn = self._out[0]
            try:
                if conn is None:
                    self.sock.send(data)
                else:
                    socket.send_fds(self.sock, [data], [conn.fileno()])
            except (BlockingIOError, InterruptedError):
                if not self._writing:
                    self.loop.add_writer(self.sock.fileno(), self._flush)
                    self._writing = True
                return
            except OSError:
                self.close()
                return
            self._out.popleft()
            if conn is not None:
                conn.close()
        if self._writing and not self.closed:
            self.loop.remove_writer(self.sock.fileno())
            self._writing = False

    def _on_readable(self) -> None:
        while not self.closed:
            try:
                data, fds, _flags, _addr = socket.recv_fds(self.sock, _MAX_MESSAGE, 4)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.close()
                return
            if not data and not fds:
                self.close()  # EOF: the peer is gone
                return
            try:
                msg = json.loads(data)
                if not isinstance(msg, dict):
                    raise ValueError("not an object")
            except ValueError:
                log.warning("Ignoring a malformed proxy message")
                for fd in fds:
                    os.close(fd)
                continue
            try:
                self.on_message(msg, fds)
            except Exception:
                log.exception("Error handling proxy message %r", msg.get("op"))

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        fd = self.sock.fileno()
        self.loop.remove_reader(fd)
        if self._writing:
            self.loop.remove_writer(fd)
        unsent = [conn for _, conn in self._out if conn is not None]
        self._out.clear()
        self.sock.close()
        self._closed.set()
        self.on_close(unsent)

    async def wait_closed(self) -> None:
        await self._closed.wait()


# ---------------------------------------------------------------------------
# The gateway's side
# ---------------------------------------------------------------------------


class ProxyLink:
    """The gateway's public port when a separate proxy process listens for it.

    A :class:`~.core.PublicPort` like :class:`Proxy` (``app.py`` picks one): it attaches to
    the proxy process of the gateway's data directory (starting one if none runs), sends it
    the routes, and serves the HTTP connections it passes back with the gateway's own
    ``proxy`` (which also keeps the routes, the dashboard keys and the grants).
    """

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.state_dir = proxy.state_dir or os.path.join(os.getcwd(), ".dask-gateway")
        self.address = socket_address(self.state_dir)
        self.channel: _Channel | None = None
        self.pid = 0
        self.popen: subprocess.Popen | None = None
        self._hello: asyncio.Future[dict] | None = None
        self._closing = False
        self._attached = False
        self._reattach: asyncio.Task | None = None
        self._counts: asyncio.Future[dict] | None = None
        self._no_counts: _Channel | None = None  # attached to a process that did not answer

    @property
    def public_url(self) -> str:
        return self.proxy.public_url

    async def relay_counts(self) -> dict[str, int] | None:
        """The proxy process's handoff and tunnel counts; None if it does not answer in a
        second (detached, or a process older than the ``stats`` message)."""
        channel = self.channel
        if channel is None or channel.closed or channel is self._no_counts:
            return None
        if self._counts is None or self._counts.done():
            self._counts = asyncio.get_running_loop().create_future()
            channel.send({"op": "stats"})
        try:
            counts = await asyncio.wait_for(asyncio.shield(self._counts), 1.0)
        except asyncio.TimeoutError:
            self._no_counts = channel  # an older process: don't make every scrape wait
            return None
        except ConnectionError:
            return None
        return {k: v for k, v in counts.items() if isinstance(v, int)}

    async def start(self, app: web.Application) -> None:
        """Attach to the running proxy process, or start one and attach to it."""
        await self.proxy.start(app, listen=self._attach)

    async def stop(self, keep_separate_process: bool = False) -> None:
        """Detach, and stop the proxy process (and its tunnels) unless
        ``keep_separate_process``; then stop serving HTTP."""
        await self.close(stop_process=not keep_separate_process)
        await self.proxy.stop()

    async def _connect(self) -> socket.socket | None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, self.address)
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            return None
        except BaseException:
            sock.close()
            raise
        if not _same_user(sock):
            sock.close()
            raise RuntimeError(f"The proxy socket {self.address!r} belongs to another user")
        return sock

    async def _attach(self) -> None:
        sock = await self._connect()
        started = False
        if sock is None:
            await self._spawn()
            started = True
            loop = asyncio.get_running_loop()
            deadline = loop.time() + _SPAWN_TIMEOUT
            while sock is None:
                assert self.popen is not None
                if self.popen.poll() is not None:
                    raise RuntimeError("The proxy process exited at start:\n" + self._log_tail())
                if loop.time() > deadline:
                    raise RuntimeError(
                        "The proxy process did not start in time:\n" + self._log_tail()
                    )
                await asyncio.sleep(0.05)
                sock = await self._connect()
        self._hello = asyncio.get_running_loop().create_future()
        channel = self.channel = _Channel(sock, self._on_message, self._on_close)
        try:
            # The hold time is the attaching gateway's: a restart can change it.
            channel.send(
                {
                    "op": "attach",
                    "pid": os.getpid(),
                    "hold_timeout": self.proxy.separate_process_hold_timeout,
                }
            )
            hello = await asyncio.wait_for(self._hello, _HELLO_TIMEOUT)
        except BaseException:
            self.channel = None  # not attached: closing it is no loss to recover from
            channel.close()
            raise
        self.pid = hello["pid"]
        self._attached = True
        if hello.get("protocol") != PROTOCOL:
            self.proxy.log.warning(
                "The proxy process (pid %d) speaks protocol %s, this gateway "
                "%s: restart it (stop the gateway and that process)",
                self.pid,
                hello.get("protocol"),
                PROTOCOL,
            )
        p = self.proxy
        p.listening_on(
            (hello["http_host"], hello["http_port"]), (hello["tcp_host"], hello["tcp_port"])
        )
        wanted = (p.address, p.tcp_address)
        if (hello["address"], hello["tcp_address"]) != wanted:
            p.log.warning(
                "The running proxy process (pid %d) listens on %s / %r, not the "
                "configured %s / %r; stop it to change the addresses",
                self.pid,
                hello["address"],
                hello["tcp_address"],
                *wanted,
            )
        self._send_table()
        p.log.info(
            "%s the proxy process (pid %d, %d open tunnels)",
            "Started" if started else "Re-attached to",
            self.pid,
            hello["tunnels"],
        )

    def _send_table(self) -> None:
        assert self.channel is not None
        self.channel.send({"op": "reset"})
        for name, route in self.proxy.routes().items():
            self._send_route(name, route)
        self.channel.send({"op": "synced"})

    async def _spawn(self) -> None:
        p = self.proxy
        config = {
            "state_dir": self.state_dir,
            "address": p.address,
            "tcp_address": p.tcp_address,
            "peek_timeout": p.peek_timeout,
            "connect_timeout": p.connect_timeout,
            "hold_timeout": p.separate_process_hold_timeout,
            "https": bool(p.tls_cert),
            "log_level": logging.getLevelName(p.log.getEffectiveLevel()),
        }
        log_path = os.path.join(self.state_dir, "proxy.log")

        def spawn() -> subprocess.Popen:
            os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
            with open(log_path, "ab") as out:
                return subprocess.Popen(
                    [sys.executable, "-m", "dask_gateway_server.proxy", json.dumps(config)],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    close_fds=True,
                    cwd=self.state_dir,
                )

        self.popen = await asyncio.get_running_loop().run_in_executor(None, spawn)

    def _log_tail(self) -> str:
        try:
            with open(os.path.join(self.state_dir, "proxy.log"), "rb") as f:
                return f.read()[-4000:].decode(errors="replace")
        except OSError:
            return ""

    def _on_message(self, msg: dict, fds: list[int]) -> None:
        op = msg.get("op")
        if op == "http" and fds:
            for extra in fds[1:]:
                os.close(extra)
            conn = socket.socket(fileno=fds[0])
            conn.setblocking(False)
            try:
                addr: Any = conn.getpeername()
            except OSError:  # already reset by the client
                conn.close()
                return
            if conn.family == socket.AF_UNIX or not isinstance(addr, tuple):
                addr = tuple(msg.get("addr") or ("", 0))
            self.proxy.handle_http(conn, addr)
            return
        for fd in fds:
            os.close(fd)
        if op == "stats":
            if self._counts is not None and not self._counts.done():
                counts = msg.get("counts")
                self._counts.set_result(counts if isinstance(counts, dict) else {})
            return
        if self._hello is None or self._hello.done():
            return
        if op == "hello":
            self._hello.set_result(msg)
        elif op == "busy":
            self._hello.set_exception(
                RuntimeError(
                    f"Another gateway (pid {msg.get('pid')}) is attached to the proxy process "
                    f"(pid {msg.get('proxy_pid')}) of {self.state_dir}"
                )
            )

    def _on_close(self, unsent: list[socket.socket]) -> None:
        if self.popen is not None:
            self.popen.poll()  # reap it if it died
        if self._hello is not None and not self._hello.done():
            self._hello.set_exception(ConnectionError("the proxy process closed the socket"))
        if self._counts is not None and not self._counts.done():
            self._counts.set_exception(ConnectionError("the proxy process closed the socket"))
            self._counts.exception()  # retrieved: no warning if no one awaits it
        # Only the loss of an attached channel starts (one) re-attach loop; a failed
        # attempt is retried by the loop that made it.
        if self._closing or not self._attached:
            return
        self._attached = False
        self.proxy.log.error("Lost the proxy process (pid %d); attaching again", self.pid)
        self._reattach = asyncio.ensure_future(self._reattach_loop())

    async def _reattach_loop(self) -> None:
        delay = 0.1
        while not self._closing:
            try:
                await self._attach()
                return
            except Exception as exc:
                self.proxy.log.error("Could not attach to the proxy process: %s", exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5)

    def add_route(
        self,
        cluster_name: str,
        scheduler_address: str,
        dashboard_address: str | None,
        handoff: str | None = None,
        handoff_uid: int | None = None,
        dashboard_key: str | None = None,
    ) -> None:
        """:meth:`Proxy.add_route` here (which validates), then in the proxy process
        (without the dashboard key: only this process talks to dashboards)."""
        self.proxy.add_route(
            cluster_name, scheduler_address, dashboard_address, handoff, handoff_uid, dashboard_key
        )
        route = self.proxy.route(cluster_name)
        if route is not None:
            self._send_route(cluster_name, route)

    def _send_route(self, name: str, route: Route) -> None:
        if self.channel is not None:
            self.channel.send(
                {
                    "op": "add",
                    "name": name,
                    "target": route.target,
                    "dashboard": route.dashboard,
                    "handoff": route.handoff,
                    "handoff_uid": route.handoff_uid,
                }
            )

    def remove_route(self, cluster_name: str) -> None:
        self.proxy.remove_route(cluster_name)
        if self.channel is not None:
            self.channel.send({"op": "remove", "name": cluster_name})

    async def close(self, stop_process: bool) -> None:
        """Detach; with ``stop_process`` also stop the proxy process (and its tunnels)."""
        self._closing = True
        if self._reattach is not None:
            self._reattach.cancel()
        channel = self.channel
        if channel is None:
            return
        if stop_process and not channel.closed:
            channel.send({"op": "shutdown"})
            # The process closes its end when it has stopped.
            try:
                await asyncio.wait_for(channel.wait_closed(), 10)
            except asyncio.TimeoutError:
                pass
            if self.popen is not None:
                await asyncio.to_thread(_wait_or_kill, self.popen, 5.0)
        channel.close()


def _wait_or_kill(popen: subprocess.Popen, timeout: float) -> None:
    try:
        popen.wait(timeout)
    except subprocess.TimeoutExpired:
        popen.kill()
        popen.wait()


# ---------------------------------------------------------------------------
# The proxy process's side
# ---------------------------------------------------------------------------


_RESPONSE_503 = json.dumps({"error": "The gateway is restarting; try again shortly"}).encode()


class _DetachedProxy(Proxy):
    """The proxy in its own process: HTTP connections go to the attached gateway."""

    def __init__(self, hold_timeout: float, https: bool, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.hold_timeout = hold_timeout
        self.https = https
        self.gateway: _Channel | None = None
        self.gateway_pid = 0
        self.held: collections.deque[tuple[socket.socket, Any, float]] = collections.deque()
        self._staging: dict[str, tuple[str, str | None, str | None, int | None]] | None = None
        self.stopping = asyncio.Event()

    def handle_http(self, sock: socket.socket, address: Any) -> None:
        gateway = self.gateway
        if gateway is not None and not gateway.closed:
            addr = list(address[:2]) if isinstance(address, tuple) else []
            gateway.send({"op": "http", "addr": addr}, sock)
        elif len(self.held) < _MAX_HELD and not self.stopping.is_set():
            self.held.append((sock, address, time.monotonic() + self.hold_timeout))
        else:
            self._refuse(sock)

    def _refuse(self, sock: socket.socket) -> None:
        """Answer 503 (plain HTTP only; HTTPS connections are just closed)."""
        if not self.https:
            head = (
                "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(_RESPONSE_503)}\r\nRetry-After: 1\r\n"
                "Connection: close\r\n\r\n"
            ).encode()
            try:
                sock.send(head + _RESPONSE_503)
            except OSError:
                pass
        sock.close()

    def expire_held(self) -> None:
        now = time.monotonic()
        while self.held and self.held[0][2] <= now:
            self._refuse(self.held.popleft()[0])

    # -- the gateway's messages ----------------------------------------------

    def on_accept_gateway(self, sock: socket.socket) -> None:
        if not _same_user(sock):
            log.warning("Refusing a gateway connection from another user")
            sock.close()
            return
        channel: _Channel | None = None

        def on_message(msg: dict, fds: list[int]) -> None:
            for fd in fds:
                os.close(fd)
            self._on_gateway_message(channel, msg)  # type: ignore[arg-type]

        def on_close(unsent: list[socket.socket]) -> None:
            if self.gateway is channel:
                self.gateway = None
                self._staging = None
                log.info(
                    "Gateway detached; holding HTTP connections, keeping %d tunnels",
                    len(self._tunnels),
                )
            for conn in unsent:  # never handed over: keep them for the next gateway
                self.handle_http(conn, ())

        channel = _Channel(sock, on_message, on_close)

    def _on_gateway_message(self, channel: _Channel, msg: dict) -> None:
        op = msg.get("op")
        if op == "attach":
            if isinstance(msg.get("hold_timeout"), (int, float)):
                self.hold_timeout = float(msg["hold_timeout"])
            old = self.gateway
            if old is not None and old is not channel:
                old._on_readable()  # a gateway that has just died: see its EOF now
                if not old.closed:
                    # Two live gateways on one data dir would fight over the routes.
                    log.warning(
                        "Refusing gateway pid %s: pid %d is attached",
                        msg.get("pid"),
                        self.gateway_pid,
                    )
                    channel.send({"op": "busy", "pid": self.gateway_pid, "proxy_pid": os.getpid()})
                    channel.close()
                    return
            self.gateway = channel
            self.gateway_pid = int(msg.get("pid") or 0)
            channel.send(
                {
                    "op": "hello",
                    "protocol": PROTOCOL,
                    "pid": os.getpid(),
                    "http_host": self._http_host,
                    "http_port": self._http_port,
                    "tcp_host": self._tcp_host,
                    "tcp_port": self._tcp_port,
                    "address": self.address,
                    "tcp_address": self.tcp_address,
                    "tunnels": len(self._tunnels),
                }
            )
            log.info("Gateway attached; passing it %d held connections", len(self.held))
            while self.held:
                sock, address, _ = self.held.popleft()
                self.handle_http(sock, address)
            return
        if channel is not self.gateway:
            return  # a replaced gateway has no say any more
        if op == "reset":
            self._staging = {}
        elif op == "add":
            route = (
                msg["target"],
                msg.get("dashboard"),
                msg.get("handoff"),
                msg.get("handoff_uid"),
            )
            if self._staging is not None:
                self._staging[msg["name"]] = route
            else:
                self.add_route(msg["name"], *route)
        elif op == "remove":
            if self._staging is not None:
                self._staging.pop(msg["name"], None)
            else:
                self.remove_route(msg["name"])
        elif op == "synced" and self._staging is not None:
            staging, self._staging = self._staging, None
            self._sni_routes.clear()
            self._handoffs.clear()
            self._handoff_uids.clear()
            self._dashboard_routes.clear()
            for name, route in staging.items():
                self.add_route(name, *route)
            log.info("Route table of %d clusters received", len(staging))
        elif op == "stats":
            counts = {**self.counts.as_dict(), "open_tunnels": len(self._tunnels)}
            channel.send({"op": "stats", "counts": counts})
        elif op == "shutdown":
            log.info("Stopping at the gateway's request")
            self.stopping.set()


def _listen_for_gateways(address: str, state_dir: str) -> socket.socket:
    """The unix socket gateways attach to (only our user may), and the pid file."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    if address.startswith("\0"):
        listener.bind(address)
    else:
        tmp = f"{address}.{os.getpid()}"
        if os.path.exists(tmp):
            os.unlink(tmp)
        listener.bind(tmp)
        os.chmod(tmp, 0o600)
        os.replace(tmp, address)  # atomic: a gateway never sees a half-made socket
    listener.listen(16)
    listener.setblocking(False)
    with open(pid_file(state_dir), "w") as f:
        f.write(f"{os.getpid()}\n")
    return listener


def _remove_files(address: str, state_dir: str) -> None:
    try:
        if not address.startswith("\0") and os.path.exists(address):
            os.unlink(address)
        os.unlink(pid_file(state_dir))
    except OSError:
        pass


async def _serve(config: dict) -> None:
    state_dir = config["state_dir"]
    proxy = _DetachedProxy(
        hold_timeout=float(config["hold_timeout"]),
        https=bool(config["https"]),
        address=config["address"],
        tcp_address=config["tcp_address"],
        peek_timeout=float(config["peek_timeout"]),
        connect_timeout=float(config["connect_timeout"]),
        log=log,
    )
    proxy._listen()
    proxy._started = True
    address = socket_address(state_dir)
    listener = await asyncio.to_thread(_listen_for_gateways, address, state_dir)
    loop = asyncio.get_running_loop()

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("Accepting a gateway failed: %r", exc)
                return
            proxy.on_accept_gateway(conn)

    loop.add_reader(listener.fileno(), accept)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, proxy.stopping.set)
    log.info(
        "Proxy process %d listening on %s:%d (scheduler traffic on %s:%d)",
        os.getpid(),
        proxy._http_host,
        proxy._http_port,
        proxy._tcp_host,
        proxy._tcp_port,
    )
    try:
        while not proxy.stopping.is_set():
            try:
                await asyncio.wait_for(proxy.stopping.wait(), 0.5)
            except asyncio.TimeoutError:
                pass
            proxy.expire_held()
    finally:
        loop.remove_reader(listener.fileno())
        listener.close()
        await asyncio.to_thread(_remove_files, address, state_dir)
        while proxy.held:
            proxy._refuse(proxy.held.popleft()[0])
        await proxy.stop()
        if proxy.gateway is not None:
            proxy.gateway.close()  # tells the gateway we are gone
        log.info("Proxy process stopped")


def main(argv: list[str] | None = None) -> None:
    """``python -m dask_gateway_server.proxy CONFIG_JSON`` (started by the gateway)."""
    argv = sys.argv[1:] if argv is None else argv
    config = json.loads(argv[0])
    logging.basicConfig(
        level=config.get("log_level", "INFO"),
        format="[%(levelname)1.1s %(asctime)s.%(msecs).03d proxy-process] %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
    )
    asyncio.run(_serve(config))
