"""What every API handler shares: JSON errors, who is calling (session cookie or the
authenticator), refusal of cross-site writes, and the request log's view of a URI."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any, overload
from urllib.parse import urlsplit

from tornado import web

from ..auth import Authenticator, AuthError
from ..limits import UserLimits
from ..logs import cluster_in_path
from ..models import Cluster, User
from ..reconciler import Reconciler
from ..store import StoreUnavailable


class APIError(web.HTTPError):
    """An error whose message is meant for the client."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(status)
        self.message = message
        self.headers = headers or {}


class BaseHandler(web.RequestHandler):
    #: "user": the authenticator; "cluster": a cluster's token; "none".
    auth_kind = "user"

    @property
    def authenticator(self) -> Authenticator:
        return self.settings["authenticator"]

    @property
    def reconciler(self) -> Reconciler:
        return self.settings["reconciler"]

    @property
    def backend(self):
        return self.settings["backend"]

    @property
    def limits(self) -> UserLimits:
        return self.settings["limits"]

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json")

    def compute_etag(self) -> None:
        """No ETags: API answers change all the time, and hashing every body costs more
        than the rare 304 saves."""
        return None

    def check_xsrf_cookie(self) -> None:
        """API clients authenticate with headers, not ambient cookies alone."""

    async def prepare(self) -> None:
        if self.request.method not in _SAFE_METHODS:
            refuse_cross_site(self)
        if self.auth_kind == "user":
            self.current_user = await self.authenticate()

    async def authenticate(self) -> User:
        return await authenticate_handler(self)

    @overload
    def int_query(self, name: str, default: int, low: int, high: int | None = None) -> int: ...
    @overload
    def int_query(
        self, name: str, default: None, low: int, high: int | None = None
    ) -> int | None: ...
    def int_query(
        self, name: str, default: int | None, low: int, high: int | None = None
    ) -> int | None:
        """The integer query argument ``name`` within [low, high] (no ``high``: no upper
        bound), or ``default`` when absent; 400 naming it otherwise."""
        value = self.get_query_argument(name, None)
        if value is None:
            return default
        try:
            number = int(value)
        except ValueError:
            raise APIError(400, f"{name} must be an integer, got {value!r}") from None
        if number < low or (high is not None and number > high):
            bounds = f"between {low} and {high}" if high is not None else f">= {low}"
            raise APIError(400, f"{name} must be {bounds}, got {number}")
        return number

    def json_body(self) -> Any:
        if not self.request.body:
            return {}
        try:
            return json.loads(self.request.body)
        except (ValueError, UnicodeDecodeError):
            raise APIError(400, "Request body must be valid JSON") from None
        except RecursionError:  # the decoder's limit, not a bug of ours
            raise APIError(400, "Request body is nested too deeply") from None

    def write_json(self, data: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(json.dumps(data))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, StoreUnavailable):
            # A passing fault of the database, not a bug: the client may retry.
            self.set_status(503)
            self.set_header("Retry-After", "5")
            message = str(exc)
        elif isinstance(exc, APIError):
            message = exc.message
            for k, v in exc.headers.items():
                self.set_header(k, v)
        elif isinstance(exc, web.HTTPError):
            message = exc.log_message or self._reason
        else:
            message = "Internal server error, see the gateway log"
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"error": message}))

    def log_exception(self, typ, value, tb) -> None:
        """Tornado's report of a request that failed, in the gateway's log and with the
        cluster it is about (HTTP errors are answers: the request line says them)."""
        if isinstance(value, StoreUnavailable):  # logged once by the store; no traceback
            self.settings["log"].info(
                "%s %s: 503, database unavailable",
                self.request.method,
                self.request.path,
                extra=cluster_in_path(self.request.path),
            )
            return
        if isinstance(value, web.HTTPError):
            return super().log_exception(typ, value, tb)
        self.settings["log"].error(
            "Uncaught exception in %s %s",
            self.request.method,
            loggable_uri(self.request),
            exc_info=(typ, value, tb),
            extra=cluster_in_path(self.request.path),
        )

    def get_cluster(self, name: str, action: str = "view") -> Cluster:
        cluster = self.reconciler.clusters.get(name)
        if cluster is None:
            raise APIError(404, f"Cluster {name} not found")
        if not self.current_user.can_access(cluster):
            raise APIError(
                403, f"User {self.current_user.name} lacks permissions to {action} cluster {name}"
            )
        return cluster


#: The header our client sends on every request. A browser sends it only from a script of
#: this origin (any other origin would need a CORS preflight, which the gateway never allows),
#: so a cookie with it is the caller's own: cookie-authenticated writes require it.
CLIENT_HEADER = "X-Dask-Gateway-Client"
_SAFE_METHODS = frozenset(("GET", "HEAD", "OPTIONS"))


