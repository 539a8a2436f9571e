"""The admin's view of every user's clusters (``GET dask-gateway/clusters?all=1``) and whether
this server's user is an admin (``GET dask-gateway/admin``).

Who is an admin is the gateway's to say, never this server's: both ask the gateway's
``GET /api/v1/overview?all=1``, which answers 403 to anyone else. The public dask-gateway has
no overview route (404): there, nobody is an admin here. One overview call gives every
cluster with its owner and worker counts, so the listing costs one gateway request however
many clusters there are (plus the cached, cursor-fed events of pending and failed ones that
``ClusterNotes`` asks for, a few at a time).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlencode

from tornado.httpclient import HTTPClientError

from dask_gateway import Gateway
from dask_gateway.client import ClusterReport, ClusterStatus, GatewayRequestError

from .errors import RouteError
from .notes import ClusterNotes

#: The gateway's route with every user's clusters (admins only).
OVERVIEW_PATH = "/api/v1/overview"
#: Every status: ended clusters are listed for a while, as in the user's own list.
ALL_STATUSES = "pending,running,stopping,stopped,failed"
#: Ended clusters stay listed this long after they ended...
ENDED_LISTED_FOR = 3600.0
#: ...at most this many of them, the most recent (every user's together).
ENDED_LISTED_MAX = 50
#: How long the gateway's answer to "is this user an admin?" is trusted.
ADMIN_TTL = 60.0
#: Seconds a call to the overview may take.
TIMEOUT = 30.0


def wants_all(value: str | None) -> bool:
    """Whether a ``?all=`` query asks for every user's clusters (as the gateway reads it)."""
    if value is None:
        return False
    return value == "" or value.lower() in ("1", "true", "yes")


def _ms(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def listed_entries(entries: list[dict[str, Any]], now: float) -> list[dict[str, Any]]:
    """The active clusters and the ``ENDED_LISTED_MAX`` most recently ended ones that ended
    within ``ENDED_LISTED_FOR`` seconds (``now``: seconds since the epoch)."""
    active: list[dict[str, Any]] = []
    ended: list[tuple[float, dict[str, Any]]] = []
    for entry in entries:
        if entry.get("status") in ("STOPPED", "FAILED"):
            when = (_ms(entry.get("stop_time")) or _ms(entry.get("start_time")) or 0) / 1000
            if now - when <= ENDED_LISTED_FOR:
                ended.append((when, entry))
        else:
            active.append(entry)
    ended.sort(key=lambda pair: pair[0], reverse=True)
    return active + [e for _, e in ended[:ENDED_LISTED_MAX]]


def entry_model(
    entry: dict[str, Any],
    report: ClusterReport,
    phase: str | None,
    reason: str | None,
    adapt: dict[str, int | None] | None,
    now: float,
) -> dict[str, Any]:
    """One overview entry as the sidebar shows a cluster (the user's own listing's keys, and
    ``user``: its owner). Counts are the gateway's: workers running, and requested; cores and
    memory are what the cluster holds now, its scheduler included (the overview's figures: the
    owner's own list, from each cluster's workers route, counts running workers only, but
    asking that route for every cluster of every user would cost one request each)."""
    workers = entry.get("workers")
    workers = workers if isinstance(workers, dict) else {}
    start = _ms(entry.get("start_time")) or int(now * 1000)
    live = report.status <= ClusterStatus.STOPPING
    cores = entry.get("cores")
    memory = entry.get("memory")
    return {
        "name": report.name,
        "user": str(entry.get("user", "")),
        "status": report.status.name,
        "start_time": start,
        "stop_time": _ms(entry.get("stop_time")),
        "phase": phase,
        "reason": reason,
        "age": max(0.0, now - start / 1000),
        "dashboard_link": report.dashboard_link,
        "options": report.options,
        "workers": _count(workers.get("running")) if live else None,
        "cores": cores if live and isinstance(cores, (int, float)) else None,
        "memory": memory if live and isinstance(memory, (int, float)) else None,
        "requested": _count(workers.get("requested")) if live else None,
        "adapt": adapt,
    }


class AllUsers:
    """Asks the gateway whether this server's user is an admin, and lists every user's
    clusters for one who is."""

    def __init__(
        self,
        gateway: Callable[[], Gateway],
        adapt: Mapping[str, dict[str, int | None]],
        log: logging.Logger,
    ):
        self._gateway = gateway
        self._adapt = adapt
        self._log = log
        self._admin: tuple[bool, float] | None = None
        # Their own cache: the user's listing drops what it does not list.
        self.notes = ClusterNotes(self._get, log)

    async def _get(self, path: str, query: dict[str, str], timeout: float) -> Any:
        gateway = self._gateway()
        if query:
            path = f"{path}?{urlencode(query)}"
        return await gateway._request("GET", path, timeout=timeout)

    async def _overview(self, query: dict[str, str]) -> Any:
        """The gateway's overview of every user (``all=1``); RouteError 403 for a user who is
        not an admin, or when the gateway has no overview (the public one)."""
        try:
            answer = await self._get(OVERVIEW_PATH, {"all": "1", **query}, TIMEOUT)
        except GatewayRequestError as e:
            if e.status == 404:  # the route itself: it names no cluster
                self._admin = (False, time.monotonic())
                raise RouteError(
                    403,
                    "This Dask Gateway does not list every user's clusters (it has no "
                    "overview route: the public dask-gateway-server, or an older version)",
                ) from None
            raise
        except HTTPClientError as e:
            if e.code == 403:
                self._admin = (False, time.monotonic())
                raise RouteError(
                    403, e.message or "Only admins may list every user's clusters"
                ) from None
            raise
        self._admin = (True, time.monotonic())
        return answer

    async def is_admin(self) -> bool:
        """Whether the gateway says this server's user is an admin (cached ``ADMIN_TTL`` s)."""
        if self._admin is not None and time.monotonic() - self._admin[1] < ADMIN_TTL:
            return self._admin[0]
        try:
            # The admin's own active clusters only: a small answer, the same 403 for others.
            await self._overview({"user": "self"})
        except RouteError:
            return False
        return True

    async def listing(self) -> list[dict[str, Any]]:
        """Every user's clusters as the sidebar lists them, by owner then start time."""
        answer = await self._overview({"status": ALL_STATUSES})
        entries = answer.get("clusters") if isinstance(answer, dict) else None
        if not isinstance(entries, list):
            raise RouteError(502, f"Unexpected answer of the gateway's overview: {answer!r}")
        now = time.time()
        gateway = self._gateway()
        readable: list[tuple[dict[str, Any], ClusterReport]] = []
        for entry in listed_entries([e for e in entries if isinstance(e, dict)], now):
            try:
                readable.append((entry, gateway._report(entry)))
            except (KeyError, TypeError, ValueError) as e:
                self._log.debug("Skipping an overview entry it cannot read: %s", e)
        notes = await asyncio.gather(*(self.notes.note(report) for _, report in readable))
        models = [
            entry_model(entry, report, phase, reason, self._adapt.get(report.name), now)
            for (entry, report), (phase, reason) in zip(readable, notes, strict=True)
        ]
        self.notes.forget_except(m["name"] for m in models)
        models.sort(key=lambda m: (m["user"], m["start_time"], m["name"]))
        return models
