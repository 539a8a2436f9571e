"""Usage accounting: core-seconds and memory byte-seconds, computed from the start and stop
times the store records for every scheduler and worker (``allocations``), never from a
counter kept in memory, so they stay exact across restarts, crashes and worker failures.
A scheduler or worker still running counts up to now.
"""

from __future__ import annotations

import asyncio
import calendar
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from .models import now_ms
from .store import DAY_MS, ClusterUse, Store, StoreUnavailable, UsageData

GIB = 2**30
PERIODS = ("day", "week", "month")
#: The period whose start is the report's default ``since`` when the app passes no
#: ``usage_period`` (it passes ``UsageQuotas.period``).
DEFAULT_PERIOD = "month"
#: How a report groups its rows.
BY = ("user", "group", "cluster", "day")
#: The longest range ``by=day`` covers: one row a day, ten years.
MAX_DAYS = 3660
#: The metrics re-read the totals of allocations that stopped more than SETTLED_AFTER_MS
#: ago every SETTLED_MAX_AGE seconds (retention may have removed some meanwhile).
SETTLED_AFTER_MS = 3_600_000
SETTLED_MAX_AGE = 600.0


@dataclass
class Use:
    """What was used: cores × seconds and bytes × seconds."""

    core_seconds: float = 0.0
    memory_byte_seconds: float = 0.0

    @property
    def core_hours(self) -> float:
        return self.core_seconds / 3600

    @property
    def memory_gib_hours(self) -> float:
        return self.memory_byte_seconds / GIB / 3600

    def add(self, other: Use) -> None:
        self.core_seconds += other.core_seconds
        self.memory_byte_seconds += other.memory_byte_seconds


def clipped(allocation: dict[str, Any], since_ms: int, until_ms: int, now: int) -> Use:
    """What ``allocation`` (a row of the store's ``allocations``) used within
    [since_ms, until_ms); one still running counts up to ``now``."""
    stop = allocation["stop"] if allocation["stop"] is not None else now
    seconds = max(0, min(stop, until_ms) - max(allocation["start"], since_ms)) / 1000
    return Use(seconds * allocation["cores"], seconds * allocation["memory"])


def period_bounds(period: str, at_ms: int | None = None) -> tuple[int, int]:
    """The UTC day, week (from Monday) or month containing ``at_ms``: (start, end) in ms."""
    at = datetime.fromtimestamp((now_ms() if at_ms is None else at_ms) / 1000, timezone.utc)
    day = at.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        start, end = day, day + timedelta(days=1)
    elif period == "week":
        start = day - timedelta(days=day.weekday())
        end = start + timedelta(days=7)
    elif period == "month":
        start = day.replace(day=1)
        end = start + timedelta(days=calendar.monthrange(start.year, start.month)[1])
    else:
        raise ValueError(f"Unknown period {period!r}: expected one of {', '.join(PERIODS)}")
    return int(start.timestamp() * 1000), int(end.timestamp() * 1000)


