"""The reconciler against backends that fail on purpose, one stage each, in this process.

No subprocess, scheduler or worker runs: the backends of ``support.failing_backends`` keep a
set of what they "started", the test plays the scheduler by calling the reconciler's entry
points as the API's handlers do (``create_cluster``, ``stop_cluster``, ``on_heartbeat``), and
every test ends by reading the database back with a fresh ``Store`` on the same SQLite file:
the final states must be there, not only in memory. Timeouts and periods are a few tens of
milliseconds, so each test takes a fraction of a second.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from support.failing_backends import (
    ChecksHang,
    FakeBackend,
    SchedulerExitsBeforeConnecting,
    SchedulerStartHangs,
    SchedulerStartRaises,
    SlowSchedulerStart,
    SlowWorkerStart,
    StopRaises,
    WorkerExitsBeforeConnecting,
    WorkerStartHangs,
    WorkerStartRaises,
    heartbeat,
)
from support.inprocess_gateway import DEADLINE, InProcessGateway, running, started_gateways

from dask_gateway_server.models import Cluster, JobStatus
from dask_gateway_server.store import Store, load_or_create_key_file

RUNNING, STOPPED, FAILED = JobStatus.RUNNING, JobStatus.STOPPED, JobStatus.FAILED
SUBMITTED = JobStatus.SUBMITTED

LOGGER = "test-reconciler-failures"


class Gateway(InProcessGateway):
    log_name = LOGGER


@pytest.fixture
async def make(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """``await make(BackendClass, **settings)``: a started in-process Gateway."""
    async with started_gateways(lambda backend: Gateway(tmp_path, backend)) as start:
        yield start


def statuses(cluster: Cluster) -> list[JobStatus]:
    return [w.status for w in cluster.workers.values()]


async def test_happy_path(make):
    """For contrast: start, connect, two workers connect, stop; everything ends STOPPED."""
    gw = await make(FakeBackend)
    cluster = await running(gw, workers=2)
    await gw.until(lambda: statuses(cluster) == [SUBMITTED] * 2, "two workers submitted")
    names = list(cluster.workers)
    await gw.reconciler.on_heartbeat(cluster, heartbeat(count=2, active=names))
    assert statuses(cluster) == [RUNNING] * 2 and cluster.ready.is_set()

    await gw.reconciler.stop_cluster(cluster)
    await gw.done(cluster)

    assert (cluster.status, cluster.message) == (STOPPED, "")
    assert gw.backend.live == set() and gw.routes.routed == set()
    assert sorted(gw.backend.called("stop_worker")) == sorted(names)
    assert gw.backend.stop_states[cluster.name] == {"scheduler": cluster.name}
    stored = await gw.stored_cluster(cluster)
    assert (stored.status, stored.target, stored.message) == (STOPPED, STOPPED, "")
    assert stored.stop_time is not None and stored.count == 2
    assert stored.state == {"scheduler": cluster.name}
    assert statuses(stored) == [STOPPED] * 2
    assert all(w.stop_time is not None for w in stored.workers.values())


async def test_scheduler_start_raises(make):
    """BadSpawner: the start fails after it began; what it began is stopped all the same."""
    gw = await make(SchedulerStartRaises)
    cluster = await gw.create()
    await gw.done(cluster)

    assert cluster.status == FAILED and cluster.ready.is_set()
    assert cluster.message == f"Cluster failed to start: {SchedulerStartRaises.error}"
    assert gw.backend.called("stop_cluster") == [cluster.name]
    assert gw.backend.live == set() and gw.routes.ever_routed == []
    stored = await gw.stored_cluster(cluster)
    assert (stored.status, stored.target, stored.message) == (FAILED, FAILED, cluster.message)
    assert stored.stop_time is not None and stored.state == {}


async def test_scheduler_start_hangs_past_the_start_timeout(make):
    """NeverSpawner: the backend's start is cancelled at cluster_start_timeout."""
    gw = await make(SchedulerStartHangs, cluster_start_timeout=0.2)
    cluster = await gw.create()
    await gw.done(cluster)

    assert cluster.status == FAILED
    assert cluster.message == "Cluster failed to start: the backend did not start it within 0.2 s"
    assert gw.backend.cancelled == [cluster.name]
    assert gw.backend.called("stop_cluster") == [cluster.name]
    assert gw.backend.live == set()
    stored = await gw.stored_cluster(cluster)
    assert (stored.status, stored.message) == (FAILED, cluster.message)


