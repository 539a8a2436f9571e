"""HTTP plumbing of the client: pooled requests, the session cookie and the 401 dance.

Requests go through one aiohttp session per gateway, so connections are kept alive: a
``list_clusters()`` costs a fifth of the CPU of a new tornado connection per request.
The gateway sets a session cookie after a successful authentication, so most requests
carry only that cookie; credentials are computed (which can be costly, e.g. Kerberos)
only when the server answers 401. Responses are handed on as tornado ``HTTPResponse``
objects, the type the auth hooks and errors have always seen.
"""

from __future__ import annotations

import asyncio
import email.utils
import io
import socket
import time
import urllib.request
import weakref
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import unquote, urlparse

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from tornado.httpclient import HTTPClientError, HTTPRequest, HTTPResponse
from tornado.httputil import HTTPHeaders

__all__ = ["CookieJar", "HTTPClient", "proxy_settings"]

#: Sent with every request: the gateway accepts a write authenticated by the session cookie
#: only with this header, which no other web page can make a browser send (CSRF).
CLIENT_HEADER = "X-Dask-Gateway-Client"

CONNECT_TIMEOUT = 20
# Long enough for `GET /api/v1/clusters/{name}?wait`, which the server holds up to 20 s.
REQUEST_TIMEOUT = 120


@dataclass
class _Cookie:
    value: str
    domain: str  # host the cookie came from, or its Domain attribute
    host_only: bool
    path: str
    secure: bool
    expires: float | None  # time.time() deadline

    def matches(self, host: str, path: str, scheme: str, now: float) -> bool:
        if self.expires is not None and now >= self.expires:
            return False
        if self.secure and scheme != "https":
            return False
        if self.host_only:
            if host != self.domain:
                return False
        elif host != self.domain and not host.endswith("." + self.domain):
            return False
        return path == self.path or path.startswith(self.path.rstrip("/") + "/")


class CookieJar:
    """A small RFC 6265-style cookie store.

    Unlike the stdlib jar it happily keeps cookies for IP-address hosts such as
    ``127.0.0.1``, which is how gateways are commonly reached in tests and on-prem.
    """

    def __init__(self) -> None:
        self._cookies: dict[tuple[str, str, str], _Cookie] = {}

    def update(self, url: str, set_cookie_headers: list[str]) -> None:
        """Store (or delete, when expired) the cookies of a response to ``url``."""
        parsed = urlparse(url)
        host = (parsed.hostname or "").lower()
        now = time.time()
        for header in set_cookie_headers:
            try:
                morsels = SimpleCookie(header)
            except CookieError:
                continue
            for name, morsel in morsels.items():
                domain = morsel["domain"].lstrip(".").lower()
                path = morsel["path"] or "/"
                expires = None
                if morsel["max-age"]:
                    expires = now + int(morsel["max-age"])
                elif morsel["expires"]:
                    parsed_date = email.utils.parsedate_to_datetime(morsel["expires"])
                    expires = parsed_date.timestamp()
                cookie = _Cookie(
                    value=morsel.value,
                    domain=domain or host,
                    host_only=not domain,
                    path=path,
                    secure=bool(morsel["secure"]),
                    expires=expires,
                )
                key = (cookie.domain, path, name)
                if expires is not None and expires <= now:
                    self._cookies.pop(key, None)
                else:
                    self._cookies[key] = cookie

    def header_for(self, url: str) -> str | None:
        """The ``Cookie`` header value to send with a request to ``url``, if any."""
        parsed = urlparse(url)
        host = (parsed.hostname or "").lower()
        path = unquote(parsed.path) or "/"
        now = time.time()
        pairs = [
            f"{name}={cookie.value}"
            for (_, _, name), cookie in self._cookies.items()
            if cookie.matches(host, path, parsed.scheme, now)
        ]
        return "; ".join(pairs) or None

    def __len__(self) -> int:
        return len(self._cookies)


def proxy_settings(address: str, setting: Any) -> str | None:
    """The HTTP proxy URL for requests to ``address``, or None to connect directly.

    ``setting`` is config ``gateway.http-client.proxy``: true = from the environment
    (``HTTP(S)_PROXY``, honouring ``NO_PROXY``), false/None = none, or a proxy URL.
    """
    if setting is True:
        proxies = urllib.request.getproxies_environment()
        parsed = urlparse(address)
        url = proxies.get(parsed.scheme)
        # proxy_bypass reads NO_PROXY, from the same environment proxies come from.
        if not url or urllib.request.proxy_bypass(parsed.hostname or ""):
            return None
    elif not setting:
        return None
    elif isinstance(setting, str):
        url = setting
    else:
        raise TypeError(f"gateway.http-client.proxy must be a bool or a URL, got {setting!r}")
    if "://" not in url:
        url = "http://" + url
    if not urlparse(url).hostname:
        raise ValueError(f"Invalid HTTP proxy URL {url!r}")
    return url


