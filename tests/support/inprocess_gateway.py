"""A gateway in this process for reconciler tests: a Store on a SQLite file, a fake backend
(``support.failing_backends``) and the Reconciler between them, no HTTP and no subprocess.

The test plays the scheduler by calling the reconciler's entry points as the API's handlers do
(``create_cluster``, ``stop_cluster``, ``on_heartbeat``) and reads the database back with a
second Store on the same file. Periods are a few tens of milliseconds (``FAST``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from dask_gateway_server.models import Cluster, JobStatus, User
from dask_gateway_server.reconciler import Reconciler
from dask_gateway_server.store import Store, load_or_create_key_file
from support.failing_backends import FakeBackend, heartbeat

#: Settings every test starts from: periods short enough that a test takes well under a
#: second, timeouts long enough that none fires unless the test shortens it.
FAST: dict[str, Any] = {
    "cluster_start_timeout": 10,
    "worker_start_timeout": 10,
    "cluster_heartbeat_timeout": 30,
    "check_timeouts_period": 0.02,
    "cluster_status_period": 0.05,
    "worker_status_period": 0.05,
    "backoff_base_delay": 0.005,
    "backoff_max_delay": 0.05,
    "parallelism": 4,
    # The tests stop what they started; a stuck cluster must not make teardown wait.
    "stop_clusters_on_shutdown": False,
}

#: How long a test waits for a state it expects before failing (never a measured time).
DEADLINE = 5.0


class Routes:
    """The proxy as the reconciler sees it: which clusters are routed."""

    def __init__(self) -> None:
        self.routed: set[str] = set()
        self.ever_routed: list[str] = []

    def add_route(
        self,
        cluster_name: str,
        scheduler_address: str,
        dashboard_address: str,
        handoff: str | None = None,
        handoff_uid: int | None = None,
        dashboard_key: str | None = None,
    ) -> None:
        self.routed.add(cluster_name)
        self.ever_routed.append(cluster_name)

    def remove_route(self, cluster_name: str) -> None:
        self.routed.discard(cluster_name)


class InProcessGateway:
    """A store on a SQLite file, a backend and the reconciler between them. Subclasses set
    ``log_name`` (the reconciler's logger) and ``config`` (every cluster's)."""

    log_name = "test-inprocess-gateway"
    config: dict[str, Any] = {}

    def __init__(self, tmp_path: Path, backend: FakeBackend) -> None:
        self.db_url = f"sqlite:///{tmp_path / 'gateway.sqlite'}"
        self.key = load_or_create_key_file(str(tmp_path / "key"))
        self.store = Store(self.db_url, [self.key])
        self.backend = backend
        self.routes = Routes()
        self.reconciler = Reconciler(
            self.store, backend, self.routes, log=logging.getLogger(self.log_name)
        )
        self.closed = False

    async def start(self) -> None:
        await self.store.setup()
        await self.reconciler.start()

    async def close(self) -> None:
        """Stop reconciling and close the store; with ``stop_clusters_on_shutdown`` False
        (``FAST``) this is a gateway killed: what runs keeps running."""
        if not self.closed:
            self.closed = True
            await self.reconciler.stop()
            await self.store.close()

    async def create(self, user: str = "alice") -> Cluster:
        """What the API's create handler does once the options are checked."""
        return await self.reconciler.create_cluster(User(user), {}, dict(self.config))

    async def until(self, predicate: Callable[[], Any], what: str) -> None:
        """Wait until ``predicate()`` holds; fail after DEADLINE seconds."""
        deadline = time.monotonic() + DEADLINE
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            await asyncio.sleep(0.005)

    async def done(self, cluster: Cluster) -> None:
        """Wait until the cluster ended: its final status written (``ended``) and ``ready``
        set (waiters such as the API's wait for a cluster to start are released)."""
        await self.until(
            lambda: cluster.status.is_done and cluster.ready.is_set() and cluster.ended.is_set(),
            f"cluster to end ({cluster.status!r})",
        )

    async def second_store(self) -> Store:
        """Another Store on the same file, once every write queued so far is done (the
        store runs its operations one at a time in order: one more waits for them)."""
        await self.store.load()
        store = Store(self.db_url, [self.key])
        await store.setup()
        return store

    async def stored_cluster(self, cluster: Cluster) -> Cluster:
        """The cluster as the database holds it, read by a second Store."""
        store = await self.second_store()
        try:
            (found,) = [c for c in await store.load() if c.name == cluster.name]
        finally:
            await store.close()
        return found


@asynccontextmanager
async def started_gateways(
    make: Callable[[FakeBackend], InProcessGateway],
    wrap: Callable[[type[FakeBackend]], type[FakeBackend]] = lambda cls: cls,
) -> AsyncIterator[Callable[..., Awaitable[InProcessGateway]]]:
    """``await start(BackendClass, **settings)`` gives a started gateway made by
    ``make(backend)``, the backend a ``wrap(BackendClass)`` built from ``FAST`` and
    ``settings``. On exit every
    one is closed, and nothing of the reconciler or the backends may outlive them (a start
    or check left running, a task whose error nobody will see)."""
    made: list[InProcessGateway] = []

    async def start(backend_class: type[FakeBackend], **settings: Any) -> InProcessGateway:
        gw = make(wrap(backend_class)(**{**FAST, **settings}))
        await gw.start()
        made.append(gw)
        return gw

    yield start
    for gw in made:
        await gw.close()
    left = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert left == []


async def running(gw: InProcessGateway, workers: int = 0, user: str = "alice") -> Cluster:
    """A cluster whose scheduler connected, asking for ``workers`` workers."""
    cluster = await gw.create(user)
    await gw.until(lambda: cluster.status == JobStatus.SUBMITTED, "the scheduler to be submitted")
    await gw.reconciler.on_heartbeat(cluster, heartbeat(count=workers))
    assert cluster.status == JobStatus.RUNNING and cluster.name in gw.routes.routed
    return cluster
