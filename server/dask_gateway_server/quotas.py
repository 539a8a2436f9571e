"""Quotas over time: the core-hours and memory GiB-hours a user, or a group together, may
use per period (a UTC day, week or month).

Set defaults for everyone, then raise or lower them per hub group or per user, as limits are:

    c.UsageQuotas.period = "week"
    c.UsageQuotas.core_hours = 100
    c.UsageQuotas.groups = {"power-users": {"core_hours": 1000}}
    c.UsageQuotas.users = {"alice": {"memory_gib_hours": 5000}}
    c.UsageQuotas.group_totals = {"physics": {"core_hours": 10000}}

A user's own entry wins; among their groups, the most generous value wins. A group total is
a budget the members share: the use of every cluster created with that group counts.

Use is read from the recorded allocations (``usage.Accounting.report``), never counted in memory,
and cached a few seconds per user and group, so creating and scaling stay cheap; a user no
quota applies to costs no query at all. Creating a cluster or scaling one up past a quota
is refused; from ``warn_at`` on the answers carry a warning; a periodic check applies
``when_exhausted`` to running clusters.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

from traitlets import Dict, Enum, Float, TraitError, validate
from traitlets.config import Configurable

from .events import workers
from .models import Cluster, User, now_ms
from .usage import PERIODS, Accounting, Use, period_bounds

#: The quotas one can set, and how a sentence names their unit.
KINDS = {"core_hours": "core-hours", "memory_gib_hours": "memory GiB-hours"}
#: What happens to running clusters once a quota is used up.
POLICIES = ("keep", "no-new-workers", "stop")
#: The header of a create, scale or adapt answer when a quota is nearly or fully used.
WARNING_HEADER = "X-Dask-Gateway-Warning"
#: Seconds a user's (or group's) use is reused before it is read again.
CACHE_SECONDS = 5.0

_THIS = {"day": "today", "week": "this week", "month": "this month"}


class QuotaExhausted(Exception):
    """A request that needs more of a quota that is used up; ``retry_after``: seconds until
    the period ends (and the quota with it)."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def header_value(message: str) -> str:
    """``message`` as an HTTP header carries it: printable ASCII, with ``%`` and anything
    else percent-encoded (UTF-8), so a user or group name in any script cannot break the
    answer; the client decodes it."""
    return quote(message, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~")


def _number(x: float) -> str:
    """A use or a limit as a sentence says it: 85.2, 100, 0.00231."""
    if abs(x) >= 10:
        return f"{x:.1f}".rstrip("0").rstrip(".")
    return f"{x:.3g}"


def _utc(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


@dataclass
class QuotaLine:
    """One quota that applies to a user: of the user (``scope`` "user"), or the total of a
    group they belong to (``scope`` "group")."""

    kind: str
    scope: str
    group: str | None
    limit: float
    used: float

    @property
    def share(self) -> float:
        if self.limit > 0:
            return self.used / self.limit
        return 1.0  # a quota of 0: nothing may be used

    def name(self, user: str) -> str:
        """How a sentence names it: "the core-hours quota of alice", "the memory GiB-hours
        quota of group physics"."""
        who = user if self.scope == "user" else f"group {self.group}"
        return f"the {KINDS[self.kind]} quota of {who}"

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "scope": self.scope,
            "group": self.group,
            "limit": self.limit,
            "used": round(self.used, 6),
            "share": round(self.share, 6),
        }


@dataclass
class QuotaState:
    """Where a user stands against their quotas in the current period."""

    user: str
    period: str
    period_start: int
    period_end: int
    warn_at: float
    when_exhausted: str
    use: Use
    quotas: list[QuotaLine] = field(default_factory=list)

    @property
    def worst(self) -> QuotaLine | None:
        """The quota the most used (share of its limit)."""
        return max(self.quotas, key=lambda q: q.share, default=None)

    @property
    def state(self) -> str:
        worst = self.worst
        if worst is None or worst.share < self.warn_at:
            return "ok"
        return "exhausted" if worst.share >= 1 else "warning"

    @property
    def exhausted(self) -> QuotaLine | None:
        worst = self.worst
        return worst if worst is not None and worst.share >= 1 else None

    def _numbers(self, line: QuotaLine) -> str:
        return (
            f"{_number(line.used)} of {_number(line.limit)} {KINDS[line.kind]} {_THIS[self.period]}"
        )

    def _period_end(self) -> str:
        return f"the {self.period} ends {_utc(self.period_end)}"

    def used_up(self, line: QuotaLine) -> str:
        """E.g. "the core-hours quota of alice is used up (0.0021 of 0.002 core-hours today,
        105 %) until the day ends 2026-12-07 00:00 UTC"."""
        percent = math.floor(line.share * 100)
        return (
            f"{line.name(self.user)} is used up ({self._numbers(line)}, {percent} %) until "
            f"{self._period_end()}"
        )

    def why_stopped(self, line: QuotaLine) -> str:
        """Why a cluster is stopped: "the core-hours quota of alice for this month is used
        up"."""
        return f"{line.name(self.user)} for {_THIS[self.period]} is used up"

    @property
    def message(self) -> str | None:
        """One sentence naming the quota, the use so far and the period's end (None: ok)."""
        worst = self.worst
        if worst is None or worst.share < self.warn_at:
            return None
        if worst.share >= 1:
            text = self.used_up(worst)
            return text[0].upper() + text[1:]
        who = self.user if worst.scope == "user" else f"Group {worst.group}"
        return (
            f"{who} has used {self._numbers(worst)} ({math.floor(worst.share * 100)} %); "
            f"{self._period_end()}"
        )

    def retry_after(self, now: int | None = None) -> int:
        """Whole seconds until the period ends (at least 1)."""
        return max(1, math.ceil((self.period_end - (now_ms() if now is None else now)) / 1000))

    def to_json(self) -> dict[str, Any]:
        return {
            "user": self.user,
            "period": self.period,
            "period_start": self.period_start,
            "period_end": self.period_end,
            "warn_at": self.warn_at,
            "when_exhausted": self.when_exhausted,
            "use": {
                "core_hours": round(self.use.core_hours, 6),
                "memory_gib_hours": round(self.use.memory_gib_hours, 6),
            },
            "quotas": [q.to_json() for q in self.quotas],
            "state": self.state,
            "message": self.message,
        }


def _check_entries(owner: str, value: Any) -> dict:
    """``{name: {kind: number}}`` as configured, or a TraitError saying what is wrong."""
    if not isinstance(value, dict):
        raise TraitError(f"UsageQuotas.{owner} must be a dict, got {value!r}")
    for name, entry in value.items():
        where = f"UsageQuotas.{owner}[{name!r}]"
        if not isinstance(name, str):
            raise TraitError(f"UsageQuotas.{owner}: keys must be names (strings), got {name!r}")
        if not isinstance(entry, dict):
            raise TraitError(f"{where} must be a dict like {{'core_hours': 100}}, got {entry!r}")
        for kind, limit in entry.items():
            if kind not in KINDS:
                raise TraitError(
                    f"{where}: unknown quota {kind!r} (expected one of {', '.join(KINDS)})"
                )
            if limit is None:
                continue
            if isinstance(limit, bool) or not isinstance(limit, (int, float)):
                raise TraitError(f"{where}[{kind!r}] must be a number or None, got {limit!r}")
            if not math.isfinite(limit) or limit < 0:
                raise TraitError(f"{where}[{kind!r}] must be a finite number >= 0, got {limit!r}")
    return value


class UsageQuotas(Configurable):
    period = Enum(
        list(PERIODS),
        "month",
        help="The period quotas count over: 'day', 'week' (from Monday) or 'month', in UTC.",
        config=True,
    )
    core_hours = Float(
        None,
        allow_none=True,
        min=0,
        help="Core-hours a user may use per period (None: no quota).",
        config=True,
    )
    memory_gib_hours = Float(
        None,
        allow_none=True,
        min=0,
        help="Memory GiB-hours a user may use per period (None: no quota).",
        config=True,
    )
    groups = Dict(
        help="Quotas per hub group: {group: {core_hours, memory_gib_hours}}; a member gets "
        "the most generous of their groups' (unless their own entry in `users` says).",
        config=True,
    )
    users = Dict(
        help="Quotas per user: {user: {core_hours, memory_gib_hours}}; they win over the "
        "groups' and the defaults.",
        config=True,
    )
    group_totals = Dict(
        help="Budgets a group's members share: {group: {core_hours, memory_gib_hours}}; the "
        "use of every cluster created by a member of the group counts.",
        config=True,
    )
    warn_at = Float(
        0.8,
        min=0,
        max=1,
        help="From this share of a quota on, creating, scaling and adapting answer with a "
        "warning (the client's GatewayWarning).",
        config=True,
    )
    when_exhausted = Enum(
        list(POLICIES),
        "keep",
        help="What happens to running clusters once a quota is used up: 'keep' (nothing; "
        "only new clusters and scaling up are refused), 'no-new-workers' (each keeps at "
        "most the workers it has; adaptive scaling is capped) or 'stop' (they are stopped).",
        config=True,
    )
    check_interval = Float(
        60,
        min=0.1,
        help="Seconds between the checks that apply `when_exhausted` to running clusters.",
        config=True,
    )

    @validate("users", "groups", "group_totals")
    def _check_dicts(self, proposal):
        return _check_entries(proposal.trait.name, proposal.value)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.log = logging.getLogger("dask_gateway_server")
        self.accounting: Accounting | None = None
        self.reconciler: Any = None
        self._owner: Callable[[Cluster], User] = lambda c: User(c.username, c.groups)
        # (scope, name, period start) -> (monotonic time read, use)
        self._cache: dict[tuple[str, str, int], tuple[float, Use]] = {}
        # cluster name -> why its workers are capped (when_exhausted = "no-new-workers")
        self._caps: dict[str, str] = {}
        self._task: asyncio.Task | None = None

    # -- settings -----------------------------------------------------------------------
    @property
    def configured(self) -> bool:
        """Any quota at all (else nothing is ever read or checked)."""
        return bool(
            self.core_hours is not None
            or self.memory_gib_hours is not None
            or self.users
            or self.groups
            or self.group_totals
        )

    def for_user(self, user: User) -> dict[str, float | None]:
        """The user's own quotas (None: none), resolved as ``UserLimits.for_user``."""
        out: dict[str, float | None] = {}
        own = self.users.get(user.name, {})
        for kind in KINDS:
            if kind in own:
                out[kind] = own[kind]
                continue
            from_groups = [
                self.groups[g][kind] for g in sorted(user.groups) if kind in self.groups.get(g, {})
            ]
            if from_groups:
                out[kind] = None if None in from_groups else max(from_groups)
            else:
                out[kind] = getattr(self, kind)
        return out

    def totals_for(self, groups: Iterable[str]) -> list[tuple[str, str, float]]:
        """(group, kind, limit) of the group totals that ``groups`` count towards."""
        return [
            (g, kind, self.group_totals[g][kind])
            for g in sorted(groups)
            if g in self.group_totals
            for kind in KINDS
            if self.group_totals[g].get(kind) is not None
        ]

    def applies(self, user: User, groups: Iterable[str] | None = None) -> bool:
        """Whether any quota applies to ``user`` (whose clusters count towards ``groups``,
        default their groups): without one, nothing is read."""
        if not self.configured:
            return False
        if any(v is not None for v in self.for_user(user).values()):
            return True
        return bool(self.totals_for(user.groups if groups is None else groups))

    # -- reading use ----------------------------------------------------------------------
    def bind(
        self,
        accounting: Accounting,
        reconciler: Any = None,
        owner: Callable[[Cluster], User] | None = None,
        log: logging.Logger | None = None,
    ) -> None:
        """What the checks need once the gateway runs: where use is read, the clusters (a
        ``Reconciler``), and who owns a cluster (their latest groups)."""
        self.accounting = accounting
        self.reconciler = reconciler
        if owner is not None:
            self._owner = owner
        if log is not None:
            self.log = log

    def owner(self, cluster: Cluster) -> User:
        """The owner of ``cluster``, with their groups (those at its creation if unknown)."""
        user = self._owner(cluster)
        if not user.groups and cluster.groups:
            return User(user.name, cluster.groups, user.admin)
        return user

    def identity(self, name: str) -> User:
        """A user asked about by name (an admin's ``?user=``): as last seen, else with the
        groups of their newest cluster, else without groups."""
        clusters = self.reconciler.clusters_of(name) if self.reconciler is not None else []
        if clusters:
            return self.owner(max(clusters, key=lambda c: c.start_time))
        return User(name)

    async def _use(self, scope: str, name: str, start: int, end: int, fresh: bool) -> Use:
        if self.accounting is None:
            raise RuntimeError("UsageQuotas.bind() was not called")
        key = (scope, name, start)
        cached = self._cache.get(key)
        if cached is not None and not fresh and time.monotonic() - cached[0] < CACHE_SECONDS:
            return cached[1]
        # The report's total: summed per cluster by the database, the rest in an executor
        # (a group's total reads every member's clusters of the period).
        if scope == "user":
            _, total = await self.accounting.report(start, end, "user", user=name)
        else:
            _, total = await self.accounting.report(start, end, "user", group=name)
        use = Use(total["core_seconds"], total["memory_byte_seconds"])
        if cached is None:  # a new period (or name): forget the older periods' entries
            for old in [k for k in self._cache if k[2] != start]:
                del self._cache[old]
        self._cache[key] = (time.monotonic(), use)
        return use

    async def state(
        self, user: User, groups: Iterable[str] | None = None, fresh: bool = False
    ) -> QuotaState:
        """Where ``user`` stands in the current period, against their own quotas and the
        totals of ``groups`` (default: their groups; for a running cluster, the groups it
        was created with). ``fresh``: read the use now rather than from the cache."""
        start, end = period_bounds(self.period)
        use = await self._use("user", user.name, start, end, fresh)
        lines = []
        for kind, limit in self.for_user(user).items():
            if limit is not None:
                used = use.core_hours if kind == "core_hours" else use.memory_gib_hours
                lines.append(QuotaLine(kind, "user", None, float(limit), used))
        for group, kind, limit in self.totals_for(user.groups if groups is None else groups):
            group_use = await self._use("group", group, start, end, fresh)
            used = group_use.core_hours if kind == "core_hours" else group_use.memory_gib_hours
            lines.append(QuotaLine(kind, "group", group, float(limit), used))
        return QuotaState(
            user=user.name,
            period=self.period,
            period_start=start,
            period_end=end,
            warn_at=self.warn_at,
            when_exhausted=self.when_exhausted,
            use=use,
            quotas=lines,
        )

    # -- the checks of requests -------------------------------------------------------------
    async def check_create(self, user: User) -> str | None:
        """Before ``user`` creates a cluster: raise QuotaExhausted if a quota it would count
        towards is used up; else the warning to send (None: none)."""
        if not self.applies(user):
            return None
        state = await self.state(user)
        line = state.exhausted
        if line is not None:
            raise QuotaExhausted(
                f"Cannot create a cluster: {state.used_up(line)}", state.retry_after()
            )
        return state.message

    async def check_scale(self, cluster: Cluster, count: int) -> str | None:
        """Before ``cluster`` is scaled to ``count`` workers: scaling up past a used-up
        quota raises QuotaExhausted (scaling down is always allowed); else the warning."""
        if not self.configured:
            return None
        owner = self.owner(cluster)
        if not self.applies(owner, cluster.groups):
            return None
        state = await self.state(owner, cluster.groups)
        line = state.exhausted
        if line is not None and count > cluster.count:
            raise QuotaExhausted(
                f"Cannot scale cluster {cluster.name} up to {workers(count)}: "
                f"{state.used_up(line)}; scaling down is allowed",
                state.retry_after(),
            )
        return state.message

    async def check_adapt(
        self, cluster: Cluster, maximum: int | None
    ) -> tuple[int | None, str | None, str | None]:
        """Before adaptive scaling up to ``maximum`` workers (None: no bound) is set: with a
        used-up quota, the maximum becomes the workers the cluster has. Returns (the
        maximum, why it was lowered or None, the warning or None)."""
        if not self.configured:
            return maximum, None, None
        owner = self.owner(cluster)
        if not self.applies(owner, cluster.groups):
            return maximum, None, None
        state = await self.state(owner, cluster.groups)
        line = state.exhausted
        if line is not None and (maximum is None or maximum > cluster.count):
            why = (
                f"Adapt with `maximum={maximum}` workers would add workers, but "
                f"{state.used_up(line)}. Using `maximum={cluster.count}` instead."
            )
            return cluster.count, why, state.message
        return maximum, None, state.message

    def cap(self, cluster: Cluster) -> tuple[int, str] | None:
        """The most workers ``cluster`` may have while a quota it counts towards is used up
        (``when_exhausted = "no-new-workers"``): the count it has, and why; else None. No
        I/O: the periodic check decides which clusters are capped. The reason completes
        "clamped to N by ...": "the core-hours quota of alice, used up this month"."""
        why = self._caps.get(cluster.name)
        return None if why is None else (cluster.count, why)

    # -- the periodic check -------------------------------------------------------------
    def start(self) -> None:
        """Start the periodic check (only if there is something for it to do)."""
        if self.configured and self.when_exhausted != "keep" and self._task is None:
            self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _loop(self) -> None:
        while True:
            try:
                await self.enforce()
            except asyncio.CancelledError:
                raise
            except Exception:
                self.log.exception("The quota check failed; trying again later")
            await asyncio.sleep(self.check_interval)

    async def enforce(self) -> None:
        """Apply ``when_exhausted`` to the running clusters that count towards a used-up
        quota: stop them, or cap their workers (with a "scaled" event saying why)."""
        if self.reconciler is None or self.when_exhausted == "keep" or not self.configured:
            self._caps.clear()
            return
        caps: dict[str, str] = {}
        for cluster in self.reconciler.live_clusters():
            if not cluster.is_active:
                continue
            owner = self.owner(cluster)
            if not self.applies(owner, cluster.groups):
                continue
            state = await self.state(owner, cluster.groups)
            line = state.exhausted
            if line is None or not cluster.is_active:
                continue
            why = state.why_stopped(line)
            if self.when_exhausted == "stop":
                self.log.info("Stopping cluster %s: %s", cluster.name, why)
                await self.reconciler.stop_cluster(
                    cluster, message=f"Stopped: {why}", requested=f"Stopped: {why}"
                )
                continue
            caps[cluster.name] = f"{line.name(state.user)}, used up {_THIS[state.period]}"
            if cluster.name not in self._caps:
                self.log.info("Capping the workers of cluster %s: %s", cluster.name, why)
                await self.reconciler.events.record(
                    cluster, "scaled", f"Workers capped at {workers(cluster.count)}: {why}"
                )
        self._caps = caps
