"""Usage accounting: core-seconds and memory byte-seconds, computed from the start and stop
times the store records for every scheduler and worker (``allocations``), never from a
counter kept in memory, so they stay exact across restarts, crashes and worker failures.
A scheduler or worker still running counts up to now.
"""

from __future__ import annotations

import asyncio
import calendar
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from .models import now_ms
from .store import Store, StoreUnavailable, UsageRow

GIB = 2**30
PERIODS = ("day", "week", "month")
#: The period whose start is the report's default ``since``, until the quota settings
#: (``UsageQuotas.period``) are wired in (the app passes ``usage_period`` to the handler).
DEFAULT_PERIOD = "month"
#: How a report groups its rows.
BY = ("user", "group", "cluster", "day")
DAY_MS = 86_400_000
#: The longest range ``by=day`` covers: one row a day, ten years.
MAX_DAYS = 3660


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
        """``summarize`` of the allocations of ``user`` (None: everyone's) overlapping
        [since_ms, until_ms): one query on the store's thread, the sums in an executor (tens
        of thousands of rows must not hold the event loop)."""
        rows = await self.store.usage_rows(since_ms, until_ms, None if user is None else [user])
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            None, summarize, rows, since_ms, until_ms, now_ms(), by, group
        )

    async def totals_by_user_group(self) -> dict[tuple[str, str], tuple[float, float]]:
        """Everything on record, up to now: (core-seconds, memory byte-seconds) by (user,
        group), "" for clusters of owners without a group; a cluster of several groups counts
        in each. Summed by the database (one aggregate query, a few rows back)."""
        out: dict[tuple[str, str], tuple[float, float]] = {}
        for user, groups, cores, memory in await self.store.usage_totals(now_ms()):
            for group in groups or ("",):
                old = out.get((user, group), (0.0, 0.0))
                out[user, group] = (old[0] + cores, old[1] + memory)
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
    clusters: set[str] = field(default_factory=set)

    def add(self, cluster: str, core_seconds: float, memory_byte_seconds: float) -> None:
        self.core_seconds += core_seconds
        self.memory_byte_seconds += memory_byte_seconds
        self.clusters.add(cluster)

    def figures(self) -> dict[str, Any]:
        return numbers(len(self.clusters), self.core_seconds, self.memory_byte_seconds)


@dataclass
class _ClusterInfo:
    user: str
    groups: tuple[str, ...]
    start: int
    scheduler_stop: int | None = None
    has_scheduler: bool = False
    latest_stop: int | None = None
    running: bool = False


def summarize(
    rows: Iterable[UsageRow],
    since: int,
    until: int,
    now: int,
    by: str,
    group: str | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The report's rows (every one, in order) and its total, from the allocations
    overlapping [since, until) (``rows``; the store's ``usage_rows``): each clipped to the
    range, one still running counted up to ``now``. ``group``: only the clusters created for
    a member of it (and with ``by="group"`` only its row). ``by="day"``: one row per UTC day
    of the range, each allocation split at midnight. A cluster of several groups counts in
    each group's row; the total counts every cluster once."""
    if by not in BY:
        raise ValueError(f"Unknown by {by!r}: expected one of {', '.join(BY)}")
    sums: dict[Any, _Sum] = {}
    total = _Sum()
    info: dict[str, _ClusterInfo] = {}
    for row in rows:
        groups = row.groups
        if group is not None and group not in groups:
            continue
        start = max(row.start, since)
        stop = min(now if row.stop is None else row.stop, until)
        stop = max(stop, start)
        seconds = (stop - start) / 1000
        core_seconds = seconds * row.cores
        memory_byte_seconds = seconds * row.memory
        total.add(row.cluster, core_seconds, memory_byte_seconds)
        if by == "user":
            _sum(sums, row.username).add(row.cluster, core_seconds, memory_byte_seconds)
        elif by == "group":
            for g in groups or (None,):
                if group is None or g == group:
                    _sum(sums, g).add(row.cluster, core_seconds, memory_byte_seconds)
        elif by == "cluster":
            _sum(sums, row.cluster).add(row.cluster, core_seconds, memory_byte_seconds)
            _note_cluster(info, row)
        else:
            first, last = start // DAY_MS, max(start, stop - 1) // DAY_MS
            for day in range(first, last + 1):
                part = (min(stop, (day + 1) * DAY_MS) - max(start, day * DAY_MS)) / 1000
                _sum(sums, day).add(row.cluster, part * row.cores, part * row.memory)
    out: list[dict[str, Any]]
    if by == "user":
        out = [{"user": k, **sums[k].figures()} for k in sorted(sums)]
    elif by == "group":
        keys = sorted(sums, key=lambda k: (k is None, k or ""))
        out = [{"group": k, **sums[k].figures()} for k in keys]
    elif by == "cluster":
        keys = sorted(sums, key=lambda k: (info[k].start, k))
        out = [_cluster_row(k, info[k], sums[k]) for k in keys]
    else:
        empty = _Sum()
        days = range(since // DAY_MS, (until - 1) // DAY_MS + 1)
        out = [{"day": day_label(d), **sums.get(d, empty).figures()} for d in days]
    return out, total.figures()


def _sum(sums: dict[Any, _Sum], key: Any) -> _Sum:
    found = sums.get(key)
    if found is None:
        found = sums[key] = _Sum()
    return found


def _note_cluster(info: dict[str, _ClusterInfo], row: UsageRow) -> None:
    """What a cluster's row says of it: from its accounting record (owner, groups,
    creation) and its scheduler's allocation (when it stopped)."""
    c = info.get(row.cluster)
    if c is None:
        created = row.created if row.created is not None else row.start
        c = info[row.cluster] = _ClusterInfo(row.username, row.groups, created)
    c.start = min(c.start, row.start)
    if row.worker is None:
        c.has_scheduler = True
        c.scheduler_stop = row.stop
    if row.stop is None:
        c.running = True
    elif c.latest_stop is None or row.stop > c.latest_stop:
        c.latest_stop = row.stop


def _cluster_row(name: str, c: _ClusterInfo, use: _Sum) -> dict[str, Any]:
    if c.has_scheduler:
        stop = c.scheduler_stop
    else:
        stop = None if c.running else c.latest_stop
    return {
        "cluster": name,
        "user": c.user,
        "groups": list(c.groups),
        "start_time": c.start,
        "stop_time": stop,
        **use.figures(),
    }


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
