"""The cluster dashboard, relayed through this Jupyter server.

``<base_url>dask-gateway/dashboard/<cluster>/<path>`` forwards to the gateway's own dashboard
proxy (``<gateway address>/clusters/<cluster>/<path>``), HTTP and WebSockets (Bokeh's live
plots). The gateway asks for credentials like the REST API does; they are added here, with
the client's auth object, so they never reach the browser. The browser's cookies (its Jupyter
session) are never forwarded, and the gateway's cookies are kept here.

The dashboard is the cluster owner's code, and this is the Jupyter server's origin: pages are
served sandboxed (``DASHBOARD_SANDBOX``), so their scripts run with an opaque origin and cannot
act on this server as the viewer. A sandboxed page's own requests carry no cookie, so a page
load (Jupyter-authenticated) is redirected under a short-lived grant for that one cluster,
``.../dashboard/<cluster>/~<grant>/<path>``, which is what authenticates the page's scripts,
styles and websockets.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import OrderedDict
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from jupyter_core.utils import ensure_async
from jupyter_server.auth.decorator import allow_unauthenticated, authorized
from jupyter_server.base.handlers import JupyterHandler
from jupyter_server.base.websocket import WebSocketMixin
from jupyter_server.utils import url_path_join
from tornado import httputil, web, websocket
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest, HTTPResponse

from .errors import RouteError, translate_error

#: Response headers worth passing from the dashboard to the browser.
_PASS_HEADERS = (
    "Content-Type",
    "Cache-Control",
    "ETag",
    "Last-Modified",
    "Expires",
    "Content-Disposition",
)
#: Request headers worth passing from the browser to the dashboard (not Accept: the gateway
#: would take this server for a browser loading a page, and answer with its own grant).
_FORWARD_HEADERS = ("Accept-Language", "User-Agent")
#: What a dashboard page may do here: run scripts (bokeh), but with an opaque origin.
DASHBOARD_SANDBOX = "sandbox allow-scripts allow-forms allow-popups allow-downloads allow-modals"
GRANT_MARK = "~"
_GRANT_IDLE = 3600.0
_GRANT_MAX = 12 * 3600.0
_GRANT_MAX_COUNT = 1000


def without_token(query: str) -> str:
    """The query without Jupyter's ``token`` (a link may carry it): it never goes further."""
    if "token" not in query:
        return query
    return urlencode([(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k != "token"])


def split_grant(path: str) -> tuple[str | None, str]:
    """``"~g/status"`` -> ``("g", "status")``; a path without a grant -> ``(None, path)``."""
    if not path.startswith(GRANT_MARK):
        return None, path
    grant, _, rest = path[len(GRANT_MARK) :].partition("/")
    return grant, rest


def is_page_load(request: httputil.HTTPServerRequest) -> bool:
    """A browser loading a page or a frame (not a script's request)."""
    if request.method != "GET" or request.headers.get("Upgrade", "").lower() == "websocket":
        return False
    dest = request.headers.get("Sec-Fetch-Dest")
    if dest is not None:
        return dest in ("document", "iframe", "frame", "embed", "object")
    return "text/html" in request.headers.get("Accept", "")


class DashboardRelay:
    """Sends dashboard requests to the gateway with the user's gateway credentials."""

    def __init__(self, manager: Any):
        self.manager = manager
        self.cookies: dict[str, str] = {}
        self._client: AsyncHTTPClient | None = None
        #: grant -> (cluster, idle deadline, hard deadline), oldest first
        self._grants: OrderedDict[str, tuple[str, float, float]] = OrderedDict()

    def grant(self, name: str) -> str:
        """A new grant to cluster ``name``'s dashboard, for a viewer Jupyter let in."""
        now = time.monotonic()
        while self._grants:
            oldest, (_, idle, hard) = next(iter(self._grants.items()))
            if len(self._grants) < _GRANT_MAX_COUNT and min(idle, hard) > now:
                break
            del self._grants[oldest]
        grant = secrets.token_urlsafe(24)
        self._grants[grant] = (name, now + _GRANT_IDLE, now + _GRANT_MAX)
        return grant

    def check_grant(self, grant: str, name: str) -> bool:
        entry = self._grants.get(grant)
        now = time.monotonic()
        if entry is None or entry[0] != name:
            return False
        if min(entry[1], entry[2]) <= now:
            del self._grants[grant]
            return False
        self._grants[grant] = (name, now + _GRANT_IDLE, entry[2])
        return True

    @property
    def client(self) -> AsyncHTTPClient:
        if self._client is None:
            self._client = AsyncHTTPClient(force_instance=True)
        return self._client

    def target(self, name: str, path: str, query: str, scheme: str = "http") -> str:
        address = self.manager.gateway().address
        url = f"{address}/clusters/{quote(name, safe='')}/{quote(path, safe='/')}"
        if query:
            url += "?" + query
        if scheme == "ws":
            url = "ws" + url[len("http") :]  # http -> ws, https -> wss
        return url

    def _headers(self, extra: dict[str, str] | None = None) -> httputil.HTTPHeaders:
        headers = httputil.HTTPHeaders(extra or {})
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        return headers

    def _remember_cookies(self, headers: httputil.HTTPHeaders) -> None:
        for line in headers.get_list("Set-Cookie"):
            try:
                jar = SimpleCookie(line)
            except CookieError:
                continue
            for key, morsel in jar.items():
                self.cookies[key] = morsel.value

    async def fetch(self, url: str, method: str, headers: dict[str, str]) -> HTTPResponse:
        """GET/HEAD ``url``; on a 401, authenticate as the client would and retry once."""
        auth = self.manager.gateway().auth
        context = None
        resp: HTTPResponse | None = None
        for attempt in range(2):
            extra = dict(headers)
            if attempt:
                auth_headers, context = auth.pre_request(resp)
                extra.update(auth_headers)
            request = HTTPRequest(
                url,
                method=method,
                headers=self._headers(extra),
                follow_redirects=False,
                connect_timeout=10,
                request_timeout=120,
            )
            resp = await self.client.fetch(request, raise_error=False)
            if attempt:
                # The gateway's session, started by our credentials (what a dashboard may
                # set is not kept: it would come back to the gateway with our requests).
                self._remember_cookies(resp.headers)
            if resp.code != 401 or "WWW-Authenticate" not in resp.headers:
                if attempt and resp.code < 400:
                    auth.post_response(resp, context)
                break
        assert resp is not None  # the loop ran at least once
        return resp

    async def connect(
        self, url: str, subprotocols: list[str]
    ) -> websocket.WebSocketClientConnection:
        """Open the dashboard's websocket, authenticating on a 401 like ``fetch``."""
        auth = self.manager.gateway().auth
        extra: dict[str, str] = {}
        for attempt in range(2):
            request = HTTPRequest(
                url, headers=self._headers(extra), connect_timeout=10, request_timeout=30
            )
            try:
                return await websocket.websocket_connect(
                    request, subprotocols=subprotocols or None, max_message_size=256 * 1024 * 1024
                )
            except HTTPClientError as e:
                if (
                    e.code != 401
                    or attempt
                    or e.response is None
                    or "WWW-Authenticate" not in e.response.headers
                ):
                    raise
                extra, _ = auth.pre_request(e.response)
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def _public_base(handler: JupyterHandler, name: str) -> str:
    return url_path_join(handler.base_url, "dask-gateway", "dashboard", quote(name, safe=""))


class DashboardHandler(JupyterHandler):
    """Plain HTTP of the dashboard (pages, scripts, JSON)."""

    auth_resource = "dask_gateway"

    @property
    def content_security_policy(self) -> str:
        return super().content_security_policy + "; " + DASHBOARD_SANDBOX

    def set_default_headers(self) -> None:
        super().set_default_headers()
        self.set_header("Referrer-Policy", "no-referrer")  # grants stay in this server

    @property
    def relay(self) -> DashboardRelay:
        return self.settings["dask_gateway_manager"].dashboards

    @allow_unauthenticated  # a grant, or Jupyter's own auth in _authorized_get
    async def get(self, name: str, path: str | None = None) -> None:
        await self._dispatch(name, path)

    @allow_unauthenticated
    async def head(self, name: str, path: str | None = None) -> None:
        await self._dispatch(name, path)

    async def _dispatch(self, name: str, path: str | None) -> None:
        grant, rest = split_grant(path or "")
        if grant is None:
            # tornado's @web.authenticated redirects a visitor without a login to it and
            # returns None then, not a coroutine.
            pending = self._authorized_get(name, path)
            if pending is not None:
                await pending
            return
        base = url_path_join(_public_base(self, name), GRANT_MARK + grant)
        if not self.relay.check_grant(grant, name):
            if is_page_load(self.request):  # through Jupyter's auth again, for a new grant
                query = without_token(self.request.query)
                self.redirect(
                    _public_base(self, name) + "/" + rest + ("?" + query if query else "")
                )
            else:
                self._error(
                    403,
                    f"This link to the dashboard of cluster {name} has "
                    "expired: reload the dashboard",
                )
            return
        await self._proxy(name, rest, base)

    @web.authenticated
    @authorized
    async def _authorized_get(self, name: str, path: str | None) -> None:
        if path is None:
            # Dashboard pages use relative URLs: they need the trailing slash.
            query = without_token(self.request.query)
            self.redirect(_public_base(self, name) + "/" + ("?" + query if query else ""))
            return
        if is_page_load(self.request):
            query = without_token(self.request.query)
            grant = self.relay.grant(name)
            self.redirect(
                url_path_join(_public_base(self, name), GRANT_MARK + grant, path)
                + ("?" + query if query else "")
            )
            return
        await self._proxy(name, path, _public_base(self, name))

    def _error(self, status: int, message: str) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(message)

    async def _proxy(self, name: str, path: str, base: str) -> None:
        try:
            url = self.relay.target(name, path, without_token(self.request.query))
            headers = {
                k: self.request.headers[k] for k in _FORWARD_HEADERS if k in self.request.headers
            }
            resp = await self.relay.fetch(url, self.request.method, headers)
        except Exception as e:
            err = translate_error(e, self.settings["dask_gateway_manager"].address)
            if err is None:
                raise
            self._error(err.status, err.message)
            return
        if resp.code == 599:
            err = translate_error(
                resp.error or RouteError(502, "no response"),
                self.settings["dask_gateway_manager"].address,
            )
            self._error(err.status if err else 502, err.message if err else "Bad gateway")
            return
        self.set_status(resp.code, resp.reason)
        for key in _PASS_HEADERS:
            if key in resp.headers:
                self.set_header(key, resp.headers[key])
        location = resp.headers.get("Location")
        if location and 300 <= resp.code < 400:
            self.set_header("Location", self._rewrite_location(name, location, base))
        if self.request.method == "HEAD" or resp.code == 304:
            self.finish()
        else:
            self.finish(resp.body or b"")

    def _rewrite_location(self, name: str, location: str, public: str) -> str:
        """Map the gateway's ``/clusters/<name>/...`` redirects onto our path ``public``."""
        target = urlsplit(self.relay.target(name, "", ""))
        loc = urlsplit(location)
        if loc.netloc and loc.netloc != target.netloc:
            return location
        if not loc.netloc and not location.startswith("/"):
            return location  # relative: resolves under our path already
        base = target.path.rstrip("/")
        if loc.path == base or loc.path.startswith(base + "/"):
            path = public + loc.path[len(base) :]
            return urlunsplit(("", "", path, loc.query, loc.fragment))
        return location


class DashboardWebSocketHandler(WebSocketMixin, websocket.WebSocketHandler, JupyterHandler):
    """The dashboard's websockets (``.../ws``), relayed message by message."""

    auth_resource = "dask_gateway"
    upstream: websocket.WebSocketClientConnection | None = None
    _granted = False

    def set_default_headers(self) -> None:
        """No JupyterHandler headers on a websocket upgrade."""

    def check_origin(self, origin: str | None = None) -> bool:
        # A grant is the credential (no cookie), and a sandboxed page's Origin is "null".
        return True if self._granted else super().check_origin(origin)

    @property
    def relay(self) -> DashboardRelay:
        return self.settings["dask_gateway_manager"].dashboards

    @allow_unauthenticated  # a grant, or Jupyter's own auth below
    async def get(self, name: str, path: str) -> None:
        grant, path = split_grant(path)
        if grant is not None:
            if not self.relay.check_grant(grant, name):
                raise web.HTTPError(403, "This dashboard link has expired: reload it")
            self._granted = True
        else:
            if self.current_user is None:
                self.log.warning("Couldn't authenticate the dashboard's WebSocket")
                raise web.HTTPError(403)
            allowed = await ensure_async(
                self.authorizer.is_authorized(self, self.current_user, "read", self.auth_resource)
            )
            if not allowed:
                raise web.HTTPError(403)
        protocols = [
            p.strip()
            for p in self.request.headers.get("Sec-WebSocket-Protocol", "").split(",")
            if p.strip()
        ]
        url = self.relay.target(name, path, without_token(self.request.query), scheme="ws")
        try:
            self.upstream = await self.relay.connect(url, protocols)
        except HTTPClientError as e:
            self.log.warning("Dashboard websocket %s failed: %s", url, e)
            status = e.code if 400 <= e.code < 500 else 502
            raise web.HTTPError(status, f"Cannot open the dashboard websocket: {e}") from None
        except Exception as e:
            self.log.warning("Dashboard websocket %s failed: %s", url, e)
            raise web.HTTPError(502, f"Cannot open the dashboard websocket: {e}") from None
        await super().get(name, path)

    def select_subprotocol(self, subprotocols: list[str]) -> str | None:
        chosen = self.upstream.selected_subprotocol if self.upstream else None
        return chosen if chosen in subprotocols else None

    def open(self, name: str, path: str) -> None:
        super().open()
        self._relay_task = asyncio.ensure_future(self._relay_from_dashboard())

    async def _relay_from_dashboard(self) -> None:
        upstream = self.upstream
        assert upstream is not None
        while True:
            message = await upstream.read_message()
            if message is None:
                self.close()
                return
            try:
                await self.write_message(message, binary=isinstance(message, bytes))
            except websocket.WebSocketClosedError:
                upstream.close()
                return

    async def on_message(self, message: str | bytes) -> None:
        if self.upstream is None:
            return
        try:
            await self.upstream.write_message(message, binary=isinstance(message, bytes))
        except websocket.WebSocketClosedError:
            self.close()

    def on_close(self) -> None:
        if self.upstream is not None:
            self.upstream.close()
