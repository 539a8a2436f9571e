"""REST routes the sidebar calls: ``<base_url>dask-gateway/...``.

Each route is a thin, async translation onto the dask-gateway client's public API
(``Gateway(asynchronous=True)``), so the Jupyter server's event loop never blocks and the
gateway credentials never leave this process. Gateway errors come back as JSON
``{"error": ..., "message": ...}`` with the gateway's status (400, 403, 404, 409, 422, ...); a
gateway that cannot be reached gives 502.

The events and logs relays call the gateway's routes with this server's credentials; the
browser's own cookies and Authorization header are never passed on (only the query arguments
named here are). The quota route (the sidebar's usage section) passes no query at all: it
answers for this server's user only.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import logging
import time
import warnings
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado import web

from dask_gateway import Gateway, GatewayWarning
from dask_gateway.client import ClusterReport, ClusterStatus
from dask_gateway.options import Options

from .allusers import AllUsers, wants_all
from .dashboard import DashboardHandler, DashboardRelay, DashboardWebSocketHandler
from .errors import RouteError, translate_error
from .notes import ClusterNotes
from .stream import StreamHandlerMixin, StreamHub

T = TypeVar("T")

#: The URL segment under the Jupyter server's base URL.
NAMESPACE = "dask-gateway"
#: jupyter_server authorization resource name for these routes.
AUTH_RESOURCE = "dask_gateway"
#: Stopped and failed clusters stay listed this long after they ended (until dismissed).
ENDED_LISTED_FOR = 3600.0
#: ...and at most this many of them, the most recent (the listing stays small and cheap).
ENDED_LISTED_MAX = 20
#: Every status: the listing asks for ended clusters too.
ALL_STATUSES = list(ClusterStatus)
#: Seconds a relayed request may take beyond the long-poll the browser asked for.
RELAY_SLACK = 30.0
#: The longest long-poll the gateway holds (its routes refuse more with a 400).
MAX_WAIT = 60.0


class GatewayManager:
    """One asynchronous Gateway client per Jupyter server, made on first use.

    It is created lazily inside the server's event loop (the client binds to the running
    loop) and reused, so its HTTP connections and the gateway's session cookie are shared by
    every request. It also remembers adaptive settings made from the sidebar, since the
    gateway does not report them.
    """

    def __init__(self, log: logging.Logger):
        self.log = log
        self._gateway: Gateway | None = None
        self.adapt: dict[str, dict[str, int | None]] = {}
        self.dashboards = DashboardRelay(self)
        self.notes = ClusterNotes(self.gateway_get, log)
        self.all_users = AllUsers(self.gateway, self.adapt, log)
        self.streams = StreamHub(self.gateway, log)
        # warnings.catch_warnings is process-global: let one scale/adapt capture at a time.
        self.warnings_lock = asyncio.Lock()

    @property
    def address(self) -> str | None:
        return self._gateway.address if self._gateway is not None else None

    def gateway(self) -> Gateway:
        if self._gateway is None:
            try:
                self._gateway = Gateway(asynchronous=True)
            except (ValueError, TypeError) as e:
                raise RouteError(503, f"Dask Gateway is not configured: {e}") from None
        return self._gateway

    async def close(self) -> None:
        self.dashboards.close()
        self.streams.close()
        if self._gateway is not None:
            gateway, self._gateway = self._gateway, None
            closing = gateway.close()  # an awaitable, since the client is asynchronous
            if closing is not None:
                await closing

    # The client's methods are annotated for synchronous use and give awaitables only when
    # the Gateway is asynchronous. The routes await the coroutines behind them, here, so each
    # call has its real type and never depends on the client guessing the running loop.

    async def list_clusters(self) -> list[ClusterReport]:
        return await self.gateway()._list_clusters()

    async def list_all_clusters(self) -> list[ClusterReport]:
        """Every cluster the gateway still knows of for this user, ended ones included."""
        return await self.gateway()._list_clusters(ALL_STATUSES)

    async def gateway_get(self, path: str, query: dict[str, str], timeout: float) -> Any:
        """GET a route of the gateway with this server's credentials; the decoded JSON.

        Used for the events and logs routes: the client's ``events``/``get_logs`` give
        events and texts, while the relays pass on the cursors, offsets and ``done`` flags
        the sidebar follows with, so they call the routes through the client's own HTTP path
        (its auth, session cookie, proxy settings and error mapping).
        """
        if query:
            path = f"{path}?{urlencode(query)}"
        return await self.gateway()._request("GET", path, timeout=timeout)

    async def quota(self) -> dict[str, Any]:
        """The user's use this period and their quotas: the client's public ``quota()``
        (``GatewayUnsupportedError`` from a gateway that counts no use, e.g. the public one)."""
        answer: Any = self.gateway().quota()
        if inspect.isawaitable(answer):  # always, the client being asynchronous
            answer = await answer
        if not isinstance(answer, dict):
            raise RouteError(502, f"Unexpected answer of the gateway's quota route: {answer!r}")
        return answer

    async def get_cluster(self, name: str) -> ClusterReport:
        return await self.gateway()._get_cluster(name)

    async def get_cluster_resources(self, name: str) -> dict[str, int]:
        return await self.gateway()._get_cluster_resources(name)

    async def cluster_options(self) -> Options:
        """The gateway's options for this user, defaults overlaid with config
        ``gateway.cluster.options``: a fresh object each time (it holds values)."""
        return await self.gateway()._cluster_options()

    async def submit(self, options: Options) -> str:
        return await self.gateway()._submit(options)

    async def stop_cluster(self, name: str) -> None:
        await self.gateway()._stop_cluster(name)

    async def scale_cluster(self, name: str, count: int) -> None:
        await self.gateway()._scale_cluster(name, count)

    async def adapt_cluster(
        self, name: str, minimum: int | None, maximum: int | None, active: bool
    ) -> None:
        await self.gateway()._adapt_cluster(name, minimum, maximum, active)


def gateway_errors(method: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
    """Turn client exceptions into JSON errors; anything else stays a logged 500."""

    @functools.wraps(method)
    async def wrapper(self: BaseGatewayHandler, *args: Any, **kwargs: Any) -> None:
        try:
            await method(self, *args, **kwargs)
        except web.HTTPError:
            raise
        except Exception as exc:
            err = translate_error(exc, self.manager.address)
            if err is None:
                raise
            self.send_error_json(err.status, err.message)

    return wrapper


def listed(reports: list[ClusterReport], now: float) -> list[ClusterReport]:
    """The clusters the sidebar lists: every active one, and the ``ENDED_LISTED_MAX`` most
    recently ended ones that ended within ``ENDED_LISTED_FOR`` seconds."""
    active = [r for r in reports if r.status <= ClusterStatus.STOPPING]
    ended: list[tuple[float, ClusterReport]] = []
    for r in reports:
        if r.status > ClusterStatus.STOPPING:
            when = (r.stop_time or r.start_time).timestamp()
            if now - when <= ENDED_LISTED_FOR:
                ended.append((when, r))
    ended.sort(key=lambda pair: pair[0], reverse=True)
    return active + [r for _, r in ended[:ENDED_LISTED_MAX]]


def _format_options_error(exc: BaseException) -> str:
    # KeyError's str() adds quotes around its message.
    return str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)


def validate_options(options: Options, values: dict[str, Any]) -> dict[str, str]:
    """Set each value on the client's ``Options``, as ``Gateway.submit`` users do, and return
    the client's own message for each field it refuses (unknown fields included)."""
    errors: dict[str, str] = {}
    for key, value in values.items():
        try:
            options[key] = value
        except (KeyError, TypeError, ValueError) as e:
            errors[key] = _format_options_error(e)
    return errors


