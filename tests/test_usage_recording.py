"""Usage recording in the reconciler, in this process: every scheduler and worker whose
backend start returned has exactly one allocation, opened at that moment with the cluster's
cores and memory, and closed at the stop time the store wrote for it, whatever way it ended.

Backends of ``support.failing_backends`` (wrapped to note when each start returned) fail
one stage each; the test plays the scheduler by calling ``Reconciler.on_heartbeat`` as the
API's handler does, and reads the database back with a second ``Store`` on the same SQLite
file: the allocations must be there, not only in memory. No time is measured: starts are
compared with when the backend's start returned, stops with the stored stop times, exactly.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from support.failing_backends import (
    FakeBackend,
    SlowSchedulerStart,
    SlowWorkerStart,
    StopRaises,
    WorkerExitsBeforeConnecting,
    WorkerStartHangs,
    WorkerStartRaises,
    heartbeat,
)
from support.inprocess_gateway import InProcessGateway, running, started_gateways

from dask_gateway_server.models import Cluster, JobStatus, Worker, now_ms
from dask_gateway_server.store import (
    Allocation,
    Repaired,
    Store,
    allocations_table,
    clusters_table,
    workers_table,
)
from dask_gateway_server.usage import Accounting

RUNNING, STOPPED, FAILED = JobStatus.RUNNING, JobStatus.STOPPED, JobStatus.FAILED
SUBMITTED = JobStatus.SUBMITTED

#: What the clusters hold: distinct numbers, so a scheduler's and a worker's cannot be mixed.
CONFIG = {
    "scheduler_cores": 1,
    "scheduler_memory": 3 * 2**30,
    "worker_cores": 2,
    "worker_memory": 5 * 2**30,
}

FOREVER = 2**62


def recording(cls: type[FakeBackend]) -> type[FakeBackend]:
    """``cls``, noting in ``returned`` when (ms) each start returned a state."""

    class Recording(cls):  # type: ignore[valid-type,misc]  # a class made from an argument
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.returned: dict[str, int] = {}

        async def start_cluster(self, cluster: Cluster) -> dict:
            state = await super().start_cluster(cluster)
            self.returned[cluster.name] = now_ms()
            return state

        async def start_worker(self, cluster: Cluster, worker: Worker) -> dict:
            state = await super().start_worker(cluster, worker)
            self.returned[worker.name] = now_ms()
            return state

    Recording.__name__ = cls.__name__
    return Recording


class StartReturnsDespiteAStop(SlowSchedulerStart):
    """A start that, asked to stop while it waits, finishes its submission and returns its
    state all the same (a batch job submitted as the stop came): it held its resources
    until stopped."""

    async def start_cluster(self, cluster: Cluster) -> dict:
        try:
            return await super().start_cluster(cluster)
        except asyncio.CancelledError:
            return {"scheduler": cluster.name}


class WorkerStartReturnsDespiteAStop(SlowWorkerStart):
    """Like ``StartReturnsDespiteAStop``, for a worker."""

    async def start_worker(self, cluster: Cluster, worker: Worker) -> dict:
        try:
            return await super().start_worker(cluster, worker)
        except asyncio.CancelledError:
            return {"worker": worker.name}


class Gateway(InProcessGateway):
    log_name = "test-usage-recording"
    config = CONFIG

    async def stored(self, cluster: Cluster) -> tuple[Cluster, list[dict[str, Any]]]:
        """The cluster and its allocations as the database holds them."""
        store = await self.second_store()
        try:
            (found,) = [c for c in await store.load() if c.name == cluster.name]
            rows = [
                r
                for r in await store.allocations_between(0, FOREVER)
                if r["cluster"] == cluster.name
            ]
        finally:
            await store.close()
        return found, rows


@pytest.fixture
async def make(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """``await make(BackendClass, **settings)``: a started in-process Gateway whose backend
    records what it started."""
    async with started_gateways(lambda backend: Gateway(tmp_path, backend), recording) as start:
        yield start


def by_id(rows: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Allocations by id (the store returns them in no particular order)."""
    return {r["id"]: r for r in rows}


