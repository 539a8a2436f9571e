"""Dask scheduler preload that connects a scheduler to the dask-gateway server.

Loaded with ``dask-scheduler --preload dask_gateway.scheduler_preload``. It

* reports the scheduler's addresses and worker membership to the gateway with
  periodic heartbeats (the first heartbeat is what marks a cluster RUNNING),
* serves a tiny HTTP API the gateway uses to forward ``scale``/``adapt`` calls,
* runs adaptive scaling on the scheduler so it works with no client attached,
* asks the gateway to stop the cluster after an idle timeout.

* with ``DASK_GATEWAY_DASHBOARD_AUTH`` set (by our gateway), refuses every request to the
  scheduler's HTTP server (dashboard pages, Bokeh's websockets, JSON, metrics) that lacks
  the cluster's dashboard key, which only the gateway's proxy adds.
* with ``DASK_GATEWAY_DASHBOARD_ON_DEMAND`` set (by our gateway), loads the scheduler's
  dashboard at its first request rather than at the scheduler's start.

Configuration comes from the preload options below and the environment
variables ``DASK_GATEWAY_API_URL``, ``DASK_GATEWAY_API_TOKEN`` (the token, or a
path to a file holding it if the value contains ``/``) and
``DASK_GATEWAY_CLUSTER_NAME``.
"""

from __future__ import annotations

import asyncio
import collections
import hmac
import importlib
import json
import logging
import os
import socket
import struct
import sys
import time
import types
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, overload

import click
from distributed.comm.addressing import get_address_host
from distributed.core import Status
from distributed.diagnostics.plugin import SchedulerPlugin
from distributed.http.utils import get_handlers
from distributed.scheduler import WorkerStatusPlugin
from tornado import httpserver, httputil, netutil, web
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

# Scheduler logs are what users and admins read, so log there.
logger = logging.getLogger("distributed.scheduler")

PLUGIN_NAME = "dask-gateway"
#: Key of the ``subscribe_worker_status`` reply listing the extra ops served (see
#: ``dask_gateway.client.SCHEDULER_FEATURES_KEY``).
FEATURES_KEY = "dask_gateway_features"
#: Attribute on the scheduler holding the running service (used by teardown).
SERVICE_ATTR = "dask_gateway_service"

BACKOFF_START = 0.25  # first retry delay after a failed heartbeat
MAX_IDLE_WAIT = 3600.0  # heartbeat period 0 means "only on changes"; still check in hourly
SOON_DELAY = 0.5  # coalesce bursts of worker departures into one heartbeat
HTTP_CONNECT_TIMEOUT = 5.0
HTTP_REQUEST_TIMEOUT = 10.0

#: The header the gateway's proxy sends the dashboard key in, and what the key is derived
#: for (the server's ``Cluster.dashboard_key`` derives the same).
DASHBOARD_KEY_HEADER = "X-Dask-Gateway-Dashboard-Key"
DASHBOARD_KEY_CONTEXT = b"dask-gateway dashboard key v1"


# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------


@dataclass
class GatewayConfig:
    """Everything the service needs, gathered from CLI options and env."""

    api_url: str
    api_token: str
    cluster_name: str
    api_address: str = "127.0.0.1:0"
    heartbeat_period: float = 15.0
    adaptive_period: float = 3.0
    idle_timeout: float = 0.0
    orphan_timeout: float = 0.0
    handoff_address: str = ""  # unix socket ("@name": abstract) for connections passed over
    dashboard_auth: bool = False  # require the dashboard key on the scheduler's HTTP server

    @classmethod
    def from_env(cls, **options: Any) -> GatewayConfig:
        """Read the gateway's env vars; fail loudly since nothing works without them."""
        names = ("DASK_GATEWAY_API_URL", "DASK_GATEWAY_API_TOKEN", "DASK_GATEWAY_CLUSTER_NAME")
        missing = [n for n in names if not os.environ.get(n)]
        if missing:
            raise RuntimeError(
                "dask_gateway.scheduler_preload requires environment variables: "
                + ", ".join(missing)
            )
        return cls(
            api_url=os.environ["DASK_GATEWAY_API_URL"].rstrip("/"),
            api_token=read_token(os.environ["DASK_GATEWAY_API_TOKEN"]),
            cluster_name=os.environ["DASK_GATEWAY_CLUSTER_NAME"],
            handoff_address=os.environ.get("DASK_GATEWAY_HANDOFF_ADDRESS", ""),
            dashboard_auth=bool(os.environ.get("DASK_GATEWAY_DASHBOARD_AUTH")),
            **options,
        )


def read_token(value: str) -> str:
    """Return the token; a value containing '/' is a file path (k8s secret mount)."""
    if "/" in value:
        with open(value) as f:
            return f.read().strip()
    return value.strip()


def parse_bind_address(address: str) -> tuple[str | None, int]:
    """Split ``host:port`` (``:port`` or ``[v6]:port`` too); None host = all interfaces."""
    host, sep, port = address.rpartition(":")
    if not sep:
        raise ValueError(f"Invalid address {address!r}, expected 'host:port'")
    host = host.strip("[]")
    return (host or None), int(port)


def dashboard_key(token: str) -> str:
    """The key the gateway's proxy sends with every dashboard request of this cluster."""
    return hmac.new(token.encode(), DASHBOARD_KEY_CONTEXT, "sha256").hexdigest()


# ---------------------------------------------------------------------------
# The dashboard's lock
# ---------------------------------------------------------------------------


class DashboardGuard(httputil.HTTPServerConnectionDelegate):
    """Put in front of the scheduler's HTTP server application: a request without the
    dashboard key gets 403 before any handler sees it. Every page the server has passes
    here (distributed's routes, the Bokeh server's pages and websockets, Jupyter), so
    another user of a shared host or node cannot read a dashboard the gateway would not
    show them."""

    def __init__(self, inner: httputil.HTTPServerConnectionDelegate, key: str) -> None:
        self.inner = inner
        self.key = key.encode()

    def start_request(
        self, server_conn: object, request_conn: httputil.HTTPConnection
    ) -> httputil.HTTPMessageDelegate:
        return _GuardedRequest(self, server_conn, request_conn)

    def on_close(self, server_conn: object) -> None:
        self.inner.on_close(server_conn)


