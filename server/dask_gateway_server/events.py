"""Each cluster's history for its user: what happened, when, and why.

The reconciler, the API and the backends (through ``Backend.emit``) record events; the API's
events routes read them, and long-poll for new ones through the in-memory wake-ups here.
Events are rows of the store's ``events`` table, kept after the cluster ends until the
retention (``DaskGateway.events_max_age``) removes them. Recording never fails the caller:
a cluster's history is worth less than its life.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

from .logs import about
from .models import Cluster, Worker, now_ms
from .store import Store

#: Longest message and detail kept (characters): a user's log line must not fill the database.
MAX_MESSAGE = 1000
MAX_DETAIL = 20000

#: Every kind the gateway records, in the order of a cluster's life (the OpenAPI document
#: lists them from here); others are refused by ``record``.
KINDS = (
    "submitted",
    "starting",
    "queued",
    "scheduler-started",
    "running",
    "scaled",
    "adaptive",
    "worker-queued",
    "worker-started",
    "worker-joined",
    "worker-left",
    "worker-failed",
    "stop-requested",
    "stopped",
    "failed",
)

#: The key of every event's wake-up, besides its cluster's and its user's.
ALL = "*"


def cluster_key(name: str) -> str:
    return f"cluster:{name}"


def user_key(username: str) -> str:
    return f"user:{username}"


class EventLog:
    """Records events in the store and wakes the requests waiting for them."""

    def __init__(self, store: Store, log: logging.Logger | None = None) -> None:
        self.store = store
        self.log = log or logging.getLogger("dask_gateway_server")
        # The newest event id recorded per key (cluster, user, ALL), and who waits for one.
        self._latest: dict[str, int] = {}
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None  # for record_soon from threads
        # One ordered queue and one writer: events queued while a write is under way go in
        # the next transaction (group commit).
        self._batch: list[tuple[dict[str, Any], asyncio.Future[int]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def record(
        self,
        cluster: Cluster,
        kind: str,
        message: str,
        *,
        worker: Worker | str | None = None,
        detail: str = "",
    ) -> None:
        """Store one event of ``cluster`` and return once it is stored (a failure is
        logged, never raised): for what a reader must find once the caller goes on."""
        stored = self._enqueue(cluster, kind, message, worker, detail)
        if stored is not None:
            try:
                await asyncio.shield(stored)
            except Exception:
                pass  # the writer logged it

    def record_soon(
        self,
        cluster: Cluster,
        kind: str,
        message: str,
        worker: Worker | str | None = None,
        detail: str = "",
    ) -> None:
        """Store one event without waiting for it (in order with every other): for callers
        on a hot path (a cluster's start, its heartbeats) or that cannot wait (a backend's
        ``emit``). Safe from other threads too."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            if self._loop is not None:
                self._loop.call_soon_threadsafe(
                    self._enqueue, cluster, kind, message, worker, detail
                )
            return
        self._enqueue(cluster, kind, message, worker, detail)

    def _enqueue(
        self,
        cluster: Cluster,
        kind: str,
        message: str,
        worker: Worker | str | None,
        detail: str,
    ) -> asyncio.Future[int] | None:
        """Queue an event for the writer (in the order of the calls); the future of its id."""
        if kind not in KINDS:
            self.log.warning(
                "Not recording an event of unknown kind %r", kind, extra=about(cluster)
            )
            return None
        loop = asyncio.get_running_loop()
        self._loop = loop
        values = {
            "cluster": cluster.name,
            "username": cluster.username,
            "time": now_ms(),
            "kind": kind,
            "worker": worker.name if isinstance(worker, Worker) else worker,
            "message": _clip(message, MAX_MESSAGE),
            "detail": _clip(detail, MAX_DETAIL),
        }
        stored: asyncio.Future[int] = loop.create_future()
        # Nobody may wait for it (record_soon): its outcome is read here, never "not retrieved".
        stored.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._batch.append((values, stored))
        if self._writer is None or self._writer.done():
            self._writer = loop.create_task(self._write_batches())
        return stored

    async def _write_batches(self) -> None:
        """Write what is queued, then what came meanwhile, until nothing is left: a burst
        (many clusters starting) costs a few transactions, not one per event."""
        while self._batch:
            batch, self._batch = self._batch, []
            try:
                ids = await self.store.add_events([values for values, _ in batch])
            except BaseException as e:  # cancelled too: no caller may wait for ever
                first = batch[0][0]
                self.log.warning(
                    "Could not record the %s event of cluster %s%s: %s",
                    first["kind"],
                    first["cluster"],
                    f" (and {len(batch) - 1} more)" if len(batch) > 1 else "",
                    e,
                    extra=about(first["cluster"]),
                )
                for _, stored in batch:
                    if not stored.done():
                        stored.set_exception(RuntimeError("the event was not recorded"))
                if not isinstance(e, Exception):
                    raise
                continue
            for (values, stored), event_id in zip(batch, ids, strict=True):
                keys = (cluster_key(values["cluster"]), user_key(values["username"]), ALL)
                for key in keys:
                    self._latest[key] = max(event_id, self._latest.get(key, 0))
                    for waiter in self._waiters.pop(key, ()):
                        if not waiter.done():
                            waiter.set_result(None)
                if not stored.done():
                    stored.set_result(event_id)

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop ``record_soon`` schedules on when called from another thread."""
        self._loop = loop

    async def flush(self) -> None:
        """Wait until every event queued so far is written (or failed to be)."""
        while self._writer is not None and not self._writer.done():
            await asyncio.wait({self._writer})

    async def query(
        self,
        cluster_name: str | None = None,
        username: str | None = None,
        after: int = 0,
        since: int | None = None,
        limit: int = 1000,
    ) -> list[dict[str, Any]]:
        """Events oldest first (see ``Store.query_events``); raises StoreUnavailable."""
        return await self.store.query_events(cluster_name, username, after, since, limit)

    def latest(self, key: str) -> int:
        """The newest event id recorded for ``key`` since the gateway started (0: none)."""
        return self._latest.get(key, 0)

    async def wait(self, key: str, after: int, timeout: float) -> bool:
        """Wait until an event newer than ``after`` is recorded for ``key`` (a
        ``cluster_key``, ``user_key`` or ALL), at most ``timeout`` s; True if one was."""
        if self._latest.get(key, 0) > after:
            return True
        if timeout <= 0:
            return False
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(key, set()).add(waiter)
        try:
            await asyncio.wait_for(waiter, timeout)
            return True
        except asyncio.TimeoutError:
            return False
        finally:
            waiters = self._waiters.get(key)
            if waiters is not None:
                waiters.discard(waiter)
                if not waiters:
                    del self._waiters[key]

    async def owner(self, cluster_name: str) -> str | None:
        """The user of a cluster with events (the store may have forgotten the cluster)."""
        return await self.store.event_owner(cluster_name)

    async def delete_ended_before(self, time_ms: int) -> list[str]:
        """Remove the events of clusters that ended before ``time_ms``; their names."""
        names = await self.store.delete_events_ended_before(time_ms)
        for name in names:
            self._latest.pop(cluster_key(name), None)
        return names


def workers(n: int) -> str:
    """``n`` worker(s), as a sentence says it."""
    return f"{n} worker" if n == 1 else f"{n} workers"


def _clip(text: str, limit: int) -> str:
    """At most ``limit`` characters: the end of a long text (where the reason is)."""
    return text if len(text) <= limit else "..." + text[-(limit - 3) :]


# Python's last words: "ModuleNotFoundError: No module named 'x'", also inside the
# interpreter's "Error while finding module specification for 'm' (ModuleNotFoundError: ...)".
_EXCEPTION = re.compile(
    r"(?:^|(?<=[\s(]))((?:[A-Za-z_]\w*\.)*[A-Z]\w*(?:Error|Exception|Exit|Interrupt))(?:: (.*))?$"
)


def last_exception_line(text: str) -> str:
    """The last ``SomeError: message`` line of a log (e.g. a traceback's end), or ""."""
    for line in reversed(text.splitlines()):
        line = line.strip()
        m = _EXCEPTION.search(line)
        if m is None:
            continue
        found = m.group(0)
        if m.start() > 0 and line[m.start() - 1] == "(" and found.endswith(")"):
            found = found[:-1]
        return _clip(found, 300)
    return ""


def host_of(address: str) -> str:
    """The host part of ``scheme://host:port`` (brackets of IPv6 kept off)."""
    rest = address.split("://", 1)[-1]
    host = rest.rsplit(":", 1)[0] if ":" in rest else rest
    return host.strip("[]") or address
