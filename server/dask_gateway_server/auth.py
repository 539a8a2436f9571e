"""Who is calling? Authenticators turn a request into a ``User``.

Like JupyterHub's: small traitlets-configurable plugin classes. The base class keeps a
session cookie cache, so a busy client is authenticated once, not on every request.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import itertools
import json
import os
import ssl
import time
import uuid
from collections import OrderedDict
from typing import Any
from urllib.parse import urlencode

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from traitlets import Bool, Float, Integer, Set, Unicode, default
from traitlets.config import LoggingConfigurable

from .models import User


class AuthError(Exception):
    """A request that cannot be authenticated: becomes a JSON error with this status."""

    def __init__(self, status: int, message: str, challenge: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.challenge = challenge


class Authenticator(LoggingConfigurable):
    """Base class: subclasses implement ``authenticate(request) -> User``."""

    cookie_name = Unicode(
        "dask-gateway-session",
        help="Name of the session cookie the gateway sets after a successful login.",
        config=True,
    )
    cache_max_age = Integer(
        300,
        help="Seconds a successful authentication is remembered for its session cookie.",
        config=True,
    )
    cache_max_size = Integer(10000, help="Most sessions remembered at once.", config=True)
    login_max_age = Integer(
        8 * 3600,
        help="Seconds a browser login lasts: a login with the web console's form; a hub "
        "login's session is renewed (its token checked with the hub again every "
        "cache_max_age) for up to this long. Logging out ends either at once.",
        config=True,
    )
    admin_users = Set(
        Unicode(), help="Users who may see and stop every user's clusters.", config=True
    )
    admin_groups = Set(
        Unicode(),
        help="Members of these groups are admins (groups come from JupyterHub).",
        config=True,
    )

    def make_user(self, name: str, groups=(), admin: bool = False) -> User:
        """A User, with admin rights from the identity provider or from this config."""
        groups = frozenset(groups)
        admin = admin or name in self.admin_users or bool(groups & self.admin_groups)
        return User(name, groups, admin)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._sessions: dict[str, tuple[User, float]] = {}
        #: session -> (the credential it was started with, until when it may renew it)
        self._renewals: OrderedDict[str, tuple[str, float]] = OrderedDict()

    async def setup(self) -> None:
        """Start anything the authenticator needs (clients, caches)."""

    async def cleanup(self) -> None:
        """Release what ``setup`` acquired."""

    async def authenticate(self, request) -> User:
        """Return the user who sent ``request`` or raise ``AuthError``."""
        raise NotImplementedError

    def has_browser_login(self) -> bool:
        """Whether a browser without credentials is sent to ``login_url`` (else a 401)."""
        return False

    def login_url(self, request, next_url: str, redirect_uri: str, binding: str) -> str | None:
        """Where to send a browser that has no credentials (None: answer 401 instead).
        ``binding`` is a secret of that browser's (a cookie); ``complete_login`` must get
        the same one back."""
        return None

    async def complete_login(self, request, redirect_uri: str, binding: str) -> tuple[User, str]:
        """Finish a browser login started at ``login_url`` in the browser holding
        ``binding``: the user and where to go next."""
        raise AuthError(404, "This gateway has no browser login")

    def has_password_login(self) -> bool:
        """Whether the web console shows a login form (user name and password) whose answer
        ``check_password`` judges."""
        return False

    async def check_password(self, name: str, password: str) -> User | None:
        """The user ``name`` if ``password`` is theirs, else None (never raises for wrong
        credentials: the login form answers them all alike)."""
        return None

    # -- session cache ---------------------------------------------------
    def user_from_cookie(self, value: str | None) -> User | None:
        if not value:
            return None
        entry = self._sessions.get(value)
        if entry is None:
            return None
        user, expiry = entry
        if expiry < time.monotonic():
            del self._sessions[value]
            return None
        return user

    def new_session(
        self, user: User, max_age: float | None = None, renewal: str | None = None
    ) -> str:
        """A new session cookie value for ``user``, good for ``max_age`` seconds (default
        ``cache_max_age``). With ``renewal`` (the credential a browser login got), the
        session is renewed when its time runs out, for up to ``login_max_age``, as long as
        ``check_renewal`` still accepts the credential."""
        now = time.monotonic()
        if len(self._sessions) >= self.cache_max_size:
            self._make_room(now)
        value = uuid.uuid4().hex
        self._sessions[value] = (user, now + (self.cache_max_age if max_age is None else max_age))
        if renewal is not None:
            self._renewals[value] = (renewal, now + self.login_max_age)
            while len(self._renewals) > self.cache_max_size:
                self._renewals.popitem(last=False)
        return value

    def _make_room(self, now: float) -> None:
        """The cache is full: drop the expired sessions, then the oldest down to nine tenths
        of ``cache_max_size``. Going through every session once per tenth of the cache
        filled, not once per login: a client that sends its credentials with every request
        (and never the cookie) makes a session each time, and must not cost each login a
        pass over thousands."""
        self._sessions = {k: v for k, v in self._sessions.items() if v[1] > now}
        excess = len(self._sessions) - self.cache_max_size * 9 // 10
        if excess > 0:
            for key in list(itertools.islice(self._sessions, excess)):
                del self._sessions[key]

    async def renew_session(self, value: str | None) -> User | None:
        """The user of a session whose time ran out, if it was started with a credential
        (``new_session(renewal=...)``) that ``check_renewal`` still accepts: the session
        goes on for another ``cache_max_age``. None otherwise (a revoked credential ends it)."""
        entry = self._renewals.get(value or "")
        if value is None or entry is None:
            return None
        credential, deadline = entry
        if deadline < time.monotonic():
            self._renewals.pop(value, None)
            return None
        try:
            user = await self.check_renewal(credential)
        except AuthError as e:
            if e.status in (401, 403):  # no longer valid: the session ends
                self._renewals.pop(value, None)
            return None
        if value in self._renewals:  # not logged out meanwhile
            self._sessions[value] = (user, time.monotonic() + self.cache_max_age)
        return user

    async def check_renewal(self, credential: str) -> User:
        """The user ``credential`` (kept by ``new_session(renewal=...)``) still stands for,
        or AuthError."""
        raise AuthError(401, "This session cannot be renewed")

    def end_session(self, value: str | None) -> None:
        """Forget a session (logout): its cookie no longer authenticates anything."""
        if value:
            self._sessions.pop(value, None)
            self._renewals.pop(value, None)


def _check_username(name: str) -> str:
    if not name:
        raise AuthError(401, "Username must not be empty", "Basic")
    if len(name) > 255 or any(ord(c) < 32 or c in "/\\" for c in name):
        raise AuthError(401, f"Invalid username {name!r}", "Basic")
    return name


class SimpleAuthenticator(Authenticator):
    """HTTP Basic auth: any user name, and optionally one shared password.

    For trusted networks and testing; use JupyterHub or Kerberos auth in production.
    """

    password = Unicode(
        None,
        allow_none=True,
        help="A shared password every user must give. None accepts any password.",
        config=True,
    )

    async def authenticate(self, request) -> User:
        header = request.headers.get("Authorization", "")
        kind, _, data = header.partition(" ")
        if kind.lower() != "basic":
            raise AuthError(401, "Authentication required", "Basic")
        try:
            raw = base64.b64decode(data.strip(), validate=True)
        except binascii.Error:
            raise AuthError(401, "Malformed Basic credentials", "Basic") from None
        try:
            decoded = raw.decode("utf-8")
        except UnicodeDecodeError:
            decoded = raw.decode("latin-1")  # what the public client sends
        username, _, password = decoded.partition(":")
        if not self._password_ok(password):
            raise AuthError(401, "Invalid password", "Basic")
        return self.make_user(_check_username(username))

    def _password_ok(self, password: str) -> bool:
        return self.password is None or hmac.compare_digest(
            password.encode(), self.password.encode()
        )

    def has_password_login(self) -> bool:
        return True

    async def check_password(self, name: str, password: str) -> User | None:
        if not self._password_ok(password):
            return None
        try:
            return self.make_user(_check_username(name))
        except AuthError:
            return None


def krb5_default_realm() -> str:
    """``default_realm`` of the host's Kerberos configuration (KRB5_CONFIG, else
    /etc/krb5.conf), or empty."""
    for path in os.environ.get("KRB5_CONFIG", "/etc/krb5.conf").split(":"):
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                lines = f.read().splitlines()
        except OSError:
            continue
        section = ""
        for line in lines:
            line = line.strip()
            if line.startswith("[") and line.endswith("]"):
                section = line[1:-1].strip()
            elif section == "libdefaults" and "=" in line:
                key, _, value = line.partition("=")
                if key.strip() == "default_realm" and value.strip():
                    return value.strip()
    return ""


class KerberosAuthenticator(Authenticator):
    """Kerberos (SPNEGO) auth; needs the ``pykerberos`` package and a keytab.

    A principal ``name@REALM`` is the user ``name``, for ``realm`` only: a principal of another
    realm (one the KDC trusts), or with an instance (``name/admin``), is refused.
    """

    service_name = Unicode("HTTP", help="The Kerberos service name.", config=True)
    keytab = Unicode("dask_gateway.keytab", help="Path to the service keytab.", config=True)
    realm = Unicode(
        help="The realm whose principals are users (user@REALM is the user 'user'); others "
        "are refused with a 403. Default: the host's default realm (default_realm in "
        "krb5.conf).",
        config=True,
    )

    @default("realm")
    def _default_realm(self) -> str:
        return krb5_default_realm()

    async def setup(self) -> None:
        try:
            import kerberos  # noqa: F401  (fail early, with a clear message)
        except ImportError:
            raise RuntimeError(
                "KerberosAuthenticator needs the 'pykerberos' package installed"
            ) from None
        if not self.realm:
            raise RuntimeError(
                "KerberosAuthenticator.realm is not set and the Kerberos configuration names "
                "no default_realm: set it to the realm whose users may log in"
            )
        os.environ["KRB5_KTNAME"] = self.keytab

    async def authenticate(self, request) -> User:
        header = request.headers.get("Authorization", "")
        kind, _, token = header.partition(" ")
        if kind.lower() != "negotiate" or not token:
            raise AuthError(401, "Authentication required", "Negotiate")
        # GSSAPI calls block (keytab reads, replay cache): keep them off the event loop.
        loop = asyncio.get_running_loop()
        principal, response = await loop.run_in_executor(None, self._accept, token)
        request.auth_response_headers = {"WWW-Authenticate": f"Negotiate {response}"}
        return self.make_user(self._user_name(principal))

    def _user_name(self, principal: str) -> str:
        """``name`` of ``name@REALM`` if REALM is ours; otherwise a 403 (alice@OTHER.REALM
        is not our alice, and alice/admin is not a user)."""
        name, at, realm = principal.rpartition("@")
        if not at or realm != self.realm:
            raise AuthError(
                403,
                f"Kerberos principal {principal!r} is not of realm "
                f"{self.realm}: only that realm's users may use this gateway",
            )
        if not name or "/" in name or any(ord(c) < 32 or c == "\\" for c in name):
            raise AuthError(403, f"Kerberos principal {principal!r} is not a user's")
        return name

    def _accept(self, token: str) -> tuple[str, str]:
        import kerberos

        try:
            rc, ctx = kerberos.authGSSServerInit(self.service_name)
            if rc != kerberos.AUTH_GSS_COMPLETE:
                raise AuthError(401, "Kerberos initialization failed", "Negotiate")
            rc = kerberos.authGSSServerStep(ctx, token.strip())
            if rc != kerberos.AUTH_GSS_COMPLETE:
                raise AuthError(401, "Kerberos negotiation incomplete", "Negotiate")
            principal = kerberos.authGSSServerUserName(ctx)
            response = kerberos.authGSSServerResponse(ctx)
            kerberos.authGSSServerClean(ctx)
        except kerberos.GSSError as e:
            raise AuthError(401, f"Kerberos authentication failed: {e}", "Negotiate") from None
        return principal, response


class JupyterHubAuthenticator(Authenticator):
    """Users of a JupyterHub, by their API tokens (``Authorization: jupyterhub <token>``).

    The gateway runs as a hub service; each token is checked with the hub (``GET /user`` as
    that user) and the answer cached for ``token_cache_ttl`` seconds, so a revoked token stops
    working within that time and a busy user does not hit the hub on every request.
    """

    jupyterhub_api_url = Unicode(
        help="The hub's API URL, e.g. http://127.0.0.1:8081/hub/api (env JUPYTERHUB_API_URL).",
        config=True,
    )
    jupyterhub_api_token = Unicode(
        help="Accepted for old config files; tokens are checked as the user, so it is unused.",
        config=True,
    )
    jupyterhub_service_name = Unicode(
        help="This service's name in the hub (env JUPYTERHUB_SERVICE_NAME).", config=True
    )
    use_service_access_scopes = Bool(
        help="Require the token to grant access to this service (access:services).",
        config=True,
    )
    tls_key = Unicode("", help="Client key for TLS to the hub.", config=True)
    tls_cert = Unicode("", help="Client certificate for TLS to the hub.", config=True)
    tls_ca = Unicode("", help="CA bundle to verify the hub's certificate.", config=True)
    token_cache_ttl = Float(
        60, help="Seconds a token check is trusted before asking the hub again.", config=True
    )
    jupyterhub_public_url = Unicode(
        help="The hub's URL as browsers see it, e.g. https://hub.example.org/hub/ (env "
        "JUPYTERHUB_PUBLIC_HUB_URL; default: jupyterhub_api_url without 'api').",
        config=True,
    )
    oauth_client_id = Unicode(
        help="OAuth client id of this service in the hub (default service-<service name>).",
        config=True,
    )
    oauth_redirect_uri = Unicode(
        "",
        help="Where the hub sends browsers back, as registered for this service in the hub "
        "(e.g. https://gateway.example.org/oauth_callback). Empty: the scheme and Host of "
        "the request (X-Forwarded-* headers are not trusted: set this behind a proxy that "
        "ends HTTPS).",
        config=True,
    )
    oauth_client_secret = Unicode(
        help="OAuth client secret: the service's API token in the hub (default "
        "jupyterhub_api_token). Empty: browsers get a 401 instead of a hub login.",
        config=True,
    )
    hub_timeout = Float(10, help="Seconds to wait for the hub to answer.", config=True)

    @default("cache_max_age")
    def _default_cache_max_age(self) -> int:
        # The session cookie must not outlive a revoked token for longer than the cache.
        return max(1, int(self.token_cache_ttl))

    @default("jupyterhub_api_url")
    def _default_api_url(self) -> str:
        return os.environ.get("JUPYTERHUB_API_URL", "")

    @default("jupyterhub_api_token")
    def _default_api_token(self) -> str:
        return os.environ.get("JUPYTERHUB_API_TOKEN", "")

    @default("jupyterhub_service_name")
    def _default_service_name(self) -> str:
        return os.environ.get("JUPYTERHUB_SERVICE_NAME", "")

    @default("use_service_access_scopes")
    def _default_use_scopes(self) -> bool:
        return bool(self.jupyterhub_service_name)

    @default("jupyterhub_public_url")
    def _default_public_url(self) -> str:
        env = os.environ.get("JUPYTERHUB_PUBLIC_HUB_URL", "")
        if env:
            return env
        api = self.jupyterhub_api_url.rstrip("/")
        return api[: -len("api")] if api.endswith("/api") else api + "/"

    @default("oauth_client_id")
    def _default_client_id(self) -> str:
        return f"service-{self.jupyterhub_service_name}" if self.jupyterhub_service_name else ""

    @default("oauth_client_secret")
    def _default_client_secret(self) -> str:
        return self.jupyterhub_api_token

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._tokens: OrderedDict[str, tuple[User, float]] = OrderedDict()
        #: OAuth state -> (next URL, deadline, the browser's binding)
        self._logins: OrderedDict[str, tuple[str, float, str]] = OrderedDict()

    # -- browser login through the hub's OAuth ---------------------------------
    def has_browser_login(self) -> bool:
        return bool(self.oauth_client_id and self.oauth_client_secret)

    def login_url(self, request, next_url: str, redirect_uri: str, binding: str) -> str | None:
        if not self.has_browser_login() or not binding:
            return None
        state = uuid.uuid4().hex
        self._logins[state] = (next_url, time.monotonic() + 600, binding)
        while len(self._logins) > self.cache_max_size:
            self._logins.popitem(last=False)
        query = urlencode(
            {
                "client_id": self.oauth_client_id,
                "redirect_uri": redirect_uri,
                "response_type": "code",
                "state": state,
            }
        )
        return f"{self.jupyterhub_public_url.rstrip('/')}/api/oauth2/authorize?{query}"

    async def complete_login(self, request, redirect_uri: str, binding: str) -> tuple[User, str]:
        args = {k: v[0].decode(errors="replace") for k, v in request.query_arguments.items() if v}
        state = args.get("state", "")
        entry = self._logins.get(state)
        if entry is None or entry[1] < time.monotonic():
            self._logins.pop(state, None)
            raise AuthError(400, "Unknown or expired login: start again from the dashboard")
        if not binding or not hmac.compare_digest(entry[2].encode(), binding.encode()):
            # Not the browser that started this login: someone else's callback link.
            raise AuthError(
                400, "This login was started in another browser: start again from the dashboard"
            )
        del self._logins[state]
        if "code" not in args:
            raise AuthError(400, f"The hub refused the login: {args.get('error', 'no code')}")
        body = urlencode(
            {
                "client_id": self.oauth_client_id,
                "client_secret": self.oauth_client_secret,
                "grant_type": "authorization_code",
                "code": args["code"],
                "redirect_uri": redirect_uri,
            }
        )
        req = HTTPRequest(
            self.jupyterhub_api_url.rstrip("/") + "/oauth2/token",
            method="POST",
            body=body,
            request_timeout=self.hub_timeout,
            ssl_options=self._ssl,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        try:
            resp = await self._http.fetch(req)
            token = json.loads(resp.body)["access_token"]
        except HTTPClientError as e:
            raise AuthError(401, f"The hub did not accept the login ({e.code})") from None
        except (OSError, ValueError, KeyError) as e:
            raise AuthError(503, f"JupyterHub is unreachable: {e}") from None
        user = await self._user_of_token(token)
        # The session this login starts is renewed with this token (checked with the hub
        # again each time, so a revoked token ends it), not asked again every few seconds.
        request.session_renewal = token
        return user, entry[0]

    async def setup(self) -> None:
        if not self.jupyterhub_api_url:
            raise ValueError(
                "JupyterHubAuthenticator needs the hub's API URL: set "
                "c.JupyterHubAuthenticator.jupyterhub_api_url or JUPYTERHUB_API_URL"
            )
        if not self.use_service_access_scopes:
            self.log.warning(
                "JupyterHubAuthenticator accepts any valid hub token: set "
                "jupyterhub_service_name to require access to this service"
            )
        self._http = AsyncHTTPClient()
        self._ssl = None
        if self.tls_ca or self.tls_cert:
            ctx = ssl.create_default_context(cafile=self.tls_ca or None)
            if self.tls_cert:
                ctx.load_cert_chain(self.tls_cert, self.tls_key or None)
            self._ssl = ctx

    async def authenticate(self, request) -> User:
        header = request.headers.get("Authorization", "")
        kind, _, token = header.partition(" ")
        token = token.strip()
        if kind.lower() not in ("jupyterhub", "token", "bearer") or not token:
            raise AuthError(401, "Authentication required", "jupyterhub")
        return await self._user_of_token(token)

    async def check_renewal(self, credential: str) -> User:
        return await self._user_of_token(credential)

    async def _user_of_token(self, token: str) -> User:
        """The hub's user of ``token``, remembered for ``token_cache_ttl`` seconds."""
        key = hashlib.sha256(token.encode()).hexdigest()
        cached = self._tokens.get(key)
        now = time.monotonic()
        if cached is not None and cached[1] > now:
            return cached[0]
        user = await self._ask_hub(token)
        self._tokens[key] = (user, now + self.token_cache_ttl)
        self._tokens.move_to_end(key)
        while len(self._tokens) > self.cache_max_size:
            self._tokens.popitem(last=False)
        return user

    async def _ask_hub(self, token: str) -> User:
        url = self.jupyterhub_api_url.rstrip("/") + "/user"
        req = HTTPRequest(
            url,
            headers={"Authorization": f"token {token}"},
            request_timeout=self.hub_timeout,
            connect_timeout=self.hub_timeout,
            ssl_options=self._ssl,
        )
        try:
            resp = await self._http.fetch(req)
        except HTTPClientError as e:
            if e.code in (401, 403, 404):
                raise AuthError(
                    401, "Invalid, expired or revoked JupyterHub token", "jupyterhub"
                ) from None
            if e.code == 599:
                raise AuthError(503, f"JupyterHub is unreachable: {e.message}") from None
            raise AuthError(502, f"JupyterHub answered {e.code} while checking the token") from None
        except (OSError, ssl.SSLError) as e:
            raise AuthError(503, f"JupyterHub is unreachable: {e}") from None
        try:
            model = json.loads(resp.body)
            name, kind = model["name"], model.get("kind", "user")
        except (ValueError, KeyError, TypeError):
            raise AuthError(502, "JupyterHub sent an unreadable user model") from None
        if self.use_service_access_scopes:
            scopes = set(model.get("scopes", []))
            wanted = {"access:services", f"access:services!service={self.jupyterhub_service_name}"}
            if not scopes & wanted:
                raise AuthError(
                    401,
                    f"This token does not grant access to the "
                    f"{self.jupyterhub_service_name!r} service",
                    "jupyterhub",
                )
        if kind != "user" or ":" in name:
            name = f"{kind}:{name}"
        return self.make_user(name, model.get("groups") or (), bool(model.get("admin")))
