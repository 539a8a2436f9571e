"""A cluster's logs for its owner and admins: live while it runs, kept after it stopped.

``GET /api/v1/clusters/{name}/logs``: every component's log as JSON; one component's from a
byte offset (with a long-poll ``wait``); or ``follow=1``, a text stream of new lines that
ends once the cluster has ended. A log that cannot be read is an empty text, never a 500.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable
from typing import TypeVar

from tornado.iostream import StreamClosedError

from ..backends.base import LogChunk
from ..cluster_logs import ClusterLogs, last_lines_start
from ..logs import cluster_in_path
from ..models import Cluster
from .base import APIError, BaseHandler, Route

T = TypeVar("T")

MAX_TAIL = 100_000
MAX_WAIT = 60.0
#: How long one wait of a follow lasts before it looks again (and notices a closed client).
FOLLOW_POLL = 10.0


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


class LogsHandler(BaseHandler):
    def initialize(self) -> None:
        self._closed = asyncio.Event()

    def on_connection_close(self) -> None:
        self._closed.set()

    @property
    def logs(self) -> ClusterLogs | None:
        return getattr(self.reconciler, "logs", None)

    async def get(self, name: str) -> None:
        target = await self._target(name)
        component = self.get_query_argument("component", None)
        tail = self.int_query("tail", None, 1, MAX_TAIL)
        offset = self.int_query("offset", None, 0)
        wait = self._wait_arg()
        follow = self._follow_arg()
        logs = self.logs
        if component is None:
            if offset is not None or wait or follow:
                raise APIError(400, "offset, wait and follow need a component")
            components = await self._components(target)
            out = {}
            for c in components:
                chunk = await self._read(target, c, None)
                data = chunk.data if chunk is not None else b""
                if tail is not None:
                    data = data[last_lines_start(data, tail) :]
                out[c] = _text(data)
            self.write_json({"logs": out})
            return
        await self._check_component(name, target, component)
        if follow:
            await self._follow(target, component, offset, tail)
            return
        # Before the read: "done" promises that nothing follows what this answer has.
        done = ClusterLogs.done(target)
        if wait and offset is not None and logs is not None:
            chunk = await self._guard(
                logs.read_wait(target, component, offset, wait, stop=self._closed)
            )
        else:
            chunk = await self._read(target, component, offset)
        if chunk is None:
            end = offset or 0
            chunk = LogChunk(b"", end, end)
        data, start = chunk.data, chunk.start
        if tail is not None:
            cut = last_lines_start(data, tail)
            data, start = data[cut:], start + cut
        self.write_json(
            {
                "logs": {component: _text(data)},
                "offset": chunk.end,
                "start": start,
                "done": done,
            }
        )

    # -- streaming ------------------------------------------------------------------------
    async def _follow(
        self, target: Cluster | str, component: str, offset: int | None, tail: int | None
    ) -> None:
        """Write the log (from ``offset``, else its newest bytes or ``tail`` lines), then
        each new piece as it is written, until the cluster has ended and all is sent."""
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")  # a proxy in front must not hold it back
        chunk = await self._read(target, component, offset)
        if chunk is not None and tail is not None and offset is None:
            cut = last_lines_start(chunk.data, tail)
            chunk = LogChunk(chunk.data[cut:], chunk.start + cut, chunk.end)
        position = chunk.end if chunk is not None else (offset or 0)
        if not await self._send(chunk.data if chunk is not None else b""):
            return
        logs = self.logs
        while logs is not None and not self._closed.is_set():
            ended = ClusterLogs.done(target)
            chunk = await self._guard(
                logs.read_wait(target, component, position, FOLLOW_POLL, stop=self._closed)
            )
            data = chunk.data if chunk is not None else b""
            if chunk is not None:
                position = chunk.end
            if data and not await self._send(data):
                return
            if ended and not data:
                break
        if not self._closed.is_set():
            self.finish()

    async def _send(self, data: bytes) -> bool:
        """Write and flush; False once the client has gone."""
        try:
            self.write(data)
            await self.flush()
        except StreamClosedError:
            self._closed.set()
            return False
        return True

    # -- what is asked, and of what -----------------------------------------------------
    async def _target(self, name: str) -> Cluster | str:
        """The cluster (or, once the gateway forgot it, its name, if its logs are kept),
        when the caller may read its logs."""
        user = self.current_user
        cluster = self.reconciler.clusters.get(name)
        if cluster is not None:
            if not user.can_access(cluster):
                raise APIError(
                    403, f"User {user.name} lacks permissions to view the logs of cluster {name}"
                )
            return cluster
        logs = self.logs
        owner = await self._guard(logs.owner(name)) if logs is not None else None
        if owner is None:
            raise APIError(404, f"Cluster {name} not found")
        if not (user.admin or user.name == owner):
            raise APIError(
                403, f"User {user.name} lacks permissions to view the logs of cluster {name}"
            )
        return name

    async def _components(self, target: Cluster | str) -> list[str]:
        logs = self.logs
        found = await self._guard(logs.components(target)) if logs is not None else None
        return list(found or [])

    async def _check_component(self, name: str, target: Cluster | str, component: str) -> None:
        """404 for a component the cluster never had, naming those it has. A worker the
        gateway started is known even before (or without) a log of its own."""
        known = await self._components(target)
        if component in known:
            return
        if isinstance(target, Cluster):
            kind, _, worker = component.partition(":")
            if component == "scheduler" or (kind == "worker" and worker in target.workers):
                return
            if "scheduler" not in known:
                known.insert(0, "scheduler")
        listed = ", ".join(known) if known else "none"
        raise APIError(404, f"Cluster {name} has no log {component!r}; its logs: {listed}")

    async def _read(
        self, target: Cluster | str, component: str, offset: int | None
    ) -> LogChunk | None:
        logs = self.logs
        if logs is None:
            return None
        return await self._guard(logs.read(target, component, offset))

    async def _guard(self, coro: Awaitable[T]) -> T | None:
        """The answer of a read, or None if it failed (logged): a log that cannot be read
        is an empty one for the user, never a 500."""
        try:
            return await coro
        except asyncio.CancelledError:
            raise
        except Exception:
            self.settings["log"].exception(
                "Could not read logs for %s",
                self.request.path,
                extra=cluster_in_path(self.request.path),
            )
            return None

    def _wait_arg(self) -> float:
        value = self.get_query_argument("wait", None)
        if value is None:
            return 0.0
        try:
            number = float(value)
        except ValueError:
            raise APIError(400, f"wait must be a number of seconds, got {value!r}") from None
        if not math.isfinite(number) or not 0 <= number <= MAX_WAIT:
            raise APIError(400, f"wait must be 0..{MAX_WAIT:g} seconds, got {value}")
        return number

    def _follow_arg(self) -> bool:
        value = self.get_query_argument("follow", None)
        if value is None or value in ("0", "false"):
            return False
        if value in ("", "1", "true"):
            return True
        raise APIError(400, f"follow must be 1 or 0, got {value!r}")


ROUTES: list[Route] = [("/api/v1/clusters/{cluster_name}/logs", LogsHandler)]