def statuses(cluster: Cluster) -> list[JobStatus]:
    return [w.status for w in cluster.workers.values()]


def assert_exact(stored: Cluster, rows: list[dict[str, Any]], returned: dict[str, int]) -> None:
    """One allocation for the scheduler and for each worker whose backend start returned
    (none for the others), opened when it returned, with the configured cores and memory,
    and closed at exactly the stop time stored for it (open while it is not done)."""
    by_name: dict[str | None, list[dict[str, Any]]] = {}
    for r in rows:
        by_name.setdefault(r["worker"], []).append(r)
    expected: list[tuple[str | None, str, int | None, str]] = []
    if stored.name in returned:
        expected.append((None, stored.name, stored.stop_time, "scheduler"))
    for w in stored.workers.values():
        if w.name in returned:
            expected.append((w.name, w.name, w.stop_time, "worker"))
    assert sorted(by_name, key=str) == sorted((e[0] for e in expected), key=str), (
        "an allocation for exactly each started scheduler and worker"
    )
    for key, name, stop, role in expected:
        (row,) = by_name[key]
        assert row["username"] == stored.username
        assert (row["cores"], row["memory"]) == (CONFIG[f"{role}_cores"], CONFIG[f"{role}_memory"])
        # Opened right after the backend's start returned: the same or a later millisecond,
        # and before anything else happened to it.
        assert returned[name] <= row["start"] <= (stop if stop is not None else now_ms())
        assert row["stop"] == stop, (role, name)


async def use_of(gw: Gateway, user: str) -> float:
    store = await gw.second_store()
    try:
        return (await Accounting(store).use_of(0, now_ms() + 1, user=user)).core_seconds
    finally:
        await store.close()


# -- the edge cases ----------------------------------------------------------------------


async def test_cluster_stop_with_workers(make):
    gw = await make(FakeBackend)
    cluster = await running(gw, workers=2)
    await gw.until(lambda: statuses(cluster) == [SUBMITTED] * 2, "two workers submitted")
    await gw.reconciler.on_heartbeat(cluster, heartbeat(count=2, active=list(cluster.workers)))

    stored, rows = await gw.stored(cluster)
    assert all(r["stop"] is None for r in rows) and len(rows) == 3
    assert_exact(stored, rows, gw.backend.returned)

    await gw.reconciler.stop_cluster(cluster)
    await gw.done(cluster)
    stored, rows = await gw.stored(cluster)
    assert stored.status == STOPPED and statuses(stored) == [STOPPED] * 2
    assert_exact(stored, rows, gw.backend.returned)
    # What the usage computation reads back: the rows' lengths × cores, no more.
    expected = sum((r["stop"] - r["start"]) / 1000 * r["cores"] for r in rows)
    assert await use_of(gw, "alice") == pytest.approx(expected)
    assert await use_of(gw, "bob") == 0


async def test_worker_exits_and_is_replaced(make):
    """A worker that exits before connecting: FAILED, its allocation closed at its stop;
    its replacement's runs on."""
    gw = await make(WorkerExitsBeforeConnecting)
    cluster = await running(gw, workers=1)
    await gw.until(lambda: len(cluster.workers) == 2, "a replacement worker")
    first, second = cluster.workers.values()
    await gw.until(lambda: second.status == SUBMITTED, "the replacement submitted")
    await gw.reconciler.on_heartbeat(cluster, heartbeat(count=1, active=[second.name]))

    stored, rows = await gw.stored(cluster)
    assert statuses(stored) == [FAILED, RUNNING]
    assert_exact(stored, rows, gw.backend.returned)
    assert [r["stop"] is None for r in sorted(rows, key=lambda r: r["id"])] == [
        True,  # the scheduler
        False,  # the worker that exited
        True,  # its replacement
    ]
    await gw.reconciler.stop_cluster(cluster)
    await gw.done(cluster)
    assert_exact(*await gw.stored(cluster), gw.backend.returned)