class _PassedOn(httputil.HTTPMessageDelegate):
    """One request of a wrapper in front of the scheduler's HTTP application: what the
    wrapper lets through goes to the application's own delegate (``self.delegate``)."""

    def __init__(
        self,
        inner: httputil.HTTPServerConnectionDelegate,
        server_conn: object,
        request_conn: httputil.HTTPConnection,
    ) -> None:
        self.inner = inner
        self.server_conn = server_conn
        self.request_conn = request_conn
        self.delegate: httputil.HTTPMessageDelegate | None = None

    def pass_on(self, start_line: Any, headers: httputil.HTTPHeaders) -> Any:
        self.delegate = self.inner.start_request(self.server_conn, self.request_conn)
        return self.delegate.headers_received(start_line, headers)

    def data_received(self, chunk: bytes) -> Any:
        if self.delegate is not None:
            return self.delegate.data_received(chunk)
        return None

    def finish(self) -> None:
        if self.delegate is not None:
            self.delegate.finish()

    def on_connection_close(self) -> None:
        if self.delegate is not None:
            self.delegate.on_connection_close()


class _GuardedRequest(_PassedOn):
    """One request: passed on to the application once its headers carry the key."""

    def __init__(
        self, guard: DashboardGuard, server_conn: object, request_conn: httputil.HTTPConnection
    ) -> None:
        super().__init__(guard.inner, server_conn, request_conn)
        self.guard = guard

    def headers_received(self, start_line: Any, headers: httputil.HTTPHeaders) -> Any:
        given = headers.get(DASHBOARD_KEY_HEADER, "").encode("latin-1", "replace")
        if hmac.compare_digest(given, self.guard.key):
            return self.pass_on(start_line, headers)
        body = json.dumps({"error": "This dashboard is reached through the Dask Gateway"})
        data = body.encode()
        self.request_conn.write_headers(
            httputil.ResponseStartLine("HTTP/1.1", 403, "Forbidden"),
            httputil.HTTPHeaders(
                {"Content-Type": "application/json", "Content-Length": str(len(data))}
            ),
        )
        self.request_conn.write(data)
        self.request_conn.finish()  # tornado drops any body and closes after it
        return None


def guard_dashboard(scheduler: Any, token: str) -> bool:
    """Require the dashboard key on every request of the scheduler's HTTP server; False
    if it has none (or an unexpected one, left as it is)."""
    server = getattr(scheduler, "http_server", None)
    if server is None:
        return False
    app = getattr(server, "request_callback", None)
    if not isinstance(app, httputil.HTTPServerConnectionDelegate):
        return False
    if not isinstance(app, DashboardGuard):
        server.request_callback = DashboardGuard(app, dashboard_key(token))
    return True


# ---------------------------------------------------------------------------
# The dashboard, loaded when first asked for
# ---------------------------------------------------------------------------

DASHBOARD_MODULE = "distributed.dashboard.scheduler"
MISSING_BOKEH_MODULE = "distributed.http.scheduler.missing_bokeh"
#: Set (by our gateway) in a scheduler's environment to load its dashboard on demand.
ON_DEMAND_ENV = "DASK_GATEWAY_DASHBOARD_ON_DEMAND"
#: Attribute on the scheduler holding the arguments its dashboard is to be connected with.
DEFERRED_ATTR = "dask_gateway_deferred_dashboard"


class _DashboardStandIn(types.ModuleType):
    """Stands in for distributed's dashboard module while the scheduler is built.

    distributed imports a scheduler's preloads in ``Scheduler.__init__``, just before it
    imports the dashboard module (Bokeh: about 0.9 s of CPU and 18 MB) and calls its
    ``connect(application, http_server, scheduler, prefix=...)``. This stand-in's
    ``connect`` keeps those arguments on the scheduler for ``DashboardOnDemand`` instead,
    and gives the real module its place back. Nothing of this happens without
    ``ON_DEMAND_ENV``, so a scheduler started otherwise, or a preload that does not know it
    (the public dask-gateway's), gets its dashboard at start as always.
    """

    def __init__(self, package: types.ModuleType) -> None:
        super().__init__(DASHBOARD_MODULE)
        self.package = package

    def install(self) -> None:
        sys.modules[DASHBOARD_MODULE] = self
        self.package.scheduler = self  # type: ignore[attr-defined]

    def uninstall(self) -> None:
        if sys.modules.get(DASHBOARD_MODULE) is self:
            del sys.modules[DASHBOARD_MODULE]
        if getattr(self.package, "scheduler", None) is self:
            del self.package.scheduler

    def connect(self, application: Any, http_server: Any, scheduler: Any, **kwargs: Any) -> None:
        self.uninstall()
        setattr(scheduler, DEFERRED_ATTR, (application, http_server, kwargs))


def _defer_dashboard() -> _DashboardStandIn | None:
    """Install the stand-in if this scheduler is to load its dashboard on demand and the
    real module is not imported yet (a fork server's child has it already: nothing to
    save)."""
    if not os.environ.get(ON_DEMAND_ENV) or DASHBOARD_MODULE in sys.modules:
        return None
    import distributed.dashboard  # an empty package: the stand-in is its ``scheduler``

    stand_in = _DashboardStandIn(distributed.dashboard)
    stand_in.install()
    return stand_in


_STAND_IN = _defer_dashboard()


