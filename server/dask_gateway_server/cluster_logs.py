"""The logs of each cluster's scheduler and workers, for its user.

While a cluster runs, its logs are the backend's (the local backend's files in the cluster's
directory, Slurm's job output), read through ``Backend.read_log``: files of the user's, which
the backend reads without following what the user planted. When the cluster stops, ``keep``
copies the newest ``max_bytes`` of each into ``{directory}/{cluster}/``, a directory of the
gateway's own, with an index of where each copy starts and ends in the original log, so that a
reader's byte offsets go on from the live log to the kept one. Kept logs stay until
``forget`` (the gateway's retention of ended clusters).

Every answer holds at most ``max_bytes`` of a log: the newest, cut at the start of a line.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass

from .backends.base import Backend, LogChunk
from .models import Cluster, now_ms

__all__ = ["ClusterLogs", "LogChunk"]

#: Names the gateway gives clusters and workers (hex); anything else never names a file.
_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}")
_INDEX = "index.json"
#: Kept indexes remembered in memory (a follower reads the same one every poll).
_CACHE_SIZE = 256


@dataclass(frozen=True)
class _Kept:
    """A cluster's kept logs: its owner, when they were kept, and for each component (in
    order: the scheduler, then workers by start time) its file and the range of the original
    log it holds."""

    user: str
    time: int
    components: dict[str, tuple[str, int, int]]


def _file_for(component: str) -> str | None:
    """The kept file of ``component``: a name made from the gateway's records only."""
    if component == "scheduler":
        return "scheduler.log"
    kind, _, name = component.partition(":")
    if kind == "worker" and _NAME.fullmatch(name):
        return f"worker-{name}.log"
    return None


def _trim(data: bytes, start: int, limit: int, at_line_start: bool) -> tuple[bytes, int]:
    """At most ``limit`` of the newest bytes of ``data`` (which begins at ``start`` of its
    log), beginning at a line start: a first line of which the beginning is unknown (not
    ``at_line_start``) is left out. A single line longer than ``limit`` is cut inside."""
    need = len(data) - limit
    if not at_line_start and start > 0:
        need = max(need, 1)
    if need <= 0:
        return data, start
    newline = data.find(b"\n", need - 1)
    cut = newline + 1 if 0 <= newline < len(data) - 1 else need
    return data[cut:], start + cut


