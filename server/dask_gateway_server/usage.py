"""Usage accounting: core-seconds and memory byte-seconds, computed from the start and stop
times the store records for every scheduler and worker (``allocations``), never from a
counter kept in memory, so they stay exact across restarts, crashes and worker failures.
A scheduler or worker still running counts up to now.
"""

from __future__ import annotations

import calendar
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from .models import now_ms
from .store import Store

GIB = 2**30
PERIODS = ("day", "week", "month")


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