class DashboardOnDemand(httputil.HTTPServerConnectionDelegate):
    """Put in front of the HTTP server of a scheduler whose dashboard was deferred: the
    first request loads and connects the Bokeh dashboard (a scheduler nobody looks at never
    spends that, and a cluster is RUNNING that much sooner); requests wait for it, then go
    on as usual."""

    def __init__(
        self,
        inner: httputil.HTTPServerConnectionDelegate,
        scheduler: Any,
        deferred: tuple[Any, Any, dict[str, Any]],
    ) -> None:
        self.inner = inner
        self.scheduler = scheduler
        self.deferred = deferred
        self.loaded = False
        self._loading: asyncio.Future[None] | None = None

    def start_request(
        self, server_conn: object, request_conn: httputil.HTTPConnection
    ) -> httputil.HTTPMessageDelegate:
        if self.loaded:
            return self.inner.start_request(server_conn, request_conn)
        return _OnDemandRequest(self, server_conn, request_conn)

    def on_close(self, server_conn: object) -> None:
        self.inner.on_close(server_conn)

    async def load(self) -> None:
        """Load the dashboard once (concurrent callers share the one load)."""
        if self._loading is None:
            self._loading = asyncio.ensure_future(self._load())
        await asyncio.shield(self._loading)

    async def _load(self) -> None:
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        application, http_server, kwargs = self.deferred
        try:  # the import in a thread: the scheduler keeps serving meanwhile
            module = await loop.run_in_executor(None, importlib.import_module, DASHBOARD_MODULE)
            module.connect(application, http_server, self.scheduler, **kwargs)
        except ImportError as e:  # no bokeh: distributed's own page saying so, as at start
            logger.warning("dask-gateway: no dashboard: %s", e)
            prefix = kwargs.get("prefix", "")
            routes = get_handlers(self.scheduler, [MISSING_BOKEH_MODULE], prefix)
            application.add_handlers(".*", routes)
        except Exception as e:  # broken: distributed's own pages still work
            logger.warning("dask-gateway: the dashboard could not be loaded: %s", e)
        else:
            logger.info("dask-gateway: dashboard loaded in %.2f s", time.monotonic() - started)
        self.loaded = True


class _OnDemandRequest(_PassedOn):
    """One request that arrived before the dashboard was loaded: waits for the load."""

    def __init__(
        self,
        owner: DashboardOnDemand,
        server_conn: object,
        request_conn: httputil.HTTPConnection,
    ) -> None:
        super().__init__(owner.inner, server_conn, request_conn)
        self.owner = owner

    def headers_received(self, start_line: Any, headers: httputil.HTTPHeaders) -> Any:
        return self._after_load(start_line, headers)  # tornado awaits it before the body

    async def _after_load(self, start_line: Any, headers: httputil.HTTPHeaders) -> None:
        await self.owner.load()
        result = self.pass_on(start_line, headers)
        if result is not None:
            await result


def dashboard_on_demand(scheduler: Any) -> bool:
    """If the stand-in deferred this scheduler's dashboard, load it at the first request
    of the scheduler's HTTP server (True); otherwise leave everything as it is."""
    if _STAND_IN is not None:
        _STAND_IN.uninstall()  # its connect was never called (a scheduler without dashboard)
    deferred = getattr(scheduler, DEFERRED_ATTR, None)
    server = getattr(scheduler, "http_server", None)
    app = getattr(server, "request_callback", None)
    if deferred is None or not isinstance(app, httputil.HTTPServerConnectionDelegate):
        return False
    server.request_callback = DashboardOnDemand(app, scheduler, deferred)  # type: ignore[union-attr]
    return True


# ---------------------------------------------------------------------------
# Worker tracking
# ---------------------------------------------------------------------------


class WorkerTracker(SchedulerPlugin):
    """Tracks workers by *name*, the identifier the gateway uses for its worker rows.

    ``closing`` workers were chosen by us for removal (an expected closure);
    ``closed`` holds departures not yet reported to the gateway.
    """

    name = PLUGIN_NAME

    def __init__(
        self,
        on_departure: Callable[[str, bool], None] | None = None,
        on_arrival: Callable[[str], None] | None = None,
    ) -> None:
        self.active: dict[str, None] = {}  # insertion-ordered set
        self.closing: dict[str, None] = {}
        self.closed: dict[str, None] = {}
        self._names: dict[str, str] = {}  # address -> name; WorkerState may be gone on removal
        self._on_departure = on_departure
        self._on_arrival = on_arrival

    def add_worker(self, scheduler: Any, worker: str) -> None:
        name = str(scheduler.workers[worker].name)
        self._names[worker] = name
        self.closed.pop(name, None)  # came back before we reported it gone
        if name not in self.closing:
            self.active[name] = None
        if self._on_arrival is not None:
            self._on_arrival(name)

    def remove_worker(self, scheduler: Any, worker: str, **kwargs: Any) -> None:
        name = self._names.pop(worker, None)
        if name is None:
            return
        expected = name in self.closing  # we chose it for scale-down
        self.closing.pop(name, None)
        self.active.pop(name, None)
        self.closed[name] = None
        if self._on_departure is not None:
            self._on_departure(name, expected)

    def mark_closing(self, names: list[str]) -> None:
        """Move workers chosen for scale-down from active to closing."""
        for name in names:
            if name in self.active:
                del self.active[name]
                self.closing[name] = None

    def forget_closed(self, names: list[str]) -> None:
        """Drop departures the gateway has acknowledged."""
        for name in names:
            self.closed.pop(name, None)


# ---------------------------------------------------------------------------
# Scheduler API (gateway -> scheduler)
# ---------------------------------------------------------------------------


class APIError(Exception):
    """A client error reported as ``{"error": msg}`` with an HTTP status."""

    def __init__(self, status: int, msg: str) -> None:
        super().__init__(msg)
        self.status = status
        self.msg = msg


class BaseHandler(web.RequestHandler):
    """Always answer errors with a small JSON body, never an HTML traceback."""

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        reason = self._reason
        exc_info = kwargs.get("exc_info")
        if exc_info and isinstance(exc_info[1], web.HTTPError) and exc_info[1].log_message:
            reason = exc_info[1].log_message
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"error": reason}))