class _Resolver(AbstractResolver):
    """Host lookup that also works while the interpreter exits.

    Clusters left open are stopped from an atexit hook, but by then thread pools
    refuse new work, and the usual lookup needs one. Numeric hosts need no lookup at
    all; other names use the loop's pool, or resolve inline at exit.
    """

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        try:
            infos = socket.getaddrinfo(
                host,
                port,
                family,
                socket.SOCK_STREAM,
                flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
            )
        except socket.gaierror:
            loop = asyncio.get_running_loop()
            try:
                infos = await loop.getaddrinfo(host, port, family=family, type=socket.SOCK_STREAM)
            except RuntimeError:  # "cannot schedule new futures after shutdown"
                infos = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)
        results = []
        for fam, _, proto, _, addr in infos:
            ip, ip_port = addr[0], addr[1]
            if not isinstance(ip, str) or not isinstance(ip_port, int):
                continue  # not an IP address (getaddrinfo of a stream host gives only those)
            results.append(
                ResolveResult(
                    hostname=host,
                    host=ip,
                    port=ip_port,
                    family=fam,
                    proto=proto,
                    flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
                )
            )
        return results

    async def close(self) -> None:
        pass


def _close_connector(connector: aiohttp.TCPConnector) -> None:
    """Close without an event loop. ``close()`` is a coroutine that nobody could await here;
    its synchronous part is ``_close()`` (aiohttp 3.x), which closes the connections."""
    if connector.closed:
        return
    try:
        close_now = getattr(connector, "_close", None)
        if close_now is not None:
            close_now()
    except Exception:
        pass


class HTTPClient:
    """Sends requests to one gateway with cookie handling and the 401 auth retry.

    Must be created and used on the event loop that runs the requests.
    """

    def __init__(self, auth: Any, proxy: str | None):
        self.auth = auth
        self.cookies = CookieJar()
        self._proxy = proxy
        self._session: aiohttp.ClientSession | None = None
        self._connector: aiohttp.TCPConnector | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._connector = aiohttp.TCPConnector(resolver=_Resolver(), limit=0)
            self._session = aiohttp.ClientSession(
                connector=self._connector,
                connector_owner=False,
                cookie_jar=aiohttp.DummyCookieJar(),  # ours keeps cookies of IP hosts
            )
            # A Gateway never closed (common in notebooks) must not print "Unclosed client
            # session" at exit. Weakref callbacks run before any __del__, also in cycles.
            weakref.finalize(self, _close_connector, self._connector)
        return self._session

    async def _send(
        self, method: str, url: str, body: bytes | None, headers: dict[str, str], timeout: float
    ) -> HTTPResponse:
        headers = dict(headers)
        headers[CLIENT_HEADER] = "1"
        cookie = self.cookies.header_for(url)
        if cookie:
            headers["Cookie"] = cookie
        if body is not None:
            headers["Content-Type"] = "application/json"
        elif method in ("POST", "PUT"):
            body = b""
        request = HTTPRequest(url, method=method, headers=headers)
        try:
            async with self._get_session().request(
                method,
                url,
                data=body,
                headers=headers,
                proxy=self._proxy,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=timeout, connect=CONNECT_TIMEOUT),
            ) as resp:
                content = await resp.read()
        except aiohttp.ClientConnectorError as e:
            # The plain OS error (ConnectionRefusedError, gaierror ...) users know.
            raise e.os_error from e
        except asyncio.TimeoutError:
            raise HTTPClientError(599, f"Timeout during request to {url}") from None
        except aiohttp.ClientError as e:
            raise HTTPClientError(599, f"{type(e).__name__} during request to {url}: {e}") from e
        response_headers = HTTPHeaders()
        for name, value in resp.headers.items():
            response_headers.add(name, value)
        self.cookies.update(url, response_headers.get_list("Set-Cookie"))
        return HTTPResponse(
            request,
            resp.status,
            headers=response_headers,
            buffer=io.BytesIO(content),
            effective_url=str(resp.url),
            reason=resp.reason,
        )

    async def fetch(
        self, method: str, url: str, body: bytes | None = None, timeout: float = REQUEST_TIMEOUT
    ) -> HTTPResponse:
        """Send a request; on 401 add the auth's credentials and send it once more."""
        response = await self._send(method, url, body, {}, timeout)
        if response.code == 401:
            headers, context = self.auth.pre_request(response)
            response = await self._send(method, url, body, headers, timeout)
            if response.code < 400:
                self.auth.post_response(response, context)
        return response

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._connector is not None:
            await self._connector.close()
            self._connector = None
