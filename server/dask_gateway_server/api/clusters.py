"""What users do with clusters: options, create, list, get, scale, adapt, workers, stop."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable

from traitlets import TraitError

from ..backends.base import UserNotAllowed
from ..events import workers
from ..limits import LimitExceeded
from ..models import MAX_WORKER_COUNT, Cluster, ClusterStatus, JobStatus
from ..quotas import WARNING_HEADER, QuotaExhausted, UsageQuotas, header_value
from ..reconciler import SchedulerUnreachable
from .base import APIError, BaseHandler, Route, token_from

WAIT_TIMEOUT = 20.0


class OptionsHandler(BaseHandler):
    async def get(self) -> None:
        try:
            options = await self.backend.get_cluster_options(self.current_user)
        except Exception:
            self.settings["log"].exception(
                "cluster_options failed for user %s", self.current_user.name
            )
            raise APIError(
                500, "The gateway's cluster_options failed; see the gateway log"
            ) from None
        self.write_json({"cluster_options": options.get_specification()})


def _parse_statuses(value: str | None) -> set[ClusterStatus] | None:
    if value is None:
        return None
    out = set()
    for part in value.split(","):
        part = part.strip()
        if part:
            try:
                out.add(ClusterStatus.from_name(part))
            except ValueError as e:
                raise APIError(422, str(e)) from None
    return out


class ClustersHandler(BaseHandler):
    async def get(self) -> None:
        statuses = _parse_statuses(self.get_query_argument("status", None))
        user = self.current_user
        # Admins may ask for everyone's clusters; only then is the owner added to each entry
        # (old clients never send ?all=1, so they keep their exact eight keys).
        all_users = _bool_arg(self.get_query_argument("all", None))
        if all_users and not user.admin:
            raise APIError(403, f"User {user.name} is not an admin: ?all=1 is for admins")
        clusters: list[Cluster] | Iterable[Cluster]
        if not all_users:
            clusters = self.reconciler.clusters_of(user.name)
        elif statuses is None:  # the active ones only: not the thousands that ended
            clusters = self.reconciler.live_clusters()
        else:
            clusters = self.reconciler.clusters.values()
        parts = []
        for cluster in clusters:
            if statuses is None:
                if not cluster.is_active:
                    continue
            elif cluster.model_status not in statuses:
                continue
            if all_users:
                model = json.dumps({**cluster.to_dict(), "username": cluster.username})
            else:
                model = cluster.to_json()
            parts.append(f"{json.dumps(cluster.name)}: {model}")
        self.set_status(200)
        self.finish("{" + ", ".join(parts) + "}")

    async def post(self) -> None:
        body = self.json_body()
        if not isinstance(body, dict):
            raise APIError(422, f"Request body must be a JSON object, got {type(body).__name__}")
        request = body.get("cluster_options")
        try:
            options, config = await self.backend.process_cluster_options(self.current_user, request)
        except UserNotAllowed as e:
            raise APIError(403, str(e)) from None
        except (ValueError, TypeError, TraitError, KeyError) as e:
            raise APIError(422, str(e)) from None
        try:
            self.limits.check(
                self.current_user,
                self.reconciler.clusters_of(self.current_user.name),
                config=config,
            )
        except LimitExceeded as e:
            raise APIError(422, str(e)) from None
        try:
            warning = await _quotas(self).check_create(self.current_user)
        except QuotaExhausted as e:
            raise _refused(e) from None
        _warn(self, warning)
        cluster = await self.reconciler.create_cluster(self.current_user, options, config)
        self.write_json({"name": cluster.name}, status=201)


def _quotas(handler: BaseHandler) -> UsageQuotas:
    return handler.settings["quotas"]


def _refused(e: QuotaExhausted) -> APIError:
    """A used-up quota as the client gets it: 429, and when to try again."""
    return APIError(429, str(e), {"Retry-After": str(e.retry_after)})


def _warn(handler: BaseHandler, warning: str | None) -> None:
    """A quota nearly (or fully) used: say so in the answer's header."""
    if warning:
        handler.set_header(WARNING_HEADER, header_value(warning))