class HealthHandler(BaseHandler):
    def get(self) -> None:
        self.set_status(200)


class CommHandler(BaseHandler):
    """``POST /api/comm``: scale/adapt requests forwarded by the gateway."""

    def initialize(self, service: SchedulerService) -> None:
        self.service = service

    def get_current_user(self) -> str | None:
        header = self.request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "token" and hmac.compare_digest(
            token.strip().encode(), self.service.config.api_token.encode()
        ):
            return "gateway"
        return None

    def post(self) -> None:
        if self.current_user is None:
            raise web.HTTPError(403, "Forbidden")
        try:
            msg = json.loads(self.request.body or b"null")
            self._dispatch(msg)
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
            self._send_error(400, f"Invalid JSON body: {exc}")
        except APIError as exc:
            self._send_error(exc.status, exc.msg)

    def _send_error(self, status: int, msg: str) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"error": msg}))

    def _dispatch(self, msg: Any) -> None:
        if not isinstance(msg, dict):
            raise APIError(422, "Request body must be a JSON object")
        op = msg.get("op")
        if op == "scale":
            self.service.scale(validate_count(msg.get("count"), "count", allow_none=False))
        elif op == "adapt":
            minimum = validate_count(msg.get("minimum"), "minimum")
            maximum = validate_count(msg.get("maximum"), "maximum")
            active = msg.get("active", True)
            if not isinstance(active, bool):
                raise APIError(422, f"active must be a boolean, got {active!r}")
            if minimum is not None and maximum is not None and minimum > maximum:
                raise APIError(422, "minimum must be <= maximum")
            self.service.adapt(minimum=minimum, maximum=maximum, active=active)
        else:
            raise APIError(422, "op must be one of {scale, adapt}")


@overload
def validate_count(value: Any, field: str, allow_none: Literal[False]) -> int: ...


@overload
def validate_count(value: Any, field: str, allow_none: bool = True) -> int | None: ...