async def test_scheduler_never_connects(make):
    """The start succeeds but no heartbeat comes: FAILED at cluster_start_timeout."""
    gw = await make(FakeBackend, cluster_start_timeout=0.2)
    cluster = await gw.create()
    await gw.done(cluster)

    assert cluster.status == FAILED
    assert cluster.message == "Cluster did not start within 0.2 s"
    assert gw.backend.stop_states[cluster.name] == {"scheduler": cluster.name}
    assert gw.backend.live == set() and gw.routes.ever_routed == []
    stored = await gw.stored_cluster(cluster)
    assert (stored.status, stored.target, stored.message) == (FAILED, FAILED, cluster.message)
    assert stored.scheduler_address == ""


async def test_scheduler_exits_before_connecting(make):
    """The backend's status check finds the scheduler gone before its first heartbeat."""
    gw = await make(SchedulerExitsBeforeConnecting)
    cluster = await gw.create()
    await gw.done(cluster)

    reason = SchedulerExitsBeforeConnecting.reason
    assert cluster.status == FAILED
    # It never ran: the sentence says so (its log, had the backend kept one, would say why).
    assert cluster.message == f"The scheduler exited before it started: {reason}"
    assert gw.backend.called("stop_cluster") == [cluster.name]
    stored = await gw.stored_cluster(cluster)
    assert (stored.status, stored.message) == (FAILED, cluster.message)


async def test_worker_start_raises_until_the_cluster_fails(make):
    """Every worker start fails (after it began): each worker is stopped and FAILED, and
    worker_start_failure_limit failures in a row fail the cluster."""
    gw = await make(WorkerStartRaises, worker_start_failure_limit=3)
    cluster = await running(gw, workers=1)
    await gw.done(cluster)

    assert cluster.status == FAILED
    assert cluster.message == "3 workers failed to start in a row"
    assert statuses(cluster) == [FAILED] * 3
    # A start that raised may have begun something: it is stopped like any other.
    assert sorted(gw.backend.called("stop_worker")) == sorted(cluster.workers)
    assert gw.backend.live == set() and gw.routes.routed == set()
    stored = await gw.stored_cluster(cluster)
    assert (stored.status, stored.message) == (FAILED, cluster.message)
    assert statuses(stored) == [FAILED] * 3
    assert all(w.target == FAILED and w.stop_time for w in stored.workers.values())


async def test_one_worker_start_raises_then_a_replacement_connects(make):
    gw = await make(WorkerStartRaises, worker_start_failure_limit=3)
    gw.backend.failures = 1
    cluster = await running(gw, workers=1)
    await gw.until(lambda: SUBMITTED in statuses(cluster), "a replacement worker")
    (replacement,) = [w.name for w in cluster.workers.values() if w.status == SUBMITTED]
    await gw.reconciler.on_heartbeat(cluster, heartbeat(count=1, active=[replacement]))

    assert statuses(cluster) == [FAILED, RUNNING] and cluster.worker_start_failures == 0
    assert cluster.status == RUNNING
    stored = await gw.stored_cluster(cluster)
    assert stored.status == RUNNING and statuses(stored) == [FAILED, RUNNING]
    await gw.reconciler.stop_cluster(cluster)
    await gw.done(cluster)
    assert gw.backend.live == set()
    assert statuses(await gw.stored_cluster(cluster)) == [FAILED, STOPPED]


async def test_worker_start_hangs_past_the_worker_start_timeout(make):
    gw = await make(WorkerStartHangs, worker_start_timeout=0.1, worker_start_failure_limit=1)
    cluster = await running(gw, workers=1)
    await gw.done(cluster)

    (worker,) = cluster.workers.values()
    assert cluster.message == "1 workers failed to start in a row"
    assert gw.backend.cancelled == [worker.name]
    assert gw.backend.called("stop_worker") == [worker.name]
    assert gw.backend.live == set()
    stored = await gw.stored_cluster(cluster)
    assert (stored.status, statuses(stored)) == (FAILED, [FAILED])