def _bool_arg(value: str | None) -> bool:
    if value is None:
        return False
    if value == "":
        return True
    try:
        return bool(int(value))
    except ValueError:
        return value.lower() in ("true", "yes")


class ClusterHandler(BaseHandler):
    auth_kind = "none"  # DELETE also accepts the cluster's own token

    async def get(self, name: str) -> None:
        self.current_user = await self.authenticate()
        cluster = self.get_cluster(name)
        if _bool_arg(self.get_query_argument("wait", None)) and not cluster.ready.is_set():
            try:
                await asyncio.wait_for(asyncio.shield(cluster.ready.wait()), WAIT_TIMEOUT)
            except asyncio.TimeoutError:
                pass
        self.write_json(cluster.to_dict())

    async def delete(self, name: str) -> None:
        token = token_from(self.request)
        cluster = self.reconciler.by_token.get(token) if token else None
        if cluster is not None and cluster.name == name:
            why = _scheduler_reason(self.get_query_argument("reason", ""), cluster.config)
            await self.reconciler.stop_cluster(
                cluster, requested="Its scheduler asked to stop" + (f": {why}" if why else "")
            )
        else:
            self.current_user = await self.authenticate()
            user = self.current_user
            cluster = self.reconciler.clusters.get(name)
            if cluster is not None:
                if not user.can_access(cluster):
                    raise APIError(
                        403,
                        f"User {user.name} lacks permissions to stop cluster {name}",
                    )
                by = user.name if user.name == cluster.username else f"admin {user.name}"
                await self.reconciler.stop_cluster(cluster, requested=f"Stop requested by {by}")
        self.set_status(204)
        self.finish()


def _scheduler_reason(reason: str, config: dict) -> str:
    """Why our scheduler preload asks to stop (``DELETE ...?reason=``), as the user reads it;
    the numbers come from the cluster's configuration, never from the scheduler. Unknown or
    no reason (the public preload sends none): ""."""
    if reason == "idle":
        return f"idle for more than {float(config.get('idle_timeout') or 0):g} s"
    if reason == "orphan":
        return "its client is gone (orphan timeout)"
    return ""