class Accounting:
    """Reads usage from the store."""

    def __init__(self, store: Store) -> None:
        self.store = store
        # The metrics' totals of allocations that stopped before a time (they never change):
        # (that time, totals, when read: time.monotonic()).
        self._settled: tuple[int, dict[tuple[str, str], tuple[float, float]], float] | None = None

    async def use_of(
        self,
        since_ms: int,
        until_ms: int,
        user: str | None = None,
        groups: Iterable[str] | None = None,
    ) -> Use:
        """The use within [since_ms, until_ms) of ``user``'s clusters (None: everyone's),
        and of those only that were created for a member of one of ``groups`` (None: any)."""
        wanted = None if groups is None else set(groups)
        rows = await self.store.allocations_between(
            since_ms, until_ms, None if user is None else [user]
        )
        total = Use()
        now = now_ms()
        for row in rows:
            if wanted is None or wanted.intersection(row["groups"]):
                total.add(clipped(row, since_ms, until_ms, now))
        return total

    async def report(
        self,
        since_ms: int,
        until_ms: int,
        by: str,
        user: str | None = None,
        group: str | None = None,
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """``summarize`` of the use of ``user``'s clusters (None: everyone's) within
        [since_ms, until_ms): summed per cluster by the database on the store's thread, the
        rows made in an executor (by day, tens of thousands of allocations split at midnight
        must not hold the event loop)."""
        users = None if user is None else [user]
        by_day = by == "day"
        # By day, the clusters' own sums are needed only to know their groups.
        per_cluster = not by_day or group is not None
        data = await self.store.usage_between(
            since_ms, until_ms, now_ms(), users, by_day, per_cluster
        )
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, summarize, data, since_ms, until_ms, by, group)

    async def totals_by_user_group(self) -> dict[tuple[str, str], tuple[float, float]]:
        """Everything on record, up to now: (core-seconds, memory byte-seconds) by (user,
        group), "" for clusters of owners without a group; a cluster of several groups counts
        in each. Summed by the database: what stopped over an hour ago once every
        ``SETTLED_MAX_AGE`` seconds (a stopped allocation never changes), the rest each time
        (a scrape must not read a year of allocations)."""
        now = now_ms()
        if self._settled is None or time.monotonic() - self._settled[2] > SETTLED_MAX_AGE:
            cutoff = now - SETTLED_AFTER_MS
            settled = _by_user_group(await self.store.usage_totals(now, stopped_before=cutoff))
            self._settled = (cutoff, settled, time.monotonic())
        cutoff, settled, _ = self._settled
        out = dict(settled)
        for key, (cores, memory) in _by_user_group(
            await self.store.usage_totals(now, stopped_from=cutoff)
        ).items():
            old = out.get(key, (0.0, 0.0))
            out[key] = (old[0] + cores, old[1] + memory)
        return out

    async def delete_older_than(self, max_age: float) -> tuple[int, int]:
        """Usage retention: forget allocations that stopped more than ``max_age`` seconds
        ago, and the records of clusters with none left. Returns what went: (allocations,
        clusters)."""
        return await self.store.delete_usage_before(now_ms() - int(max_age * 1000))

    async def retention_loop(
        self, max_age: float, period: float, log: logging.Logger | None = None
    ) -> None:
        """Every ``period`` seconds, ``delete_older_than(max_age)`` (``usage_max_age``)."""
        log = log or logging.getLogger("dask_gateway_server")
        while True:
            await asyncio.sleep(period)
            try:
                allocations, clusters = await self.delete_older_than(max_age)
            except asyncio.CancelledError:
                raise
            except StoreUnavailable:
                continue  # the store logged it; the next period tries again
            except Exception:
                log.exception("Error removing old usage records")
                continue
            if allocations or clusters:
                log.info(
                    "Usage retention removed %d allocations and %d cluster records older than %g s",
                    allocations,
                    clusters,
                    max_age,
                )


def _by_user_group(
    rows: list[tuple[str, tuple[str, ...], float, float]],
) -> dict[tuple[str, str], tuple[float, float]]:
    out: dict[tuple[str, str], tuple[float, float]] = {}
    for user, groups, cores, memory in rows:
        for group in groups or ("",):
            old = out.get((user, group), (0.0, 0.0))
            out[user, group] = (old[0] + cores, old[1] + memory)
    return out


#: The columns of a report's rows before the numbers, by ``by``.
KEY_COLUMNS = {
    "user": ("user",),
    "group": ("group",),
    "cluster": ("cluster", "user", "groups", "start_time", "stop_time"),
    "day": ("day",),
}
NUMBER_COLUMNS = (
    "clusters",
    "core_seconds",
    "memory_byte_seconds",
    "core_hours",
    "memory_gib_hours",
)


def numbers(clusters: int, core_seconds: float, memory_byte_seconds: float) -> dict[str, Any]:
    """A row's figures as the wire has them: seconds to 3 decimals, hours to 6, each
    rounded from the exact sum (so CSV and JSON carry the very same numbers)."""
    use = Use(core_seconds, memory_byte_seconds)
    return {
        "clusters": clusters,
        "core_seconds": round(core_seconds, 3),
        "memory_byte_seconds": round(memory_byte_seconds, 3),
        "core_hours": round(use.core_hours, 6),
        "memory_gib_hours": round(use.memory_gib_hours, 6),
    }


def day_label(day: int) -> str:
    """The UTC date of day number ``day`` since the epoch: "2026-12-05"."""
    return datetime.fromtimestamp(day * DAY_MS / 1000, timezone.utc).date().isoformat()