async def test_worker_exits_between_start_and_connect(make):
    """The first worker's process ends before its scheduler sees it: FAILED by the status
    check, stopped, replaced; the replacement connects and the cluster runs on."""
    gw = await make(WorkerExitsBeforeConnecting)
    cluster = await running(gw, workers=1)
    await gw.until(lambda: len(cluster.workers) == 2, "a replacement worker")
    first, second = cluster.workers.values()
    await gw.until(lambda: second.status == SUBMITTED, "the replacement submitted")
    await gw.reconciler.on_heartbeat(cluster, heartbeat(count=1, active=[second.name]))

    assert (first.status, second.status, cluster.status) == (FAILED, RUNNING, RUNNING)
    assert gw.backend.called("stop_worker") == [first.name]
    assert gw.backend.live == {cluster.name, second.name}
    stored = await gw.stored_cluster(cluster)
    assert (stored.status, statuses(stored)) == (RUNNING, [FAILED, RUNNING])
    await gw.reconciler.stop_cluster(cluster)
    await gw.done(cluster)
    assert gw.backend.live == set()


async def test_worker_never_connects(make):
    gw = await make(FakeBackend, worker_start_timeout=0.1, worker_start_failure_limit=2)
    cluster = await running(gw, workers=1)
    await gw.done(cluster)

    assert cluster.message == "2 workers failed to start in a row"
    assert statuses(cluster) == [FAILED, FAILED]
    assert gw.backend.live == set()
    stored = await gw.stored_cluster(cluster)
    assert (stored.status, statuses(stored)) == (FAILED, [FAILED, FAILED])


async def test_stop_raises_once_then_succeeds(make):
    """A passing failure (the cluster manager restarting): retried, the cluster STOPPED."""
    gw = await make(StopRaises)
    gw.backend.failures = 1
    gw.backend.workers_too = True
    cluster = await running(gw, workers=1)
    await gw.until(lambda: statuses(cluster) == [SUBMITTED], "a worker submitted")
    await gw.reconciler.stop_cluster(cluster)
    await gw.done(cluster)

    assert (cluster.status, cluster.message) == (STOPPED, "")
    assert len(gw.backend.called("stop_cluster_attempt")) == 2
    assert len(gw.backend.called("stop_worker_attempt")) == 2
    assert gw.backend.live == set() and gw.routes.routed == set()
    stored = await gw.stored_cluster(cluster)
    assert (stored.status, stored.message, statuses(stored)) == (STOPPED, "", [STOPPED])


async def test_stop_always_raises(make, caplog):
    """A backend that can never stop the cluster: after a few attempts the cluster ends
    FAILED (not CLOSING forever), with the backend's error as its reason."""
    gw = await make(StopRaises)
    gw.backend.workers_too = True
    gw.reconciler.stop_attempts = 3
    cluster = await running(gw, workers=1)
    await gw.until(lambda: statuses(cluster) == [SUBMITTED], "a worker submitted")
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        await gw.reconciler.stop_cluster(cluster)
        await gw.done(cluster)

    error = StopRaises.error
    assert cluster.status == FAILED
    assert cluster.message == f"The backend could not stop the cluster: {error}"
    assert statuses(cluster) == [FAILED]
    assert len(gw.backend.called("stop_cluster_attempt")) == 3
    assert len(gw.backend.called("stop_worker_attempt")) == 3
    assert gw.routes.routed == set()
    assert f"Could not stop cluster {cluster.name}" in caplog.text
    # What the backend could not stop is still "live": only the log and the message say so.
    assert gw.backend.live == {cluster.name, *cluster.workers}
    stored = await gw.stored_cluster(cluster)
    assert (stored.status, stored.target, stored.message) == (FAILED, FAILED, cluster.message)
    assert statuses(stored) == [FAILED] and stored.stop_time is not None


