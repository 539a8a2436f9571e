"""Who is calling? Authenticators turn a request into a ``User``.

Like JupyterHub's: small traitlets-configurable plugin classes. The base class keeps a
session cookie cache, so a busy client is authenticated once, not on every request.
"""
from __future__ import annotations

import base64
import binascii
import hmac
import time
import uuid

from traitlets import Integer, Unicode
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

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._sessions: dict[str, tuple[User, float]] = {}

    async def setup(self) -> None:
        """Start anything the authenticator needs (clients, caches)."""

    async def cleanup(self) -> None:
        """Release what ``setup`` acquired."""

    async def authenticate(self, request) -> User:
        """Return the user who sent ``request`` or raise ``AuthError``."""
        raise NotImplementedError

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

    def new_session(self, user: User) -> str:
        now = time.monotonic()
        if len(self._sessions) >= self.cache_max_size:
            self._sessions = {k: v for k, v in self._sessions.items() if v[1] > now}
            while len(self._sessions) >= self.cache_max_size:
                self._sessions.pop(next(iter(self._sessions)))
        value = uuid.uuid4().hex
        self._sessions[value] = (user, now + self.cache_max_age)
        return value


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
        if self.password is not None and not hmac.compare_digest(
            password.encode(), self.password.encode()
        ):
            raise AuthError(401, "Invalid password", "Basic")
        return User(_check_username(username))


class KerberosAuthenticator(Authenticator):
    """Kerberos (SPNEGO) auth; needs the ``pykerberos`` package and a keytab."""

    service_name = Unicode("HTTP", help="The Kerberos service name.", config=True)
    keytab = Unicode("dask_gateway.keytab", help="Path to the service keytab.", config=True)

    async def setup(self) -> None:
        import os

        try:
            import kerberos  # noqa: F401
        except ImportError:
            raise RuntimeError(
                "KerberosAuthenticator needs the 'pykerberos' package installed"
            ) from None
        os.environ["KRB5_KTNAME"] = self.keytab

    async def authenticate(self, request) -> User:
        import kerberos

        header = request.headers.get("Authorization", "")
        kind, _, token = header.partition(" ")
        if kind.lower() != "negotiate" or not token:
            raise AuthError(401, "Authentication required", "Negotiate")
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
        request.auth_response_headers = {"WWW-Authenticate": f"Negotiate {response}"}
        return User(principal.split("@", 1)[0])
