"""The REST API: tornado handlers speaking the public dask-gateway wire format.

JSON in, JSON out; every error a client can cause is a JSON ``{"error": ...}`` with a 4xx
status. Handlers know the authenticator and the reconciler, never processes or SQL.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
from typing import Any
from urllib.parse import urlsplit

from tornado import web
from traitlets import TraitError

from . import __version__
from .addresses import AddressMoved, AddressNotYetKnown, AddressRefused, MalformedAddress
from .auth import Authenticator, AuthError
from .backends.base import UserNotAllowed
from .limits import LimitExceeded, UserLimits
from .logs import cluster_in_path
from .metrics import MetricsHandler
from .models import MAX_WORKER_COUNT, Cluster, ClusterStatus, JobStatus, User
from .openapi import openapi_spec
from .reconciler import Reconciler, SchedulerUnreachable
from .store import StoreUnavailable

WAIT_TIMEOUT = 20.0


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
OAUTH_STATE_MAX_AGE = 600


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


def _is_https(handler: web.RequestHandler) -> bool:
    return handler.request.protocol == "https"


def set_session_cookie(handler: web.RequestHandler, user: User) -> None:
    auth: Authenticator = handler.settings["authenticator"]
    handler.set_cookie(
        auth.cookie_name,
        auth.new_session(user),
        expires_days=2 * auth.cache_max_age / 86400,
        path=_cookie_path(handler),
        httponly=True,
        samesite="Lax",
        secure=_is_https(handler),
    )


def _oauth_cookie_name(auth: Authenticator) -> str:
    return auth.cookie_name + "-oauth-state"


def oauth_binding(handler: web.RequestHandler) -> str:
    """This browser's login binding (a short-lived cookie only the callback receives): a
    login started in one browser cannot be finished in another (login CSRF)."""
    auth: Authenticator = handler.settings["authenticator"]
    name = _oauth_cookie_name(auth)
    binding = handler.get_cookie(name) or ""
    if len(binding) < 32 or not binding.isalnum():
        binding = secrets.token_hex(16)
    handler.set_cookie(
        name,
        binding,
        path=handler.settings["prefix"] + "/oauth_callback",
        expires_days=OAUTH_STATE_MAX_AGE / 86400,
        httponly=True,
        samesite="Lax",
        secure=_is_https(handler),
    )
    return binding


async def authenticate_handler(handler: web.RequestHandler) -> User:
    """Who sent this request: the session cookie if valid, else the authenticator (which
    then starts a session). Raises APIError (401 with a challenge, 502/503 ...).

    A write (POST, DELETE...) may use the cookie only with ``CLIENT_HEADER``: a page in the
    browser cannot send that header to this origin, so a forged cross-site write is not the
    cookie's owner. Without it the credentials are asked for again (401 and a challenge),
    which every client answers with its own header."""
    auth: Authenticator = handler.settings["authenticator"]
    cookie_user = auth.user_from_cookie(handler.get_cookie(auth.cookie_name))
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


def oauth_redirect_uri(handler: web.RequestHandler) -> str:
    """The callback URL of a browser login: ``oauth_redirect_uri`` when configured, else
    from the scheme and Host of the request (X-Forwarded-* headers are not trusted: behind
    a proxy that ends HTTPS, configure ``oauth_redirect_uri``)."""
    configured = getattr(handler.settings["authenticator"], "oauth_redirect_uri", "")
    if configured:
        return configured
    return (
        f"{handler.request.protocol}://{handler.request.host}"
        f"{handler.settings['prefix']}/oauth_callback"
    )


async def check_dashboard_access(handler: web.RequestHandler, cluster_name: str) -> bool:
    """Dashboards are for the cluster's owner and admins, like the API. A browser with no
    credentials is sent to log in (through the hub, with JupyterHub auth)."""
    try:
        user = await authenticate_handler(handler)
    except APIError as e:
        wants_html = "text/html" in handler.request.headers.get("Accept", "")
        login = None
        if e.status_code == 401 and wants_html and handler.request.method == "GET":
            auth: Authenticator = handler.settings["authenticator"]
            if auth.has_browser_login():
                login = auth.login_url(
                    handler.request,
                    handler.request.uri,
                    oauth_redirect_uri(handler),
                    oauth_binding(handler),
                )
        if login is None:
            raise
        handler.redirect(login)
        return False
    cluster = handler.settings["reconciler"].clusters.get(cluster_name)
    if cluster is None:
        raise APIError(404, f"Cluster {cluster_name} not found")
    if not user.can_access(cluster):
        raise APIError(403, f"User {user.name} lacks permissions to view cluster {cluster_name}")
    return True


class HealthHandler(BaseHandler):
    auth_kind = "none"

    def get(self) -> None:
        self.write_json({"status": "pass"})


class VersionHandler(BaseHandler):
    auth_kind = "none"

    def get(self) -> None:
        self.write_json({"version": __version__})


class OpenAPIHandler(BaseHandler):
    """The API's OpenAPI document, so tools and people can read the wire without the code."""

    auth_kind = "none"

    def get(self) -> None:
        self.write_json(openapi_spec(self.settings["prefix"]))