async def test_worker_killed_after_it_joined(make):
    """A worker its scheduler lost (killed): FAILED when the heartbeat says so, closed at
    the stop time recorded then."""
    gw = await make(FakeBackend)
    cluster = await running(gw, workers=2)
    await gw.until(lambda: statuses(cluster) == [SUBMITTED] * 2, "two workers submitted")
    lost, kept = list(cluster.workers)
    await gw.reconciler.on_heartbeat(cluster, heartbeat(count=2, active=[lost, kept]))
    await gw.reconciler.on_heartbeat(cluster, heartbeat(count=2, active=[kept], closed=[lost]))
    await gw.until(lambda: cluster.workers[lost].status == FAILED, "the lost worker FAILED")
    await gw.until(lambda: statuses(cluster)[2:] == [SUBMITTED], "its replacement submitted")

    stored, rows = await gw.stored(cluster)
    assert_exact(stored, rows, gw.backend.returned)
    await gw.reconciler.stop_cluster(cluster)
    await gw.done(cluster)
    stored, rows = await gw.stored(cluster)
    assert stored.workers[lost].status == FAILED
    assert_exact(stored, rows, gw.backend.returned)


async def test_worker_never_connects(make):
    """Started, but never joined within worker_start_timeout: it held its resources from
    its start until it was stopped as FAILED."""
    gw = await make(FakeBackend, worker_start_timeout=0.1, worker_start_failure_limit=2)
    cluster = await running(gw, workers=1)
    await gw.done(cluster)
    stored, rows = await gw.stored(cluster)
    assert (stored.status, statuses(stored)) == (FAILED, [FAILED, FAILED])
    assert len(rows) == 3
    assert_exact(stored, rows, gw.backend.returned)


async def test_worker_start_times_out_or_raises(make):
    """A start that never returned (timed out) or raised holds no allocation: the backend
    gave nothing that ran. The scheduler's is closed with the failed cluster."""
    gw = await make(WorkerStartHangs, worker_start_timeout=0.1, worker_start_failure_limit=1)
    cluster = await running(gw, workers=1)
    await gw.done(cluster)
    stored, rows = await gw.stored(cluster)
    assert statuses(stored) == [FAILED] and gw.backend.returned.keys() == {cluster.name}
    assert [r["worker"] for r in rows] == [None]
    assert_exact(stored, rows, gw.backend.returned)

    gw2 = await make(WorkerStartRaises, worker_start_failure_limit=2)
    cluster = await running(gw2, workers=1)
    await gw2.done(cluster)
    stored, rows = await gw2.stored(cluster)
    assert statuses(stored) == [FAILED, FAILED]
    assert [r["worker"] for r in rows] == [None]
    assert_exact(stored, rows, gw2.backend.returned)


async def test_scheduler_start_abandoned(make):
    """A stop while the scheduler starts: a start that was cancelled held nothing; one that
    returned its state all the same held it until the cluster's stop."""
    gw = await make(SlowSchedulerStart, cluster_start_timeout=60)
    cluster = await gw.create()
    await gw.backend.started.wait()
    await gw.reconciler.stop_cluster(cluster)
    await gw.done(cluster)
    stored, rows = await gw.stored(cluster)
    assert stored.status == STOPPED and rows == []

    gw2 = await make(StartReturnsDespiteAStop, cluster_start_timeout=60)
    cluster = await gw2.create()
    await gw2.backend.started.wait()
    await gw2.reconciler.stop_cluster(cluster)
    await gw2.done(cluster)
    stored, rows = await gw2.stored(cluster)
    assert stored.status == STOPPED and len(rows) == 1
    assert gw2.backend.called("stop_cluster") == [cluster.name]
    assert_exact(stored, rows, gw2.backend.returned)


async def test_worker_start_abandoned_by_a_cluster_stop(make):
    gw = await make(SlowWorkerStart, worker_start_timeout=60)
    cluster = await running(gw, workers=1)
    await gw.backend.started.wait()
    await gw.reconciler.stop_cluster(cluster)
    await gw.done(cluster)
    stored, rows = await gw.stored(cluster)
    assert statuses(stored) == [STOPPED] and [r["worker"] for r in rows] == [None]
    assert_exact(stored, rows, gw.backend.returned)

    gw2 = await make(WorkerStartReturnsDespiteAStop, worker_start_timeout=60)
    cluster = await running(gw2, workers=1)
    await gw2.backend.started.wait()
    await gw2.reconciler.stop_cluster(cluster)
    await gw2.done(cluster)
    stored, rows = await gw2.stored(cluster)
    assert statuses(stored) == [STOPPED] and len(rows) == 2
    assert_exact(stored, rows, gw2.backend.returned)


