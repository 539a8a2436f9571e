"""HTTP plumbing of the client: tornado requests, the session cookie and the 401 dance.

The gateway sets a session cookie after a successful authentication, so most requests
carry only that cookie; credentials are computed (which can be costly, e.g. Kerberos)
only when the server answers 401.
"""

from __future__ import annotations

import asyncio
import email.utils
import socket
import time
import urllib.request
import warnings
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import unquote, urlparse

from tornado.httpclient import AsyncHTTPClient, HTTPRequest, HTTPResponse
from tornado.netutil import Resolver

from .auth import GatewayAuth

__all__ = ["CookieJar", "HTTPClient", "proxy_settings"]

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


def _curl_available() -> bool:
    try:
        import pycurl  # noqa: F401
    except ImportError:
        return False
    return True


def proxy_settings(address: str, setting: Any) -> dict[str, Any]:
    """Tornado ``HTTPRequest`` proxy arguments for requests to ``address``.

    ``setting`` is config ``gateway.http-client.proxy``: true = from the environment
    (``HTTP(S)_PROXY``, honouring ``NO_PROXY``), false/None = none, or a proxy URL.
    """
    if setting is True:
        proxies = urllib.request.getproxies_environment()
        parsed = urlparse(address)
        url = proxies.get(parsed.scheme)
        if not url or urllib.request.proxy_bypass_environment(parsed.hostname or "", proxies):
            return {}
    elif not setting:
        return {}
    elif isinstance(setting, str):
        url = setting
    else:
        raise TypeError(f"gateway.http-client.proxy must be a bool or a URL, got {setting!r}")
    if "://" not in url:
        url = "http://" + url
    proxy = urlparse(url)
    if not proxy.hostname:
        raise ValueError(f"Invalid HTTP proxy URL {url!r}")
    out: dict[str, Any] = {
        "proxy_host": proxy.hostname,
        "proxy_port": proxy.port or (443 if proxy.scheme == "https" else 80),
    }
    if proxy.username:
        out["proxy_username"] = unquote(proxy.username)
        out["proxy_password"] = unquote(proxy.password or "")
    if _curl_available():
        return out
    if setting is not True:
        # Only tornado's curl client speaks HTTP proxies.
        raise RuntimeError(
            "gateway.http-client.proxy is set, but HTTP proxies need tornado's curl "
            "client: install pycurl (`pip install pycurl`)"
        )
    # A proxy merely found in the environment is often not needed for an internal
    # gateway, so do not make it fatal.
    warnings.warn(
        "Ignoring the HTTP proxy from the environment for dask-gateway requests "
        "because pycurl is not installed; install pycurl, or set "
        "gateway.http-client.proxy to false to silence this warning",
        RuntimeWarning,
        stacklevel=3,
    )
    return {}


class _Resolver(Resolver):
    """Host lookup that also works while the interpreter exits.

    Clusters left open are stopped from an atexit hook, but by then thread pools
    refuse new work, and tornado's default resolver needs one. Numeric hosts need no
    lookup at all; other names use the loop's pool, or resolve inline at exit.
    """

    async def resolve(
        self, host: str, port: int, family: socket.AddressFamily = socket.AF_UNSPEC
    ) -> list[tuple[int, Any]]:
        try:
            infos = socket.getaddrinfo(
                host, port, family, socket.SOCK_STREAM,
                flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
            )
        except socket.gaierror:
            loop = asyncio.get_running_loop()
            try:
                infos = await loop.getaddrinfo(host, port, family=family, type=socket.SOCK_STREAM)
            except RuntimeError:  # "cannot schedule new futures after shutdown"
                infos = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)
        return [(fam, addr) for fam, _, _, _, addr in infos]


class HTTPClient:
    """Sends requests to one gateway with cookie handling and the 401 auth retry.

    Must be created and used on the event loop that runs the requests.
    """

    def __init__(self, auth: GatewayAuth, proxy: dict[str, Any]):
        self.auth = auth
        self.cookies = CookieJar()
        self._proxy = proxy
        if proxy:
            # Only tornado's curl client supports HTTP proxies.
            from tornado.curl_httpclient import CurlAsyncHTTPClient

            self._client: AsyncHTTPClient = CurlAsyncHTTPClient(force_instance=True)
        else:
            self._client = AsyncHTTPClient(force_instance=True, resolver=_Resolver())

    async def _send(
        self, method: str, url: str, body: bytes | None, headers: dict[str, str], timeout: float
    ) -> HTTPResponse:
        headers = dict(headers)
        cookie = self.cookies.header_for(url)
        if cookie:
            headers["Cookie"] = cookie
        if body is not None:
            headers["Content-Type"] = "application/json"
        request = HTTPRequest(
            url,
            method=method,
            headers=headers,
            body=body if body is not None else (b"" if method in ("POST", "PUT") else None),
            connect_timeout=CONNECT_TIMEOUT,
            request_timeout=timeout,
            follow_redirects=False,
            **self._proxy,
        )
        # raise_error=False still raises when there is no HTTP response at all.
        response = await self._client.fetch(request, raise_error=False)
        self.cookies.update(url, response.headers.get_list("Set-Cookie"))
        return response

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

    def close(self) -> None:
        self._client.close()