def validate_count(value: Any, field: str, allow_none: bool = True) -> int | None:
    """Check a worker count is a non-negative int (bool is rejected: it's not a count)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise APIError(422, f"{field} must be a non-negative integer, got {value!r}")
    return value


def make_api_app(service: SchedulerService) -> web.Application:
    return web.Application(
        [
            (r"/api/comm", CommHandler, {"service": service}),
            (r"/api/health", HealthHandler),
        ],
        log_function=_log_request,
    )


def _log_request(handler: web.RequestHandler) -> None:
    """Keep health probes out of the scheduler log; other requests at debug."""
    if handler.request.path != "/api/health":
        logger.debug(
            "dask-gateway API %s %s -> %d",
            handler.request.method,
            handler.request.path,
            handler.get_status(),
        )


# ---------------------------------------------------------------------------
# The service
# ---------------------------------------------------------------------------


class SchedulerService:
    """Keeps the gateway informed and applies its scale/adapt requests.

    (``GatewaySchedulerService`` below is the public package's constructor over this.)
    """

    #: Passed to ``Scheduler.adaptive_target`` when set (distributed's default otherwise).
    target_duration: float | None = None

    def __init__(self, scheduler: Any, config: GatewayConfig) -> None:
        self.scheduler = scheduler
        self.config = config
        self.count = 0  # desired number of workers
        self.tracker = WorkerTracker(on_departure=self._on_departure, on_arrival=self._on_arrival)
        self.adaptive: tuple[int | None, int | None] | None = None  # (min, max) when active
        self._adapt_history: collections.deque[int] = collections.deque(maxlen=3)
        self._adapt_task: asyncio.Task | None = None
        self._wake = asyncio.Event()
        self._soon_handle: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task] = set()
        self._retiring: set[str] = set()
        self._http: AsyncHTTPClient | None = None
        self._server: httpserver.HTTPServer | None = None
        self.api_port: int | None = None
        self._heartbeat_failures = 0
        self.leases: set[Any] = set()  # comms of GatewayClusters that own this cluster
        self._leased_once = False
        self._handoff: socket.socket | None = None

    # -- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        """Bind the API, register the plugin, then start the background loops."""
        self._http = AsyncHTTPClient(force_instance=True)
        self._start_api_server()
        self._start_handoff()
        for addr in self.scheduler.workers:  # normally none yet
            self.tracker.add_worker(self.scheduler, addr)
        self.scheduler.add_plugin(self.tracker, name=PLUGIN_NAME, idempotent=True)
        self._spawn(self._heartbeat_loop())
        if self.config.idle_timeout > 0:
            self._spawn(self._idle_loop())
        if self.config.orphan_timeout > 0:
            self._spawn(self._orphan_loop())
        logger.info(
            "dask-gateway: scheduler API at %s, reporting to %s as cluster %s",
            self.api_address,
            self.config.api_url,
            self.config.cluster_name,
        )

    async def stop(self) -> None:
        """Cancel loops and close the API server; safe to call more than once."""
        if self._soon_handle is not None:
            self._soon_handle.cancel()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._handoff is not None:
            asyncio.get_running_loop().remove_reader(self._handoff.fileno())
            self._handoff.close()
            self._handoff = None
        if self._server is not None:
            self._server.stop()
            await self._server.close_all_connections()
            self._server = None
        if self._http is not None:
            self._http.close()
            self._http = None

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task:
        """Run a background task and keep a reference so it can't be garbage collected."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _start_api_server(self) -> None:
        host, port = parse_bind_address(self.config.api_address)
        sockets = netutil.bind_sockets(port, address=host)
        self._server = httpserver.HTTPServer(make_api_app(self))
        self._server.add_sockets(sockets)
        self.api_port = sockets[0].getsockname()[1]
        self._api_host = host

    # -- connections handed over by the gateway's proxy -------------------------

    def _tls_server(self) -> Any:
        """The tornado TCPServer behind the scheduler's TLS listener, if it has one."""
        for listener in getattr(self.scheduler, "listeners", []):
            server = getattr(listener, "tcp_server", None)
            if getattr(server, "ssl_options", None) and hasattr(server, "_handle_connection"):
                return server
        return None

    def _start_handoff(self) -> None:
        """Take client connections the gateway's proxy passes over a unix socket: they then
        bypass the gateway (direct speed; they survive gateway restarts). Without it the
        proxy tunnels, so any failure here only costs speed."""
        address = self.config.handoff_address
        if not address or not hasattr(socket, "recv_fds") or self._tls_server() is None:
            return
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind("\0" + address[1:] if address.startswith("@") else address)
            sock.listen(64)
        except OSError as e:
            logger.warning("dask-gateway: no connection handoff (%s); the proxy will tunnel", e)
            sock.close()
            return
        sock.setblocking(False)
        self._handoff = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._accept_handoffs)

    def _accept_handoffs(self) -> None:
        loop = asyncio.get_running_loop()
        while self._handoff is not None:
            try:
                conn, _ = self._handoff.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                logger.warning("dask-gateway: handoff accept failed: %s", e)
                return
            conn.setblocking(False)
            loop.add_reader(conn.fileno(), self._receive_handoff, conn)

    def _receive_handoff(self, conn: socket.socket) -> None:
        try:
            _, fds, _, _ = socket.recv_fds(conn, 1, 4)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            fds = []
        asyncio.get_running_loop().remove_reader(conn.fileno())
        with conn:
            creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            uid = struct.unpack("3i", creds)[1]
            trusted = uid in (0, os.getuid())  # the gateway: root or this user
            taken = False
            for fd in fds:
                client = socket.socket(fileno=fd)
                if not trusted or taken:
                    client.close()
                    continue
                server = self._tls_server()
                try:
                    client.setblocking(False)
                    server._handle_connection(client, client.getpeername())
                    taken = True
                except Exception as e:  # fall back to the proxy's tunnel
                    logger.warning("dask-gateway: could not take a handed-off connection: %s", e)
                    client.close()
            try:
                conn.send(b"1" if taken else b"0")
            except OSError:
                pass

    # -- addresses -----------------------------------------------------------

    @property
    def _scheduler_host(self) -> str:
        return get_address_host(self.scheduler.address)

    @property
    def api_address(self) -> str:
        host = self._api_host
        if host in (None, "", "0.0.0.0", "::"):
            host = self._scheduler_host  # reachable address rather than a wildcard
        return f"http://{_url_host(host)}:{self.api_port}"

    @property
    def dashboard_address(self) -> str:
        server = self.scheduler.services.get("dashboard")
        if server is None:
            return ""
        return f"http://{_url_host(self._scheduler_host)}:{server.port}"

    # -- requests from the gateway ----------------------------------------------

    def scale(self, count: int) -> None:
        """An explicit scale turns adaptive mode off, like upstream."""
        self._stop_adaptive()
        self._set_count(count)

    def adapt(self, minimum: int | None, maximum: int | None, active: bool = True) -> None:
        self._stop_adaptive()
        if not active:
            return
        self.adaptive = (minimum, maximum)
        self._adapt_history.clear()
        self._adapt_task = self._spawn(self._adaptive_loop())

    def _stop_adaptive(self) -> None:
        self.adaptive = None
        if self._adapt_task is not None:
            self._adapt_task.cancel()
            self._adapt_task = None

    def _set_count(self, count: int) -> None:
        if count != self.count:
            logger.info("dask-gateway: target worker count %d -> %d", self.count, count)
            self.count = count
            self.heartbeat_now()

    # -- heartbeats --------------------------------------------------------------

    def heartbeat_now(self) -> None:
        self._wake.set()

    def heartbeat_soon(self) -> None:
        """Batch quick successive events (e.g. several workers dying) into one heartbeat."""
        if self._soon_handle is None:

            def fire() -> None:
                self._soon_handle = None
                self._wake.set()

            self._soon_handle = asyncio.get_running_loop().call_later(SOON_DELAY, fire)

    def _on_departure(self, name: str, expected: bool) -> None:
        if not expected:
            logger.info("dask-gateway: worker %s left unexpectedly", name)
        # Retired ones too: the gateway records a worker's end (its usage) when it learns
        # of it, which must not wait a whole heartbeat period.
        self.heartbeat_soon()

    def _on_arrival(self, name: str) -> None:
        if len(self.tracker.active) > self.count:
            self.heartbeat_soon()  # surplus worker; next heartbeat picks one to close

    async def _heartbeat_loop(self) -> None:
        """Heartbeat forever; on failure retry with exponential backoff capped at the period."""
        period = self.config.heartbeat_period
        backoff_cap = period if period > 0 else 15.0
        backoff = BACKOFF_START
        while True:
            self._wake.clear()
            if await self.send_heartbeat():
                backoff = BACKOFF_START
                delay = period if period > 0 else MAX_IDLE_WAIT
            else:
                delay = backoff
                backoff = min(backoff * 2, max(backoff_cap, BACKOFF_START))
            try:
                await asyncio.wait_for(self._wake.wait(), delay)
            except asyncio.TimeoutError:
                pass

    def build_heartbeat(self) -> dict[str, Any]:
        """Snapshot state for one heartbeat, choosing scale-down victims first."""
        self._choose_workers_to_close()
        return {
            "scheduler_address": self.scheduler.address,
            "dashboard_address": self.dashboard_address,
            "api_address": self.api_address,
            "count": self.count,
            "active_workers": list(self.tracker.active),
            "closing_workers": list(self.tracker.closing),
            "closed_workers": list(self.tracker.closed),
        }

    async def send_heartbeat(self) -> bool:
        msg = self.build_heartbeat()
        url = f"{self.config.api_url}/v1/clusters/{self.config.cluster_name}/heartbeat"
        ok = await self._request("POST", url, body=json.dumps(msg), what="heartbeat")
        if ok:
            self.tracker.forget_closed(msg["closed_workers"])
            self._retire(msg["closing_workers"])
        return ok

    async def _request(self, method: str, url: str, what: str, body: str | None = None) -> bool:
        """Send one request to the gateway; log one warning per failure streak."""
        assert self._http is not None
        req = HTTPRequest(
            url,
            method=method,
            body=body,
            headers={
                "Authorization": f"token {self.config.api_token}",
                "Content-Type": "application/json",
            },
            connect_timeout=HTTP_CONNECT_TIMEOUT,
            request_timeout=HTTP_REQUEST_TIMEOUT,
        )
        try:
            resp = await self._http.fetch(req, raise_error=False)
            error = None if 200 <= resp.code < 300 else f"HTTP {resp.code} {resp.reason}"
        except Exception as exc:  # connection refused, timeouts, DNS, ...
            error = f"{type(exc).__name__}: {exc}"
        if error is None:
            if self._heartbeat_failures and what == "heartbeat":
                logger.info(
                    "dask-gateway: %s succeeded again after %d failures",
                    what,
                    self._heartbeat_failures,
                )
            if what == "heartbeat":
                self._heartbeat_failures = 0
            return True
        if what != "heartbeat":
            logger.warning("dask-gateway: %s to %s failed: %s", what, url, error)
            return False
        self._heartbeat_failures += 1
        log = logger.warning if self._heartbeat_failures == 1 else logger.debug
        log("dask-gateway: heartbeat to %s failed (%s); retrying with backoff", url, error)
        return False

    # -- scale down ----------------------------------------------------------------

    def _choose_workers_to_close(self) -> None:
        """Mark the cheapest workers as closing until active workers == count."""
        excess = len(self.tracker.active) - self.count
        if excess <= 0:
            return
        closing = set(self.tracker.closing)
        connected_closing = sum(
            1 for ws in self.scheduler.workers.values() if str(ws.name) in closing
        )
        candidates = self.scheduler.workers_to_close(n=excess + connected_closing, attribute="name")
        victims = [str(n) for n in candidates if str(n) in self.tracker.active][:excess]
        if victims:
            logger.info("dask-gateway: closing workers %s to reach count %d", victims, self.count)
            self.tracker.mark_closing(victims)

    def _retire(self, names: list[str]) -> None:
        """Retire reported closing workers not already being retired."""
        todo = [n for n in names if n not in self._retiring]
        if todo:
            self._retiring.update(todo)
            self._spawn(self._retire_workers(todo))

    async def _retire_workers(self, names: list[str]) -> None:
        """Retire gracefully; if data can't be moved, close anyway: the user asked to scale."""
        stimulus_id = f"dask-gateway-scale-down-{time.time()}"
        try:
            await self.scheduler.retire_workers(
                names=names, remove=True, close_workers=True, stimulus_id=stimulus_id
            )
            wanted = set(names)
            leftover = [a for a, ws in self.scheduler.workers.items() if str(ws.name) in wanted]
            for addr in leftover:
                logger.info("dask-gateway: worker %s could not be retired, closing it", addr)
                await self.scheduler.remove_worker(addr, stimulus_id=stimulus_id, close=True)
        except Exception as exc:
            logger.warning("dask-gateway: failed to retire workers %s: %s", names, exc)
        finally:
            self._retiring.difference_update(names)

    # -- adaptive ------------------------------------------------------------------

    async def _adaptive_loop(self) -> None:
        while True:
            try:
                self.adapt_once()
            except Exception as exc:
                logger.warning("dask-gateway: adaptive step failed: %s", exc)
            await asyncio.sleep(self.config.adaptive_period)

    def adapt_once(self) -> None:
        """Scale up at once; scale down only to the max of the recent targets."""
        if self.adaptive is None:
            return
        minimum, maximum = self.adaptive
        if self.target_duration is None:
            target = self.scheduler.adaptive_target()
        else:
            target = self.scheduler.adaptive_target(target_duration=self.target_duration)
        if minimum is not None:
            target = max(target, minimum)
        if maximum is not None:
            target = min(target, maximum)
        self._adapt_history.append(target)
        if target > self.count:
            self._set_count(target)
        elif target < self.count:
            recent = max(self._adapt_history)
            if recent < self.count:
                self._set_count(recent)

    # -- idle timeout --------------------------------------------------------------

    async def _idle_loop(self) -> None:
        """Ask the gateway to stop the cluster once nothing has happened for a while."""
        timeout = self.config.idle_timeout
        last_counter = self.scheduler.transition_counter
        last_active = time.monotonic()
        while True:
            await asyncio.sleep(timeout / 4)
            now = time.monotonic()
            counter = self.scheduler.transition_counter
            if counter != last_counter or self._is_busy():
                last_counter = counter
                last_active = now
                continue
            if now - last_active > timeout:
                logger.info(
                    "dask-gateway: idle for more than %.1f s, asking the gateway to stop the cluster",
                    timeout,
                )
                if await self._request_shutdown("idle"):
                    return  # the gateway will stop us; keep serving until then

    # -- orphans -------------------------------------------------------------------

    async def hold_lease(self, comm: Any) -> None:
        """A client that will shut the cluster down when it exits holds this comm open; if
        it dies without doing so (a crashed kernel), the comm closes and the cluster is an
        orphan."""
        self.leases.add(comm)
        self._leased_once = True
        try:
            while True:
                msg = await comm.read()
                if isinstance(msg, dict) and msg.get("op") == "keep":
                    # The owner closed without shutting down: the cluster is meant to stay.
                    self._leased_once = False
        except Exception:
            pass
        finally:
            self.leases.discard(comm)

    def _has_clients(self) -> bool:
        clients = getattr(self.scheduler, "clients", {})
        return bool(self.leases) or any(c != "fire-and-forget" for c in clients)

    async def _orphan_loop(self) -> None:
        """Stop a cluster whose owning client died, once no client has been connected for
        ``orphan_timeout`` seconds. Clusters nobody ever leased (shutdown_on_close=False)
        are left alone."""
        timeout = self.config.orphan_timeout
        alone_since: float | None = None
        while True:
            await asyncio.sleep(min(timeout / 4, 5.0))
            if not self._leased_once or self._has_clients():
                alone_since = None
                continue
            now = time.monotonic()
            if alone_since is None:
                alone_since = now
            elif now - alone_since > timeout:
                logger.info(
                    "dask-gateway: the client that owned this cluster is gone; "
                    "asking the gateway to stop it"
                )
                if await self._request_shutdown("orphan"):
                    return

    def _is_busy(self) -> bool:
        s = self.scheduler
        return bool(
            s.unrunnable
            or getattr(s, "queued", None)
            or any(ws.processing for ws in s.workers.values())
        )

    async def _request_shutdown(self, reason: str) -> bool:
        """Ask the gateway to stop the cluster; ``reason`` ("idle" or "orphan") is what the
        gateway tells the user (the public gateway ignores it)."""
        url = f"{self.config.api_url}/v1/clusters/{self.config.cluster_name}?reason={reason}"
        return await self._request("DELETE", url, what=f"{reason} shutdown request")