class OptionsHandler(BaseHandler):
    async def get(self) -> None:
        try:
            options = await self.backend.get_cluster_options(self.current_user)
        except Exception:
            self.settings["log"].exception(
                "cluster_options failed for user %s", self.current_user.name
            )
            raise APIError(500, "The gateway's cluster_options failed; see the gateway log")
        self.write_json({"cluster_options": options.get_specification()})


def _parse_statuses(value: str | None) -> set[ClusterStatus] | None:
    if value is None:
        return None
    out = set()
    for part in value.split(","):
        part = part.strip()
        if part:
            try:
                out.add(ClusterStatus.from_name(part))
            except ValueError as e:
                raise APIError(422, str(e)) from None
    return out


class ClustersHandler(BaseHandler):
    async def get(self) -> None:
        statuses = _parse_statuses(self.get_query_argument("status", None))
        user = self.current_user
        # Admins may ask for everyone's clusters; only then is the owner added to each entry
        # (old clients never send ?all=1, so they keep their exact eight keys).
        all_users = _bool_arg(self.get_query_argument("all", None))
        if all_users and not user.admin:
            raise APIError(403, f"User {user.name} is not an admin: ?all=1 is for admins")
        clusters = (
            self.reconciler.clusters.values()
            if all_users
            else self.reconciler.clusters_of(user.name)
        )
        parts = []
        for cluster in clusters:
            if statuses is None:
                if not cluster.is_active:
                    continue
            elif cluster.model_status not in statuses:
                continue
            if all_users:
                model = json.dumps({**cluster.to_dict(), "username": cluster.username})
            else:
                model = cluster.to_json()
            parts.append(f"{json.dumps(cluster.name)}: {model}")
        self.set_status(200)
        self.finish("{" + ", ".join(parts) + "}")

    async def post(self) -> None:
        body = self.json_body()
        if not isinstance(body, dict):
            raise APIError(422, f"Request body must be a JSON object, got {type(body).__name__}")
        request = body.get("cluster_options")
        try:
            options, config = await self.backend.process_cluster_options(self.current_user, request)
        except UserNotAllowed as e:
            raise APIError(403, str(e)) from None
        except (ValueError, TypeError, TraitError, KeyError) as e:
            raise APIError(422, str(e)) from None
        try:
            self.limits.check(self.current_user, self.reconciler.clusters.values(), config=config)
        except LimitExceeded as e:
            raise APIError(422, str(e)) from None
        cluster = await self.reconciler.create_cluster(self.current_user, options, config)
        self.write_json({"name": cluster.name}, status=201)


def _bool_arg(value: str | None) -> bool:
    if value is None:
        return False
    if value == "":
        return True
    try:
        return bool(int(value))
    except ValueError:
        return value.lower() in ("true", "yes")


class ClusterHandler(BaseHandler):
    auth_kind = "none"  # DELETE also accepts the cluster's own token

    async def get(self, name: str) -> None:
        self.current_user = await self.authenticate()
        cluster = self.get_cluster(name)
        if _bool_arg(self.get_query_argument("wait", None)) and not cluster.ready.is_set():
            try:
                await asyncio.wait_for(asyncio.shield(cluster.ready.wait()), WAIT_TIMEOUT)
            except asyncio.TimeoutError:
                pass
        self.write_json(cluster.to_dict())

    async def delete(self, name: str) -> None:
        token = _token_from(self.request)
        cluster = self.reconciler.by_token.get(token) if token else None
        if cluster is not None and cluster.name == name:
            await self.reconciler.stop_cluster(cluster)
        else:
            self.current_user = await self.authenticate()
            cluster = self.reconciler.clusters.get(name)
            if cluster is not None:
                if not self.current_user.can_access(cluster):
                    raise APIError(
                        403,
                        f"User {self.current_user.name} lacks permissions to stop cluster {name}",
                    )
                await self.reconciler.stop_cluster(cluster)
        self.set_status(204)
        self.finish()


