"""Backends that fail on purpose, one stage each, for in-process tests of the reconciler.

Nothing runs: a started scheduler or worker is a name in ``FakeBackend.live`` until the
reconciler stops it, so a test can tell what was left behind. No scheduler heartbeats by
itself either: a test plays the scheduler by calling ``Reconciler.on_heartbeat`` as the
API's heartbeat handler does (``heartbeat()`` builds the message). JupyterHub's
``tests/mocking.py`` (BadSpawner, NeverSpawner, SlowSpawner) and the public dask-gateway's
``tests/test_db_backend.py`` are the pictures; each class here fails at one stage.
"""

from __future__ import annotations

import asyncio
from typing import Any

from dask_gateway_server.backends.base import DBBackendBase
from dask_gateway_server.models import Cluster, Worker


class FakeBackend(DBBackendBase):
    """Starts and stops names in ``live``; every call is recorded in ``calls``."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        #: Cluster names (schedulers) and worker names started and not yet stopped.
        self.live: set[str] = set()
        #: (method, name) of every call, in order.
        self.calls: list[tuple[str, str]] = []
        #: The stored state each stop was given, by name (the last stop's).
        self.stop_states: dict[str, dict] = {}
        #: Names whose start (or "check" for a status check) was cancelled while it waited.
        self.cancelled: list[str] = []

    def called(self, method: str) -> list[str]:
        """Names ``method`` was called for, in order."""
        return [name for m, name in self.calls if m == method]

    async def start_cluster(self, cluster: Cluster) -> dict:
        self.calls.append(("start_cluster", cluster.name))
        self.live.add(cluster.name)
        return {"scheduler": cluster.name}

    async def stop_cluster(self, cluster: Cluster) -> None:
        self.calls.append(("stop_cluster", cluster.name))
        self.stop_states[cluster.name] = dict(cluster.state)
        self.live.discard(cluster.name)

    async def check_clusters(self, clusters: list[Cluster]) -> list[bool]:
        return [c.name in self.live for c in clusters]

    async def start_worker(self, cluster: Cluster, worker: Worker) -> dict:
        self.calls.append(("start_worker", worker.name))
        self.live.add(worker.name)
        return {"worker": worker.name}

    async def stop_worker(self, cluster: Cluster, worker: Worker) -> None:
        self.calls.append(("stop_worker", worker.name))
        self.stop_states[worker.name] = dict(worker.state)
        self.live.discard(worker.name)

    async def check_workers(self, cluster: Cluster, workers: list[Worker]) -> list[bool]:
        return [w.name in self.live for w in workers]

    async def _wait_forever(self, name: str) -> None:
        """Block until cancelled, recording the cancellation."""
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled.append(name)
            raise


class SchedulerStartRaises(FakeBackend):
    """The scheduler's start fails after it began (a job submitted, then an error): like
    JupyterHub's BadSpawner, with something to clean up."""

    error = "sbatch: error: invalid partition specified: nowhere"

    async def start_cluster(self, cluster: Cluster) -> dict:
        await super().start_cluster(cluster)
        raise RuntimeError(self.error)


class SchedulerStartHangs(FakeBackend):
    """The scheduler's start never returns (NeverSpawner): only a timeout or a stop ends it."""

    async def start_cluster(self, cluster: Cluster) -> dict:
        await super().start_cluster(cluster)
        await self._wait_forever(cluster.name)
        raise AssertionError("unreachable")