async def test_backend_cannot_stop(make):
    """A backend that can never stop them: the worker and the cluster are recorded FAILED
    after the attempts, and their allocations end at those recorded stop times."""
    gw = await make(StopRaises)
    gw.backend.workers_too = True
    gw.reconciler.stop_attempts = 3
    cluster = await running(gw, workers=1)
    await gw.until(lambda: statuses(cluster) == [SUBMITTED], "a worker submitted")
    await gw.reconciler.stop_cluster(cluster)
    await gw.done(cluster)
    stored, rows = await gw.stored(cluster)
    assert (stored.status, statuses(stored)) == (FAILED, [FAILED])
    assert len(rows) == 2
    assert_exact(stored, rows, gw.backend.returned)


async def test_scale_down(make):
    """Scaling down: a running worker the scheduler retires, and a worker still starting
    that is cancelled, each closed at its own stop; the others run on."""
    gw = await make(FakeBackend)
    cluster = await running(gw, workers=3)
    await gw.until(lambda: statuses(cluster) == [SUBMITTED] * 3, "three workers submitted")
    retired, kept, pending = list(cluster.workers)
    await gw.reconciler.on_heartbeat(cluster, heartbeat(count=3, active=[retired, kept]))
    # The scheduler retires one; the count drops to one: the pending one is cancelled.
    await gw.reconciler.on_heartbeat(cluster, heartbeat(count=1, active=[kept], closing=[retired]))
    await gw.reconciler.on_heartbeat(cluster, heartbeat(count=1, active=[kept], closed=[retired]))
    await gw.until(
        lambda: (
            [cluster.workers[n].status for n in (retired, kept, pending)]
            == [STOPPED, RUNNING, STOPPED]
        ),
        "the retired and the pending worker stopped",
    )
    stored, rows = await gw.stored(cluster)
    assert_exact(stored, rows, gw.backend.returned)
    open_ = {r["worker"] for r in rows if r["stop"] is None}
    assert open_ == {None, kept}
    await gw.reconciler.stop_cluster(cluster)
    await gw.done(cluster)
    assert_exact(*await gw.stored(cluster), gw.backend.returned)


async def test_gateway_shutdown_stops_clusters(make):
    """With stop_clusters_on_shutdown every allocation is closed when the reconciler stops,
    at the stop times written for each."""
    gw = await make(SlowSchedulerStart, stop_clusters_on_shutdown=True)
    gw.backend.release.set()
    clusters = [await running(gw, workers=2, user=u) for u in ("alice", "bob")]
    for c in clusters:
        await gw.until(lambda c=c: statuses(c) == [SUBMITTED] * 2, "two workers submitted")
    gw.backend.release.clear()
    gw.backend.started.clear()
    starting = await gw.create()
    await gw.backend.started.wait()

    await gw.reconciler.stop()

    for cluster in [*clusters, starting]:
        stored, rows = await gw.stored(cluster)
        assert stored.status == FAILED
        assert all(r["stop"] is not None for r in rows)
        assert_exact(stored, rows, gw.backend.returned)
    assert await use_of(gw, "bob") > 0


