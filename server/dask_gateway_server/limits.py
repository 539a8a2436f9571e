"""Per-user limits: how many clusters, cores and bytes of memory one user may hold at once.

Set defaults for everyone, then raise or lower them per hub group or per user:

    c.UserLimits.max_clusters = 2
    c.UserLimits.groups = {"power-users": {"max_clusters": 10, "max_cores": 64}}
    c.UserLimits.users = {"alice": {"max_memory": "512 G"}}

A user's own entry wins; among their groups, the most generous value wins.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from traitlets import Dict, Float, Integer
from traitlets.config import Configurable

from .models import Cluster, User
from .traits import MemoryLimit, format_bytes

_KEYS = ("max_clusters", "max_cores", "max_memory")


class LimitExceeded(Exception):
    """A request that would take a user over one of their limits."""


class UserLimits(Configurable):
    max_clusters = Integer(
        None,
        allow_none=True,
        help="Most clusters a user may run at once (None: no limit).",
        config=True,
    )
    max_cores = Float(
        None,
        allow_none=True,
        help="Most cores across a user's clusters (None: no limit).",
        config=True,
    )
    max_memory = MemoryLimit(
        None,
        allow_none=True,
        help="Most memory across a user's clusters (None: no limit).",
        config=True,
    )
    groups = Dict(
        help="Limits per hub group: {group: {max_clusters, max_cores, max_memory}}.", config=True
    )
    users = Dict(
        help="Limits per user: {user: {max_clusters, max_cores, max_memory}}.", config=True
    )

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._known: dict[str, User] = {}

    def remember(self, user: User) -> None:
        """Keep the latest identity (groups) of a user, for checks made without a request."""
        self._known[user.name] = user

    def owner(self, cluster: Cluster) -> User:
        return self._known.get(cluster.username) or User(cluster.username)

    def for_user(self, user: User) -> dict:
        """The limits that apply to ``user`` (None: unlimited)."""
        out = {}
        for key in _KEYS:
            own = self.users.get(user.name, {})
            if key in own:
                out[key] = self._value(key, own[key])
                continue
            from_groups = [
                self._value(key, self.groups[g][key])
                for g in user.groups
                if key in self.groups.get(g, {})
            ]
            if from_groups:
                out[key] = None if None in from_groups else max(from_groups)
            else:
                out[key] = getattr(self, key)
        return out

    @staticmethod
    def _value(key: str, value):
        if value is None:
            return None
        if key == "max_memory":
            return MemoryLimit().validate(None, value)
        return value

    def check(
        self,
        user: User,
        clusters: Iterable[Cluster],
        changed: Cluster | None = None,
        config: dict | None = None,
        count: int | None = None,
    ) -> None:
        """Raise LimitExceeded if creating a cluster (``config``) or scaling ``changed`` to
        ``count`` workers would exceed ``user``'s limits."""
        limits = self.for_user(user)
        if all(v is None for v in limits.values()):
            return
        active = [c for c in clusters if c.username == user.name and c.is_active]
        cores = memory = 0.0
        for c in active:
            n = count if (c is changed and count is not None) else c.count
            c_cores, c_memory = _usage(c.config, n)
            cores += c_cores
            memory += c_memory
        if config is not None:
            if limits["max_clusters"] is not None and len(active) + 1 > limits["max_clusters"]:
                raise LimitExceeded(
                    f"User {user.name} may run at most {limits['max_clusters']} clusters at "
                    f"once and already runs {len(active)}: stop one first"
                )
            new_cores, new_memory = _usage(config, 0)
            cores += new_cores
            memory += new_memory
        if limits["max_cores"] is not None and cores > limits["max_cores"]:
            raise LimitExceeded(
                f"User {user.name} is limited to {limits['max_cores']:g} cores across all "
                f"clusters; this request needs {cores:g}, {cores - limits['max_cores']:g} "
                f"over the limit"
            )
        if limits["max_memory"] is not None and memory > limits["max_memory"]:
            raise LimitExceeded(
                f"User {user.name} is limited to {format_bytes(limits['max_memory'])} of memory "
                f"across all clusters; this request needs {format_bytes(int(memory))}, "
                f"{format_bytes(int(memory - limits['max_memory']))} over the limit"
            )

    def max_count(self, user: User, clusters: Iterable[Cluster], cluster: Cluster) -> int | None:
        """The most workers ``cluster`` may have within ``user``'s limits (None: no limit)."""
        limits = self.for_user(user)
        if limits["max_cores"] is None and limits["max_memory"] is None:
            return None
        others_cores = others_memory = 0.0
        for c in clusters:
            if c.username == user.name and c.is_active and c is not cluster:
                c_cores, c_memory = _usage(c.config, c.count)
                others_cores += c_cores
                others_memory += c_memory
        sched_cores, sched_memory = _usage(cluster.config, 0)
        worker_cores = cluster.config.get("worker_cores", 1) or 1
        worker_memory = cluster.config.get("worker_memory", 0) or 0
        bounds = []
        if limits["max_cores"] is not None:
            bounds.append((limits["max_cores"] - others_cores - sched_cores) // worker_cores)
        if limits["max_memory"] is not None and worker_memory:
            bounds.append((limits["max_memory"] - others_memory - sched_memory) // worker_memory)
        return max(0, int(min(bounds))) if bounds else None


def _usage(config: dict, count: int) -> tuple[float, float]:
    """(cores, memory) of a cluster with ``count`` workers, scheduler included."""
    cores = config.get("scheduler_cores", 1) + count * config.get("worker_cores", 1)
    memory = config.get("scheduler_memory", 0) + count * config.get("worker_memory", 0)
    return cores, memory