def _int_or_none(body: dict, key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise APIError(422, f"{key} must be a non-negative integer or null, got {value!r}")
    return value


class ScaleHandler(BaseHandler):
    async def post(self, name: str) -> None:
        cluster = self.get_cluster(name, "scale")
        body = self.json_body()
        count = body.get("count") if isinstance(body, dict) else None
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise APIError(422, f"Scale expects a non-negative integer, got {count!r}")
        msg = None
        asked = count
        limit = cluster.max_workers
        if limit is not None and count > limit:
            msg = (
                f"Scale request of {count} workers would exceed resource limit of "
                f"{limit} workers. Scaling to {limit} instead."
            )
            count = limit
        if count > MAX_WORKER_COUNT:
            raise APIError(422, f"Scale expects at most {MAX_WORKER_COUNT} workers, got {count}")
        try:
            self.limits.check(
                self.limits.owner(cluster),
                self.reconciler.clusters_of(cluster.username),
                changed=cluster,
                count=count,
            )
        except LimitExceeded as e:
            raise APIError(422, str(e)) from None
        try:
            warning = await _quotas(self).check_scale(cluster, count)
        except QuotaExhausted as e:
            raise _refused(e) from None
        _warn(self, warning)
        self.reconciler.scale_requested(cluster, count)
        await self._send(cluster, {"op": "scale", "count": count})
        user = self.current_user.name
        event = f"Scaled to {workers(count)} by {user}"
        if count != asked:
            event = (
                f"{user} asked for {workers(asked)}, clamped to {count} by the limit of "
                f"{workers(count)} per cluster"
            )
        # Before the count is set: the workers it starts come after it in the history.
        await self.reconciler.events.record(cluster, "scaled", event)
        await self.reconciler.set_count(cluster, count)
        self.write_json({"ok": msg is None, "msg": msg})

    async def _send(self, cluster: Cluster, msg: dict) -> None:
        try:
            await self.reconciler.send_to_scheduler(cluster, msg)
        except SchedulerUnreachable:
            raise APIError(409, f"cluster {cluster.name} is not running") from None


class AdaptHandler(ScaleHandler):
    async def post(self, name: str) -> None:
        cluster = self.get_cluster(name, "adapt")
        body = self.json_body()
        if not isinstance(body, dict):
            raise APIError(422, "Adapt expects a JSON object")
        minimum = _int_or_none(body, "minimum")
        maximum = _int_or_none(body, "maximum")
        active = body.get("active", True)
        if not isinstance(active, bool):
            raise APIError(422, f"active must be true or false, got {active!r}")
        if minimum is not None and maximum is not None and minimum > maximum:
            raise APIError(422, f"minimum ({minimum}) must not exceed maximum ({maximum})")
        msg = None
        limit = cluster.max_workers
        if limit is not None:
            new_max = limit if maximum is None else min(maximum, limit)
            new_min = 0 if minimum is None else min(minimum, limit)
            if (maximum is not None and maximum > limit) or (
                minimum is not None and minimum > limit
            ):
                msg = (
                    f"Adapt with `maximum={maximum}, minimum={minimum}` workers would "
                    f"exceed resource limit of {limit} workers. Using "
                    f"`maximum={new_max}, minimum={new_min}` instead."
                )
            minimum, maximum = new_min, new_max
        user_max = self.limits.max_count(
            self.limits.owner(cluster), self.reconciler.clusters_of(cluster.username), cluster
        )
        if user_max is not None and (maximum is None or maximum > user_max):
            msg = (
                f"Adapt with `maximum={maximum}` workers would exceed the user limits of "
                f"{cluster.username}. Using `maximum={user_max}` instead."
            )
            maximum = user_max
            minimum = None if minimum is None else min(minimum, user_max)
        if active:
            lowered, why, warning = await _quotas(self).check_adapt(cluster, maximum)
            _warn(self, warning)
            if why is not None:
                msg, maximum = why, lowered
                minimum = None if minimum is None or maximum is None else min(minimum, maximum)
        for key, value in (("minimum", minimum), ("maximum", maximum)):
            if value is not None and value > MAX_WORKER_COUNT:
                raise APIError(
                    422, f"Adapt expects a {key} of at most {MAX_WORKER_COUNT} workers, got {value}"
                )
        await self._send(
            cluster, {"op": "adapt", "minimum": minimum, "maximum": maximum, "active": active}
        )
        self.reconciler.adapt_requested(cluster, active)
        user = self.current_user.name
        if active:
            if maximum is None:
                bounds = f"at least {workers(minimum or 0)}"
            else:
                bounds = f"{minimum or 0} to {workers(maximum)}"
            event = f"Adaptive scaling set by {user}: {bounds}"
            if msg is not None:
                event += " (lowered to the limits)"
        else:
            event = f"Adaptive scaling turned off by {user}"
        await self.reconciler.events.record(cluster, "adaptive", event)
        self.write_json({"ok": msg is None, "msg": msg})


class WorkersHandler(BaseHandler):
    """Opt-in details the 8-key cluster JSON must not carry: running workers and their size.

    Workers count once the scheduler's heartbeat reported them; cores and memory follow from
    the cluster's configuration.
    """

    async def get(self, name: str) -> None:
        cluster = self.get_cluster(name)
        active = cluster.active_workers()
        running = sum(1 for w in active if w.status == JobStatus.RUNNING)
        config = cluster.config
        self.write_json(
            {
                "workers": running,
                "cores": running * int(config.get("worker_cores") or 0),
                "memory": running * int(config.get("worker_memory") or 0),
                "requested": cluster.count,
                # Started but not yet running: the row beside the count asked for.
                "pending": sum(1 for w in active if w.is_pending),
            }
        )


ROUTES: list[Route] = [
    ("/api/v1/options", OptionsHandler),
    ("/api/v1/clusters/", ClustersHandler),
    ("/api/v1/clusters/{cluster_name}", ClusterHandler),
    ("/api/v1/clusters/{cluster_name}/scale", ScaleHandler),
    ("/api/v1/clusters/{cluster_name}/adapt", AdaptHandler),
    ("/api/v1/clusters/{cluster_name}/workers", WorkersHandler),
]