async def test_gateway_killed_and_restarted(make, tmp_path):
    """The gateway dies (its reconciler stops without stopping anything: its schedulers and
    workers keep running). A new one on the same database continues the open allocations
    (none doubled, none closed), and closes them when the cluster stops."""
    gw = await make(FakeBackend)
    cluster = await running(gw, workers=2)
    await gw.until(lambda: statuses(cluster) == [SUBMITTED] * 2, "two workers submitted")
    await gw.reconciler.on_heartbeat(cluster, heartbeat(count=2, active=list(cluster.workers)))
    _, before = await gw.stored(cluster)
    await gw.close()

    again = Gateway(tmp_path, gw.backend)  # the same processes are still "live"
    await again.store.setup()
    await again.reconciler.start()
    try:
        restarted = again.reconciler.clusters[cluster.name]
        stored, rows = await again.stored(restarted)
        assert by_id(rows) == by_id(before) and all(r["stop"] is None for r in rows)
        await again.reconciler.on_heartbeat(
            restarted, heartbeat(count=2, active=list(restarted.workers))
        )
        await again.reconciler.stop_cluster(restarted)
        await again.done(restarted)
        stored, rows = await again.stored(restarted)
        assert by_id(rows).keys() == by_id(before).keys()
        assert_exact(stored, rows, gw.backend.returned)
    finally:
        await again.close()


# -- the start-up repair -----------------------------------------------------------------


async def test_repair_after_a_crash_between_writes(make, tmp_path):
    """What a crash (or an older gateway, or a hand edit) can leave, repaired at start-up in
    one store call, idempotently: open allocations of a stopped worker, of a stopped
    cluster and of a forgotten cluster are closed; a started worker and scheduler without
    one get one."""
    gw = await make(FakeBackend)
    kept = await running(gw, workers=2)
    await gw.until(lambda: statuses(kept) == [SUBMITTED] * 2, "two workers submitted")
    forgotten = await running(gw, workers=1, user="bob")
    unrecorded = await running(gw, workers=1, user="carol")
    ended = await running(gw, workers=1, user="dave")
    for cl in (forgotten, unrecorded, ended):
        await gw.until(lambda cl=cl: statuses(cl) == [SUBMITTED], "a worker submitted")
    await gw.reconciler.events.flush()
    await gw.close()

    stopped_worker, unrecorded_worker = list(kept.workers)
    (bob_worker,) = forgotten.workers
    a, c, w = allocations_table.c, clusters_table.c, workers_table.c
    engine = sa.create_engine(gw.db_url)
    stop = now_ms()
    with engine.begin() as conn:
        # A worker recorded STOPPED, and a cluster recorded STOPPED (its worker's row not),
        # whose allocations stayed open.
        conn.execute(
            workers_table.update()
            .where(w.name == stopped_worker)
            .values(status=int(STOPPED), target=int(STOPPED), stop_time=stop - 10)
        )
        conn.execute(
            clusters_table.update()
            .where(c.name == ended.name)
            .values(status=int(STOPPED), target=int(STOPPED), stop_time=stop - 20)
        )
        # A started worker and a started cluster whose allocations were never written.
        conn.execute(
            allocations_table.delete().where(
                sa.or_(a.worker == unrecorded_worker, a.cluster == unrecorded.name)
            )
        )
        # Bob's cluster forgotten with its allocations open.
        bob_id = conn.execute(sa.select(c.id).where(c.name == forgotten.name)).scalar_one()
        conn.execute(workers_table.delete().where(w.cluster_id == bob_id))
        conn.execute(clusters_table.delete().where(c.id == bob_id))
    engine.dispose()
    store = Store(gw.db_url, [gw.key])
    # Bob's worker's end and his cluster's end are known from their events.
    end = stop + 5000
    await store.add_events(
        [
            {
                "cluster": forgotten.name,
                "username": "bob",
                "time": t,
                "kind": kind,
                "worker": worker,
                "message": "",
                "detail": "",
            }
            for t, kind, worker in [(end - 1000, "worker-left", bob_worker), (end, "stopped", None)]
        ]
    )
    before = {r["id"]: r for r in await store.allocations_between(0, FOREVER)}

    assert await store.repair_allocations() == Repaired(closed=5, opened=3)
    rows = await store.allocations_between(0, FOREVER)
    assert await store.repair_allocations() == Repaired()  # idempotent
    assert by_id(await store.allocations_between(0, FOREVER)) == by_id(rows)
    loaded = {cl.name: cl for cl in await store.load()}
    await store.close()

    by = {(r["cluster"], r["worker"]): r for r in rows}
    assert len(by) == len(rows)
    assert by[(kept.name, stopped_worker)]["stop"] == stop - 10
    assert by[(kept.name, None)]["stop"] is None  # its scheduler runs on
    (ended_worker,) = ended.workers
    assert by[(ended.name, None)]["stop"] == by[(ended.name, ended_worker)]["stop"] == stop - 20
    # Opened from the rows (their creation: the backend's start time was not recorded).
    opened = [
        (kept.name, loaded[kept.name].workers[unrecorded_worker]),
        (unrecorded.name, loaded[unrecorded.name]),
        *((unrecorded.name, wk) for wk in loaded[unrecorded.name].workers.values()),
    ]
    for cluster_name, obj in opened:
        role = "worker" if isinstance(obj, Worker) else "scheduler"
        row = by[(cluster_name, obj.name if role == "worker" else None)]
        assert (row["start"], row["stop"]) == (obj.start_time, None)
        assert (row["cores"], row["memory"]) == (CONFIG[f"{role}_cores"], CONFIG[f"{role}_memory"])
    # Forgotten: at the last time known (the worker's end event, the cluster's last event).
    assert by[(forgotten.name, bob_worker)]["stop"] == end - 1000
    assert by[(forgotten.name, None)]["stop"] == end
    # Nothing else changed.
    changed = {
        (r["cluster"], r["worker"])
        for r in rows
        if r["id"] not in before or before[r["id"]]["stop"] != r["stop"]
    }
    assert changed == {
        (kept.name, stopped_worker),
        (kept.name, unrecorded_worker),
        (ended.name, None),
        (ended.name, ended_worker),
        (unrecorded.name, None),
        *((unrecorded.name, wk) for wk in unrecorded.workers),
        (forgotten.name, bob_worker),
        (forgotten.name, None),
    }

    # A gateway started on it repairs nothing more; its clusters stop and all is closed.
    again = Gateway(tmp_path, gw.backend)
    await again.store.setup()
    await again.reconciler.start()
    try:
        for name in (kept.name, unrecorded.name):
            cl = again.reconciler.clusters[name]
            await again.reconciler.stop_cluster(cl)
            await again.done(cl)
            stored, after = await again.stored(cl)
            assert stored.status == STOPPED
            (scheduler,) = [r for r in after if r["worker"] is None]
            assert scheduler["stop"] == stored.stop_time
            with_rows = {r["worker"] for r in after} - {None}
            started = {wk for wk in stored.workers if wk in gw.backend.returned}
            assert with_rows == started
            for wk in stored.workers.values():
                for row in [r for r in after if r["worker"] == wk.name]:
                    assert row["stop"] == wk.stop_time
    finally:
        await again.close()