class BaseGatewayHandler(APIHandler):
    auth_resource = AUTH_RESOURCE

    @property
    def manager(self) -> GatewayManager:
        return self.settings["dask_gateway_manager"]

    def send_error_json(self, status: int, message: str) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"error": message, "message": message}))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Jupyter's own errors (403 XSRF, 404, ...) in the same JSON shape as ours."""
        exc = (kwargs.get("exc_info") or (None, None, None))[1]
        message = self._reason
        if isinstance(exc, web.HTTPError) and exc.log_message:
            message = exc.log_message % exc.args if exc.args else exc.log_message
        elif status_code >= 500:
            message = "Internal error in the Dask Gateway extension; see the Jupyter log"
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"error": message, "message": message}))

    def option_values(self) -> dict[str, Any]:
        """``cluster_options`` of the JSON body: ``{field: value}``."""
        values = self.json_body().get("cluster_options") or {}
        if not isinstance(values, dict):
            raise RouteError(422, "cluster_options must be an object of field: value")
        return values

    def json_body(self) -> dict[str, Any]:
        if not self.request.body:
            return {}
        try:
            body = json.loads(self.request.body)
        except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: deep nesting
            raise RouteError(400, "Request body must be valid JSON") from None
        if not isinstance(body, dict):
            raise RouteError(400, "Request body must be a JSON object")
        return body

    async def cluster_model(self, report: ClusterReport) -> dict[str, Any]:
        """The cluster as the sidebar shows it, sizes from the gateway's opt-in route,
        ``phase`` (a starting cluster's) and ``reason`` (a failed one's) from its events."""
        resources: dict[str, Any] = {}
        if report.status == ClusterStatus.RUNNING:
            try:
                resources = await self.manager.get_cluster_resources(report.name)
            except Exception as e:
                self.log.debug("No resources for cluster %s: %s", report.name, e)
        elif report.status == ClusterStatus.PENDING:
            resources = {"workers": 0, "cores": 0, "memory": 0}
        phase, reason = await self.manager.notes.note(report)
        start = report.start_time.timestamp() if report.start_time else time.time()
        stop = report.stop_time.timestamp() if report.stop_time else None
        return {
            "name": report.name,
            "status": report.status.name,
            "start_time": int(start * 1000),
            "stop_time": None if stop is None else int(stop * 1000),
            "phase": phase,
            "reason": reason,
            "age": max(0.0, time.time() - start),
            "dashboard_link": report.dashboard_link,
            "options": report.options,
            "workers": resources.get("workers"),
            "cores": resources.get("cores"),
            "memory": resources.get("memory"),
            "requested": resources.get("requested"),
            "pending": resources.get("pending"),
            "adapt": self.manager.adapt.get(report.name),
        }

    async def capture_gateway_warning(self, call: Awaitable[T]) -> tuple[T, str | None]:
        """Await a create/scale/adapt call; its result and the gateway's warning (clamped to
        a limit, a quota nearly used up), which the browser shows rather than the log."""
        async with self.manager.warnings_lock:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                result = await call
        message = None
        for w in caught:
            if issubclass(w.category, GatewayWarning):
                message = str(w.message)
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        return result, message


