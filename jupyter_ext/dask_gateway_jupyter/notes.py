"""What the sidebar says under a cluster's name: a starting cluster's phase, a failed one's
reason, both from the gateway's events route (``GET /api/v1/clusters/{name}/events``).

The listing is polled every few seconds by every open sidebar, so this must stay cheap: only
pending and failed clusters are asked about, each from the cursor of the last answer (an
answer holds only the events since), never more than a few at once, and a cluster whose
events are complete (it ended) is never asked again. A gateway without the route (the public
dask-gateway answers 404) is asked once per cluster.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from dask_gateway.client import ClusterReport, ClusterStatus

#: The events route of one cluster, relative to the gateway's address (name URL-quoted).
EVENTS_PATH = "/api/v1/clusters/{name}/events"
#: At most this many events calls at once per listing (each is one small request).
MAX_CONCURRENT = 4
#: A listing never waits longer than this for one cluster's events.
EVENTS_TIMEOUT = 10.0

#: ``(path, query, timeout) -> decoded JSON``: a GET on the gateway with the server's own
#: credentials (``GatewayManager.gateway_get``).
GatewayGet = Callable[[str, dict[str, str], float], Awaitable[Any]]


@dataclass
class ClusterNote:
    """What is known of one cluster's events so far."""

    cursor: int = 0
    phase: str | None = None
    reason: str | None = None
    done: bool = False
    #: The gateway has no events route (or refused it): do not ask again.
    unsupported: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def add(self, answer: Any) -> None:
        """Fold one answer of the events route in (ignoring anything malformed)."""
        if not isinstance(answer, dict):
            return
        events = answer.get("events")
        for event in events if isinstance(events, list) else []:
            if not isinstance(event, dict):
                continue
            message = event.get("message")
            if not isinstance(message, str) or not message:
                continue
            if not str(event.get("kind", "")).startswith("worker-"):
                self.phase = message
            if event.get("kind") == "failed":
                self.reason = message
        cursor = answer.get("cursor")
        if isinstance(cursor, int) and not isinstance(cursor, bool) and cursor > self.cursor:
            self.cursor = cursor
        if answer.get("done") is True:
            self.done = True


def wants_events(status: ClusterStatus) -> bool:
    """Only a starting cluster's phase and a failed cluster's reason are shown."""
    return status in (ClusterStatus.PENDING, ClusterStatus.FAILED)


class ClusterNotes:
    """Per-cluster cache of phases and reasons, fed incrementally by cursor."""

    def __init__(self, get: GatewayGet, log: logging.Logger):
        self._get = get
        self._log = log
        self._notes: dict[str, ClusterNote] = {}
        self._limit = asyncio.Semaphore(MAX_CONCURRENT)

    def forget_except(self, names: Iterable[str]) -> None:
        """Drop what is cached of clusters no longer listed."""
        keep = set(names)
        for name in list(self._notes):
            if name not in keep:
                del self._notes[name]

    async def note(self, report: ClusterReport) -> tuple[str | None, str | None]:
        """``(phase, reason)`` of the cluster: phase only while pending, reason once failed."""
        note = self._notes.setdefault(report.name, ClusterNote())
        if wants_events(report.status) and not note.done and not note.unsupported:
            await self._update(report.name, note)
        phase = note.phase if report.status == ClusterStatus.PENDING else None
        reason = note.reason if report.status == ClusterStatus.FAILED else None
        return phase, reason

    async def _update(self, name: str, note: ClusterNote) -> None:
        if note.lock.locked():
            # Another listing is asking right now: show what is known rather than queue.
            return
        async with note.lock, self._limit:
            if note.done or note.unsupported:
                return
            path = EVENTS_PATH.format(name=quote(name, safe=""))
            try:
                answer = await self._get(path, {"after": str(note.cursor)}, EVENTS_TIMEOUT)
            except Exception as e:
                status = getattr(e, "status", None) or getattr(e, "code", None)
                if status in (403, 404):
                    # No such route on this gateway (or not ours to read): never ask again.
                    note.unsupported = True
                self._log.debug("No events for cluster %s: %s", name, e)
                return
            note.add(answer)
