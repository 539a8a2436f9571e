"""Drives every cluster and worker from its status to its target.

Requests (create, stop, heartbeat) only record a target in the store and wake the reconciler;
here the backend is asked to start or stop things, and timers catch what never reports back.
The in-memory ``clusters`` dict is a cache of the store, rebuilt by ``start()``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from .addresses import (
    ADDRESS_KEYS,
    AddressMoved,
    AddressNotYetKnown,
    AddressRefused,
    parse_addresses,
)
from .backends.base import Backend, DBBackendBase
from .cluster_logs import ClusterLogs
from .events import EventLog, host_of, last_exception_line, workers
from .logs import about
from .models import MAX_WORKER_COUNT, Cluster, JobStatus, User, Worker, now_ms
from .store import Allocation, Store, StoreUnavailable, held
from .tls import new_keypair
from .workqueue import WorkQueue

CLUSTER = "cluster"
WORKER = "worker"

#: What the reconcile loop is asked to handle: ``(CLUSTER, name)`` or
#: ``(WORKER, cluster name, worker name)``.
Key = tuple[str, ...]

#: Longest a cluster's stop waits for its logs to be kept.
KEEP_LOGS_TIMEOUT = 30.0

#: Longest retry delay while the database is unavailable: retrying costs one connection
#: attempt, and everything should resume soon after the database is back.
STORE_RETRY_MAX_DELAY = 5.0

#: How many times the backend is asked to stop a cluster or a worker, with the reconcile
#: loop's backoff in between (about 100 s with the default delays), before it is recorded as
#: ended anyway: FAILED, with the backend's error as the reason.
STOP_ATTEMPTS = 10

#: Default retention of a cluster's events (and kept logs) after it ended: 7 days.
EVENTS_MAX_AGE = 7 * 24 * 3600.0

#: Lines of a worker's log that its failure event carries.
WORKER_LOG_LINES = 20


class SchedulerUnreachable(Exception):
    """The scheduler did not accept a message from the gateway."""


class StartAbandoned(Exception):
    """A stop was requested while the backend was starting the cluster or worker."""


class Routes(Protocol):
    """The proxy as the reconciler uses it: a cluster is routed once its scheduler's
    addresses are confirmed, and no longer once it stops."""

    def add_route(
        self,
        cluster_name: str,
        scheduler_address: str,
        dashboard_address: str,
        handoff: str | None = None,
        handoff_uid: int | None = None,
        dashboard_key: str | None = None,
    ) -> None: ...

    def remove_route(self, cluster_name: str) -> None: ...


class Reconciler:
    def __init__(
        self,
        store: Store,
        backend: Backend,
        routes: Routes,
        log: logging.Logger | None = None,
        count_limit: Callable[[Cluster], int | tuple[int, str] | None] | None = None,
        events: EventLog | None = None,
        events_max_age: float = EVENTS_MAX_AGE,
        logs: ClusterLogs | None = None,
    ) -> None:
        """``routes`` is the proxy. ``count_limit(cluster)`` caps the workers a scheduler
        may ask for (per-user limits), or gives the cap and why (a used-up quota).
        ``events`` records each cluster's history (default: in ``store``), kept
        ``events_max_age`` seconds after the cluster ended, like the logs that ``logs``
        keeps of each cluster when it stops."""
        self.count_limit = count_limit
        self.logs = logs
        self.store = store
        self.backend = backend
        self.log = log or logging.getLogger("dask_gateway_server")
        self.events = events or EventLog(store, self.log)
        self.events_max_age = events_max_age
        backend.event_sink = self._backend_event
        if not isinstance(backend, DBBackendBase):  # the timers and limits are its settings
            raise TypeError(
                f"{type(backend).__name__} is not a DBBackendBase, whose settings (timeouts, "
                "periods, parallelism) the reconciler needs"
            )
        self.settings = backend
        self.routes = routes
        self.clusters: dict[str, Cluster] = {}
        self.by_token: dict[str, Cluster] = {}
        # Listing a user's clusters must not cost more with every other user's clusters.
        self.by_user: dict[str, dict[str, Cluster]] = {}
        # The clusters not yet ended: what the timers, the metrics and the quota checks go
        # through. Ended ones stay in ``clusters`` for ``db_cluster_max_age`` (a day by
        # default: thousands on a busy gateway) and must cost nothing meanwhile; only their
        # number by final status is kept for the metrics.
        self.live: dict[str, Cluster] = {}
        self.ended_counts: Counter[str] = Counter()
        self.queue: WorkQueue[Key] = WorkQueue()
        self._failures: dict[Key, int] = {}
        self.stop_attempts = STOP_ATTEMPTS
        self._stop_failures: dict[str, int] = {}  # by cluster or worker name
        self._worker_stops: dict[str, asyncio.Lock] = {}
        self._first_heartbeats: dict[str, asyncio.Lock] = {}
        # The starts in progress (a key as queued): set to abandon one when a stop is asked.
        self._starting: dict[Key, asyncio.Future[None]] = {}
        self._tasks: list[asyncio.Task] = []
        self._http = AsyncHTTPClient()
        # For the events only (memory; a restart forgets them, the messages then say less):
        self._adaptive: dict[str, bool] = {}  # by cluster: adaptive scaling is on
        self._user_counts: dict[str, int] = {}  # by cluster: the last count a user set
        self._scheduler_exits: dict[str, str] = {}  # by cluster: found dead, and why
        self._worker_reasons: dict[str, str] = {}  # by worker: why it failed, if known
        # By cluster, while its start is in progress: set once "scheduler-started" is
        # recorded, so that "running" (from a fast first heartbeat) never comes before it.
        self._start_recorded: dict[str, asyncio.Event] = {}

    # -- lifecycle ----------------------------------------------------------------
    async def start(self) -> None:
        """Load every cluster from the store and resume driving the unfinished ones."""
        self.events.bind(asyncio.get_running_loop())
        repaired = await self.store.repair_allocations()
        if repaired.closed or repaired.opened:
            self.log.warning(
                "Usage records repaired at start-up: %d allocation(s) closed, %d opened",
                repaired.closed,
                repaired.opened,
            )
        for cluster in await self.store.load():
            self._remember(cluster)
            if cluster.status.is_done:
                cluster.ready.set()
                cluster.ended.set()
                continue
            if cluster.status == JobStatus.RUNNING:
                # Schedulers kept running while we were down: give them a heartbeat period
                # to find us again, and route their traffic meanwhile.
                cluster.last_heartbeat = time.monotonic()
                cluster.ready.set()
                self._add_route(cluster)
            self.queue.put((CLUSTER, cluster.name))
            for worker in cluster.workers.values():
                if not worker.status.is_done:
                    self.queue.put((WORKER, cluster.name, worker.name))
        s = self.settings
        tick = max(
            0.05, min(s.check_timeouts_period, s.cluster_status_period, s.worker_status_period)
        )
        self._tasks = [asyncio.create_task(self._worker_loop()) for _ in range(s.parallelism)]
        # Separate loops: a slow or hung status check never delays the timeouts.
        self._tasks += [
            asyncio.create_task(self._every(tick, self._check_timeouts, "timeout checks")),
            asyncio.create_task(
                self._every(
                    max(0.05, s.cluster_status_period), self._check_clusters, "scheduler checks"
                )
            ),
            asyncio.create_task(
                self._every(max(0.05, s.worker_status_period), self._check_workers, "worker checks")
            ),
            asyncio.create_task(self._cleanup_loop()),
        ]

    async def stop(self) -> None:
        """Stop reconciling; with ``stop_clusters_on_shutdown`` fail and stop every cluster."""
        if self.settings.stop_clusters_on_shutdown:
            active = self.live_clusters()
            # Their targets in one write, not one each: thousands may run, and each write
            # would come before the stops themselves begin.
            stopping = [c for c in active if c.is_active]
            try:
                if stopping:
                    await self.store.update_clusters(
                        stopping, target=JobStatus.FAILED, message="The gateway shut down"
                    )
            except StoreUnavailable:
                self.log.warning(
                    "Could not record the stop of %d clusters: the database is unavailable",
                    len(stopping),
                )
                active = [c for c in active if not c.is_active]  # those already stopping
            else:
                for c in stopping:
                    self._abandon_start((CLUSTER, c.name))
                    self.queue.put((CLUSTER, c.name))
            await self._until_ended(active, timeout=60)
        self.queue.close()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.events.flush()

    async def _until_ended(self, clusters: list[Cluster], timeout: float) -> None:
        """Wait until the final status of each of ``clusters`` is written (not only set in
        memory: the write would be cancelled with the tasks), for ``timeout`` s at most."""
        try:
            await asyncio.wait_for(asyncio.gather(*(c.ended.wait() for c in clusters)), timeout)
        except asyncio.TimeoutError:
            pass

    def _remember(self, cluster: Cluster) -> None:
        self.clusters[cluster.name] = cluster
        self.by_token[cluster.token] = cluster
        self.by_user.setdefault(cluster.username, {})[cluster.name] = cluster
        if cluster.status.is_done:
            self.ended_counts[cluster.status.name] += 1
        else:
            self.live[cluster.name] = cluster

    def _ended(self, cluster: Cluster) -> None:
        """``cluster``'s final status is recorded: no timer looks at it any more."""
        if self.live.pop(cluster.name, None) is not None:
            self.ended_counts[cluster.status.name] += 1

    def _forget(self, name: str) -> None:
        cluster = self.clusters.pop(name, None)
        self._first_heartbeats.pop(name, None)
        if cluster is not None:
            if self.live.pop(name, None) is None and cluster.status.is_done:
                self.ended_counts[cluster.status.name] -= 1
                if self.ended_counts[cluster.status.name] <= 0:
                    del self.ended_counts[cluster.status.name]
            self.by_token.pop(cluster.token, None)
            mine = self.by_user.get(cluster.username, {})
            mine.pop(name, None)
            if not mine:
                self.by_user.pop(cluster.username, None)

    def live_clusters(self) -> list[Cluster]:
        """The clusters not yet ended (a copy: the caller may await while going through
        it). One whose final status is being written is skipped, and stays until the write
        succeeded (a failed one is undone, and retried)."""
        return [c for c in self.live.values() if not c.status.is_done]

    def clusters_of(self, username: str) -> list[Cluster]:
        return list(self.by_user.get(username, {}).values())

    # -- requests (from the API) ------------------------------------------------
    async def create_cluster(self, user: User, options: dict, config: dict) -> Cluster:
        name = uuid.uuid4().hex
        cert, key = new_keypair(name)
        cluster = Cluster(
            name=name,
            username=user.name,
            token=uuid.uuid4().hex + uuid.uuid4().hex,
            options=options,
            config=config,
            tls_cert=cert,
            tls_key=key,
            groups=user.groups,
        )
        await self.store.add_cluster(cluster)
        self._remember(cluster)
        await self.events.record(cluster, "submitted", f"Cluster created by {user.name}")
        self.queue.put((CLUSTER, name))
        self.log.info("Created cluster %s for user %s", name, user.name, extra=about(name))
        return cluster

    async def stop_cluster(
        self, cluster: Cluster, failed: bool = False, message: str = "", requested: str = ""
    ) -> None:
        """Have ``cluster`` stopped (``failed``: it ends FAILED, ``message`` saying why).
        ``requested``: who asked and why, recorded as its "stop-requested" event."""
        if not cluster.is_active:
            return
        target = JobStatus.FAILED if failed else JobStatus.STOPPED
        await self.store.update_cluster(cluster, target=target, message=message or cluster.message)
        if requested:
            await self.events.record(cluster, "stop-requested", requested)
        self._abandon_start((CLUSTER, cluster.name))
        self.queue.put((CLUSTER, cluster.name))

    # -- events ---------------------------------------------------------------------
    def _backend_event(
        self, cluster: Cluster, kind: str, message: str, worker: Worker | None, detail: str
    ) -> None:
        """``Backend.emit``'s sink: the backend cannot wait, the event is written soon."""
        self.events.record_soon(cluster, kind, message, worker=worker, detail=detail)

    def scale_requested(self, cluster: Cluster, count: int) -> None:
        """A user asked for ``count`` workers (adaptive scaling ends): the scheduler's
        heartbeat repeating that count is no event of its own."""
        self._adaptive[cluster.name] = False
        self._user_counts[cluster.name] = count

    def adapt_requested(self, cluster: Cluster, active: bool) -> None:
        """A user turned adaptive scaling on or off: later counts are adaptive's."""
        self._adaptive[cluster.name] = active
        self._user_counts.pop(cluster.name, None)

    async def _worker_log_tail(self, cluster: Cluster, worker: Worker) -> str:
        """The last lines of a worker's log, if the backend can read it (else "")."""
        try:
            chunk = await asyncio.wait_for(
                self.backend.read_log(cluster, f"worker:{worker.name}", None, 16384), 5
            )
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self.log.debug(
                "Could not read the log of worker %s: %s", worker.name, e, extra=about(cluster)
            )
            return ""
        if chunk is None:
            return ""
        lines = chunk.data.decode(errors="replace").splitlines()
        return "\n".join(lines[-WORKER_LOG_LINES:])

    async def on_heartbeat(self, cluster: Cluster, msg: dict) -> None:
        """The scheduler says where it is, how many workers it wants and which it has.

        Raises AddressRefused (logged) for addresses the backend cannot confirm or that
        differ from those already set: nothing else of such a heartbeat is applied.
        """
        if not cluster.is_active or cluster.status.is_done:
            return
        became_running = await self._accept_addresses(cluster, msg)
        if not cluster.is_active or cluster.status.is_done:  # stopped meanwhile
            return
        cluster.last_heartbeat = time.monotonic()
        changes: dict[str, Any] = {}
        requested = count = min(max(0, msg["count"]), MAX_WORKER_COUNT)  # what the store holds
        clamp = ""
        if cluster.max_workers is not None and count > cluster.max_workers:
            count = cluster.max_workers
            clamp = f"the limit of {workers(count)} per cluster"
        user_limit = self.count_limit(cluster) if self.count_limit else None
        why = ""
        if isinstance(user_limit, tuple):
            user_limit, why = user_limit
        if user_limit is not None and count > user_limit:
            count = user_limit
            clamp = why or f"the limit of {workers(count)} per user"
        if count != cluster.count:
            changes["count"] = count
        if changes:
            await self.store.update_cluster(cluster, **changes)
        if became_running:
            self._add_route(cluster)
            cluster.ready.set()
            self.log.info("Cluster %s is running", cluster.name, extra=about(cluster))
            started = self._start_recorded.get(cluster.name)
            if started is not None:  # its start is still being recorded: after it
                try:
                    await asyncio.wait_for(started.wait(), 5)
                except asyncio.TimeoutError:
                    pass
            self.events.record_soon(
                cluster, "running", f"Scheduler running on {host_of(cluster.scheduler_address)}"
            )
        if "count" in changes:
            await self._record_scaled(cluster, requested, clamp)

        closing = set(msg["closing_workers"])
        for name in set(msg["active_workers"]) | closing:
            worker = cluster.workers.get(name)
            if worker is None or worker.status.is_done:
                continue
            if worker.status in (JobStatus.CREATED, JobStatus.SUBMITTED):
                await self.store.update_worker(worker, status=JobStatus.RUNNING)
                cluster.worker_start_failures = 0
                self.events.record_soon(
                    cluster, "worker-joined", f"Worker {name} joined the scheduler", worker=name
                )
            if name in closing and not worker.close_expected:
                await self.store.update_worker(
                    worker, close_expected=True, target=JobStatus.STOPPED
                )
        for name in msg["closed_workers"]:
            worker = cluster.workers.get(name)
            if worker is None or worker.status.is_done:
                continue
            if worker.close_expected or worker.target != JobStatus.RUNNING:
                target = JobStatus.STOPPED
            else:
                self.log.warning(
                    "Worker %s of cluster %s was lost", name, cluster.name, extra=about(cluster)
                )
                target = JobStatus.FAILED
                self._worker_reasons.setdefault(name, "")  # why: the backend's, once stopped
            await self.store.update_worker(worker, target=target)
            self.queue.put((WORKER, cluster.name, name))

        # Cancel workers still starting beyond the requested count, unstarted ones first.
        extra = len(cluster.active_workers()) - cluster.count
        if extra > 0:
            pending = sorted(
                (w for w in cluster.workers.values() if w.is_pending), key=lambda w: w.status
            )
            for worker in pending[:extra]:
                await self.store.update_worker(
                    worker, target=JobStatus.STOPPED, close_expected=True
                )
                self._abandon_start((WORKER, cluster.name, worker.name))
                self.queue.put((WORKER, cluster.name, worker.name))
        self.queue.put((CLUSTER, cluster.name))

    async def _record_scaled(self, cluster: Cluster, requested: int, clamp: str) -> None:
        """A heartbeat changed the worker count: say who asked (adaptive scaling, or the
        scheduler itself) and which limit lowered it; a user's own scale is recorded by the
        API (the heartbeat then only repeats it)."""
        adaptive = self._adaptive.get(cluster.name, False)
        if not adaptive and self._user_counts.get(cluster.name) == cluster.count:
            return
        who = "Adaptive scaling" if adaptive else "The scheduler"
        message = f"{who} asked for {workers(requested)}"
        if clamp:
            message += f", clamped to {cluster.count} by {clamp}"
        self.events.record_soon(cluster, "scaled", message)

    async def _accept_addresses(self, cluster: Cluster, msg: dict) -> bool:
        """Set the cluster's addresses from its first heartbeat once the backend confirmed
        them (and mark it RUNNING); later heartbeats must repeat them. Returns whether this
        heartbeat made the cluster RUNNING; raises AddressRefused."""
        reported = {key: msg[key] for key in ADDRESS_KEYS}
        if not cluster.scheduler_address:
            # One check at a time per cluster, so that a forged first heartbeat racing the
            # scheduler's costs one check, and the later of two is compared, not stored.
            lock = self._first_heartbeats.setdefault(cluster.name, asyncio.Lock())
            async with lock:
                if not cluster.scheduler_address:
                    await self._validate(cluster, reported)
                # Checked again after the wait: set meanwhile, they are compared below.
                if not cluster.scheduler_address:
                    if not cluster.is_active or cluster.status.is_done:
                        return False
                    # Before it is RUNNING: the timers must not find it RUNNING with no
                    # heartbeat ever (while the store writes, after a slow check).
                    cluster.last_heartbeat = time.monotonic()
                    await self.store.update_cluster(cluster, status=JobStatus.RUNNING, **reported)
                    self._first_heartbeats.pop(cluster.name, None)
                    return True
        moved = [key for key in ADDRESS_KEYS if reported[key] != getattr(cluster, key)]
        if moved:
            error = AddressMoved(
                f"{', '.join(moved)} of cluster {cluster.name} cannot change once set "
                f"(reported {reported[moved[0]]!r}, set {getattr(cluster, moved[0])!r})"
            )
            self.log.warning(
                "Refused a heartbeat of cluster %s: %s", cluster.name, error, extra=about(cluster)
            )
            raise error
        return False

    async def _validate(self, cluster: Cluster, reported: dict[str, str]) -> None:
        """Parse the addresses and have the backend confirm them; raises AddressRefused."""
        try:
            addresses = parse_addresses(reported)
            await self.backend.validate_addresses(cluster, addresses)
        except AddressRefused as e:
            self.log.warning(
                "Refused a heartbeat of cluster %s: %s", cluster.name, e, extra=about(cluster)
            )
            raise
        except Exception:
            # The backend's failure, not the scheduler's: never a 500 for a heartbeat.
            self.log.exception(
                "Could not check the addresses of cluster %s", cluster.name, extra=about(cluster)
            )
            raise AddressNotYetKnown(
                "the gateway could not check the scheduler's addresses; see its log"
            ) from None

    def _add_route(self, cluster: Cluster) -> None:
        self.routes.add_route(
            cluster.name,
            cluster.scheduler_address,
            cluster.dashboard_address,
            handoff=self.backend.handoff_address(cluster),
            handoff_uid=self.backend.handoff_uid(cluster),
            dashboard_key=cluster.dashboard_key,
        )

    async def set_count(self, cluster: Cluster, count: int) -> None:
        """Record a count the scheduler has accepted, without waiting for its heartbeat."""
        if cluster.is_active and count != cluster.count:
            await self.store.update_cluster(cluster, count=count)
            self.queue.put((CLUSTER, cluster.name))

    async def send_to_scheduler(self, cluster: Cluster, msg: dict) -> None:
        """POST ``msg`` to the scheduler's API, retrying; raises SchedulerUnreachable."""
        delay = 0.1
        error: Exception | None = None
        for _attempt in range(3):
            if cluster.status != JobStatus.RUNNING or not cluster.is_active:
                break
            req = HTTPRequest(
                f"{cluster.api_address}/api/comm",
                method="POST",
                headers={
                    "Authorization": f"token {cluster.token}",
                    "Content-Type": "application/json",
                },
                body=json.dumps(msg),
                request_timeout=10,
            )
            try:
                await self._http.fetch(req)
                return
            except (HTTPClientError, OSError) as e:
                error = e
                await asyncio.sleep(delay)
                delay *= 2
        if error is not None:
            self.log.warning(
                "Scheduler of cluster %s unreachable: %s", cluster.name, error, extra=about(cluster)
            )
            await self.stop_cluster(cluster, failed=True, message=f"Scheduler unreachable: {error}")
        raise SchedulerUnreachable(f"cluster {cluster.name} is not running")

    # -- the reconcile loop ------------------------------------------------------------
    async def _worker_loop(self) -> None:
        while True:
            key = await self.queue.get()
            try:
                if key[0] == CLUSTER:
                    cluster = self.clusters.get(key[1])
                    if cluster is not None:
                        await self._reconcile_cluster(cluster)
                else:
                    cluster = self.clusters.get(key[1])
                    worker = cluster.workers.get(key[2]) if cluster is not None else None
                    if cluster is not None and worker is not None:
                        await self._reconcile_worker(cluster, worker)
                self._failures.pop(key, None)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                n = self._failures[key] = self._failures.get(key, 0) + 1
                delay = min(
                    self.settings.backoff_max_delay, self.settings.backoff_base_delay * 2**n
                )
                if isinstance(e, StoreUnavailable):  # the store logged it; no traceback
                    delay = min(delay, STORE_RETRY_MAX_DELAY)
                    self.log.debug(
                        "Database unavailable reconciling %s; retrying in %.1f s",
                        key,
                        delay,
                        extra=about(key[1]),
                    )
                else:
                    self.log.exception(
                        "Error reconciling %s; retrying in %.1f s", key, delay, extra=about(key[1])
                    )
                self.queue.put_after(key, delay)
            finally:
                self.queue.task_done(key)

    async def _reconcile_cluster(self, cluster: Cluster) -> None:
        if cluster.status.is_done:
            return
        if not cluster.is_active:
            await self._shut_down(cluster)
        elif cluster.status == JobStatus.CREATED:
            await self._start(cluster)
        elif cluster.status == JobStatus.RUNNING:
            missing = cluster.count - len(cluster.active_workers())
            for _ in range(missing):
                worker = Worker(name=uuid.uuid4().hex, cluster_name=cluster.name)
                await self.store.add_worker(cluster, worker)
                cluster.workers[worker.name] = worker
                self.queue.put((WORKER, cluster.name, worker.name))

    def _abandon_start(self, key: Key) -> None:
        """Have the start of ``key`` in progress, if any, cancelled: it was asked to stop."""
        abandon = self._starting.get(key)
        if abandon is not None and not abandon.done():
            abandon.set_result(None)

    async def _backend_start(
        self, start: Awaitable[dict], timeout: float, abandon: asyncio.Future[None]
    ) -> dict:
        """The state a backend's ``start`` returns. The start is cancelled at ``timeout``
        (TimeoutError) or when ``abandon`` is set (StartAbandoned), and then awaited: the
        backend may clean up what it began (the caller still asks it to stop)."""
        task = asyncio.ensure_future(start)
        timed_out = False
        either: set[asyncio.Future[Any]] = {task, abandon}
        try:
            await asyncio.wait(either, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not task.done():
                timed_out = not abandon.done()
                task.cancel()
                await asyncio.wait({task})
        if abandon.done() and (task.cancelled() or task.exception() is not None):
            raise StartAbandoned()
        if task.cancelled():
            if timed_out:
                raise asyncio.TimeoutError()
            raise RuntimeError("the backend cancelled the start")
        return task.result()

    async def _start(self, cluster: Cluster) -> None:
        recorded = self._start_recorded[cluster.name] = asyncio.Event()
        try:
            await self._start_scheduler(cluster)
        finally:
            recorded.set()
            self._start_recorded.pop(cluster.name, None)

    async def _start_scheduler(self, cluster: Cluster) -> None:
        self.log.info("Starting cluster %s", cluster.name, extra=about(cluster))
        self.events.record_soon(cluster, "starting", "Starting the scheduler")
        key = (CLUSTER, cluster.name)
        abandon = self._starting[key] = asyncio.get_running_loop().create_future()
        allocate: Allocation | None = None
        try:
            state = await self._backend_start(
                self.backend.start_cluster(cluster), self.settings.cluster_start_timeout, abandon
            )
            # It holds its cores and memory from now until its cluster's end is recorded
            # (also when a stop came meanwhile: what started is stopped with the cluster).
            allocate = _allocation(cluster, "scheduler")
        except Exception as e:
            if cluster.is_active:
                error: object = e
                if isinstance(e, asyncio.TimeoutError):  # its str() is empty: say what happened
                    timeout = self.settings.cluster_start_timeout
                    error = f"the backend did not start it within {timeout:g} s"
                self.log.warning(
                    "Cluster %s failed to start: %s", cluster.name, error, extra=about(cluster)
                )
                await self.store.update_cluster(
                    cluster,
                    status=JobStatus.SUBMITTED,
                    target=JobStatus.FAILED,
                    message=f"Cluster failed to start: {error}",
                )
                self.queue.put(key)
                return
            # Asked to stop meanwhile: not a failure. What the start began is stopped.
            self.log.info(
                "Start of cluster %s abandoned: a stop was requested",
                cluster.name,
                extra=about(cluster),
            )
            state = {}
        finally:
            self._starting.pop(key, None)
        # A fast scheduler may have heartbeated (and be RUNNING) before we got here.
        # Only the store knows the scheduler runs (its state says how to stop it): insist.
        await self._until_stored(
            lambda: self.store.update_cluster(
                cluster,
                status=max(cluster.status, JobStatus.SUBMITTED),
                state=state,
                allocate=allocate,
            )
        )
        if state:
            self.events.record_soon(cluster, "scheduler-started", _started("Scheduler", state))
        if not cluster.is_active:  # stopped while starting
            self.queue.put((CLUSTER, cluster.name))

    async def _shut_down(self, cluster: Cluster) -> None:
        if cluster.status == JobStatus.CREATED:
            await self._finish(cluster)
            return
        if cluster.status != JobStatus.CLOSING:
            self.log.info("Stopping cluster %s", cluster.name, extra=about(cluster))
            await self.store.update_cluster(cluster, status=JobStatus.CLOSING)
        self.routes.remove_route(cluster.name)
        live = [w for w in cluster.workers.values() if not w.status.is_done]
        # Workers being started are stopped by their start, which is abandoned now and
        # queues the cluster again once it stopped them: the scheduler is stopped last.
        starting = [w for w in live if (WORKER, cluster.name, w.name) in self._starting]
        for w in starting:
            self._abandon_start((WORKER, cluster.name, w.name))
        # Each with its own target: a worker that failed stays FAILED. All are waited for
        # before an error is raised (retried with backoff): none is left running unawaited.
        results = await asyncio.gather(
            *(self._stop_worker(cluster, w, w.target) for w in live if w not in starting),
            return_exceptions=True,
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]
        if starting:
            return
        # A worker's stop that already set its final status may still be writing its
        # event: the cluster's own end comes after it in the history.
        for worker in list(cluster.workers.values()):
            lock = self._worker_stops.get(worker.name)
            if lock is not None:
                async with lock:
                    pass
        await self._keep_logs(cluster)
        error = await self._backend_stop(
            cluster,
            cluster.name,
            f"cluster {cluster.name}",
            lambda: self.backend.stop_cluster(cluster),
        )
        if error:
            message = (
                f"{cluster.message}; then the backend could not stop it: {error}"
                if cluster.message
                else f"The backend could not stop the cluster: {error}"
            )
            await self.store.update_cluster(cluster, target=JobStatus.FAILED, message=message)
        await self._finish(cluster)

    async def _keep_logs(self, cluster: Cluster) -> None:
        """Keep the cluster's logs before the backend stops it (the local backend removes
        its directory then). A failure is logged: it never holds up the stop."""
        if self.logs is None:
            return
        try:
            await asyncio.wait_for(self.logs.keep(cluster), KEEP_LOGS_TIMEOUT)
        except asyncio.CancelledError:
            raise
        except asyncio.TimeoutError:
            self.log.warning(
                "Keeping the logs of cluster %s took longer than %g s; stopping it without",
                cluster.name,
                KEEP_LOGS_TIMEOUT,
                extra=about(cluster),
            )
        except Exception as e:
            self.log.warning(
                "Could not keep the logs of cluster %s: %r", cluster.name, e, extra=about(cluster)
            )

    async def _backend_stop(
        self, cluster: Cluster, name: str, what: str, stop: Callable[[], Awaitable[None]]
    ) -> str:
        """Ask the backend to stop ``what``. Its error is raised (the caller is retried with
        backoff) until the ``stop_attempts``-th: that one is logged and returned, and the
        caller records the object as ended all the same, so that a backend that can never
        stop it does not leave it stopping for ever. Returns "" once stopped."""
        try:
            await stop()
        except Exception as e:
            n = self._stop_failures[name] = self._stop_failures.get(name, 0) + 1
            if n < self.stop_attempts:
                raise
            del self._stop_failures[name]
            self.log.error(
                "Could not stop %s after %d attempts; recording it as failed: %s",
                what,
                n,
                e,
                extra=about(cluster),
            )
            return str(e) or repr(e)
        self._stop_failures.pop(name, None)
        return ""

    async def _finish(self, cluster: Cluster) -> None:
        changes: dict[str, Any] = {}
        details = ""
        exited = self._scheduler_exits.pop(cluster.name, None)
        if cluster.target == JobStatus.FAILED:
            details = self.backend.failure_details(cluster)
            self.log.warning(
                "Cluster %s failed (%s).%s",
                cluster.name,
                cluster.message,
                f" End of its log:\n{details}" if details else "",
                extra=about(cluster),
            )
            if exited is not None and not cluster.scheduler_address:
                # It never ran: its own last words say why better than an exit code.
                why = last_exception_line(details) or exited
                changes["message"] = "The scheduler exited before it started" + (
                    f": {why}" if why else ""
                )
        stop_time = now_ms()
        # Whatever of the cluster still holds an allocation ends with it (its scheduler).
        await self.store.update_cluster(
            cluster, status=cluster.target, stop_time=stop_time, release=stop_time, **changes
        )
        self._ended(cluster)
        if cluster.status == JobStatus.FAILED:
            await self.events.record(
                cluster, "failed", cluster.message or "The cluster failed", detail=details
            )
        else:
            await self.events.record(cluster, "stopped", "Cluster stopped")
        for memo in (self._adaptive, self._user_counts):
            memo.pop(cluster.name, None)
        cluster.ready.set()
        cluster.ended.set()
        self.log.info(
            "Cluster %s %s", cluster.name, cluster.status.name.lower(), extra=about(cluster)
        )

    async def _reconcile_worker(self, cluster: Cluster, worker: Worker) -> None:
        if worker.status.is_done:
            return
        if worker.target != JobStatus.RUNNING or not cluster.is_active:
            await self._stop_worker(cluster, worker, worker.target)
            self.queue.put((CLUSTER, cluster.name))
        elif worker.status == JobStatus.CREATED and cluster.status == JobStatus.RUNNING:
            # Until the worker is started (or stopped), its cluster's shutdown leaves it to
            # this: one stop per worker, and not after its cluster's.
            key = (WORKER, cluster.name, worker.name)
            self._starting[key] = asyncio.get_running_loop().create_future()
            try:
                await self._start_worker(cluster, worker, self._starting[key])
            finally:
                self._starting.pop(key, None)

    async def _start_worker(
        self, cluster: Cluster, worker: Worker, abandon: asyncio.Future[None]
    ) -> None:
        self.log.debug(
            "Starting worker %s of cluster %s", worker.name, cluster.name, extra=about(cluster)
        )
        allocate: Allocation | None = None
        try:
            state = await self._backend_start(
                self.backend.start_worker(cluster, worker),
                self.settings.worker_start_timeout,
                abandon,
            )
            allocate = _allocation(cluster, "worker")
        except Exception as e:
            if worker.target == JobStatus.RUNNING and cluster.is_active:
                self.log.warning(
                    "Worker %s of cluster %s failed to start: %r",
                    worker.name,
                    cluster.name,
                    e,
                    extra=about(cluster),
                )
                # Like a scheduler's: a start that raised (or timed out) may have begun
                # something, which only the backend's stop can end.
                self._worker_reasons[worker.name] = (
                    f"did not start within {self.settings.worker_start_timeout:g} s"
                    if isinstance(e, asyncio.TimeoutError)
                    else f"could not be started: {e or type(e).__name__}"
                )
                await self._stop_worker(cluster, worker, JobStatus.FAILED, begun=True)
                await self._count_start_failure(cluster)
                return
            state = None  # stopped meanwhile (its cluster, or scaled down): not a failure
        if state is not None:
            await self._until_stored(
                lambda: self.store.update_worker(
                    worker, status=JobStatus.SUBMITTED, state=state, allocate=allocate
                )
            )
            self.events.record_soon(
                cluster, "worker-started", _started(f"Worker {worker.name}", state), worker=worker
            )
        if worker.target != JobStatus.RUNNING or not cluster.is_active:
            await self._stop_worker(cluster, worker, worker.target, begun=True)
            self.queue.put((CLUSTER, cluster.name))

    async def _until_stored(self, write: Callable[[], Any]) -> None:
        """Retry ``write`` while the database is unavailable: used after a backend started
        something, which must not be forgotten (and started twice) for want of a write."""
        delay = self.settings.backoff_base_delay
        while True:
            try:
                await write()
                return
            except StoreUnavailable:
                await asyncio.sleep(delay)
                delay = min(delay * 2, STORE_RETRY_MAX_DELAY)

    async def _stop_worker(
        self, cluster: Cluster, worker: Worker, target: JobStatus, begun: bool = False
    ) -> None:
        """Stop ``worker`` in the backend (unless it never began to start) and record
        ``target`` (RUNNING meaning STOPPED) as its final status.

        Its cluster's shutdown and its own reconcile may both stop a worker: one at a time,
        and the second finds it stopped (the backend is asked once, not twice at once)."""
        if target == JobStatus.RUNNING:
            target = JobStatus.STOPPED
        lock = self._worker_stops.setdefault(worker.name, asyncio.Lock())
        try:
            async with lock:
                if worker.status.is_done:
                    return
                started = worker.status != JobStatus.CREATED or begun
                if started:
                    error = await self._backend_stop(
                        cluster,
                        worker.name,
                        f"worker {worker.name} of cluster {cluster.name}",
                        lambda: self.backend.stop_worker(cluster, worker),
                    )
                    if error:
                        target = JobStatus.FAILED
                        self._worker_reasons.setdefault(
                            worker.name, f"the backend could not stop it: {error}"
                        )
                stop_time = now_ms()
                # Its allocation (opened with its SUBMITTED status) ends with it.
                await self.store.update_worker(
                    worker,
                    status=target,
                    target=target,
                    stop_time=stop_time,
                    release=stop_time if worker.status != JobStatus.CREATED else None,
                )
                reason = self._worker_reasons.pop(worker.name, None)
                if target == JobStatus.FAILED:
                    await self._record_worker_failed(cluster, worker, reason or "")
                elif started:
                    await self.events.record(
                        cluster, "worker-left", f"Worker {worker.name} stopped", worker=worker
                    )
        finally:
            if worker.status.is_done:  # later callers return before they need a lock
                self._worker_stops.pop(worker.name, None)

    async def _record_worker_failed(self, cluster: Cluster, worker: Worker, reason: str) -> None:
        """A worker's "worker-failed" event: why (what the timers saw, else what the backend
        says of its end, now that it is stopped) and the end of its log."""
        if not reason:
            try:
                reason = self.backend.exit_reason(cluster, worker)
            except Exception:
                self.log.exception("exit_reason failed", extra=about(cluster))
        await self.events.record(
            cluster,
            "worker-failed",
            f"Worker {worker.name} failed: {reason or 'it ended unexpectedly'}",
            worker=worker,
            detail=await self._worker_log_tail(cluster, worker),
        )

    async def _worker_failed(self, cluster: Cluster, worker: Worker, reason: str = "") -> None:
        """A starting worker the timers found dead or late (``reason``: how): the reconcile
        loop stops it (the timers never wait on the backend), and too many in a row fail the
        cluster."""
        self._worker_reasons[worker.name] = reason
        await self.store.update_worker(worker, target=JobStatus.FAILED)
        self.queue.put((WORKER, cluster.name, worker.name))
        await self._count_start_failure(cluster)

    async def _count_start_failure(self, cluster: Cluster) -> None:
        cluster.worker_start_failures += 1
        limit = self.settings.worker_start_failure_limit
        if cluster.worker_start_failures >= limit:
            await self.stop_cluster(
                cluster, failed=True, message=f"{limit} workers failed to start in a row"
            )
        else:
            self.queue.put((CLUSTER, cluster.name))

    # -- timers ---------------------------------------------------------------------
    async def _every(self, period: float, check: Callable[[], Awaitable[None]], what: str) -> None:
        """Run ``check`` every ``period`` seconds: the timers catch what never reports back
        (starts that hang, heartbeats that stop, deaths)."""
        while True:
            await asyncio.sleep(period)
            try:
                await check()
            except asyncio.CancelledError:
                raise
            except StoreUnavailable:
                pass  # the store logged it; the next period tries again
            except Exception:
                self.log.exception("Error in the gateway's periodic %s", what)

    async def _ask_backend(
        self, check: Awaitable[list[bool]], period: float, what: str
    ) -> list[bool] | None:
        """The answer of a backend's status check, or None when it took longer than
        ``status_check_timeout``: it is then cancelled and the next period asks again (a hung
        check, e.g. an squeue that never returns, must not stop every later one). The default
        has a floor of 10 s, so a slow but working squeue under load is not cancelled each time
        when the period is short."""
        timeout = self.settings.status_check_timeout or max(10.0, period)
        try:
            return await asyncio.wait_for(check, timeout)
        except asyncio.TimeoutError:
            self.log.warning(
                "The backend's %s did not answer within %g s; asking again next period",
                what,
                timeout,
            )
            return None

    async def _check_timeouts(self) -> None:
        s = self.settings
        now_wall = now_ms()
        now = time.monotonic()
        for cluster in self.live_clusters():
            if not cluster.is_active or cluster.status.is_done:
                continue
            lifetime = cluster.config.get("max_lifetime") or 0
            if lifetime and now_wall - cluster.start_time > lifetime * 1000:
                self.log.info(
                    "Cluster %s reached its maximum lifetime", cluster.name, extra=about(cluster)
                )
                why = f"Stopped at its maximum lifetime of {lifetime:g} s"
                await self.stop_cluster(cluster, message=why, requested=why)
                continue
            if (
                cluster.status == JobStatus.SUBMITTED
                and now_wall - cluster.start_time > s.cluster_start_timeout * 1000
            ):
                # A batch system may say why (Slurm: "Slurm kept it pending: Resources").
                why = self._waiting_reason(cluster)
                await self.stop_cluster(
                    cluster,
                    failed=True,
                    message=f"Cluster did not start within {s.cluster_start_timeout:g} s"
                    + (f"; {why}" if why else ""),
                )
            elif (
                cluster.status == JobStatus.RUNNING
                and now - cluster.last_heartbeat > s.cluster_heartbeat_timeout
            ):
                await self.stop_cluster(
                    cluster,
                    failed=True,
                    message=f"No heartbeat from the scheduler for "
                    f"{s.cluster_heartbeat_timeout:g} s",
                )
            elif cluster.status == JobStatus.RUNNING:
                for worker in list(cluster.workers.values()):
                    if (
                        worker.status == JobStatus.SUBMITTED
                        and worker.is_active
                        and now_wall - worker.start_time > s.worker_start_timeout * 1000
                    ):
                        self.log.warning(
                            "Worker %s of cluster %s did not start in time",
                            worker.name,
                            cluster.name,
                            extra=about(cluster),
                        )
                        why = self._waiting_reason(cluster, worker)
                        await self._worker_failed(
                            cluster,
                            worker,
                            f"did not start within {s.worker_start_timeout:g} s"
                            + (f"; {why}" if why else ""),
                        )

    def _waiting_reason(self, cluster: Cluster, worker: Worker | None = None) -> str:
        """What the backend says of a scheduler (or worker) that did not start in time,
        e.g. the batch queue's reason for keeping it waiting; "" if nothing."""
        try:
            return self.backend.exit_reason(cluster, worker)
        except Exception:
            self.log.exception("exit_reason failed", extra=about(cluster))
            return ""

    async def _check_clusters(self) -> None:
        clusters = [
            c
            for c in self.live_clusters()
            if c.is_active and c.status in (JobStatus.SUBMITTED, JobStatus.RUNNING)
        ]
        if not clusters:
            return
        period = self.settings.cluster_status_period
        answer = await self._ask_backend(
            self.backend.check_clusters(clusters), period, "check of schedulers"
        )
        if answer is None:
            return
        for cluster, alive in zip(clusters, answer, strict=False):
            if not alive and cluster.is_active:
                reason = self.backend.exit_reason(cluster)
                self.log.warning(
                    "Scheduler of cluster %s exited%s",
                    cluster.name,
                    f": {reason}" if reason else "",
                    extra=about(cluster),
                )
                self._scheduler_exits[cluster.name] = reason
                await self.stop_cluster(
                    cluster,
                    failed=True,
                    message="The scheduler exited unexpectedly" + (f": {reason}" if reason else ""),
                )

    async def _check_workers(self) -> None:
        for cluster in self.live_clusters():
            if not cluster.is_active or cluster.status != JobStatus.RUNNING:
                continue
            starting = [
                w
                for w in cluster.workers.values()
                if w.status == JobStatus.SUBMITTED and w.is_active
            ]
            if not starting:
                continue
            alive = await self._ask_backend(
                self.backend.check_workers(cluster, starting),
                self.settings.worker_status_period,
                f"check of cluster {cluster.name}'s workers",
            )
            if alive is None:
                continue
            for worker, ok in zip(starting, alive, strict=False):
                if not ok and worker.is_active and worker.status == JobStatus.SUBMITTED:
                    reason = self.backend.exit_reason(cluster, worker)
                    self.log.warning(
                        "Worker %s of cluster %s exited while starting%s",
                        worker.name,
                        cluster.name,
                        f": {reason}" if reason else "",
                        extra=about(cluster),
                    )
                    await self._worker_failed(
                        cluster, worker, reason or "it exited before joining the scheduler"
                    )

    async def _cleanup_loop(self) -> None:
        """Forget clusters stopped longer than ``db_cluster_max_age`` ago, and remove the
        history (events, kept logs) of those that ended more than ``events_max_age`` ago."""
        while True:
            await asyncio.sleep(self.settings.db_cleanup_period)
            try:
                cutoff = now_ms() - int(self.settings.db_cluster_max_age * 1000)
                for name in await self.store.delete_stopped_before(cutoff):
                    self._forget(name)
            except asyncio.CancelledError:
                raise
            except StoreUnavailable:
                pass  # the store logged it; the next period tries again
            except Exception:
                self.log.exception("Error removing old cluster records")
            try:
                cutoff = now_ms() - int(self.events_max_age * 1000)
                gone = await self.events.delete_ended_before(cutoff)
                if gone:
                    await self._history_removed(gone)
            except asyncio.CancelledError:
                raise
            except StoreUnavailable:
                pass
            except Exception:
                self.log.exception("Error removing old cluster events")

    async def _history_removed(self, names: list[str]) -> None:
        """The events of clusters ``names`` are gone (past ``events_max_age``): whatever
        else is kept of them goes too: their kept logs."""
        self.log.debug("Removed the events of %d ended clusters", len(names))
        if self.logs is not None:
            await self.logs.forget(names)


def _allocation(cluster: Cluster, role: str) -> Allocation:
    """What the ``role`` ("scheduler" or "worker") of ``cluster`` holds from now on."""
    cores, memory = held(cluster.config, role)
    return Allocation(cluster.username, cores, memory, now_ms())


def _started(what: str, state: dict) -> str:
    """What a backend's start state says of where the process is: a pid, a batch job."""
    if "job_id" in state:
        return f"{what} submitted as job {state['job_id']}"
    if "pid" in state:
        return f"{what} started (pid {state['pid']})"
    return f"{what} started"