class ClustersHandler(BaseGatewayHandler):
    @web.authenticated
    @authorized
    @gateway_errors
    async def get(self) -> None:
        """The user's clusters with worker counts and sizes: the pending and running ones,
        and those that stopped or failed within the last hour (the sidebar dims them).
        ``?all=1``: every user's, each with its ``user`` (403 unless the gateway says admin)."""
        gateway = self.manager.gateway()
        if wants_all(self.get_query_argument("all", None)):
            models = await self.manager.all_users.listing()
            self.finish(json.dumps({"address": gateway.address, "clusters": models}))
            return
        reports = listed(await self.manager.list_all_clusters(), time.time())
        models = await asyncio.gather(*(self.cluster_model(r) for r in reports))
        models.sort(key=lambda m: m["start_time"])
        names = {r.name for r in reports}
        self.manager.notes.forget_except(names)
        live = {r.name for r in reports if r.status <= ClusterStatus.STOPPING}
        for name in list(self.manager.adapt):
            if name not in live:
                del self.manager.adapt[name]
        self.finish(json.dumps({"address": gateway.address, "clusters": models}))

    @web.authenticated
    @authorized
    @gateway_errors
    async def post(self) -> None:
        """Create a cluster from ``{"cluster_options": {field: value}}``; returns at once,
        with the gateway's warning if it gave one (``msg``: a quota nearly used up)."""
        values = self.option_values()
        options = await self.manager.cluster_options()
        errors = validate_options(options, values)
        if errors:
            raise RouteError(422, next(iter(errors.values())))
        name, msg = await self.capture_gateway_warning(self.manager.submit(options))
        self.set_status(201)
        self.finish(json.dumps({"name": name, "msg": msg}))


class ClusterHandler(BaseGatewayHandler):
    @web.authenticated
    @authorized
    @gateway_errors
    async def get(self, name: str) -> None:
        report = await self.manager.get_cluster(name)
        self.finish(json.dumps(await self.cluster_model(report)))

    @web.authenticated
    @authorized
    @gateway_errors
    async def delete(self, name: str) -> None:
        """Shut the cluster down (no error if it already stopped)."""
        await self.manager.stop_cluster(name)
        self.manager.adapt.pop(name, None)
        self.set_status(204)
        self.finish()


def _count(body: dict[str, Any], key: str) -> int:
    value = body.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise RouteError(422, f"{key} must be a non-negative integer, got {json.dumps(value)}")
    return value


def _optional_count(body: dict[str, Any], key: str) -> int | None:
    return None if body.get(key) is None else _count(body, key)


