"""Authentication schemes the client can answer a gateway's 401 challenge with.

Requests are first sent with only the session cookie; credentials are produced only
when the server answers 401 (see ``GatewayAuth.pre_request``). The response objects
passed to the hooks are ``tornado.httpclient.HTTPResponse`` instances that also answer
the aiohttp attributes the public client's hooks see (``AuthResponse``).
"""

from __future__ import annotations

import base64
import getpass
import importlib
import io
import os
import re
from typing import Any
from urllib.parse import urlparse

import dask.config
from tornado.httpclient import HTTPResponse

from .config import format_template

__all__ = [
    "AuthResponse",
    "BasicAuth",
    "GatewayAuth",
    "JupyterHubAuth",
    "KerberosAuth",
    "get_auth",
]


class AuthResponse(HTTPResponse):
    """The response handed to auth hooks: a tornado ``HTTPResponse`` that also has the
    ``status`` and ``url`` of an aiohttp ``ClientResponse`` (what the public client passes),
    so hooks written for either client work with both."""

    @classmethod
    def wrap(cls, resp: HTTPResponse) -> AuthResponse:
        if isinstance(resp, cls):
            return resp
        return cls(
            resp.request,
            resp.code,
            headers=resp.headers,
            buffer=io.BytesIO(resp.body),
            effective_url=resp.effective_url,
            reason=resp.reason,
        )

    @property
    def status(self) -> int:
        """The HTTP status (aiohttp's name for ``code``)."""
        return self.code

    @property
    def url(self) -> Any:
        """The URL as a ``yarl.URL`` (``url.host``, ``url.port``), as aiohttp gives it."""
        import yarl  # a dependency of aiohttp

        return yarl.URL(self.effective_url or self.request.url)


class _AuthHooks:
    """What the HTTP layer calls: the user's auth, fed ``AuthResponse`` objects."""

    def __init__(self, auth: GatewayAuth):
        self.auth = auth

    def pre_request(self, resp: HTTPResponse) -> tuple[dict[str, str], Any]:
        return self.auth.pre_request(AuthResponse.wrap(resp))

    def post_response(self, resp: HTTPResponse, context: Any = None) -> None:
        self.auth.post_response(AuthResponse.wrap(resp), context)


class GatewayAuth:
    """Base class of authentication schemes.

    Subclasses override ``pre_request`` to add credentials after a 401, and optionally
    ``post_response`` to check the server's answer (e.g. mutual authentication). The
    constructor takes (and ignores) any keyword arguments, as the public client's does,
    so ``super().__init__(**kwargs)`` and config ``gateway.auth.kwargs`` always work.

    ``resp`` is a ``tornado.httpclient.HTTPResponse`` (``code``, ``headers``,
    ``effective_url``, ``body``) that also answers the attributes hooks written for the
    public client use on its aiohttp responses: ``status`` and ``url`` (``url.host``).
    """

    def __init__(self, **kwargs: Any) -> None:
        pass

    def pre_request(self, resp: HTTPResponse) -> tuple[dict[str, str], Any]:
        """Return ``(headers, context)`` for re-sending a request answered with 401."""
        return {}, None

    def post_response(self, resp: HTTPResponse, context: Any = None) -> None:
        """Inspect the successful response to the re-sent request."""


class BasicAuth(GatewayAuth):
    """HTTP Basic auth; by default the local user name and an empty password."""

    def __init__(self, username: str | None = None, password: str | None = None):
        self.username = getpass.getuser() if username is None else username
        self.password = "" if password is None else password

    def pre_request(self, resp: HTTPResponse) -> tuple[dict[str, str], Any]:
        raw = f"{self.username}:{self.password}".encode("latin-1")
        return {"Authorization": "Basic " + base64.b64encode(raw).decode("ascii")}, None


class JupyterHubAuth(GatewayAuth):
    """Authenticate with a JupyterHub API token (``$JUPYTERHUB_API_TOKEN`` by default)."""

    def __init__(self, api_token: str | None = None):
        if api_token is None:
            api_token = os.environ.get("JUPYTERHUB_API_TOKEN")
        if not api_token:
            raise ValueError(
                "No JupyterHub API token provided; pass `api_token=...` or set "
                "the JUPYTERHUB_API_TOKEN environment variable"
            )
        self.api_token = api_token

    def pre_request(self, resp: HTTPResponse) -> tuple[dict[str, str], Any]:
        return {"Authorization": "jupyterhub " + self.api_token}, None


