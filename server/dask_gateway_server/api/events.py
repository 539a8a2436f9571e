"""What happened to a cluster, for its user: the events routes (new routes; the eight-key
cluster JSON stays as it is). A cursor (``after``) or a time (``since``) picks the events,
and ``wait`` long-polls for the next one."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone
from typing import Any

from ..events import ALL, cluster_key, user_key
from ..models import Cluster, now_ms
from .base import APIError, BaseHandler, Route
from .clusters import _bool_arg

MAX_LIMIT = 1000
MAX_WAIT = 60.0
#: The largest id or time a database integer holds.
MAX_MS = 2**63 - 1


class EventsBase(BaseHandler):
    """The query arguments both routes share, checked (400 saying which is wrong), and the
    long-poll, which ends early when its client goes away."""

    def initialize(self) -> None:
        self._gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_connection_close(self) -> None:
        if not self._gone.done():
            self._gone.set_result(None)

    def _params(self) -> tuple[int, int | None, int, float]:
        after = self.int_query("after", 0, 0, MAX_MS)
        limit = self.int_query("limit", MAX_LIMIT, 1, MAX_LIMIT)
        since = _parse_since(self.get_query_argument("since", None))
        value = self.get_query_argument("wait", None)
        wait = 0.0
        if value is not None:
            try:
                wait = float(value)
            except ValueError:
                raise APIError(400, f"wait must be a number of seconds, got {value!r}") from None
            if not 0 <= wait <= MAX_WAIT:  # also refuses nan
                raise APIError(400, f"wait must be between 0 and {MAX_WAIT:g} s, got {value}")
        return after, since, limit, wait

    async def _answer(
        self,
        key: str,
        after: int,
        since: int | None,
        limit: int,
        wait: float,
        cluster: Cluster | None = None,
        cluster_name: str | None = None,
        username: str | None = None,
    ) -> tuple[list[dict[str, Any]], bool]:
        """The events (long-polling up to ``wait`` s while there are none and the cluster
        has not ended), and whether the cluster ended with them all sent."""
        events = self.reconciler.events
        deadline = time.monotonic() + wait
        while True:
            # Before the query: an ended cluster's last event is already stored.
            ended = cluster_name is not None and (cluster is None or cluster.ended.is_set())
            found = await events.query(cluster_name, username, after, since, limit)
            # Every event stored before the query is at most this (and did not match).
            seen = max(after, events.latest(key))
            remaining = deadline - time.monotonic()
            if found or ended or remaining <= 0:
                return found, ended and len(found) < limit
            waiting = asyncio.ensure_future(events.wait(key, seen, remaining))
            either: set[asyncio.Future[Any]] = {waiting, self._gone}
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            if self._gone.done():  # nobody to answer: stop waiting
                waiting.cancel()
                await asyncio.wait({waiting})
                return [], False


class ClusterEventsHandler(EventsBase):
    async def get(self, name: str) -> None:
        after, since, limit, wait = self._params()
        user = self.current_user
        cluster = self.reconciler.clusters.get(name)
        if cluster is not None:
            if not user.can_access(cluster):
                raise APIError(403, f"User {user.name} lacks permissions to view cluster {name}")
            max_age = self.reconciler.events_max_age
            if cluster.stop_time is not None and cluster.stop_time < now_ms() - max_age * 1000:
                raise APIError(
                    404, f"Cluster {name} ended more than {max_age:g} s ago: its events are gone"
                )
        else:
            # Forgotten (db_cluster_max_age) but its events are kept: its owner still reads them.
            owner = await self.reconciler.events.owner(name)
            if owner is None:
                raise APIError(404, f"Cluster {name} not found")
            if not (user.admin or user.name == owner):
                raise APIError(403, f"User {user.name} lacks permissions to view cluster {name}")
        found, done = await self._answer(
            cluster_key(name), after, since, limit, wait, cluster=cluster, cluster_name=name
        )
        self.write_json(
            {
                "events": [_event(e) for e in found],
                "cursor": found[-1]["id"] if found else after,
                "done": done,
            }
        )


class EventsHandler(EventsBase):
    async def get(self) -> None:
        after, since, limit, wait = self._params()
        user = self.current_user
        all_users = _bool_arg(self.get_query_argument("all", None))
        if all_users and not user.admin:
            raise APIError(403, f"User {user.name} is not an admin: ?all=1 is for admins")
        username = None if all_users else user.name
        key = ALL if all_users else user_key(user.name)
        found, _ = await self._answer(key, after, since, limit, wait, username=username)
        self.write_json(
            {
                "events": [_event(e, owner=True) for e in found],
                "cursor": found[-1]["id"] if found else after,
                "done": False,
            }
        )


def _event(row: dict[str, Any], owner: bool = False) -> dict[str, Any]:
    out = {
        "id": row["id"],
        "time": row["time"],
        "kind": row["kind"],
        "worker": row["worker"],
        "message": row["message"],
        "detail": row["detail"],
    }
    if owner:
        out["cluster"] = row["cluster"]
        out["user"] = row["username"]
    return out


def _parse_since(value: str | None) -> int | None:
    """Milliseconds since the epoch, from a number of them or an ISO 8601 time (UTC unless
    it says otherwise)."""
    if value is None:
        return None
    try:
        number = int(value)
    except ValueError:
        pass
    else:
        if not 0 <= number <= MAX_MS:
            raise APIError(400, f"since must be between 0 and {MAX_MS} ms, got {number}")
        return number
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        raise APIError(
            400,
            f"since must be milliseconds since the epoch or an ISO 8601 time, got {value!r}",
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return int(when.timestamp() * 1000)


ROUTES: list[Route] = [
    ("/api/v1/clusters/{cluster_name}/events", ClusterEventsHandler),
    ("/api/v1/events", EventsHandler),
]
