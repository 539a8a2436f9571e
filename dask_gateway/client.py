"""The user-facing client: ``Gateway`` (the REST API) and ``GatewayCluster``.

Every public method works in two modes. In the default synchronous mode the
coroutines run on a background event-loop thread and the methods block; with
``asynchronous=True`` they return awaitables for use inside the caller's event loop.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import os
import ssl
import sys
import tempfile
import threading
import warnings
import weakref
from collections.abc import Awaitable
from datetime import datetime, timezone
from enum import IntEnum
from html import escape
from typing import Any
from urllib.parse import quote, unquote, urlencode

import dask.config
from distributed.comm.core import CommClosedError
from distributed.core import rpc
from distributed.objects import SchedulerInfo
from distributed.security import Security
from distributed.utils import LoopRunner, NoOpAwaitable, SyncMethodMixin
from tornado.httpclient import HTTPClientError, HTTPResponse

from ._http import HTTPClient, proxy_settings
from ._version import __version__
from .auth import GatewayAuth, _AuthHooks, get_auth
from .config import (
    format_template,
    resolve_address,
    resolve_proxy_address,
    resolve_public_address,
)
from .errors import (
    GatewayClusterError,
    GatewayRequestError,
    GatewayServerError,
    GatewayUnsupportedError,
    GatewayWarning,
)
from .events import ClusterEvent, EventPage, start_failure_message, stop_reason
from .jupyter_comm import announce_cluster
from .options import Options
from .progress import StartProgress, start_progress

__all__ = [
    "ClusterEvent",
    "ClusterReport",
    "ClusterStatus",
    "Gateway",
    "GatewayCluster",
    "GatewayClusterError",
    "GatewayRequestError",
    "GatewaySecurity",
    "GatewayServerError",
    "GatewayUnsupportedError",
    "GatewayWarning",
    "cleanup_lingering_clusters",
]

logger = logging.getLogger(__name__)

#: Key of the ``subscribe_worker_status`` reply in which this project's scheduler preload
#: lists the extra scheduler ops it serves (the public preload adds nothing there).
SCHEDULER_FEATURES_KEY = "dask_gateway_features"


class ClusterStatus(IntEnum):
    """Public status of a cluster, as named on the wire."""

    PENDING = 1
    RUNNING = 2
    STOPPING = 3
    STOPPED = 4
    FAILED = 5

    @classmethod
    def from_name(cls, name: str) -> ClusterStatus:
        """Parse a status name, case-insensitively."""
        try:
            return cls[name.upper()]
        except KeyError:
            valid = ", ".join(s.name for s in cls)
            raise ValueError(f"{name!r} is not a valid ClusterStatus (one of {valid})") from None

    def __repr__(self) -> str:
        return f"ClusterStatus.{self.name}"


class GatewaySecurity(Security):
    """TLS settings for talking to one cluster's scheduler.

    The gateway issues each cluster a single self-signed certificate used by every
    party, so it is both the trusted CA and our client certificate. Hostnames are not
    checked: the certificate is pinned instead, and the proxy routes on SNI.
    """

    def __init__(self, tls_key: str, tls_cert: str):
        self.tls_key = tls_key
        self.tls_cert = tls_cert
        self._ssl_context: ssl.SSLContext | None = None
        super().__init__(require_encryption=True)

    def _build_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=self.tls_cert)
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.check_hostname = False
        # The cluster certificate is a leaf used as its own CA, which strict X.509
        # verification (default on newer Pythons) would refuse.
        ctx.verify_flags &= ~ssl.VERIFY_X509_STRICT
        # The ssl module can only load a client certificate from files: write them to a
        # private directory and remove them right away.
        with tempfile.TemporaryDirectory(prefix="dask-gateway-") as tmp:
            cert_path = os.path.join(tmp, "dask.crt")
            key_path = os.path.join(tmp, "dask.pem")
            for path, text in ((cert_path, self.tls_cert), (key_path, self.tls_key)):
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as f:
                    f.write(text)
            ctx.load_cert_chain(cert_path, key_path)
        return ctx

    def get_connection_args(self, role: str) -> dict[str, Any]:
        if self._ssl_context is None:
            self._ssl_context = self._build_context()
        return {
            "ssl_context": self._ssl_context,
            "require_encryption": True,
            "extra_conn_args": self.extra_conn_args,
        }

    def get_listen_args(self, role: str) -> dict[str, Any]:
        raise NotImplementedError("GatewaySecurity is for clients; it cannot listen")

    def __repr__(self) -> str:
        return "GatewaySecurity<...>"


def _datetime_from_ms(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000)


async def _finish(result: Awaitable[None] | None) -> None:
    """Await what a two-mode method returned: an awaitable when it runs asynchronously,
    None when it already ran (a synchronous object used in ``async with``)."""
    if result is not None:
        await result


class ClusterReport:
    """A snapshot of one cluster, as reported by the gateway."""

    __slots__ = (
        "name",
        "options",
        "status",
        "scheduler_address",
        "dashboard_link",
        "start_time",
        "stop_time",
        "tls_cert",
        "tls_key",
    )

    def __init__(
        self,
        name: str,
        options: dict[str, Any],
        status: ClusterStatus,
        scheduler_address: str | None,
        dashboard_link: str | None,
        start_time: datetime,
        stop_time: datetime | None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
    ):
        self.name = name
        self.options = options
        self.status = status
        self.scheduler_address = scheduler_address
        self.dashboard_link = dashboard_link
        self.start_time = start_time
        self.stop_time = stop_time
        self.tls_cert = tls_cert
        self.tls_key = tls_key

    def __repr__(self) -> str:
        return f"ClusterReport<name={self.name}, status={self.status.name}>"

    @property
    def security(self) -> GatewaySecurity | None:
        """Credentials for the scheduler; only available while the cluster runs."""
        if self.tls_cert is None or self.tls_key is None:
            return None
        return GatewaySecurity(tls_key=self.tls_key, tls_cert=self.tls_cert)

    @classmethod
    def _from_json(
        cls, data: dict[str, Any], public_address: str, proxy_address: str
    ) -> ClusterReport:
        """Build from the cluster JSON; keys this client does not know are ignored."""
        status = ClusterStatus.from_name(data["status"])
        running = status == ClusterStatus.RUNNING
        route = data.get("dashboard_route")
        return cls(
            name=data["name"],
            options=data.get("options") or {},
            status=status,
            scheduler_address=f"{proxy_address}/{data['name']}" if running else None,
            dashboard_link=public_address + route if route else None,
            start_time=datetime.fromtimestamp(data["start_time"] / 1000),  # never null
            stop_time=_datetime_from_ms(data.get("stop_time")),
            tls_cert=data.get("tls_cert"),
            tls_key=data.get("tls_key"),
        )


def _status_query(status: Any) -> str:
    """Normalise ``list_clusters(status=...)`` to ``NAME1,NAME2``."""
    if isinstance(status, (str, ClusterStatus)):
        status = [status]
    names = []
    for s in status:
        if isinstance(s, ClusterStatus):
            names.append(s.name)
        elif isinstance(s, str):
            names.append(ClusterStatus.from_name(s).name)
        else:
            raise TypeError(f"status must be a ClusterStatus or its name, got {s!r}")
    return ",".join(names)


def _error_message(resp: HTTPResponse) -> str:
    """The server's reason: ``{"error": ...}`` when JSON, else the raw body."""
    text = (resp.body or b"").decode("utf-8", "replace")
    try:
        return str(json.loads(text)["error"])
    except (ValueError, KeyError, TypeError):
        return text or (resp.reason or "")