def _import_kerberos() -> Any:
    """pykerberos (winkerberos on Windows) is optional: import it only when used."""
    name = "winkerberos" if os.name == "nt" else "kerberos"
    try:
        return importlib.import_module(name)
    except ImportError:
        package = "winkerberos" if os.name == "nt" else "pykerberos"
        raise ImportError(
            f"KerberosAuth requires the {package!r} package; install it with "
            f"`pip install {package}` (or `conda install -c conda-forge {package}`)"
        ) from None


_NEGOTIATE_RE = re.compile(r"(?:^|,\s*)Negotiate\s+([^,\s]+)", re.IGNORECASE)


class KerberosAuth(GatewayAuth):
    """SPNEGO (``Negotiate``) auth with the user's Kerberos ticket, mutually verified.

    pykerberos is imported when the gateway first asks for credentials, so that creating
    a ``Gateway`` (e.g. with a session cookie, or to read config) works without it.
    Keyword arguments (from config ``gateway.auth.kwargs``) are accepted and ignored.
    """

    #: Finds the server's token in a ``WWW-Authenticate`` header (group 1).
    auth_regex = _NEGOTIATE_RE

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._kerberos: Any = None

    def _krb(self) -> Any:
        if self._kerberos is None:
            self._kerberos = _import_kerberos()
        return self._kerberos

    def pre_request(self, resp: HTTPResponse) -> tuple[dict[str, str], Any]:
        krb = self._krb()
        host = urlparse(resp.effective_url or resp.request.url).hostname
        _, context = krb.authGSSClientInit(
            f"HTTP@{host}", gssflags=krb.GSS_C_MUTUAL_FLAG | krb.GSS_C_SEQUENCE_FLAG
        )
        krb.authGSSClientStep(context, "")
        token = krb.authGSSClientResponse(context)
        return {"Authorization": "Negotiate " + token}, context

    def post_response(self, resp: HTTPResponse, context: Any = None) -> None:
        krb = self._krb()
        try:
            match = self.auth_regex.search(resp.headers.get("WWW-Authenticate", ""))
            if match is None:
                raise ValueError("Kerberos negotiation failed: the server sent no token")
            krb.authGSSClientStep(context, match.group(1))
        finally:
            krb.authGSSClientClean(context)


_AUTH_TYPES: dict[str, type[GatewayAuth]] = {
    "basic": BasicAuth,
    "kerberos": KerberosAuth,
    "jupyterhub": JupyterHubAuth,
}


def _import_class(path: str) -> Any:
    module_name, _, attr = path.rpartition(".")
    if not module_name:
        raise ImportError(
            f"Unknown auth type {path!r}; expected one of {sorted(_AUTH_TYPES)} "
            "or an import path like 'mypackage.MyAuth'"
        )
    module = importlib.import_module(module_name)
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ImportError(f"Module {module_name!r} has no attribute {attr!r}") from None


def get_auth(auth: GatewayAuth | str | type | None = None) -> GatewayAuth:
    """Resolve ``auth`` (an instance, a name, an import path or a class) to an instance.

    ``None`` means config ``gateway.auth.type``. Names and classes are instantiated
    with config ``gateway.auth.kwargs`` (environment templates filled in).
    """
    if isinstance(auth, GatewayAuth):
        return auth
    if auth is None:
        auth = dask.config.get("gateway.auth.type")
    if isinstance(auth, str):
        auth = _AUTH_TYPES.get(auth.lower()) or _import_class(auth)
    if not callable(auth):
        raise TypeError(f"Unknown auth value {auth!r}")
    kwargs = format_template(dask.config.get("gateway.auth.kwargs", None) or {})
    out = auth(**kwargs)
    if not isinstance(out, GatewayAuth):
        raise TypeError(f"auth must produce a GatewayAuth instance, got {out!r}")
    return out