class ScaleHandler(BaseGatewayHandler):
    @web.authenticated
    @authorized
    @gateway_errors
    async def post(self, name: str) -> None:
        """``{"count": n}``: a fixed worker count (turns adaptive scaling off)."""
        count = _count(self.json_body(), "count")
        _, msg = await self.capture_gateway_warning(self.manager.scale_cluster(name, count))
        self.manager.adapt.pop(name, None)
        self.finish(json.dumps({"ok": msg is None, "msg": msg}))


class AdaptHandler(BaseGatewayHandler):
    @web.authenticated
    @authorized
    @gateway_errors
    async def post(self, name: str) -> None:
        """``{"minimum": m, "maximum": M, "active": true}``; ``active: false`` stops adapting."""
        body = self.json_body()
        minimum = _optional_count(body, "minimum")
        maximum = _optional_count(body, "maximum")
        active = body.get("active", True)
        if not isinstance(active, bool):
            raise RouteError(422, f"active must be true or false, got {json.dumps(active)}")
        if minimum is not None and maximum is not None and minimum > maximum:
            raise RouteError(422, f"minimum ({minimum}) must not exceed maximum ({maximum})")
        _, msg = await self.capture_gateway_warning(
            self.manager.adapt_cluster(name, minimum, maximum, active)
        )
        if active:
            self.manager.adapt[name] = {"minimum": minimum, "maximum": maximum}
        else:
            self.manager.adapt.pop(name, None)
        self.finish(json.dumps({"ok": msg is None, "msg": msg}))


class DashboardURLHandler(BaseGatewayHandler):
    @web.authenticated
    @authorized
    @gateway_errors
    async def get(self, name: str) -> None:
        """Where the browser opens the dashboard: relayed by this server (``url``).

        ``gateway_url`` is the gateway's own link, for browsers that can log in there.
        """
        report = await self.manager.get_cluster(name)
        link = report.dashboard_link
        if not link:
            raise RouteError(409, f"Cluster {name} has no dashboard (status {report.status.name})")
        marker = f"/clusters/{name}/"
        page = link.split(marker, 1)[1] if marker in link else "status"
        url = url_path_join(self.base_url, NAMESPACE, "dashboard", quote(name, safe=""), page)
        self.finish(json.dumps({"url": url, "gateway_url": link}))


def _wait_seconds(value: str | None) -> float:
    """The long-poll the browser asked for, to size the relayed request's timeout (the
    gateway itself refuses a bad value with a 400, which passes through)."""
    try:
        wait = float(value) if value is not None else 0.0
    except ValueError:
        return 0.0
    return min(max(wait, 0.0), MAX_WAIT) if wait == wait else 0.0  # NaN: 0


class RelayHandler(BaseGatewayHandler):
    """GET one of the cluster's routes on the gateway and pass its JSON on unchanged.

    Only the query arguments in ``ARGS`` go on; headers never do (the gateway hears this
    server's credentials only). A long-poll the browser gives up on is cancelled here too.
    """

    #: The gateway route under ``/api/v1/clusters/{name}/``.
    ROUTE = ""
    #: The query arguments passed on.
    ARGS: tuple[str, ...] = ()
    _task: asyncio.Future[Any] | None = None
    _gone = False

    def on_connection_close(self) -> None:
        self._gone = True
        if self._task is not None and not self._task.done():
            self._task.cancel()
        super().on_connection_close()

    @web.authenticated
    @authorized
    @gateway_errors
    async def get(self, name: str) -> None:
        query: dict[str, str] = {}
        for arg in self.ARGS:
            value = self.get_query_argument(arg, None)
            if value is not None:
                query[arg] = value
        self.check_query(query)
        path = f"/api/v1/clusters/{quote(name, safe='')}/{self.ROUTE}"
        timeout = _wait_seconds(query.get("wait")) + RELAY_SLACK
        self._task = asyncio.ensure_future(self.manager.gateway_get(path, query, timeout))
        try:
            answer = await self._task
        except asyncio.CancelledError:
            if self._gone:
                return  # the browser left: nobody to answer
            raise
        finally:
            self._task = None
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps(answer))

    def check_query(self, query: dict[str, str]) -> None:
        """Refuse what the relay does not do (the gateway checks the values themselves)."""


class EventsHandler(RelayHandler):
    """``?after=<id>&wait=<s>`` (and ``since``, ``limit``): the cluster's events, as the
    gateway's ``GET /api/v1/clusters/{name}/events`` answers them."""

    ROUTE = "events"
    ARGS = ("after", "since", "limit", "wait")