@dataclass
class _Sum:
    core_seconds: float = 0.0
    memory_byte_seconds: float = 0.0
    clusters: int = 0

    def add(self, c: ClusterUse) -> None:
        self.core_seconds += c.core_seconds
        self.memory_byte_seconds += c.memory_byte_seconds
        self.clusters += 1

    def figures(self) -> dict[str, Any]:
        return numbers(self.clusters, self.core_seconds, self.memory_byte_seconds)


def summarize(
    data: UsageData,
    since: int,
    until: int,
    by: str,
    group: str | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The report's rows (every one, in order) and its total, from the store's
    ``usage_between``: what each cluster used within [since, until) or, for ``by="day"``,
    what was used each UTC day (the parts spanning midnight are split here). ``group``:
    only the clusters created for a member of it (and with ``by="group"`` only its row). A
    cluster of several groups counts in each group's row; the total counts every cluster
    once."""
    if by not in BY:
        raise ValueError(f"Unknown by {by!r}: expected one of {', '.join(BY)}")
    if by == "day":
        wanted = None
        if data.clusters is not None:
            wanted = {c.cluster for c in data.clusters if group is None or group in c.groups}
        return _by_day(data, wanted, since, until)
    clusters = data.clusters or []
    if group is not None:
        clusters = [c for c in clusters if group in c.groups]
    total = _Sum()
    for c in clusters:
        total.add(c)
    out: list[dict[str, Any]]
    if by == "user":
        users: dict[str, _Sum] = {}
        for c in clusters:
            users.setdefault(c.username, _Sum()).add(c)
        out = [{"user": k, **users[k].figures()} for k in sorted(users)]
    elif by == "group":
        groups: dict[str | None, _Sum] = {}
        for c in clusters:
            for g in c.groups or (None,):
                if group is None or g == group:
                    groups.setdefault(g, _Sum()).add(c)
        keys = sorted(groups, key=lambda k: (k is None, k or ""))
        out = [{"group": k, **groups[k].figures()} for k in keys]
    else:
        out = [
            {
                "cluster": c.cluster,
                "user": c.username,
                "groups": list(c.groups),
                "start_time": c.start_time,
                "stop_time": c.stop_time,
                **numbers(1, c.core_seconds, c.memory_byte_seconds),
            }
            for c in sorted(clusters, key=lambda c: (c.start_time, c.cluster))
        ]
    return out, total.figures()


def _by_day(
    data: UsageData, wanted: set[str] | None, since: int, until: int
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One row per UTC day of [since, until), and the total: the sums by day, and each
    allocation spanning midnight (already clipped to the range) split there; a cluster
    counts on each day it held something. ``wanted``: only these clusters (None: all)."""
    first_day, last_day = since // DAY_MS, (until - 1) // DAY_MS
    n = last_day - first_day + 1
    core_ms = [0.0] * n
    byte_ms = [0.0] * n
    seen: list[set[str]] = [set() for _ in range(n)]
    for cluster, day, cores_ms, bytes_ms in data.days:
        if wanted is None or cluster in wanted:
            i = day - first_day
            core_ms[i] += cores_ms
            byte_ms[i] += bytes_ms
            seen[i].add(cluster)
    for cluster, cores, memory, start, stop in data.spans:
        if wanted is not None and cluster not in wanted:
            continue
        day = start // DAY_MS
        while start < stop:
            end = min(stop, (day + 1) * DAY_MS)
            i = day - first_day
            core_ms[i] += (end - start) * cores
            byte_ms[i] += (end - start) * memory
            seen[i].add(cluster)
            start, day = end, day + 1
    rows = [
        {
            "day": day_label(first_day + i),
            **numbers(len(seen[i]), core_ms[i] / 1000, byte_ms[i] / 1000),
        }
        for i in range(n)
    ]
    total = numbers(len(set().union(*seen)), sum(core_ms) / 1000, sum(byte_ms) / 1000)
    return rows, total


def csv_cell(value: Any) -> str:
    """One value as a CSV cell: numbers as Python writes them (they parse back to the
    same float), nothing for null, a cluster's groups joined with a space."""
    if value is None:
        return ""
    if isinstance(value, list):
        return " ".join(value)
    return str(value)


def csv_columns(by: str) -> tuple[str, ...]:
    return KEY_COLUMNS[by] + NUMBER_COLUMNS