def _token_from(request) -> str | None:
    kind, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if kind.lower() == "token" and token.strip() else None


def _int_or_none(body: dict, key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise APIError(422, f"{key} must be a non-negative integer or null, got {value!r}")
    return value


class ScaleHandler(BaseHandler):
    async def post(self, name: str) -> None:
        cluster = self.get_cluster(name, "scale")
        body = self.json_body()
        count = body.get("count") if isinstance(body, dict) else None
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise APIError(422, f"Scale expects a non-negative integer, got {count!r}")
        msg = None
        limit = cluster.max_workers
        if limit is not None and count > limit:
            msg = (
                f"Scale request of {count} workers would exceed resource limit of "
                f"{limit} workers. Scaling to {limit} instead."
            )
            count = limit
        if count > MAX_WORKER_COUNT:
            raise APIError(422, f"Scale expects at most {MAX_WORKER_COUNT} workers, got {count}")
        try:
            self.limits.check(
                self.limits.owner(cluster),
                self.reconciler.clusters.values(),
                changed=cluster,
                count=count,
            )
        except LimitExceeded as e:
            raise APIError(422, str(e)) from None
        await self._send(cluster, {"op": "scale", "count": count})
        await self.reconciler.set_count(cluster, count)
        self.write_json({"ok": msg is None, "msg": msg})

    async def _send(self, cluster: Cluster, msg: dict) -> None:
        try:
            await self.reconciler.send_to_scheduler(cluster, msg)
        except SchedulerUnreachable:
            raise APIError(409, f"cluster {cluster.name} is not running") from None


class AdaptHandler(ScaleHandler):
    async def post(self, name: str) -> None:
        cluster = self.get_cluster(name, "adapt")
        body = self.json_body()
        if not isinstance(body, dict):
            raise APIError(422, "Adapt expects a JSON object")
        minimum = _int_or_none(body, "minimum")
        maximum = _int_or_none(body, "maximum")
        active = body.get("active", True)
        if not isinstance(active, bool):
            raise APIError(422, f"active must be true or false, got {active!r}")
        if minimum is not None and maximum is not None and minimum > maximum:
            raise APIError(422, f"minimum ({minimum}) must not exceed maximum ({maximum})")
        msg = None
        limit = cluster.max_workers
        if limit is not None:
            new_max = limit if maximum is None else min(maximum, limit)
            new_min = 0 if minimum is None else min(minimum, limit)
            if (maximum is not None and maximum > limit) or (
                minimum is not None and minimum > limit
            ):
                msg = (
                    f"Adapt with `maximum={maximum}, minimum={minimum}` workers would "
                    f"exceed resource limit of {limit} workers. Using "
                    f"`maximum={new_max}, minimum={new_min}` instead."
                )
            minimum, maximum = new_min, new_max
        user_max = self.limits.max_count(
            self.limits.owner(cluster), self.reconciler.clusters.values(), cluster
        )
        if user_max is not None and (maximum is None or maximum > user_max):
            msg = (
                f"Adapt with `maximum={maximum}` workers would exceed the user limits of "
                f"{cluster.username}. Using `maximum={user_max}` instead."
            )
            maximum = user_max
            minimum = None if minimum is None else min(minimum, user_max)
        for key, value in (("minimum", minimum), ("maximum", maximum)):
            if value is not None and value > MAX_WORKER_COUNT:
                raise APIError(
                    422, f"Adapt expects a {key} of at most {MAX_WORKER_COUNT} workers, got {value}"
                )
        await self._send(
            cluster, {"op": "adapt", "minimum": minimum, "maximum": maximum, "active": active}
        )
        self.write_json({"ok": msg is None, "msg": msg})


class WorkersHandler(BaseHandler):
    """Opt-in details the 8-key cluster JSON must not carry: running workers and their size.

    Workers count once the scheduler's heartbeat reported them; cores and memory follow from
    the cluster's configuration.
    """

    async def get(self, name: str) -> None:
        cluster = self.get_cluster(name)
        running = sum(1 for w in cluster.active_workers() if w.status == JobStatus.RUNNING)
        config = cluster.config
        self.write_json(
            {
                "workers": running,
                "cores": running * int(config.get("worker_cores") or 0),
                "memory": running * int(config.get("worker_memory") or 0),
                "requested": cluster.count,
            }
        )


_HEARTBEAT_KEYS = {
    "scheduler_address": str,
    "dashboard_address": str,
    "api_address": str,
    "count": int,
    "active_workers": list,
    "closing_workers": list,
    "closed_workers": list,
}


class HeartbeatHandler(BaseHandler):
    auth_kind = "none"

    async def post(self, name: str) -> None:
        token = _token_from(self.request)
        cluster = self.reconciler.by_token.get(token) if token else None
        if cluster is None or cluster.name != name:
            raise APIError(401, "Unauthorized", {"WWW-Authenticate": "token"})
        msg = self.json_body()
        if not isinstance(msg, dict):
            raise APIError(422, "Heartbeat must be a JSON object")
        for key, kind in _HEARTBEAT_KEYS.items():
            value = msg.get(key)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise APIError(422, f"Heartbeat field {key!r} must be {kind.__name__}")
        for key in ("active_workers", "closing_workers", "closed_workers"):
            if not all(isinstance(w, str) for w in msg[key]):
                raise APIError(422, f"Heartbeat field {key!r} must list worker names")
        try:
            await self.reconciler.on_heartbeat(cluster, msg)
        except AddressRefused as e:
            raise APIError(_address_status(e), str(e)) from None
        self.set_status(200)
        self.finish()


def _address_status(error: AddressRefused) -> int:
    """422: not an address; 409: not now (a pending job) or moving set addresses; 403:
    an address that is not the scheduler's."""
    if isinstance(error, MalformedAddress):
        return 422
    if isinstance(error, (AddressNotYetKnown, AddressMoved)):
        return 409
    return 403


class OAuthCallbackHandler(BaseHandler):
    """Where the hub sends a browser back after a login; starts a gateway session."""

    auth_kind = "none"

    def set_default_headers(self) -> None:
        """Redirects, not JSON, on success."""

    async def get(self) -> None:
        auth = self.authenticator
        binding_cookie = _oauth_cookie_name(auth)
        binding = self.get_cookie(binding_cookie) or ""
        try:
            user, next_url = await auth.complete_login(
                self.request, oauth_redirect_uri(self), binding
            )
        except AuthError as e:
            raise APIError(e.status, e.message) from None
        if not next_url.startswith("/") or next_url.startswith("//"):
            next_url = self.settings["prefix"] + "/"
        self.clear_cookie(binding_cookie, path=self.settings["prefix"] + "/oauth_callback")
        set_session_cookie(self, user)
        self.redirect(next_url)


class NotFoundHandler(BaseHandler):
    auth_kind = "none"

    def prepare(self) -> None:
        raise APIError(404, "Not Found")


def api_handlers(prefix: str) -> list:
    """The API routes under ``prefix`` (the proxy prefix, "" by default)."""
    p = prefix.rstrip("/")
    name = r"([^/]+)"
    return [
        (rf"{p}/api/health", HealthHandler),
        (rf"{p}/api/version", VersionHandler),
        (rf"{p}/api/openapi.json", OpenAPIHandler),
        (rf"{p}/api/v1/options", OptionsHandler),
        (rf"{p}/api/v1/clusters/", ClustersHandler),
        (rf"{p}/api/v1/clusters/{name}", ClusterHandler),
        (rf"{p}/api/v1/clusters/{name}/scale", ScaleHandler),
        (rf"{p}/api/v1/clusters/{name}/adapt", AdaptHandler),
        (rf"{p}/api/v1/clusters/{name}/workers", WorkersHandler),
        (rf"{p}/api/v1/clusters/{name}/heartbeat", HeartbeatHandler),
        (rf"{p}/oauth_callback", OAuthCallbackHandler),
        (rf"{p}/metrics", MetricsHandler),
    ]