async def test_status_checks_hang(make, caplog):
    """The backend's status checks never answer (a hung squeue): each is cancelled after
    status_check_timeout, and the timeouts still fire for a scheduler and a worker that never connect."""
    gw = await make(
        ChecksHang,
        status_check_timeout=0.05,
        cluster_start_timeout=0.3,
        worker_start_timeout=0.1,
        worker_start_failure_limit=1,
    )
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        connected = await running(gw, workers=1)
        silent = await gw.create()
        await gw.done(connected)
        await gw.done(silent)

    assert connected.message == "1 workers failed to start in a row"
    assert silent.message == "Cluster did not start within 0.3 s"
    assert "check_clusters" in gw.backend.cancelled
    assert "check_workers" in gw.backend.cancelled
    assert "did not answer within" in caplog.text
    assert gw.backend.live == set()
    for cluster in (connected, silent):
        stored = await gw.stored_cluster(cluster)
        assert (stored.status, stored.message) == (FAILED, cluster.message)
    assert statuses(await gw.stored_cluster(connected)) == [FAILED]


async def test_slow_start_cancelled_by_a_stop_request(make):
    """SlowSpawner: the user stops a cluster whose scheduler is still starting. The start is
    cancelled at once (not waited for until cluster_start_timeout), the backend is asked to
    stop what it began, and the cluster ends STOPPED as asked, not FAILED."""
    gw = await make(SlowSchedulerStart, cluster_start_timeout=60)
    cluster = await gw.create()
    await gw.backend.started.wait()
    await gw.reconciler.stop_cluster(cluster)
    await gw.done(cluster)

    assert (cluster.status, cluster.message) == (STOPPED, "")
    assert gw.backend.cancelled == [cluster.name]
    assert gw.backend.stop_states[cluster.name] == {}
    assert gw.backend.live == set() and gw.routes.ever_routed == []
    stored = await gw.stored_cluster(cluster)
    assert (stored.status, stored.target, stored.message) == (STOPPED, STOPPED, "")


async def test_cluster_stopped_while_a_worker_starts(make):
    """A worker start in flight when its cluster is stopped is cancelled and stopped before
    the scheduler, and the worker ends STOPPED."""
    gw = await make(SlowWorkerStart, worker_start_timeout=60)
    cluster = await running(gw, workers=1)
    await gw.backend.started.wait()
    await gw.reconciler.stop_cluster(cluster)
    await gw.done(cluster)

    (worker,) = cluster.workers.values()
    assert (cluster.status, worker.status) == (STOPPED, STOPPED)
    assert gw.backend.cancelled == [worker.name]
    assert gw.backend.live == set()
    calls = [c for c in gw.backend.calls if c[0].startswith("stop")]
    assert calls == [("stop_worker", worker.name), ("stop_cluster", cluster.name)]
    stored = await gw.stored_cluster(cluster)
    assert (stored.status, statuses(stored)) == (STOPPED, [STOPPED])


async def test_gateway_shutdown_fails_and_stops_every_cluster(make):
    """With stop_clusters_on_shutdown, stopping the reconciler ends every cluster, and the
    database says so when it returns: running ones with their workers, and one whose start
    is still in progress (abandoned at once)."""
    gw = await make(SlowSchedulerStart, stop_clusters_on_shutdown=True)
    gw.backend.release.set()
    clusters = [await running(gw, workers=1) for _ in range(8)]
    for cluster in clusters:
        await gw.until(lambda c=cluster: statuses(c) == [SUBMITTED], "a worker submitted")
    gw.backend.release.clear()
    gw.backend.started.clear()
    starting = await gw.create()
    await gw.backend.started.wait()

    await gw.reconciler.stop()

    for cluster in [*clusters, starting]:
        assert (cluster.status, cluster.message) == (FAILED, "The gateway shut down")
        stored = await gw.stored_cluster(cluster)
        assert (stored.status, stored.message) == (FAILED, "The gateway shut down")
        assert statuses(stored) == ([STOPPED] if cluster is not starting else [])
    assert gw.backend.cancelled == [starting.name]
    assert gw.backend.live == set() and gw.routes.routed == set()


# -- events: what each failure tells the user --------------------------------------------


