"""The rich cluster list the web console needs (owner, groups, workers, what each cluster
holds now), which the eight-key cluster JSON of ``GET /api/v1/clusters/`` must not carry."""

from __future__ import annotations

from typing import Any

from ..models import Cluster, JobStatus
from .base import APIError, BaseHandler, Route
from .clusters import _bool_arg, _parse_statuses

#: A scheduler or worker holds its cores and memory from the backend's start until it is
#: done: as its allocation in the store (usage.py) counts it.
_HOLDING = (JobStatus.SUBMITTED, JobStatus.RUNNING, JobStatus.CLOSING)


def overview_entry(cluster: Cluster) -> dict[str, Any]:
    """One cluster as the overview shows it."""
    config = cluster.config
    cores = 0.0
    memory = 0
    if cluster.status in _HOLDING:
        cores += float(config.get("scheduler_cores", 1) or 0)
        memory += int(config.get("scheduler_memory", 0) or 0)
    running = pending = held = 0
    for worker in cluster.workers.values():
        if worker.is_active:
            if worker.status == JobStatus.RUNNING:
                running += 1
            elif worker.is_pending:
                pending += 1
        if worker.status in _HOLDING:
            held += 1
    cores += held * float(config.get("worker_cores", 1) or 0)
    memory += held * int(config.get("worker_memory", 0) or 0)
    model = cluster.to_dict()
    return {
        "name": cluster.name,
        "user": cluster.username,
        "groups": sorted(cluster.groups),
        "status": model["status"],
        "workers": {"requested": cluster.count, "running": running, "pending": pending},
        "cores": cores,
        "memory": memory,
        "start_time": cluster.start_time,
        "stop_time": cluster.stop_time,
        "options": cluster.options,
        "dashboard_route": model["dashboard_route"],
    }


class OverviewHandler(BaseHandler):
    async def get(self) -> None:
        user = self.current_user
        all_users = _bool_arg(self.get_query_argument("all", None))
        owner = self.get_query_argument("user", None)
        group = self.get_query_argument("group", None)
        statuses = _parse_statuses(self.get_query_argument("status", None))
        if owner in ("", "self"):
            owner = user.name
        if not user.admin:
            if all_users:
                raise APIError(403, f"User {user.name} is not an admin: ?all=1 is for admins")
            if owner is not None and owner != user.name:
                raise APIError(
                    403, f"User {user.name} is not an admin: only their own clusters are shown"
                )
        clusters: list[Cluster]
        if owner is not None:
            clusters = self.reconciler.clusters_of(owner)
        elif not all_users:
            clusters = self.reconciler.clusters_of(user.name)
        elif statuses is None:  # the active ones only: not the thousands that ended
            clusters = self.reconciler.live_clusters()
        else:
            clusters = list(self.reconciler.clusters.values())
        out = []
        for cluster in clusters:
            if owner is not None and cluster.username != owner:
                continue
            if group is not None and group not in cluster.groups:
                continue
            if statuses is None:
                if not cluster.is_active:
                    continue
            elif cluster.model_status not in statuses:
                continue
            out.append(overview_entry(cluster))
        out.sort(key=lambda c: (-c["start_time"], c["name"]))
        self.write_json({"clusters": out})


ROUTES: list[Route] = [
    ("/api/v1/overview", OverviewHandler),
]