async def test_a_retried_write_opens_one_allocation(tmp_path):
    """A status write retried (its first commit's answer lost) opens no second allocation;
    a close applies once, to what is still open."""
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}", [b"k" * 32])
    await store.setup()
    try:
        cluster = Cluster("c1", "alice", "t", {}, dict(CONFIG), b"", b"")
        await store.add_cluster(cluster)
        worker = Worker("w1", "c1")
        await store.add_worker(cluster, worker)
        opening = Allocation("alice", 2.0, 7, 1000)
        for _ in range(2):
            await store.update_worker(worker, status=SUBMITTED, allocate=opening)
            await store.update_cluster(cluster, status=SUBMITTED, allocate=opening)
        rows = await store.allocations_between(0, FOREVER)
        assert sorted((r["worker"] or "", r["start"], r["stop"]) for r in rows) == [
            ("", 1000, None),
            ("w1", 1000, None),
        ]
        await store.update_worker(worker, status=STOPPED, stop_time=2000, release=2000)
        await store.update_worker(worker, release=3000)  # already closed: unchanged
        await store.update_cluster(cluster, status=STOPPED, stop_time=4000, release=4000)
        rows = await store.allocations_between(0, FOREVER)
        assert sorted((r["worker"] or "", r["stop"]) for r in rows) == [("", 4000), ("w1", 2000)]
    finally:
        await store.close()