async def stored_events(gw: Gateway, cluster: Cluster) -> list[tuple[str, str | None, str]]:
    """(kind, worker, message) of the cluster's events once it ended (its last event is
    written before ``ended`` is set), as a second Store reads them."""
    await asyncio.wait_for(cluster.ended.wait(), DEADLINE)
    await gw.reconciler.events.flush()
    store = Store(gw.db_url, [gw.key])
    try:
        rows = await store.query_events(cluster.name)
    finally:
        await store.close()
    return [(r["kind"], r["worker"], r["message"]) for r in rows]


class SchedulerDiesOfAnImportError(SchedulerExitsBeforeConnecting):
    """Its log ends with a traceback, as the local backend's ``failure_details`` gives."""

    log = (
        "Traceback (most recent call last):\n"
        '  File "<frozen runpy>", line 189, in _run_module_as_main\n'
        "ModuleNotFoundError: No module named 'distributed'\n"
    )

    def failure_details(self, cluster: Cluster) -> str:
        return self.log


async def test_events_of_a_scheduler_that_never_ran(make):
    gw = await make(SchedulerDiesOfAnImportError)
    cluster = await gw.create()
    await gw.done(cluster)

    sentence = (
        "The scheduler exited before it started: ModuleNotFoundError: No module named 'distributed'"
    )
    assert cluster.message == sentence
    assert await stored_events(gw, cluster) == [
        ("submitted", None, "Cluster created by alice"),
        ("starting", None, "Starting the scheduler"),
        ("scheduler-started", None, "Scheduler started"),
        ("failed", None, sentence),
    ]
    (failed,) = (await gw.store.query_events(cluster.name))[-1:]
    assert failed["detail"] == SchedulerDiesOfAnImportError.log
    assert (await gw.stored_cluster(cluster)).message == sentence


async def test_events_of_workers_that_fail_to_start(make):
    gw = await make(WorkerStartRaises, worker_start_failure_limit=2)
    cluster = await running(gw, workers=1)
    await gw.done(cluster)

    events = await stored_events(gw, cluster)
    failed = [(w, m) for k, w, m in events if k == "worker-failed"]
    assert failed == [
        (w, f"Worker {w} failed: could not be started: {WorkerStartRaises.error}")
        for w in cluster.workers
    ]
    assert events[-1] == ("failed", None, "2 workers failed to start in a row")
    assert [k for k, _, _ in events][:4] == [
        "submitted",
        "starting",
        "scheduler-started",
        "running",
    ]


async def test_events_of_a_worker_that_hangs_and_one_that_exits(make):
    gw = await make(WorkerStartHangs, worker_start_timeout=0.1, worker_start_failure_limit=1)
    cluster = await running(gw, workers=1)
    await gw.done(cluster)
    (worker,) = cluster.workers
    assert ("worker-failed", worker, f"Worker {worker} failed: did not start within 0.1 s") in (
        await stored_events(gw, cluster)
    )

    gw2 = await make(WorkerExitsBeforeConnecting)
    cluster = await running(gw2, workers=1)
    await gw2.until(lambda: len(cluster.workers) == 2, "a replacement worker")
    first = next(iter(cluster.workers))
    await gw2.until(
        lambda: cluster.workers[first].status == FAILED, "the first worker recorded FAILED"
    )
    await gw2.reconciler.stop_cluster(cluster, requested="Stop requested by alice")
    await gw2.done(cluster)
    events = await stored_events(gw2, cluster)
    assert (
        "worker-failed",
        first,
        f"Worker {first} failed: it exited before joining the scheduler",
    ) in events
    assert ("stop-requested", None, "Stop requested by alice") in events
    # The replacement is stopped with its cluster, before the cluster's end.
    assert [k for k, _, _ in events][-2:] == ["worker-left", "stopped"]