def _url_host(host: str) -> str:
    """Bracket IPv6 literals for use in a URL."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


# ---------------------------------------------------------------------------
# Preload entry points
# ---------------------------------------------------------------------------


class _WorkerStatusSubscriber(WorkerStatusPlugin):
    """distributed's worker status stream, under a name of its own.

    distributed names every subscriber's plugin "worker-status", so a second client
    watching the cluster (another notebook, the gateway widget's Connect) replaced the
    first one's stream and froze its worker table. Same op, same messages; closed
    subscribers still drop out on their next send, as in distributed.
    """

    def __init__(self, scheduler: Any, comm: Any):
        # distributed declares ``name`` a class variable, yet add_plugin reads it from the
        # instance: this one is per subscriber.
        self.name = f"worker-status-{uuid.uuid4().hex}"  # type: ignore[misc]
        super().__init__(scheduler, comm)


def _subscribe_worker_status_handler(
    scheduler: Any, features: list[str] | None = None
) -> Callable[..., dict[str, Any]]:
    """A ``subscribe_worker_status`` handler that keeps every subscriber.

    Its reply also lists ``features``, the extra ops this scheduler serves, under
    ``FEATURES_KEY``: our client reads (and removes) it there, a reply every client
    reads anyway, so it never sends an op a scheduler with the public preload lacks.
    """

    def subscribe_worker_status(comm: Any) -> dict[str, Any]:
        _WorkerStatusSubscriber(scheduler, comm)
        ident = scheduler.identity()
        for worker in ident["workers"].values():
            worker.pop("metrics", None)
            worker.pop("last_seen", None)
        if features:
            ident[FEATURES_KEY] = list(features)
        return ident

    return subscribe_worker_status


@click.command()
@click.option(
    "--dg-api-address",
    default="127.0.0.1:0",
    show_default=True,
    help="host:port to serve the scheduler API (used by the gateway) on.",
)
@click.option(
    "--dg-heartbeat-period",
    type=float,
    default=15.0,
    show_default=True,
    help="Seconds between heartbeats to the gateway; 0 = only on state changes.",
)
@click.option(
    "--dg-adaptive-period",
    type=float,
    default=3.0,
    show_default=True,
    help="Seconds between adaptive scaling decisions.",
)
@click.option(
    "--dg-idle-timeout",
    type=float,
    default=0.0,
    show_default=True,
    help="Stop the cluster after this many idle seconds; 0 disables.",
)
@click.option(
    "--dg-orphan-timeout",
    type=float,
    default=0.0,
    show_default=True,
    help="Stop the cluster this many seconds after the client that owned it died; 0 disables.",
)
async def dask_setup(
    scheduler: Any,
    dg_api_address: str,
    dg_heartbeat_period: float,
    dg_adaptive_period: float,
    dg_idle_timeout: float,
    dg_orphan_timeout: float = 0.0,
) -> None:
    """Start the gateway service inside the scheduler (called by distributed)."""
    config = GatewayConfig.from_env(
        api_address=dg_api_address,
        heartbeat_period=dg_heartbeat_period,
        adaptive_period=dg_adaptive_period,
        idle_timeout=dg_idle_timeout,
        orphan_timeout=dg_orphan_timeout,
    )
    scheduler.handlers["subscribe_worker_status"] = _subscribe_worker_status_handler(
        scheduler, features=["lease"]
    )
    service = SchedulerService(scheduler, config)

    async def dask_gateway_lease(comm: Any) -> Any:
        await service.hold_lease(comm)
        return Status.dont_reply

    scheduler.handlers["dask_gateway_lease"] = dask_gateway_lease
    if dashboard_on_demand(scheduler):
        logger.info("dask-gateway: the dashboard loads at its first request")
    if config.dashboard_auth and not guard_dashboard(scheduler, config.api_token):
        logger.warning("dask-gateway: no HTTP server to protect with the dashboard key")
    await service.start()
    setattr(scheduler, SERVICE_ATTR, service)


async def dask_teardown(scheduler: Any) -> None:
    """Stop the service when the scheduler closes."""
    service = getattr(scheduler, SERVICE_ATTR, None)
    if service is not None:
        await service.stop()


# ---------------------------------------------------------------------------
# The public package's names, for the public server's in-process backend
# ---------------------------------------------------------------------------
# ``dask_gateway_server.backends.inprocess`` (public dask-gateway-server) runs schedulers
# inside the gateway process and builds their service itself:
#     Scheduler(services={("gateway", ":0"): (GatewaySchedulerService, {"gateway":
#         make_gateway_client(...), "heartbeat_period": ..., ...})})
# distributed then calls ``listen((ip, port))`` on it, reads ``.port`` and calls ``stop()``
# without awaiting. These adapt that to ``SchedulerService``, so that backend keeps working
# when this package replaces the public client in the gateway's environment.


class GatewayClient:
    """Where a scheduler reports to: its cluster name, token and the gateway's API URL."""

    def __init__(self, cluster_name: str, api_token: str, api_url: str) -> None:
        self.cluster_name = cluster_name
        self.token = api_token
        self.api_url = api_url

    async def _send(self, method: str, path: str, body: str | None = None) -> None:
        client = AsyncHTTPClient()
        await client.fetch(
            HTTPRequest(
                f"{self.api_url.rstrip('/')}/v1/clusters/{self.cluster_name}{path}",
                method=method,
                body=body,
                headers={
                    "Authorization": f"token {self.token}",
                    "Content-Type": "application/json",
                },
                connect_timeout=HTTP_CONNECT_TIMEOUT,
                request_timeout=HTTP_REQUEST_TIMEOUT,
            )
        )

    async def heartbeat(self, msg: dict[str, Any]) -> None:
        """Send one heartbeat; raises ``tornado.httpclient.HTTPClientError`` on failure."""
        await self._send("POST", "/heartbeat", json.dumps(msg))

    async def shutdown(self) -> None:
        """Ask the gateway to stop this cluster."""
        await self._send("DELETE", "")


def make_gateway_client(
    cluster_name: str | None = None, api_url: str | None = None, api_token: str | None = None
) -> GatewayClient:
    """A ``GatewayClient``; missing values come from the ``DASK_GATEWAY_*`` variables
    (a token containing ``/`` is the path of a file holding it)."""
    given = {
        "DASK_GATEWAY_CLUSTER_NAME": cluster_name,
        "DASK_GATEWAY_API_URL": api_url,
        "DASK_GATEWAY_API_TOKEN": api_token,
    }
    env = {name: value or os.environ.get(name, "") for name, value in given.items()}
    missing = [name for name, value in env.items() if not value]
    if missing:
        raise RuntimeError(
            "dask_gateway.scheduler_preload.make_gateway_client: no value given and no "
            "environment variable " + ", ".join(missing)
        )
    return GatewayClient(
        env["DASK_GATEWAY_CLUSTER_NAME"],
        read_token(env["DASK_GATEWAY_API_TOKEN"]),
        env["DASK_GATEWAY_API_URL"],
    )


class GatewaySchedulerService:
    """The public package's scheduler service: a distributed *service* (``listen``,
    ``port``, ``stop``) built from keyword arguments, running a ``SchedulerService``."""

    def __init__(
        self,
        scheduler: Any,
        io_loop: Any = None,
        gateway: GatewayClient | None = None,
        adaptive_period: float = 3,
        adaptive_window: int = 3,
        target_duration: float = 5,
        idle_timeout: float = 0,
        heartbeat_period: float = 15,
    ) -> None:
        self.scheduler = scheduler
        self.gateway = gateway if gateway is not None else make_gateway_client()
        config = GatewayConfig(
            api_url=self.gateway.api_url.rstrip("/"),
            api_token=self.gateway.token,
            cluster_name=self.gateway.cluster_name,
            heartbeat_period=max(0.0, float(heartbeat_period)),
            adaptive_period=float(adaptive_period),
            idle_timeout=max(0.0, float(idle_timeout)),
        )
        self.service = SchedulerService(scheduler, config)
        self.service._adapt_history = collections.deque(maxlen=max(1, int(adaptive_window)))
        self.service.target_duration = target_duration
        self._start_task: asyncio.Future | None = None
        self._stop_task: asyncio.Future | None = None

    @property
    def port(self) -> int | None:
        """The port of the API the gateway sends scale/adapt to (once listening)."""
        return self.service.api_port

    @property
    def api_address(self) -> str:
        return self.service.api_address

    @property
    def dashboard_address(self) -> str:
        return self.service.dashboard_address

    @property
    def count(self) -> int:
        return self.service.count

    async def scale(self, count: int) -> None:
        """Ask for ``count`` workers (turns adaptive scaling off)."""
        self.service.scale(count)

    async def adapt(
        self, minimum: int | None = None, maximum: int | None = None, active: bool = True
    ) -> None:
        """Scale with the load between ``minimum`` and ``maximum``; ``active=False`` stops."""
        self.service.adapt(minimum=minimum, maximum=maximum, active=active)

    async def heartbeat(self) -> None:
        """Report to the gateway now (the service also does so periodically)."""
        await self.service.send_heartbeat()

    def listen(self, address: tuple[str, int]) -> None:
        """Serve the API on ``(ip, port)`` ("" = every interface) and start reporting."""
        ip, port = address
        host = f"[{ip}]" if ":" in (ip or "") else (ip or "")
        self.service.config.api_address = f"{host}:{int(port)}"
        # Called by the scheduler while it starts, on its running loop.
        self._start_task = asyncio.ensure_future(self.service.start())
        self._start_task.add_done_callback(_log_failure("start"))

    def stop(self) -> asyncio.Future:
        """Stop reporting and close the API; distributed calls this without awaiting."""
        if self._stop_task is None:
            if self._start_task is not None and not self._start_task.done():
                self._start_task.cancel()
            self._stop_task = asyncio.ensure_future(self.service.stop())
            self._stop_task.add_done_callback(_log_failure("stop"))
        return self._stop_task


def _log_failure(what: str) -> Callable[[asyncio.Future], None]:
    def callback(task: asyncio.Future) -> None:
        if not task.cancelled() and task.exception() is not None:
            logger.error(
                "dask-gateway: the scheduler service failed to %s", what, exc_info=task.exception()
            )

    return callback