def _time_arg(key: str, value: Any) -> str:
    """A ``since``/``until`` of ``Gateway.usage`` as the route takes it: ms or ISO 8601."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return str(int(value.timestamp() * 1000))
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise TypeError(
            f"{key} must be a datetime, milliseconds since the epoch or an ISO 8601 string, "
            f"got {value!r}"
        )
    return str(int(value)) if isinstance(value, (int, float)) else value


def _route_missing(resp: HTTPResponse) -> bool:
    """A 404 for the path itself, not for a cluster: the public server answers an unknown
    path with a plain-text ``404: Not Found``, this one (before it had the route) with
    ``{"error": "Not Found"}``; an unknown cluster is ``{"error": "Cluster X not found"}``."""
    if resp.code != 404:
        return False
    try:
        data = json.loads(resp.body or b"")
    except ValueError:
        return True
    return not isinstance(data, dict) or data.get("error") in (None, "Not Found")


#: What a server without the events, logs, usage or quota routes cannot do, for the error
#: it gives.
_FEATURES = {
    "events": "keep cluster events",
    "logs": "keep cluster logs",
    "usage": "report usage",
    "quota": "have quotas over time",
}

#: The header of a create, scale or adapt answer when a quota over time is nearly (or
#: fully) used: its message, percent-encoded.
WARNING_HEADER = "X-Dask-Gateway-Warning"

#: The ways ``Gateway.usage`` can group the use.
USAGE_BY = ("user", "group", "cluster", "day")

#: Longest long-poll the events route holds (seconds, its own limit).
MAX_EVENTS_WAIT = 60
#: Longest a failed start's error waits for the event that says why (seconds).
HISTORY_WAIT = 10.0
#: Longest a started cluster waits, after connecting, for its last progress lines (seconds).
PROGRESS_GRACE = 0.5


class Gateway(SyncMethodMixin):
    """A connection to a dask-gateway server.

    Parameters
    ----------
    address : str, optional
        URL of the gateway, default config ``gateway.address``.
    proxy_address : str or int, optional
        Where scheduler connections go (``host:port``, a URL, or a port on the host of
        ``address``); default config ``gateway.proxy-address``, else ``address``'s.
    public_address : str, optional
        Browser-facing root for dashboard links; default ``address``.
    auth : GatewayAuth or str, optional
        Authentication, default config ``gateway.auth.type``.
    asynchronous : bool, optional
        Return awaitables instead of blocking (use inside a running event loop).
    loop : IOLoop, optional
        A running event loop to use instead of a background one.
    """

    def __init__(
        self,
        address: str | None = None,
        proxy_address: str | int | None = None,
        public_address: str | None = None,
        auth: GatewayAuth | str | None = None,
        asynchronous: bool = False,
        loop: Any = None,
    ):
        self.address = resolve_address(address)
        self.proxy_address = resolve_proxy_address(proxy_address, self.address)
        self._public_address = resolve_public_address(public_address, self.address)
        self.auth = get_auth(auth)
        self._proxy = proxy_settings(
            self.address, dask.config.get("gateway.http-client.proxy", True)
        )
        self._http: HTTPClient | None = None
        self._asynchronous = asynchronous
        self._loop_runner = LoopRunner(loop=loop, asynchronous=asynchronous)
        self._loop_runner.start()
        self._cached_loop = self._loop_runner.loop
        self._closed = False

    @property
    def loop(self) -> Any:
        """The tornado IOLoop that runs this gateway's requests."""
        return self._cached_loop

    def __repr__(self) -> str:
        return f"Gateway<{self.address}>"

    def _repr_html_(self) -> str:
        return f"<div><b>Gateway</b>: {escape(self.address)}</div>"

    def _repr_mimebundle_(self, **kwargs: Any) -> dict | None:
        """A live list of the user's clusters in Jupyter; None falls back to the HTML repr."""
        from .widgets import gateway_mimebundle

        return gateway_mimebundle(self, **kwargs)

    # ------------------------------------------------------------------ lifecycle

    async def _close_http(self) -> None:
        if self._http is not None:
            http, self._http = self._http, None
            await http.close()

    def close(self) -> Awaitable[None] | None:
        """Release the HTTP client and, in synchronous mode, the background loop."""
        if self._closed:
            return NoOpAwaitable() if self.asynchronous else None
        self._closed = True
        if self.asynchronous:
            return self._close_http()
        try:
            self.sync(self._close_http)
        finally:
            self._loop_runner.stop()
        return None

    def __enter__(self) -> Gateway:
        return self

    def __exit__(self, *args: Any) -> None:
        self.close()

    async def __aenter__(self) -> Gateway:
        return self

    async def __aexit__(self, *args: Any) -> None:
        await _finish(self.close())

    def __del__(self) -> None:
        # Only the background loop thread needs releasing; skip when already closed,
        # in async mode, or when running on that very thread (it cannot join itself).
        if getattr(self, "_closed", True) or self._asynchronous or self.asynchronous:
            return
        self._closed = True
        _finalize_in_thread(self._loop_runner.stop, repr(self))

    # ------------------------------------------------------------------ HTTP

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")

    async def _request(
        self,
        method: str,
        path: str,
        body: Any = None,
        timeout: float | None = None,
        feature: str | None = None,
    ) -> Any:
        """Send an API request and return the decoded JSON (None for empty bodies).

        ``feature`` names a route not every server has (a key of ``_FEATURES``): its absence
        raises ``GatewayUnsupportedError`` rather than a 404 about a cluster.
        """
        resp = await self._fetch(method, path, body, timeout, feature)
        return json.loads(resp.body) if resp.body else None

    async def _request_warning(self, method: str, path: str, body: Any) -> tuple[Any, str | None]:
        """As ``_request``, for a create, scale or adapt: also warns (``GatewayWarning``)
        with the gateway's quota warning, and returns it (None: none)."""
        resp = await self._fetch(method, path, body)
        value = resp.headers.get(WARNING_HEADER) if resp.headers is not None else None
        warning = unquote(value) if value else None
        if warning:
            warnings.warn(GatewayWarning(warning), stacklevel=3)
        return (json.loads(resp.body) if resp.body else None), warning

    async def _fetch(
        self,
        method: str,
        path: str,
        body: Any = None,
        timeout: float | None = None,
        feature: str | None = None,
    ) -> HTTPResponse:
        """Send an API request; raise the client's error for an error answer."""
        self._check_open()
        if self._http is None:
            self._http = HTTPClient(_AuthHooks(self.auth), self._proxy)
        kwargs = {} if timeout is None else {"timeout": timeout}
        payload = None if body is None else json.dumps(body).encode()
        resp = await self._http.fetch(method, self.address + path, payload, **kwargs)
        if resp.code >= 400:
            if feature is not None and _route_missing(resp):
                hint = (
                    " Its administrator can read the logs on the gateway's machine."
                    if feature in ("events", "logs")
                    else ""
                )
                raise GatewayUnsupportedError(
                    f"The gateway at {self.address} does not {_FEATURES[feature]}: it has no "
                    f"{feature} route (the public dask-gateway-server, or an older version of "
                    f"this one).{hint}"
                )
            msg = _error_message(resp)
            if resp.code in (404, 422, 429):
                raise GatewayRequestError(msg, resp.code)
            if resp.code == 409:
                raise GatewayClusterError(msg)
            if resp.code == 500:
                raise GatewayServerError(msg)
            raise HTTPClientError(resp.code, message=msg, response=resp)
        return resp

    def _report(self, data: dict[str, Any]) -> ClusterReport:
        return ClusterReport._from_json(data, self._public_address, self.proxy_address)

    # ------------------------------------------------------------------ API

    async def _list_clusters(self, status: Any = None) -> list[ClusterReport]:
        path = "/api/v1/clusters/"
        if status is not None:
            path += "?status=" + _status_query(status)
        data = await self._request("GET", path)
        return [self._report(c) for c in data.values()]

    def list_clusters(self, status: Any = None, **kwargs: Any) -> list[ClusterReport]:
        """List this user's clusters (by default the pending and running ones).

        ``status`` may be a ``ClusterStatus``, a status name, or a list of them.
        """
        return self.sync(self._list_clusters, status, **kwargs)

    async def _get_cluster(self, cluster_name: str, wait: bool = False) -> ClusterReport:
        path = "/api/v1/clusters/" + quote(cluster_name, safe="")
        if wait:
            path += "?wait"
        return self._report(await self._request("GET", path))

    def get_cluster(self, cluster_name: str, **kwargs: Any) -> ClusterReport:
        """Get a report of one cluster."""
        return self.sync(self._get_cluster, cluster_name, **kwargs)

    async def _get_cluster_resources(self, cluster_name: str) -> dict[str, int]:
        path = f"/api/v1/clusters/{quote(cluster_name, safe='')}/workers"
        return await self._request("GET", path)

    def get_cluster_resources(self, cluster_name: str, **kwargs: Any) -> dict[str, int]:
        """Running workers and their total cores and memory (bytes) of one cluster.

        Kept apart from the standard cluster report, whose keys are fixed by the wire
        format. Servers without this route (the public dask-gateway) raise ``ValueError``.
        """
        return self.sync(self._get_cluster_resources, cluster_name, **kwargs)

    async def _get_versions(self) -> dict[str, Any]:
        server = await self._request("GET", "/api/version")
        return {"server": server, "client": {"version": __version__}}

    def get_versions(self, **kwargs: Any) -> dict[str, Any]:
        """Versions of the server and of this client, to diagnose mismatches."""
        return self.sync(self._get_versions, **kwargs)

    async def _cluster_options(self, use_local_defaults: bool = True) -> Options:
        options = Options._from_spec(await self._request("GET", "/api/v1/options"))
        if use_local_defaults:
            options.update(format_template(dask.config.get("gateway.cluster.options", None) or {}))
        return options

    def cluster_options(self, use_local_defaults: bool = True, **kwargs: Any) -> Options:
        """The options the server offers for new clusters, pre-filled with defaults.

        With ``use_local_defaults`` the values of config ``gateway.cluster.options``
        are applied on top of the server's defaults.
        """
        return self.sync(self._cluster_options, use_local_defaults, **kwargs)

    async def _submit(self, cluster_options: Options | None = None, **kwargs: Any) -> str:
        name, _ = await self._submit_warning(cluster_options, **kwargs)
        return name

    async def _submit_warning(
        self, cluster_options: Options | None = None, **kwargs: Any
    ) -> tuple[str, str | None]:
        """Submit; the new cluster's name and the gateway's quota warning (None: none)."""
        if cluster_options is not None:
            if not isinstance(cluster_options, Options):
                raise TypeError(
                    "cluster_options must be an `Options` object (see "
                    f"`Gateway.cluster_options()`), got {type(cluster_options).__name__}"
                )
            options = dict(cluster_options)
        else:
            options = format_template(dask.config.get("gateway.cluster.options", None) or {})
        options.update(kwargs)
        data, warning = await self._request_warning(
            "POST", "/api/v1/clusters/", {"cluster_options": options}
        )
        return data["name"], warning

    def submit(self, cluster_options: Options | None = None, **kwargs: Any) -> str:
        """Ask for a new cluster without waiting for it to start; returns its name.

        Keyword arguments override individual options.
        """
        return self.sync(self._submit, cluster_options, **kwargs)

    async def _wait_for_start(self, cluster_name: str) -> ClusterReport:
        """Long-poll the cluster until it runs; raise if it failed or was stopped."""
        while True:
            report = await self._get_cluster(cluster_name, wait=True)
            if report.status == ClusterStatus.RUNNING:
                return report
            if report.status == ClusterStatus.FAILED:
                events = await self._history(cluster_name, "failed")
                error = GatewayClusterError(self._start_failure(cluster_name, events))
            elif report.status == ClusterStatus.STOPPED:
                events = await self._history(cluster_name, "stopped")
                error = GatewayClusterError(self._stopped_message(cluster_name, events))
            else:
                await asyncio.sleep(0.5)
                continue
            error.events = tuple(events or ())
            raise error

    async def _history(self, cluster_name: str, last: str) -> list[ClusterEvent] | None:
        """An ended cluster's events for an error message, up to its ``last`` kind of event:
        the gateway may show the cluster's end a moment before that event is stored, so read
        on (the route waits) until it comes or the cluster is done, for at most
        ``HISTORY_WAIT`` s. None when they cannot be had (a server without the route, a
        network error): the message then says less, but still comes."""
        deadline = asyncio.get_running_loop().time() + HISTORY_WAIT
        events: list[ClusterEvent] = []
        try:
            page = await self._events_page(cluster_name)
            while True:
                events.extend(page.events)
                remaining = deadline - asyncio.get_running_loop().time()
                if page.done or remaining <= 0 or any(e.kind == last for e in page.events):
                    return events
                page = await self._events_page(cluster_name, page.cursor, remaining)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.debug("No events of %s for its error message: %s", cluster_name, exc)
            return events or None

    @staticmethod
    def _start_failure(cluster_name: str, events: list[ClusterEvent] | None) -> str:
        """Why the cluster failed to start, in the words of its ``failed`` event."""
        message = start_failure_message(cluster_name, events or [])
        if message is not None:
            return message
        hint = "" if events is None else f" (its logs: gateway.get_logs({cluster_name!r}))"
        return f"Cluster {cluster_name!r} failed to start, see logs for more information{hint}"

    @staticmethod
    def _stopped_message(cluster_name: str, events: list[ClusterEvent] | None) -> str:
        reason = stop_reason(events or [])
        text = f"Cluster {cluster_name!r} is already stopped"
        return f"{text}: {reason}" if reason else text

    # ------------------------------------------------------------------ events and logs

    async def _events_page(
        self, cluster_name: str, after: int | None = None, wait: float | None = None
    ) -> EventPage:
        """One answer of the events route (events after ``after``, held up to ``wait`` s
        until one comes), with its cursor and whether the cluster has ended."""
        query: dict[str, Any] = {}
        if after is not None:
            if isinstance(after, bool) or not isinstance(after, int) or after < 0:
                raise ValueError(f"after must be a non-negative event id, got {after!r}")
            query["after"] = after
        if wait is not None:
            if isinstance(wait, bool) or not isinstance(wait, (int, float)) or wait < 0:
                raise ValueError(f"wait must be a number of seconds >= 0, got {wait!r}")
            wait = min(float(wait), MAX_EVENTS_WAIT)
            query["wait"] = f"{wait:g}"
        path = f"/api/v1/clusters/{quote(cluster_name, safe='')}/events"
        if query:
            path += "?" + urlencode(query)
        timeout = None if not wait else wait + 60
        data = await self._request("GET", path, timeout=timeout, feature="events")
        if not isinstance(data, dict):
            raise GatewayServerError(f"Unexpected answer of the events route: {data!r}")
        return EventPage._from_json(data, after or 0)

    async def _events(
        self, cluster_name: str, after: int | None = None, wait: float | None = None
    ) -> list[ClusterEvent]:
        page = await self._events_page(cluster_name, after, wait)
        events = list(page.events)
        if wait:
            return events
        # The route answers at most 1,000 events at a time: read on to the end.
        while len(page.events) >= 1000 and page.cursor > (after or 0):
            after = page.cursor
            page = await self._events_page(cluster_name, after)
            events.extend(page.events)
        return events

    def events(
        self,
        cluster_name: str,
        after: int | None = None,
        wait: float | None = None,
        **kwargs: Any,
    ) -> list[ClusterEvent]:
        """The history of a cluster (also a stopped or failed one), oldest first.

        ``after``: only events with a larger ``id`` (pass the last ``id`` you saw to read
        on). ``wait``: when there is no such event yet and the cluster has not ended, wait up
        to this many seconds (at most 60) for one. Servers that keep no events (the public
        dask-gateway-server) raise ``GatewayUnsupportedError``.
        """
        return self.sync(self._events, cluster_name, after, wait, **kwargs)

    async def _user_events(
        self,
        after: int | None = None,
        wait: float | None = None,
        since: Any = None,
        all_users: bool = False,
    ) -> EventPage:
        query: dict[str, Any] = {}
        if after is not None:
            if isinstance(after, bool) or not isinstance(after, int) or after < 0:
                raise ValueError(f"after must be a non-negative event id, got {after!r}")
            query["after"] = after
        if since is not None:
            query["since"] = _time_arg("since", since)
        if wait is not None:
            if isinstance(wait, bool) or not isinstance(wait, (int, float)) or not wait >= 0:
                raise ValueError(f"wait must be a number of seconds >= 0, got {wait!r}")
            wait = min(float(wait), MAX_EVENTS_WAIT)
            query["wait"] = f"{wait:g}"
        if all_users:
            query["all"] = 1
        path = "/api/v1/events" + ("?" + urlencode(query) if query else "")
        timeout = None if not wait else wait + 60
        data = await self._request("GET", path, timeout=timeout, feature="events")
        if not isinstance(data, dict):
            raise GatewayServerError(f"Unexpected answer of the events route: {data!r}")
        return EventPage._from_json(data, after or 0)

    def user_events(
        self,
        after: int | None = None,
        wait: float | None = None,
        since: Any = None,
        all_users: bool = False,
        **kwargs: Any,
    ) -> EventPage:
        """One page of the events of all this user's clusters (``all_users=True``: every
        user's; admins only), oldest first, at most 1,000: ``(events, cursor, done)``.

        Each event names its ``cluster`` and ``user``. To follow them, pass the page's
        ``cursor`` as ``after`` of the next call; ``wait`` holds the call up to this many
        seconds (at most 60) until an event comes, so one call at a time follows every
        cluster at once. ``since`` (a ``datetime``, milliseconds since the epoch or an ISO
        8601 string) starts from a time rather than a cursor. Servers that keep no events
        (the public dask-gateway-server) raise ``GatewayUnsupportedError``.
        """
        return self.sync(self._user_events, after, wait, since, all_users, **kwargs)

    async def _get_logs(
        self, cluster_name: str, component: str | None = None, tail: int | None = None
    ) -> dict[str, str]:
        query: dict[str, Any] = {}
        if component is not None:
            if not isinstance(component, str) or not component:
                raise ValueError(
                    "component must be 'scheduler' or 'worker:NAME' (a key of get_logs()), "
                    f"got {component!r}"
                )
            query["component"] = component
        if tail is not None:
            if isinstance(tail, bool) or not isinstance(tail, int) or tail < 1:
                raise ValueError(f"tail must be a number of lines >= 1, got {tail!r}")
            query["tail"] = tail
        path = f"/api/v1/clusters/{quote(cluster_name, safe='')}/logs"
        if query:
            path += "?" + urlencode(query)
        data = await self._request("GET", path, feature="logs")
        logs = data.get("logs") if isinstance(data, dict) else None
        if not isinstance(logs, dict):
            raise GatewayServerError(f"Unexpected answer of the logs route: {data!r}")
        return {str(k): str(v) for k, v in logs.items()}

    def get_logs(
        self,
        cluster_name: str,
        component: str | None = None,
        tail: int | None = None,
        **kwargs: Any,
    ) -> dict[str, str]:
        """The logs of a cluster (also a stopped or failed one): ``{component: text}``.

        Components are ``"scheduler"`` and ``"worker:NAME"`` (scheduler first, then workers
        by start time). ``component``: only that one; ``tail``: only the last lines of each.
        The gateway keeps the newest part of each log (its size is capped). Servers that
        keep no logs (the public dask-gateway-server) raise ``GatewayUnsupportedError``.
        """
        return self.sync(self._get_logs, cluster_name, component, tail, **kwargs)

    # ------------------------------------------------------------------ usage and quotas

    async def _usage(
        self,
        since: Any = None,
        until: Any = None,
        by: str = "user",
        user: str | None = None,
        group: str | None = None,
    ) -> dict[str, Any]:
        if by not in USAGE_BY:
            raise ValueError(f"by must be one of {', '.join(USAGE_BY)}, got {by!r}")
        query: dict[str, Any] = {"by": by}
        for key, value in (("since", since), ("until", until)):
            if value is not None:
                query[key] = _time_arg(key, value)
        for key, name in (("user", user), ("group", group)):
            if name is not None:
                if not isinstance(name, str) or not name:
                    raise ValueError(f"{key} must be a non-empty name, got {name!r}")
                query[key] = name
        data = await self._usage_page(query)
        # Paged (1,000 rows at a time): read on, over the same period as the first page
        # (its until was "now" when not given).
        offset = data.get("next_offset")
        while isinstance(offset, int) and not isinstance(offset, bool):
            query.update(since=data["since"], until=data["until"], offset=offset)
            page = await self._usage_page(query)
            data["rows"].extend(page.get("rows") or [])
            following = page.get("next_offset")
            offset = following if isinstance(following, int) and following > offset else None
        data["next_offset"] = None
        return data

    async def _usage_page(self, query: dict[str, Any]) -> dict[str, Any]:
        data = await self._request("GET", "/api/v1/usage?" + urlencode(query), feature="usage")
        if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
            raise GatewayServerError(f"Unexpected answer of the usage route: {data!r}")
        return data

    def usage(
        self,
        since: Any = None,
        until: Any = None,
        by: str = "user",
        user: str | None = None,
        group: str | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """Core-hours and memory GiB-hours used, as the gateway's usage report (a dict:
        ``rows`` grouped ``by`` "user", "group", "cluster" or "day", and their ``total``).

        ``since``/``until``: a ``datetime`` (naive: UTC), milliseconds since the epoch, or
        an ISO 8601 string; default the current quota period up to now. ``user``/``group``:
        only theirs (another user's needs an admin). Every page of the report is read: all
        the rows come back at once. Servers without usage accounting (the public
        dask-gateway-server) raise ``GatewayUnsupportedError``.
        """
        return self.sync(self._usage, since, until, by, user, group, **kwargs)

    async def _quota(self, user: str | None = None) -> dict[str, Any]:
        path = "/api/v1/quota"
        if user is not None:
            if not isinstance(user, str) or not user:
                raise ValueError(f"user must be a non-empty name, got {user!r}")
            path += "?" + urlencode({"user": user})
        data = await self._request("GET", path, feature="quota")
        if not isinstance(data, dict):
            raise GatewayServerError(f"Unexpected answer of the quota route: {data!r}")
        return data

    def quota(self, user: str | None = None, **kwargs: Any) -> dict[str, Any]:
        """Where this user (or, for an admin, ``user``) stands in the current period: the
        ``use`` so far, each quota (``quotas``: limit, used, share), ``state`` ("ok",
        "warning" or "exhausted") and a ``message`` saying which quota, how much is used
        and when the period ends. Servers without quotas over time (the public
        dask-gateway-server) raise ``GatewayUnsupportedError``.
        """
        return self.sync(self._quota, user, **kwargs)

    def connect(self, cluster_name: str, shutdown_on_close: bool = False) -> GatewayCluster:
        """Attach to an existing cluster (awaitable in asynchronous mode)."""
        return GatewayCluster.from_name(
            cluster_name,
            shutdown_on_close=shutdown_on_close,
            **self._cluster_kwargs(),
        )

    def new_cluster(
        self, cluster_options: Options | None = None, shutdown_on_close: bool = True, **kwargs: Any
    ) -> GatewayCluster:
        """Create a cluster and wait until it runs (awaitable in asynchronous mode)."""
        return GatewayCluster(
            cluster_options=cluster_options,
            shutdown_on_close=shutdown_on_close,
            **self._cluster_kwargs(),
            **kwargs,
        )

    def _cluster_kwargs(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "proxy_address": self.proxy_address,
            "public_address": self._public_address,
            "auth": self.auth,
            "asynchronous": self._asynchronous,
            "loop": self.loop,
        }

    async def _stop_cluster(self, cluster_name: str) -> None:
        await self._request("DELETE", "/api/v1/clusters/" + quote(cluster_name, safe=""))

    def stop_cluster(self, cluster_name: str, **kwargs: Any) -> Awaitable[None] | None:
        """Stop a cluster (no error if it is already stopped)."""
        return self.sync(self._stop_cluster, cluster_name, **kwargs)

    async def _post_with_warning(self, path: str, body: dict[str, Any]) -> None:
        data, _ = await self._request_warning("POST", path, body)
        if data and not data.get("ok", True) and data.get("msg"):
            warnings.warn(GatewayWarning(data["msg"]), stacklevel=2)

    async def _scale_cluster(self, cluster_name: str, n: int) -> None:
        path = f"/api/v1/clusters/{quote(cluster_name, safe='')}/scale"
        await self._post_with_warning(path, {"count": n})

    def scale_cluster(self, cluster_name: str, n: int, **kwargs: Any) -> Awaitable[None] | None:
        """Set a cluster's worker count (turns adaptive scaling off)."""
        return self.sync(self._scale_cluster, cluster_name, n, **kwargs)

    async def _adapt_cluster(
        self,
        cluster_name: str,
        minimum: int | None = None,
        maximum: int | None = None,
        active: bool = True,
    ) -> None:
        path = f"/api/v1/clusters/{quote(cluster_name, safe='')}/adapt"
        await self._post_with_warning(
            path, {"minimum": minimum, "maximum": maximum, "active": active}
        )

    def adapt_cluster(
        self,
        cluster_name: str,
        minimum: int | None = None,
        maximum: int | None = None,
        active: bool = True,
        **kwargs: Any,
    ) -> Awaitable[None] | None:
        """Let the scheduler scale between ``minimum`` and ``maximum`` workers.

        ``active=False`` stops adapting (the current worker count is kept).
        """
        return self.sync(self._adapt_cluster, cluster_name, minimum, maximum, active, **kwargs)


async def _follow_worker_updates(comm: Any, info: dict[str, Any]) -> None:
    """Apply the scheduler's worker add/remove messages to ``info`` until the comm closes.

    A plain function rather than a method so that the running task does not keep the
    cluster alive: an unreferenced cluster can then be garbage collected and closed.
    """
    while True:
        try:
            msgs = await comm.read()
        except (CommClosedError, OSError):
            return
        for op, msg in msgs:
            if op == "add":
                info["workers"].update(msg.pop("workers"))
                info.update(msg)
            elif op == "remove":
                info["workers"].pop(msg, None)


# Synchronous clusters still open at interpreter exit are closed by an atexit hook.
_live_clusters: weakref.WeakSet[GatewayCluster] = weakref.WeakSet()


def _finalize_in_thread(work: Any, what: str) -> None:
    """Run a finalizer's blocking work in a thread of its own. ``__del__`` runs in whichever
    thread the garbage collector happened to run, possibly one holding distributed's
    LoopRunner class lock while it starts another loop (then stopping a loop there deadlocks
    until that start fails after 10 s), or that loop's thread itself before it runs. Not a
    daemon: a forgotten cluster is still stopped before the interpreter exits. Once the
    interpreter is exiting (the main thread has stopped: new threads would not be waited for,
    and no other loop is starting), the work is done in place."""
    if sys.is_finalizing() or not threading.main_thread().is_alive():
        work()
        return
    threading.Thread(target=work, name=f"finalize {what}", daemon=False).start()


class GatewayCluster:
    """A dask cluster managed by a dask-gateway server.

    Creating one submits a new cluster and waits until it runs (in asynchronous
    mode: on ``await cluster``). Use ``GatewayCluster.from_name`` to attach to an
    existing cluster. Pass it to ``distributed.Client`` or call ``get_client()``.

    Parameters
    ----------
    address, proxy_address, public_address, auth, asynchronous, loop
        As for ``Gateway``.
    cluster_options : Options, optional
        Options for the new cluster; keyword arguments override single options.
    shutdown_on_close : bool, optional
        Stop the cluster when this object is closed or the process exits. Turn off to
        keep it running and reconnect later with ``Gateway.connect``.
    """

    def __init__(
        self,
        address: str | None = None,
        proxy_address: str | int | None = None,
        public_address: str | None = None,
        auth: GatewayAuth | str | None = None,
        cluster_options: Options | None = None,
        shutdown_on_close: bool = True,
        asynchronous: bool = False,
        loop: Any = None,
        **kwargs: Any,
    ):
        self._init(
            name=None,
            address=address,
            proxy_address=proxy_address,
            public_address=public_address,
            auth=auth,
            cluster_options=cluster_options,
            shutdown_on_close=shutdown_on_close,
            asynchronous=asynchronous,
            loop=loop,
            option_overrides=kwargs,
        )

    @classmethod
    def from_name(
        cls,
        cluster_name: str,
        shutdown_on_close: bool = False,
        address: str | None = None,
        proxy_address: str | int | None = None,
        public_address: str | None = None,
        auth: GatewayAuth | str | None = None,
        asynchronous: bool = False,
        loop: Any = None,
    ) -> GatewayCluster:
        """Attach to the existing cluster ``cluster_name``, waiting until it runs."""
        self = cls.__new__(cls)
        self._init(
            name=cluster_name,
            address=address,
            proxy_address=proxy_address,
            public_address=public_address,
            auth=auth,
            cluster_options=None,
            shutdown_on_close=shutdown_on_close,
            asynchronous=asynchronous,
            loop=loop,
            option_overrides={},
        )
        return self

    def _init(
        self,
        name: str | None,
        address: str | None,
        proxy_address: str | int | None,
        public_address: str | None,
        auth: GatewayAuth | str | None,
        cluster_options: Options | None,
        shutdown_on_close: bool,
        asynchronous: bool,
        loop: Any,
        option_overrides: dict[str, Any],
    ) -> None:
        self.status = "created"
        self._asynchronous = asynchronous
        self.name = name
        self.shutdown_on_close = shutdown_on_close
        self.scheduler_address: str | None = None
        self.dashboard_link: str | None = None
        self.security: GatewaySecurity | None = None
        self.scheduler_info: dict[str, Any] = SchedulerInfo({"workers": {}})
        self._cluster_options = cluster_options
        self._option_overrides = option_overrides
        self._start_task: asyncio.Future | None = None
        self._progress_shown: asyncio.Future | None = None
        self._scheduler_comm: rpc | None = None
        self._watch_comm: Any = None
        self._lease_comm: Any = None
        self._watch_task: asyncio.Task | None = None
        self._clients: weakref.WeakSet = weakref.WeakSet()
        #: The gateway's last quota warning for this cluster's creation (None: none); the
        #: cluster widget shows it.
        self.quota_warning: str | None = None
        self.gateway = Gateway(
            address=address,
            proxy_address=proxy_address,
            public_address=public_address,
            auth=auth,
            asynchronous=asynchronous,
            loop=loop,
        )
        if not asynchronous:
            _live_clusters.add(self)
            try:
                self.gateway.sync(self._start)
            except BaseException:
                # Failed, or interrupted (Ctrl-C) while waiting: do not leave a
                # half-started cluster running behind the user's back.
                self.close()
                raise

    # ------------------------------------------------------------------ properties

    @property
    def loop(self) -> Any:
        return self.gateway.loop

    @property
    def asynchronous(self) -> bool:
        """True when called from inside this cluster's event loop."""
        return self.gateway.asynchronous

    @property
    def scheduler_comm(self) -> rpc | None:
        """The ``rpc`` to the scheduler while connected (as in the public client)."""
        return self._scheduler_comm

    def __repr__(self) -> str:
        return f"GatewayCluster<{self.name}, status={self.status}>"

    def _repr_html_(self) -> str:
        if self.dashboard_link:
            link = escape(self.dashboard_link)
            dashboard = f'<a href="{link}" target="_blank">{link}</a>'
        else:
            dashboard = "Not Available"
        return (
            "<div><b>GatewayCluster</b><ul>"
            f"<li><b>Name: </b>{escape(str(self.name))}</li>"
            f"<li><b>Status: </b>{escape(self.status)}</li>"
            f"<li><b>Dashboard: </b>{dashboard}</li>"
            "</ul></div>"
        )

    def _repr_mimebundle_(self, **kwargs: Any) -> dict | None:
        """Live status and scaling controls in Jupyter; None falls back to the HTML repr."""
        from .widgets import cluster_mimebundle

        return cluster_mimebundle(self, **kwargs)

    # ------------------------------------------------------------------ start

    async def _start(self) -> None:
        """Start (or attach) once; concurrent awaits share the same attempt."""
        if self._start_task is None:
            self._start_task = asyncio.ensure_future(self._start_async())
        await self._start_task

    async def _start_async(self) -> None:
        """Submit (unless attaching), wait until the cluster runs, then connect to it.

        Called once per cluster object; a subclass may extend it (``await
        super()._start_async()`` first), as with the public client.
        """
        self.status = "starting"
        progress: StartProgress | None = None
        attaching = self.name is not None
        if self.name is None:
            self.name, self.quota_warning = await self.gateway._submit_warning(
                self._cluster_options, **self._option_overrides
            )
            # The notebook's sidebar selects it now, while it starts (once it exists).
            announce_cluster(self.name, self.gateway.address)
            progress = self._start_progress(self.name)
        try:
            report = await self.gateway._wait_for_start(self.name)
        except BaseException as exc:
            if progress is not None:
                # The phases the reader had not shown yet, the failure among them.
                progress.abort(getattr(exc, "events", ()))
            raise
        if attaching:  # once the gateway has confirmed the name
            announce_cluster(self.name, self.gateway.address)
        self.scheduler_address = report.scheduler_address
        self.dashboard_link = report.dashboard_link
        self.security = report.security
        # The last phases are shown while the scheduler is connected: no added wait. (A slow
        # gateway gets a moment more; past it, the lines come when they come.)
        shown = None if progress is None else asyncio.ensure_future(progress.finish())
        try:
            await self._watch_workers()
        except BaseException:
            if shown is not None:
                shown.cancel()
            raise
        if shown is not None:
            await asyncio.wait([shown], timeout=PROGRESS_GRACE)
            self._progress_shown = shown  # referenced until done
        self.status = "running"

    def _start_progress(self, name: str) -> StartProgress | None:
        """Shows the start-up phases of the cluster just submitted (config
        ``gateway.progress``), reading its events beside the wait for it to run."""
        gateway = self.gateway

        async def fetch(after: int, wait: float) -> EventPage:
            return await gateway._events_page(name, after, wait)

        try:
            return start_progress(name, fetch)
        except ValueError as exc:  # a bad gateway.progress setting must not fail the start
            warnings.warn(str(exc), stacklevel=2)
            return None

    async def _watch_workers(self) -> None:
        """Subscribe to the scheduler's worker updates to keep ``scheduler_info`` live."""
        if self.scheduler_address is None or self.security is None:
            raise GatewayClusterError(
                f"The gateway reports cluster {self.name!r} running, but without its "
                "scheduler's address or credentials"
            )
        self._scheduler_comm = rpc(
            self.scheduler_address,
            connection_args=self.security.get_connection_args("client"),
        )
        comm = await self._scheduler_comm.live_comm()
        comm.name = "GatewayCluster worker status"
        await comm.write({"op": "subscribe_worker_status"})
        info = await comm.read()
        features = info.pop(SCHEDULER_FEATURES_KEY, None) if isinstance(info, dict) else None
        self.scheduler_info = SchedulerInfo(info)
        self._watch_comm = comm
        self._watch_task = asyncio.ensure_future(_follow_worker_updates(comm, self.scheduler_info))
        # (msgpack gives a tuple)
        if self.shutdown_on_close and isinstance(features, (list, tuple)) and "lease" in features:
            # Held open while this object lives: if the process dies without shutting the
            # cluster down, the scheduler sees the lease drop and can stop the orphan. Only
            # this project's preload serves the op (and says so above): a scheduler with the
            # public one would log a "No handler" traceback for it.
            lease = await self._scheduler_comm.live_comm()
            lease.name = "GatewayCluster lease"
            await lease.write({"op": "dask_gateway_lease", "reply": False})
            self._lease_comm = lease

    def __await__(self):
        return self._start_and_return().__await__()

    async def _start_and_return(self) -> GatewayCluster:
        try:
            await self._start()
        except BaseException:
            await self._close_async(self.shutdown_on_close)
            raise
        return self

    # ------------------------------------------------------------------ API

    def get_client(self, set_as_default: bool = True) -> Any:
        """A ``distributed.Client`` for this cluster (closed along with it in sync mode)."""
        from distributed import Client

        client = Client(
            self,
            security=self.security,
            set_as_default=set_as_default,
            asynchronous=self._asynchronous,
            loop=self.loop,
        )
        if not self._asynchronous:
            self._clients.add(client)
        return client

    def _submitted_name(self) -> str:
        if self.name is None:
            raise GatewayClusterError("The cluster has not been submitted yet: await it first")
        return self.name

    def scale(self, n: int, **kwargs: Any) -> Awaitable[None] | None:
        """Scale to ``n`` workers (turns adaptive scaling off)."""
        return self.gateway.scale_cluster(self._submitted_name(), n, **kwargs)

    def adapt(
        self,
        minimum: int | None = None,
        maximum: int | None = None,
        active: bool = True,
        **kwargs: Any,
    ) -> Awaitable[None] | None:
        """Scale automatically with the load, between ``minimum`` and ``maximum`` workers."""
        return self.gateway.adapt_cluster(
            self._submitted_name(), minimum=minimum, maximum=maximum, active=active, **kwargs
        )

    def events(
        self, after: int | None = None, wait: float | None = None, **kwargs: Any
    ) -> list[ClusterEvent]:
        """This cluster's history, oldest first (see ``Gateway.events``)."""
        return self.gateway.events(self._submitted_name(), after=after, wait=wait, **kwargs)

    def get_logs(
        self, component: str | None = None, tail: int | None = None, **kwargs: Any
    ) -> dict[str, str]:
        """This cluster's logs, ``{component: text}``: ``"scheduler"`` and
        ``"worker:NAME"`` (see ``Gateway.get_logs``)."""
        return self.gateway.get_logs(
            self._submitted_name(), component=component, tail=tail, **kwargs
        )

    # ------------------------------------------------------------------ close

    async def _close_async(self, shutdown: bool) -> None:
        if self.status == "closed":
            return
        if self._progress_shown is not None and not self._progress_shown.done():
            # The start's last progress lines, late from a slow gateway (bounded): before
            # anything about the close.
            await asyncio.wait([self._progress_shown])
        if self._lease_comm is not None and not shutdown:
            # Left running on purpose: tell the scheduler it is not an orphan.
            try:
                await self._lease_comm.write({"op": "keep"})
            except Exception:
                pass
        try:
            await self._stop_async()
        except Exception:
            # A subclass's extension failed: still stop the cluster if asked to.
            logger.warning("Error while disconnecting %r", self, exc_info=True)
        try:
            if shutdown and self.name is not None:
                await self.gateway._stop_cluster(self.name)
        finally:
            self.status = "closed"
            if self._asynchronous:
                await _finish(self.gateway.close())

    async def _stop_async(self) -> None:
        """Disconnect from the scheduler: the local part of closing, before the cluster is
        stopped (if it is to be). A subclass may extend it (``await super()._stop_async()``),
        as with the public client, which calls it when shutting down too."""
        self.status = "closing"
        if self._start_task is not None and not self._start_task.done():
            self._start_task.cancel()
            await asyncio.wait([self._start_task])
        if self._lease_comm is not None:
            self._lease_comm.abort()
        if self._watch_comm is not None:
            self._watch_comm.abort()
        if self._watch_task is not None:
            await self._watch_task
        if self._scheduler_comm is not None:
            await self._scheduler_comm.close_rpc()

    def close(self, shutdown: bool | None = None) -> Awaitable[None] | None:
        """Disconnect; stop the cluster too if ``shutdown`` (default ``shutdown_on_close``)."""
        if shutdown is None:
            shutdown = self.shutdown_on_close
        if self.asynchronous:
            return self._close_async(shutdown)
        if self.status == "closed":
            self.gateway.close()
            return None
        for client in list(self._clients):
            client.close()
        try:
            self.gateway.sync(self._close_async, shutdown)
        finally:
            self.gateway.close()
        return None

    def shutdown(self) -> Awaitable[None] | None:
        """Stop the cluster and disconnect."""
        return self.close(shutdown=True)

    def __enter__(self) -> GatewayCluster:
        if self._asynchronous:
            raise TypeError("Use `async with` with an asynchronous GatewayCluster")
        return self

    def __exit__(self, *args: Any) -> None:
        self.close()

    async def __aenter__(self) -> GatewayCluster:
        return await self

    async def __aexit__(self, *args: Any) -> None:
        await _finish(self.close())

    def __del__(self) -> None:
        if getattr(self, "status", "closed") == "closed" or getattr(self, "_asynchronous", True):
            return
        gateway = getattr(self, "gateway", None)
        if gateway is None or gateway.asynchronous:
            return  # never started, or on our own loop thread where we cannot block
        _finalize_in_thread(self._close_after_collection, repr(self))

    def _close_after_collection(self) -> None:
        try:
            self.close()
        except Exception as exc:
            logger.warning("Failed to close %r during garbage collection: %s", self, exc)


@atexit.register
def cleanup_lingering_clusters() -> None:
    """Close the synchronous clusters still open (run at exit): those with
    ``shutdown_on_close`` are stopped, so forgotten clusters do not run (and cost) forever."""
    for cluster in list(_live_clusters):
        if cluster.status == "closed":
            continue
        try:
            cluster.close()
        except Exception as exc:
            logger.warning("Failed to close %r at exit: %s", cluster, exc)