class LogsHandler(RelayHandler):
    """``?component=&offset=&wait=&tail=``: the cluster's logs, as the gateway's
    ``GET /api/v1/clusters/{name}/logs`` answers them (long-poll with ``offset``/``wait``)."""

    ROUTE = "logs"
    ARGS = ("component", "offset", "wait", "tail")

    def check_query(self, query: dict[str, str]) -> None:
        if self.get_query_argument("follow", None) is not None:
            raise RouteError(400, "follow is not relayed: long-poll with offset and wait instead")


class StreamHandler(StreamHandlerMixin, BaseGatewayHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        """Server-Sent Events: the gateway's events of this user's clusters (``?all=1``: of
        every user's, for an admin), from one upstream long-poll shared by every tab (see
        ``stream.py``); 501 from a gateway that keeps no events."""
        all_users = self.get_query_argument("all", "") in ("1", "true")
        await self.stream_events(
            self.manager.streams, all_users, self.send_error_json, self.manager.address
        )


class QuotaHandler(BaseGatewayHandler):
    @web.authenticated
    @authorized
    @gateway_errors
    async def get(self) -> None:
        """The user's own use this quota period and their quotas, as the gateway's
        ``GET /api/v1/quota`` answers them (no query is passed on: only this server's user,
        never another's, even for an admin). 501 from a gateway without quotas: the sidebar
        then hides its usage section."""
        answer = await self.manager.quota()
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps(answer))


class AdminHandler(BaseGatewayHandler):
    @web.authenticated
    @authorized
    @gateway_errors
    async def get(self) -> None:
        """``{"admin": bool}``: whether the gateway lets this user list every user's clusters
        (the sidebar then offers the all-users view)."""
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps({"admin": await self.manager.all_users.is_admin()}))


class OptionsHandler(BaseGatewayHandler):
    @web.authenticated
    @authorized
    @gateway_errors
    async def get(self) -> None:
        """The gateway's cluster options, defaults overlaid with ``gateway.cluster.options``."""
        options = await self.manager.cluster_options()
        self.finish(json.dumps({"cluster_options": options.get_specification()}))


class OptionsValidateHandler(BaseGatewayHandler):
    @web.authenticated
    @authorized
    @gateway_errors
    async def post(self) -> None:
        """Check ``{"cluster_options": {field: value}}`` against the gateway's options with the
        client's ``Options``; ``{"errors": {field: message}}`` (empty: all valid).

        The sidebar's form shows these messages, so it says what the Python client says
        without re-implementing its rules; creating a cluster checks the same way again.
        """
        values = self.option_values()
        errors = validate_options(await self.manager.cluster_options(), values)
        self.finish(json.dumps({"errors": errors}))


def setup_handlers(web_app: Any, log: logging.Logger | None = None) -> None:
    """Add the routes to the Jupyter server's tornado app."""
    web_app.settings["dask_gateway_manager"] = GatewayManager(
        log or logging.getLogger("dask_gateway_jupyter")
    )
    base = url_path_join(web_app.settings.get("base_url", "/"), NAMESPACE)
    name = r"(?P<name>[^/]+)"
    web_app.add_handlers(
        ".*$",
        [
            (url_path_join(base, "options"), OptionsHandler),
            (url_path_join(base, "quota"), QuotaHandler),
            (url_path_join(base, "admin"), AdminHandler),
            (url_path_join(base, "stream"), StreamHandler),
            (url_path_join(base, "options", "validate"), OptionsValidateHandler),
            (url_path_join(base, "clusters") + "/?", ClustersHandler),
            (url_path_join(base, "clusters", name), ClusterHandler),
            (url_path_join(base, "clusters", name, "scale"), ScaleHandler),
            (url_path_join(base, "clusters", name, "adapt"), AdaptHandler),
            (url_path_join(base, "clusters", name, "dashboard"), DashboardURLHandler),
            (url_path_join(base, "clusters", name, "events"), EventsHandler),
            (url_path_join(base, "clusters", name, "logs"), LogsHandler),
            (
                url_path_join(base, "dashboard", name, r"(?P<path>(?:.*/)?ws)"),
                DashboardWebSocketHandler,
            ),
            (url_path_join(base, "dashboard", name), DashboardHandler),
            (url_path_join(base, "dashboard", name) + "/(?P<path>.*)", DashboardHandler),
        ],
    )
