"""The cluster dashboard, relayed through this Jupyter server.

``<base_url>dask-gateway/dashboard/<cluster>/<path>`` forwards to the gateway's own dashboard
proxy (``<gateway address>/clusters/<cluster>/<path>``), HTTP and WebSockets (Bokeh's live
plots). The gateway asks for credentials like the REST API does; they are added here, with
the client's auth object, so they never reach the browser. The browser's cookies (its Jupyter
session) are never forwarded, and the gateway's cookies are kept here.
"""
from __future__ import annotations

import asyncio
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from jupyter_core.utils import ensure_async
from jupyter_server.auth.decorator import authorized, ws_authenticated
from jupyter_server.base.handlers import JupyterHandler
from jupyter_server.base.websocket import WebSocketMixin
from jupyter_server.utils import url_path_join
from tornado import httputil, web, websocket
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest, HTTPResponse

from .errors import RouteError, translate_error

#: Response headers worth passing from the dashboard to the browser.
_PASS_HEADERS = ("Content-Type", "Cache-Control", "ETag", "Last-Modified", "Expires",
                 "Content-Disposition")
#: Request headers worth passing from the browser to the dashboard.
_FORWARD_HEADERS = ("Accept", "Accept-Language", "User-Agent")


class DashboardRelay:
    """Sends dashboard requests to the gateway with the user's gateway credentials."""

    def __init__(self, manager: Any):
        self.manager = manager
        self.cookies: dict[str, str] = {}
        self._client: AsyncHTTPClient | None = None

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
            url = "ws" + url[len("http"):]  # http -> ws, https -> wss
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
        resp = None
        for attempt in range(2):
            extra = dict(headers)
            if attempt:
                auth_headers, context = auth.pre_request(resp)
                extra.update(auth_headers)
            request = HTTPRequest(url, method=method, headers=self._headers(extra),
                                  follow_redirects=False, connect_timeout=10,
                                  request_timeout=120)
            resp = await self.client.fetch(request, raise_error=False)
            self._remember_cookies(resp.headers)
            if resp.code != 401:
                if attempt and resp.code < 400:
                    auth.post_response(resp, context)
                break
        return resp

    async def connect(self, url: str, subprotocols: list[str]
                      ) -> websocket.WebSocketClientConnection:
        """Open the dashboard's websocket, authenticating on a 401 like ``fetch``."""
        auth = self.manager.gateway().auth
        extra: dict[str, str] = {}
        for attempt in range(2):
            request = HTTPRequest(url, headers=self._headers(extra), connect_timeout=10,
                                  request_timeout=30)
            try:
                return await websocket.websocket_connect(
                    request, subprotocols=subprotocols or None,
                    max_message_size=256 * 1024 * 1024)
            except HTTPClientError as e:
                if e.code != 401 or attempt or e.response is None:
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
    def relay(self) -> DashboardRelay:
        return self.settings["dask_gateway_manager"].dashboards

    @web.authenticated
    @authorized
    async def get(self, name: str, path: str | None = None) -> None:
        await self._proxy(name, path)

    @web.authenticated
    @authorized
    async def head(self, name: str, path: str | None = None) -> None:
        await self._proxy(name, path)

    def _error(self, status: int, message: str) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(message)

    async def _proxy(self, name: str, path: str | None) -> None:
        if path is None:
            # Dashboard pages use relative URLs: they need the trailing slash.
            query = self.request.query
            self.redirect(_public_base(self, name) + "/" + ("?" + query if query else ""))
            return
        try:
            url = self.relay.target(name, path, self.request.query)
            headers = {k: self.request.headers[k] for k in _FORWARD_HEADERS
                       if k in self.request.headers}
            resp = await self.relay.fetch(url, self.request.method, headers)
        except Exception as e:  # noqa: BLE001 - reported to the browser below
            err = translate_error(e, self.settings["dask_gateway_manager"].address)
            if err is None:
                raise
            self._error(err.status, err.message)
            return
        if resp.code == 599:
            err = translate_error(resp.error or RouteError(502, "no response"),
                                  self.settings["dask_gateway_manager"].address)
            self._error(err.status if err else 502, err.message if err else "Bad gateway")
            return
        self.set_status(resp.code, resp.reason)
        for key in _PASS_HEADERS:
            if key in resp.headers:
                self.set_header(key, resp.headers[key])
        location = resp.headers.get("Location")
        if location and 300 <= resp.code < 400:
            self.set_header("Location", self._rewrite_location(name, location))
        if self.request.method == "HEAD" or resp.code == 304:
            self.finish()
        else:
            self.finish(resp.body or b"")

    def _rewrite_location(self, name: str, location: str) -> str:
        """Map the gateway's ``/clusters/<name>/...`` redirects onto our path."""
        target = urlsplit(self.relay.target(name, "", ""))
        loc = urlsplit(location)
        if loc.netloc and loc.netloc != target.netloc:
            return location
        if not loc.netloc and not location.startswith("/"):
            return location  # relative: resolves under our path already
        base = target.path.rstrip("/")
        if loc.path == base or loc.path.startswith(base + "/"):
            path = _public_base(self, name) + loc.path[len(base):]
            return urlunsplit(("", "", path, loc.query, loc.fragment))
        return location


class DashboardWebSocketHandler(WebSocketMixin, websocket.WebSocketHandler, JupyterHandler):
    """The dashboard's websockets (``.../ws``), relayed message by message."""

    auth_resource = "dask_gateway"
    upstream: websocket.WebSocketClientConnection | None = None

    def set_default_headers(self) -> None:
        """No JupyterHandler headers on a websocket upgrade."""

    @property
    def relay(self) -> DashboardRelay:
        return self.settings["dask_gateway_manager"].dashboards

    @ws_authenticated
    async def get(self, name: str, path: str) -> None:
        allowed = await ensure_async(
            self.authorizer.is_authorized(self, self.current_user, "read", self.auth_resource))
        if not allowed:
            raise web.HTTPError(403)
        protocols = [p.strip() for p in
                     self.request.headers.get("Sec-WebSocket-Protocol", "").split(",")
                     if p.strip()]
        url = self.relay.target(name, path, self.request.query, scheme="ws")
        try:
            self.upstream = await self.relay.connect(url, protocols)
        except HTTPClientError as e:
            self.log.warning("Dashboard websocket %s failed: %s", url, e)
            status = e.code if 400 <= e.code < 500 else 502
            raise web.HTTPError(status, f"Cannot open the dashboard websocket: {e}") from None
        except Exception as e:  # noqa: BLE001 - a failed upgrade is all we can report
            self.log.warning("Dashboard websocket %s failed: %s", url, e)
            raise web.HTTPError(502, f"Cannot open the dashboard websocket: {e}") from None
        await super().get(name, path)

    def select_subprotocol(self, subprotocols: list[str]) -> str | None:
        chosen = self.upstream.selected_subprotocol if self.upstream else None
        return chosen if chosen in subprotocols else None

    def open(self, name: str, path: str) -> None:  # type: ignore[override]
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
