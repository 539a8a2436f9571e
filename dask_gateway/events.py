"""A cluster's history as the gateway records it: ``ClusterEvent`` and the texts made of it.

Kept apart from ``client`` (which fetches events) so that the start-up progress and the
widgets can format events without importing the client.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, NamedTuple

__all__ = ["ClusterEvent", "EventPage", "start_failure_message", "stop_reason"]

#: Lines of a failure's detail (the end of the scheduler's log) put in the error message.
DETAIL_LINES = 20

#: Kinds about the cluster as a whole (not its workers nor its scaling): its start-up phases
#: and its end.
LIFECYCLE_KINDS = frozenset(
    {
        "submitted",
        "starting",
        "queued",
        "scheduler-started",
        "running",
        "stop-requested",
        "stopped",
        "failed",
    }
)


@dataclass(frozen=True)
class ClusterEvent:
    """One entry of a cluster's history, oldest first by ``id``.

    ``kind`` is one of the gateway's event kinds (``submitted``, ``queued``, ``running``,
    ``worker-failed``, ``failed`` ...); ``message`` is one sentence for people; ``worker`` is
    set for the ``worker-*`` kinds; ``detail`` holds longer text, such as the last lines of a
    log. Kinds this client does not know are kept as they come.
    """

    id: int
    time: datetime
    kind: str
    message: str
    worker: str | None = None
    detail: str = ""
    #: The cluster and its owner: set by ``Gateway.user_events`` (one user's or, for an
    #: admin, every user's events), None from a single cluster's history.
    cluster: str | None = None
    user: str | None = None

    @classmethod
    def _from_json(cls, data: Mapping[str, Any]) -> ClusterEvent:
        """Build from one event of the events route; keys this client does not know are
        ignored (the all-clusters route adds ``cluster`` and ``user``)."""
        worker = data.get("worker")
        cluster = data.get("cluster")
        user = data.get("user")
        return cls(
            id=int(data["id"]),
            time=datetime.fromtimestamp(int(data["time"]) / 1000, tz=timezone.utc),
            kind=str(data["kind"]),
            message=str(data.get("message") or ""),
            worker=None if worker is None else str(worker),
            detail=str(data.get("detail") or ""),
            cluster=None if cluster is None else str(cluster),
            user=None if user is None else str(user),
        )

    def __str__(self) -> str:
        when = self.time.astimezone().strftime("%Y-%m-%d %H:%M:%S")
        return f"{when} {self.kind}: {self.message}"


class EventPage(NamedTuple):
    """One answer of the events route: the events, the cursor to ask after next, and whether
    the cluster has ended (no more events will come)."""

    events: list[ClusterEvent]
    cursor: int
    done: bool

    @classmethod
    def _from_json(cls, data: Mapping[str, Any], after: int) -> EventPage:
        events = [ClusterEvent._from_json(e) for e in data.get("events") or []]
        cursor = data.get("cursor")
        if not isinstance(cursor, int):
            cursor = events[-1].id if events else after
        return cls(events, cursor, bool(data.get("done")))


def _last(events: Iterable[ClusterEvent], kind: str) -> ClusterEvent | None:
    found = None
    for event in events:
        if event.kind == kind:
            found = event
    return found


def _tail(text: str, n: int = DETAIL_LINES) -> list[str]:
    lines = text.rstrip("\n").splitlines()
    return lines[-n:]


def start_failure_message(name: str, events: Iterable[ClusterEvent]) -> str | None:
    """The error message of a failed start: the ``failed`` event's sentence, then the last
    lines of its detail; None when the history has no ``failed`` event."""
    failed = _last(events, "failed")
    if failed is None:
        return None
    text = f"Cluster {name!r} failed to start: {failed.message or 'no reason given'}"
    lines = _tail(failed.detail)
    if lines:
        text += "\n" + "\n".join("    " + line for line in lines)
    return text + (
        f"\n(All of its history: gateway.events({name!r}); its logs: gateway.get_logs({name!r}))"
    )


def stop_reason(events: Iterable[ClusterEvent]) -> str | None:
    """Why a cluster stopped, from its last ``stop-requested`` event (None if unknown)."""
    stop = _last(events, "stop-requested")
    return stop.message if stop is not None and stop.message else None