def _complete_utf8(data: bytes) -> int:
    """The length of ``data`` without a trailing incomplete UTF-8 sequence (its rest is
    being written: the next read gets the character whole)."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 == 0x80:  # a continuation byte: look further back
            continue
        if byte >= 0xC0:
            size = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            if back < size:
                return len(data) - back
        break
    return len(data)


def last_lines_start(data: bytes, n: int) -> int:
    """Where the last ``n`` lines of ``data`` begin (a final newline ends the last line)."""
    pos = len(data) - (1 if data.endswith(b"\n") else 0)
    for _ in range(n):
        pos = data.rfind(b"\n", 0, pos)
        if pos == -1:
            return 0
    return pos + 1


class ClusterLogs:
    """Reads clusters' logs live through the backend, and keeps them once they stop."""

    def __init__(
        self,
        backend: Backend,
        directory: str,
        max_bytes: int = 2**20,
        max_workers: int = 100,
        log: logging.Logger | None = None,
        poll_interval: float = 0.5,
    ) -> None:
        """``directory``: where kept logs go (the gateway's own, e.g. ``{data_dir}/
        cluster-logs``); ``max_bytes``: the most kept and answered of each log;
        ``max_workers``: worker logs kept per cluster (the newest); ``poll_interval``: how
        often a waiting reader looks whether a live log grew."""
        self.backend = backend
        self.directory = os.path.abspath(directory)
        self.max_bytes = max(1, int(max_bytes))
        self.max_workers = max(0, int(max_workers))
        self.log = log or logging.getLogger("dask_gateway_server")
        self.poll_interval = poll_interval
        self._cache: dict[str, _Kept | None] = {}

    # -- keeping ----------------------------------------------------------------------
    async def keep(self, cluster: Cluster) -> None:
        """Copy the newest ``max_bytes`` of each of the cluster's logs (at most
        ``max_workers`` workers', the newest) where the gateway keeps them. Called once its
        workers stopped, before its scheduler is stopped; a second call keeps nothing more.
        A cluster without any log gets no directory."""
        if not _NAME.fullmatch(cluster.name):
            return
        components = await self.backend.log_components(cluster)
        if not components or await self._kept(cluster.name) is not None:
            return
        workers = [c for c in components if c.startswith("worker:")]
        dropped = set(workers[: max(0, len(workers) - self.max_workers)])
        chunks: dict[str, LogChunk] = {}
        for component in components:
            if component in dropped or _file_for(component) is None or component in chunks:
                continue
            try:
                chunk = await self._read_live(cluster, component, None, self.max_bytes, True)
            except Exception as e:
                self.log.warning(
                    "Could not read the %s log of cluster %s to keep it: %s",
                    component,
                    cluster.name,
                    e,
                )
                continue
            if chunk is not None:
                chunks[component] = chunk
        if not chunks:  # nothing to keep (it never started): no directory either
            return
        kept = await asyncio.get_running_loop().run_in_executor(
            None, self._write_kept, cluster.name, cluster.username, chunks
        )
        self._remember(cluster.name, kept)

    def _write_kept(self, name: str, user: str, chunks: dict[str, LogChunk]) -> _Kept:
        """Write the copies, then the index (by rename: a reader sees all or nothing).
        Blocking."""
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        os.chmod(self.directory, 0o700)
        folder = os.path.join(self.directory, name)
        if os.path.lexists(folder):  # left by a keep that was interrupted
            shutil.rmtree(folder, ignore_errors=True)
        os.mkdir(folder, 0o700)
        components: dict[str, tuple[str, int, int]] = {}
        for component, chunk in chunks.items():
            file = _file_for(component)
            assert file is not None
            fd = os.open(
                os.path.join(folder, file),
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
            )
            with os.fdopen(fd, "wb") as f:
                f.write(chunk.data)
            components[component] = (file, chunk.start, chunk.start + len(chunk.data))
        kept = _Kept(user, now_ms(), components)
        index = {
            "user": user,
            "time": kept.time,
            "components": [
                {"component": c, "file": f, "start": s, "end": e}
                for c, (f, s, e) in components.items()
            ],
        }
        tmp = os.path.join(folder, _INDEX + ".tmp")
        with open(tmp, "w") as out:
            json.dump(index, out)
        os.rename(tmp, os.path.join(folder, _INDEX))
        return kept

    async def forget(self, names: Iterable[str]) -> None:
        """Remove the kept logs of the clusters ``names`` (retention)."""
        names = [n for n in names if _NAME.fullmatch(n)]
        for name in names:
            self._cache.pop(name, None)

        def remove() -> None:
            for name in names:
                shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)

        if names:
            await asyncio.get_running_loop().run_in_executor(None, remove)

    async def kept_before(self, ms: int) -> list[str]:
        """Clusters whose logs were kept before ``ms`` (since the epoch): for a retention
        that knows no other record of them."""

        def scan() -> list[str]:
            out = []
            try:
                names = os.listdir(self.directory)
            except OSError:
                return []
            for name in names:
                kept = self._load(name)
                if kept is not None and kept.time < ms:
                    out.append(name)
            return out

        return await asyncio.get_running_loop().run_in_executor(None, scan)

    # -- reading ----------------------------------------------------------------------
    async def owner(self, name: str) -> str | None:
        """The user whose cluster ``name`` was, if its logs are kept (for a cluster the
        gateway no longer remembers otherwise)."""
        kept = await self._kept(name)
        return kept.user if kept is not None else None

    async def components(self, cluster: Cluster | str) -> list[str]:
        """The components with a log: the scheduler, then workers by start time. A name:
        a cluster the gateway forgot, only its kept logs."""
        kept = await self._kept(cluster)
        if kept is not None:
            return list(kept.components)
        if isinstance(cluster, str):
            return []
        return await self.backend.log_components(cluster)

    @staticmethod
    def done(cluster: Cluster | str) -> bool:
        """Has the cluster ended (its logs will not grow)?"""
        return isinstance(cluster, str) or cluster.status.is_done

    async def read(
        self,
        cluster: Cluster | str,
        component: str,
        offset: int | None = None,
        limit: int | None = None,
    ) -> LogChunk | None:
        """A component's log from byte ``offset`` (None: its newest bytes; before the oldest
        kept: from that), at most ``limit`` (and ``max_bytes``) of the newest bytes, starting
        at a line; ``end`` is where the next read goes on. None if it has no log."""
        limit = min(limit or self.max_bytes, self.max_bytes)
        name = cluster if isinstance(cluster, str) else cluster.name
        kept = await self._kept(cluster)
        if kept is not None:
            entry = kept.components.get(component)
            if entry is None:
                return None
            return await asyncio.get_running_loop().run_in_executor(
                None, self._read_kept, name, entry, offset, limit
            )
        if isinstance(cluster, str):
            return None
        return await self._read_live(cluster, component, offset, limit, cluster.status.is_done)

    async def read_wait(
        self,
        cluster: Cluster | str,
        component: str,
        offset: int,
        timeout: float,
        limit: int | None = None,
        stop: asyncio.Event | None = None,
    ) -> LogChunk | None:
        """``read`` from ``offset``, waiting up to ``timeout`` s for the log to grow past it,
        unless the cluster has ended (or ``stop`` is set)."""
        deadline = time.monotonic() + timeout
        while True:
            chunk = await self.read(cluster, component, offset, limit)
            if chunk is not None and (chunk.data or chunk.end != offset):
                return chunk
            left = deadline - time.monotonic()
            if left <= 0 or self.done(cluster) or (stop is not None and stop.is_set()):
                return chunk
            assert isinstance(cluster, Cluster)  # a name is a cluster that ended
            waits = [asyncio.ensure_future(cluster.ended.wait())]
            if stop is not None:
                waits.append(asyncio.ensure_future(stop.wait()))
            try:
                await asyncio.wait(waits, timeout=min(left, self.poll_interval))
            finally:
                for w in waits:
                    w.cancel()

    async def tail_lines(self, cluster: Cluster | str, component: str, n: int) -> str:
        """The last ``n`` lines of a component's log (e.g. for an event's detail)."""
        chunk = await self.read(cluster, component)
        if chunk is None:
            return ""
        return chunk.data[last_lines_start(chunk.data, n) :].decode(errors="replace")

    async def _read_live(
        self, cluster: Cluster, component: str, offset: int | None, limit: int, final: bool
    ) -> LogChunk | None:
        """Through the backend: one byte more than ``limit``, to know whether the first
        line is whole."""
        chunk = await self.backend.read_log(cluster, component, offset, limit + 1)
        if chunk is None:
            return None
        if offset is not None and chunk.start + len(chunk.data) < chunk.end:
            # The backend gave the oldest bytes after ``offset``: the newest are wanted.
            newest = await self.backend.read_log(cluster, component, None, limit + 1)
            if newest is None:
                return None
            chunk = newest
        at_line_start = chunk.start == 0 or chunk.start == offset
        data, start = _trim(chunk.data, chunk.start, limit, at_line_start)
        if not final:
            data = data[: _complete_utf8(data)]
        return LogChunk(data, start, start + len(data))

    def _read_kept(
        self, name: str, entry: tuple[str, int, int], offset: int | None, limit: int
    ) -> LogChunk | None:
        """From a kept copy: ``entry`` is its file and the range of the log it holds.
        Blocking."""
        file, first, last = entry
        pos = max(first, last - (limit + 1))
        if offset is not None:
            pos = max(pos, min(offset, last))
        try:
            fd = os.open(
                os.path.join(self.directory, name, file),
                os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
            )
        except OSError:
            return None
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            f.seek(pos - first)
            data = f.read(last - pos)
        data, start = _trim(data, pos, limit, pos in (first, offset))
        return LogChunk(data, start, start + len(data))

    async def _kept(self, name: str | Cluster) -> _Kept | None:
        """The index of a cluster's kept logs, if any. None without a look for a cluster
        still meant to run: only a stop keeps logs."""
        if isinstance(name, Cluster):
            if name.is_active:
                return None
            name = name.name
        if name in self._cache:
            return self._cache[name]
        if not _NAME.fullmatch(name):
            return None
        kept = await asyncio.get_running_loop().run_in_executor(None, self._load, name)
        self._remember(name, kept)
        return kept

    def _remember(self, name: str, kept: _Kept | None) -> None:
        self._cache[name] = kept
        while len(self._cache) > _CACHE_SIZE:
            self._cache.pop(next(iter(self._cache)))

    def _load(self, name: str) -> _Kept | None:
        """The index of a cluster's kept logs (blocking); None if there is none."""
        if not _NAME.fullmatch(name):
            return None
        try:
            with open(os.path.join(self.directory, name, _INDEX)) as f:
                index = json.load(f)
            components = {
                str(e["component"]): (str(e["file"]), int(e["start"]), int(e["end"]))
                for e in index["components"]
            }
            return _Kept(str(index["user"]), int(index["time"]), components)
        except (OSError, ValueError, KeyError, TypeError):
            return None