def refuse_cross_site(handler: web.RequestHandler) -> None:
    """A write sent by a browser from another site (or from a sandboxed dashboard) is
    refused, whatever credentials the browser attached (HTTP auth it remembers is as
    ambient as a cookie). Clients other than browsers send neither header."""
    headers = handler.request.headers
    site = headers.get("Sec-Fetch-Site")
    origin = headers.get("Origin")
    foreign = site in ("cross-site", "same-site")
    if origin is not None and not foreign:
        host = urlsplit(origin).netloc if "://" in origin else ""
        foreign = host.lower() != (handler.request.host or "").lower()
    if foreign:
        raise APIError(403, "Cross-site requests may not change anything on this gateway")


def _cookie_path(handler: web.RequestHandler) -> str:
    """Cookies belong to the gateway's base path, not to every app on its host (behind a
    hub, the users' own servers are under the same origin)."""
    return handler.settings["prefix"] or "/"


def is_https(handler: web.RequestHandler) -> bool:
    return handler.request.protocol == "https"


def set_session_cookie(
    handler: web.RequestHandler,
    user: User,
    max_age: float | None = None,
    renewal: str | None = None,
) -> None:
    """Start a session for ``user`` (``max_age`` seconds; default the authenticator's
    ``cache_max_age``; with ``renewal``, renewed up to ``login_max_age``) and give the
    browser its cookie."""
    auth: Authenticator = handler.settings["authenticator"]
    if max_age is not None:
        lifetime = max_age
    elif renewal is not None:
        lifetime = max(auth.login_max_age, 2 * auth.cache_max_age)
    else:
        lifetime = 2 * auth.cache_max_age
    handler.set_cookie(
        auth.cookie_name,
        auth.new_session(user, max_age, renewal),
        expires_days=lifetime / 86400,
        path=_cookie_path(handler),
        httponly=True,
        samesite="Lax",
        secure=is_https(handler),
    )


async def authenticate_handler(handler: web.RequestHandler) -> User:
    """Who sent this request: the session cookie if valid, else the authenticator (which
    then starts a session). Raises APIError (401 with a challenge, 502/503 ...).

    A write (POST, DELETE...) may use the cookie only with ``CLIENT_HEADER``: a page in the
    browser cannot send that header to this origin, so a forged cross-site write is not the
    cookie's owner. Without it the credentials are asked for again (401 and a challenge),
    which every client answers with its own header."""
    auth: Authenticator = handler.settings["authenticator"]
    cookie = handler.get_cookie(auth.cookie_name)
    cookie_user = auth.user_from_cookie(cookie)
    if cookie_user is None and cookie:
        cookie_user = await auth.renew_session(cookie)
    user = cookie_user
    if (
        user is not None
        and handler.request.method not in _SAFE_METHODS
        and CLIENT_HEADER not in handler.request.headers
    ):
        user = None
    if user is None:
        try:
            user = await auth.authenticate(handler.request)
        except AuthError as e:
            headers = {"WWW-Authenticate": e.challenge} if e.challenge else {}
            message = e.message
            if cookie_user is not None and e.status == 401:
                message = (
                    f"{message}: a session cookie alone cannot change anything; "
                    f"send credentials or the {CLIENT_HEADER} header"
                )
            raise APIError(e.status, message, headers) from None
        for k, v in getattr(handler.request, "auth_response_headers", {}).items():
            handler.set_header(k, v)
        set_session_cookie(handler, user)
    handler.settings["limits"].remember(user)
    return user


_GRANT_IN_PATH = re.compile(r"(/clusters/[^/]+/~)[^/]+")


def loggable_uri(request) -> str:
    """The request's URI for the log, without secrets: an OAuth callback's code and state,
    and the grant in a dashboard path."""
    path = _GRANT_IN_PATH.sub(r"\1...", request.path)
    if request.path.endswith("/oauth_callback") or path != request.path:
        return path
    return request.uri


def token_from(request) -> str | None:
    kind, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if kind.lower() == "token" and token.strip() else None


class NotFoundHandler(BaseHandler):
    auth_kind = "none"

    async def prepare(self) -> None:
        raise APIError(404, "Not Found")


#: A route: its path as the OpenAPI document writes it (``/api/v1/clusters/{cluster_name}``,
#: below the gateway's prefix), and its handler. Each API module ends with its ``ROUTES``;
#: ``app.py`` serves them and ``tests/test_openapi.py`` checks them against the document.
Route = tuple[str, type[web.RequestHandler]]

_PARAMETER = re.compile(r"\{[^/{}]+\}")


def url_specs(prefix: str, routes: Iterable[Route]) -> list[tuple[str, type[web.RequestHandler]]]:
    """Tornado's URL patterns for ``routes`` under ``prefix``: each ``{parameter}`` matches
    one non-empty path segment, passed to the handler in order; the rest is literal."""
    p = re.escape(prefix.rstrip("/"))
    out = []
    for path, handler in routes:
        literal = [re.escape(part) for part in _PARAMETER.split(path)]
        out.append((p + "([^/]+)".join(literal), handler))
    return out