class SlowSchedulerStart(FakeBackend):
    """The scheduler's start waits for ``release`` (SlowSpawner's ``_start_future``)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.release = asyncio.Event()
        self.started = asyncio.Event()  # set once a start is waiting

    async def start_cluster(self, cluster: Cluster) -> dict:
        state = await super().start_cluster(cluster)
        self.started.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled.append(cluster.name)
            raise
        return state


class SchedulerExitsBeforeConnecting(FakeBackend):
    """The scheduler starts, then its process ends before its first heartbeat."""

    reason = "job 42 ended: OUT_OF_MEMORY"

    async def start_cluster(self, cluster: Cluster) -> dict:
        state = await super().start_cluster(cluster)
        self.live.discard(cluster.name)  # exited on its own
        return state

    def exit_reason(self, cluster: Cluster, worker: Worker | None = None) -> str:
        return self.reason


class WorkerStartRaises(FakeBackend):
    """The first ``failures`` worker starts fail after they began (half-started)."""

    failures = 1_000_000
    error = "could not launch the worker"

    async def start_worker(self, cluster: Cluster, worker: Worker) -> dict:
        state = await super().start_worker(cluster, worker)
        if len(self.called("start_worker")) <= self.failures:
            raise RuntimeError(self.error)
        return state


class WorkerStartHangs(FakeBackend):
    """Worker starts begin, then never return: only a timeout or a stop ends them."""

    async def start_worker(self, cluster: Cluster, worker: Worker) -> dict:
        await super().start_worker(cluster, worker)
        await self._wait_forever(worker.name)
        raise AssertionError("unreachable")


class WorkerExitsBeforeConnecting(FakeBackend):
    """The first ``failures`` workers start, then exit before their scheduler sees them."""

    failures = 1

    async def start_worker(self, cluster: Cluster, worker: Worker) -> dict:
        state = await super().start_worker(cluster, worker)
        if len(self.called("start_worker")) <= self.failures:
            self.live.discard(worker.name)
        return state


class SlowWorkerStart(FakeBackend):
    """Worker starts wait for ``release``; ``started`` is set once one waits."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.release = asyncio.Event()
        self.started = asyncio.Event()

    async def start_worker(self, cluster: Cluster, worker: Worker) -> dict:
        state = await super().start_worker(cluster, worker)
        self.started.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled.append(worker.name)
            raise
        return state


class StopRaises(FakeBackend):
    """The first ``failures`` attempts of ``stop_cluster`` (and of ``stop_worker`` when
    ``workers_too``) raise before stopping anything, as a cluster manager that is down.
    Attempts are recorded as ``stop_cluster_attempt``/``stop_worker_attempt`` calls."""

    failures = 1_000_000
    workers_too = False
    error = "scancel: error: Unable to contact slurm controller"

    def _attempt(self, method: str, name: str) -> None:
        self.calls.append((f"{method}_attempt", name))
        if len(self.called(f"{method}_attempt")) <= self.failures:
            raise RuntimeError(self.error)

    async def stop_cluster(self, cluster: Cluster) -> None:
        self._attempt("stop_cluster", cluster.name)
        await super().stop_cluster(cluster)

    async def stop_worker(self, cluster: Cluster, worker: Worker) -> None:
        if self.workers_too:
            self._attempt("stop_worker", worker.name)
        await super().stop_worker(cluster, worker)


class ChecksHang(FakeBackend):
    """Every status check (schedulers' and workers') waits forever, as an squeue that hangs."""

    async def check_clusters(self, clusters: list[Cluster]) -> list[bool]:
        await self._wait_forever("check_clusters")
        raise AssertionError("unreachable")

    async def check_workers(self, cluster: Cluster, workers: list[Worker]) -> list[bool]:
        await self._wait_forever("check_workers")
        raise AssertionError("unreachable")


def heartbeat(
    port: int = 8786,
    count: int = 0,
    active: list[str] | None = None,
    closing: list[str] | None = None,
    closed: list[str] | None = None,
) -> dict:
    """What a scheduler listening on 127.0.0.1 ``port`` posts to the heartbeat route."""
    return {
        "scheduler_address": f"tls://127.0.0.1:{port}",
        "dashboard_address": f"http://127.0.0.1:{port + 1}",
        "api_address": f"http://127.0.0.1:{port + 2}",
        "count": count,
        "active_workers": list(active or []),
        "closing_workers": list(closing or []),
        "closed_workers": list(closed or []),
    }
