"""The reverse proxy to clusters' dashboards (HTTP and websockets), and what keeps the
owner's dashboard from acting as its viewer: filtered headers, a sandboxing CSP, grant
paths, and the dashboard key only the gateway sends."""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit, urlunsplit

from tornado import httputil, web, websocket
from tornado.http1connection import HTTP1Connection
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.iostream import StreamClosedError
from tornado.simple_httpclient import SimpleAsyncHTTPClient

from ..logs import about

__all__ = [
    "DASHBOARD_CSP",
    "DASHBOARD_KEY_HEADER",
    "GRANT_MARK",
    "DashboardAccessHook",
    "DashboardGrants",
    "DashboardProxyHandler",
    "DashboardSource",
]

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

#: ``check_dashboard_access(handler, cluster_name)``: a bool or an awaitable of one.
DashboardAccessHook = Callable[[web.RequestHandler, str], Awaitable[bool] | bool]


class DashboardGrants:
    """Short-lived grants, each opening one cluster's dashboard (see ``GRANT_MARK``)."""

    def __init__(self) -> None:
        #: grant -> (cluster, idle deadline, hard deadline), oldest first
        self._grants: OrderedDict[str, tuple[str, float, float]] = OrderedDict()

    def issue(self, cluster_name: str) -> str:
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

    def check(self, grant: str, cluster_name: str) -> bool:
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

    def forget(self, cluster_name: str) -> None:
        """Drop every grant to ``cluster_name`` (its routes are gone)."""
        for grant in [g for g, v in self._grants.items() if v[0] == cluster_name]:
            del self._grants[grant]


class DashboardSource(Protocol):
    """What the handler needs of the proxy serving it (``core.Proxy``): named here so that
    this module does not import core."""

    @property
    def log(self) -> logging.Logger: ...
    @property
    def prefix(self) -> str: ...
    @property
    def connect_timeout(self) -> float: ...
    @property
    def check_dashboard_access(self) -> DashboardAccessHook | None: ...
    @property
    def grants(self) -> DashboardGrants: ...
    @property
    def http_client(self) -> SimpleAsyncHTTPClient | None:
        """The client for plain HTTP to dashboards (None until started)."""

    @property
    def websockets(self) -> set[DashboardProxyHandler]:
        """The open websockets (closed by the proxy's stop())."""

    def get_dashboard_target(self, name: str) -> str | None: ...
    def get_dashboard_key(self, name: str) -> str | None: ...


@web.stream_request_body
class DashboardProxyHandler(websocket.WebSocketHandler):
    """Reverse-proxy ``{prefix}/clusters/{name}/...`` to the cluster's dashboard.

    One handler does both plain HTTP (streamed both ways, redirects passed
    through) and WebSockets (Bokeh's live plots need them). It subclasses
    WebSocketHandler so an upgrade request can be accepted in place.
    """

    SUPPORTED_METHODS = ("GET", "HEAD", "POST", "DELETE", "PATCH", "PUT", "OPTIONS")

    def initialize(self, proxy: DashboardSource) -> None:
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
            if not self.proxy.grants.check(grant, name):
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
                grant = self.proxy.grants.issue(name)
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
        client = self.proxy.http_client
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
            # tornado's hint says write returns None and the producer a Future; in fact
            # write returns a Future and tornado awaits any awaitable the producer returns.
            body_producer=body_producer,  # type: ignore[arg-type]
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
            await self.data_received(None)  # end of body
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
            elif isinstance(self.request.connection, HTTP1Connection):
                self.request.connection.close()  # the answer has begun: cut it short
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
        self.proxy.websockets.add(self)
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
        self.proxy.websockets.discard(self)
        if self._upstream_ws is not None:
            code = self.close_code
            if code is None or code in (1005, 1006, 1015):
                self._upstream_ws.close()
            else:
                self._upstream_ws.close(code, self.close_reason)