async def test_heartbeat_counts_say_who_asked_and_which_limit(make):
    """Counts a heartbeat changes: adaptive scaling's (or the scheduler's), clamped by the
    cluster's limit or the user's, each named."""
    gw = await make(FakeBackend)
    gw.reconciler.count_limit = lambda cluster: 3
    cluster = await gw.create()
    cluster.config["cluster_max_workers"] = 5
    await gw.until(lambda: cluster.status == SUBMITTED, "the scheduler to be submitted")
    await gw.reconciler.on_heartbeat(cluster, heartbeat(count=0))
    gw.reconciler.adapt_requested(cluster, True)
    await gw.reconciler.on_heartbeat(cluster, heartbeat(count=2))
    await gw.reconciler.on_heartbeat(cluster, heartbeat(count=4))
    gw.reconciler.count_limit = None
    await gw.reconciler.on_heartbeat(cluster, heartbeat(count=9))
    gw.reconciler.scale_requested(cluster, 1)
    await gw.reconciler.on_heartbeat(cluster, heartbeat(count=1))  # the user's own: no event
    await gw.reconciler.on_heartbeat(cluster, heartbeat(count=0))
    await gw.reconciler.stop_cluster(cluster)
    await gw.done(cluster)

    scaled = [m for k, _, m in await stored_events(gw, cluster) if k == "scaled"]
    assert scaled == [
        "Adaptive scaling asked for 2 workers",
        "Adaptive scaling asked for 4 workers, clamped to 3 by the limit of 3 workers per user",
        "Adaptive scaling asked for 9 workers, clamped to 5 by the limit of 5 workers per cluster",
        "The scheduler asked for 0 workers",
    ]


async def test_backend_emit_is_recorded(make):
    """A backend's ``emit`` (Slurm's pending reasons) lands in the cluster's history."""
    gw = await make(SlowSchedulerStart)
    cluster = await gw.create()
    await gw.backend.started.wait()
    gw.backend.emit(cluster, "queued", "Waiting in Slurm's queue: Resources")
    gw.backend.release.set()
    await gw.until(lambda: cluster.status == SUBMITTED, "submitted")
    await gw.reconciler.stop_cluster(cluster)
    await gw.done(cluster)
    assert ("queued", None, "Waiting in Slurm's queue: Resources") in await stored_events(
        gw, cluster
    )


async def test_recording_never_fails_the_caller(make, caplog):
    """An unknown kind or a database that is gone: logged, never raised."""
    gw = await make(FakeBackend)
    cluster = await gw.create()
    await gw.reconciler.events.record(cluster, "no-such-kind", "x")
    store = Store(gw.db_url, [gw.key])
    await store.close()  # its thread is gone: every operation fails
    log = type(gw.reconciler.events)(store, logging.getLogger(LOGGER))
    await log.record(cluster, "stopped", "Cluster stopped")
    messages = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert any("no-such-kind" in m for m in messages)
    assert any("Could not record the stopped event" in m for m in messages)
    await gw.reconciler.stop_cluster(cluster)
    await gw.done(cluster)


async def test_retention_removes_the_history_of_ended_clusters(tmp_path):
    """Events of clusters that ended before the cut go; those of running clusters, of
    clusters that ended after it, and of remembered clusters without an end stay."""
    store = Store(
        f"sqlite:///{tmp_path / 'gateway.sqlite'}", [load_or_create_key_file(str(tmp_path / "key"))]
    )
    await store.setup()
    try:

        async def add(cluster: str, kind: str, time: int) -> None:
            await store.add_event(
                {
                    "cluster": cluster,
                    "username": "alice",
                    "time": time,
                    "kind": kind,
                    "worker": None,
                    "message": kind,
                    "detail": "",
                }
            )

        await add("old", "submitted", 100)
        await add("old", "stopped", 200)
        await add("failed-old", "submitted", 100)
        await add("failed-old", "failed", 300)
        await add("recent", "submitted", 100)
        await add("recent", "stopped", 2000)
        await add("running", "submitted", 100)
        await add("running", "scaled", 1500)
        await add("unended", "submitted", 100)  # forgotten by the store, its end never written
        assert await store.delete_events_ended_before(1000) == ["failed-old", "old", "unended"]
        left = {e["cluster"] for e in await store.query_events()}
        assert left == {"recent", "running"}
        assert await store.event_owner("recent") == "alice"
        assert await store.event_owner("old") is None
    finally:
        await store.close()
