"""What must not grow with the clusters a gateway tracks (issue 21: 10,000 of 500 users).

A gateway keeps ended clusters for ``db_cluster_max_age`` (a day): thousands on a busy one.
The timers, the metrics, the quota checks and every request of one user must cost the same
with them as without: none may go through every cluster. These tests make any such pass an
error (``NoScan``: the reconciler's table of every cluster, which refuses to be gone
through) and check that everything still works, as each user and an admin see it. Not
timed: bench/many_clusters.py measures.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support.failing_backends import FakeBackend, heartbeat
from support.gateway_process import free_port
from support.inprocess_gateway import InProcessGateway, running, started_gateways
from tornado.httpclient import AsyncHTTPClient, HTTPRequest, HTTPResponse

from dask_gateway_server.app import DaskGateway
from dask_gateway_server.metrics import _StateCollector
from dask_gateway_server.models import Cluster, JobStatus, User

LOGGER = "test-many-clusters"


class NoScan(dict):
    """A dict that can be read and written by key but never gone through."""

    def _refuse(self, *args: Any) -> Any:
        raise AssertionError("went through every cluster the gateway tracks")

    __iter__ = keys = values = items = _refuse  # type: ignore[assignment]


def no_scan(reconciler: Any) -> None:
    """From now on, any pass over all of ``reconciler``'s clusters fails."""
    reconciler.clusters = NoScan(dict.items(reconciler.clusters))


class Gateway(InProcessGateway):
    log_name = LOGGER


class CheckedBackend(FakeBackend):
    """Records the clusters each status check was asked about."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.checked: list[set[str]] = []

    async def check_clusters(self, clusters: list[Cluster]) -> list[bool]:
        self.checked.append({c.name for c in clusters})
        return await super().check_clusters(clusters)


@pytest.fixture
async def make(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    async with started_gateways(lambda backend: Gateway(tmp_path, backend)) as start:
        yield start


def counts(reconciler: Any) -> dict[str, float]:
    """The metrics' clusters by status (what a scrape reports)."""
    (family, *_) = _StateCollector(reconciler).collect()
    return {s.labels["status"]: s.value for s in family.samples if s.value}


async def test_ended_clusters_cost_the_timers_nothing(make, tmp_path, caplog):
    """The timers, the status checks and the metrics go through the live clusters only,
    and still act on them; the ended ones are counted, across a restart and until they
    are forgotten."""
    caplog.set_level(logging.ERROR, LOGGER)
    gw = await make(CheckedBackend)
    rec = gw.reconciler
    kept = [await running(gw, user=user) for user in ("alice", "bob")]
    ended = [await running(gw, user=user) for user in ("alice", "alice", "bob", "bob")]
    for cluster in ended:
        await rec.stop_cluster(cluster)
    for cluster in ended:
        await gw.done(cluster)
    assert set(rec.live) == {c.name for c in kept}
    assert rec.ended_counts == {"STOPPED": 4}
    assert counts(rec) == {"RUNNING": 2, "STOPPED": 4}

    no_scan(rec)
    since = len(gw.backend.checked)
    # One with a short lifetime: the timeout checks must still find it.
    short = await rec.create_cluster(User("alice"), {}, {"max_lifetime": 0.2})
    await gw.until(lambda: short.status == JobStatus.SUBMITTED, "the scheduler submitted")
    await rec.on_heartbeat(short, heartbeat())
    checks = len(gw.backend.checked)
    await gw.done(short)
    assert short.status == JobStatus.STOPPED
    assert "maximum lifetime" in short.message
    await gw.until(lambda: len(gw.backend.checked) > checks + 2, "more status checks")
    names = {c.name for c in ended}
    assert not any(asked & names for asked in gw.backend.checked[since:])
    assert counts(rec) == {"RUNNING": 2, "STOPPED": 5}
    assert set(rec.live) == {c.name for c in kept}
    assert not [r for r in caplog.records if r.name == LOGGER and r.levelno >= logging.ERROR]

    # A restart rebuilds the same from the store. (A new fake backend knows no scheduler
    # of the old one's: no status checks, or it would fail the running clusters.)
    quiet = {"cluster_status_period": 3600, "worker_status_period": 3600}
    await gw.close()
    gw = await make(CheckedBackend, **quiet)
    assert set(gw.reconciler.live) == {c.name for c in kept}
    assert counts(gw.reconciler) == {"RUNNING": 2, "STOPPED": 5}
    # Forgotten after db_cluster_max_age: no longer counted.
    await gw.close()
    gw = await make(CheckedBackend, db_cluster_max_age=0, db_cleanup_period=0.02, **quiet)
    await gw.until(lambda: len(gw.reconciler.clusters) == 2, "ended ones forgotten")
    assert gw.reconciler.ended_counts == {}
    assert counts(gw.reconciler) == {"RUNNING": 2}
    assert set(gw.reconciler.live) == {c.name for c in kept}


async def test_a_failed_final_write_keeps_the_cluster_live(make):
    """A cluster whose final status could not be written stays with the timers until the
    retried write succeeds, and is counted once."""
    gw = await make(FakeBackend)
    rec = gw.reconciler
    cluster = await running(gw)
    real = gw.store.update_cluster
    failed: list[bool] = []

    async def fail_final_once(c: Cluster, **changes: Any) -> None:
        if c is cluster and changes.get("status") == JobStatus.STOPPED and not failed:
            failed.append(True)
            from dask_gateway_server.store import StoreUnavailable

            raise StoreUnavailable("database down for the test")
        await real(c, **changes)

    gw.store.update_cluster = fail_final_once  # type: ignore[method-assign]
    await rec.stop_cluster(cluster)
    await gw.done(cluster)
    assert failed == [True]
    assert rec.live == {} and rec.ended_counts == {"STOPPED": 1}


# -- through the API, as two users and an admin ---------------------------------------------

CONFIG = """
c.DaskGateway.address = "127.0.0.1:0"
c.DaskGateway.data_dir = {data!r}
c.DaskGateway.backend_class = "support.failing_backends.FakeBackend"
c.DaskGateway.log_level = "WARN"
c.Proxy.address = "127.0.0.1:{port}"
c.SimpleAuthenticator.admin_users = {{"admin"}}
c.UserLimits.max_clusters = 3
c.UserLimits.max_cores = 40
c.DBBackendBase.check_timeouts_period = 0.02
c.DBBackendBase.cluster_status_period = 0.05
c.DBBackendBase.worker_status_period = 0.05
"""


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[DaskGateway]:
    """Our gateway in this process (its reconciler reachable), the in-process fake
    backend, simple auth with an admin, per-user limits."""
    port = free_port()
    config = tmp_path / "config.py"
    config.write_text(CONFIG.format(data=str(tmp_path / "data"), port=port))
    gateway = DaskGateway()
    gateway.initialize(["-f", str(config)])
    await gateway.start_async()
    gateway.test_address = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
    try:
        yield gateway
    finally:
        await gateway.stop_async()


def _auth(user: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:".encode()).decode()}


@pytest.fixture
def api(app: DaskGateway) -> Iterator[Callable[..., Any]]:
    http = AsyncHTTPClient(force_instance=True)

    async def call(user: str, method: str, path: str, body: Any = None) -> HTTPResponse:
        return await http.fetch(
            HTTPRequest(
                app.test_address + path,  # type: ignore[attr-defined]
                method=method,
                headers=_auth(user),
                body=None if body is None else json.dumps(body),
                allow_nonstandard_methods=True,
            ),
            raise_error=False,
        )

    yield call
    http.close()


async def _create(api: Callable[..., Any], user: str) -> str:
    r = await api(user, "POST", "/api/v1/clusters/", {})
    assert r.code == 201, r.body
    return json.loads(r.body)["name"]


async def _until(predicate: Callable[[], bool], what: str) -> None:
    for _ in range(500):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


async def test_requests_read_only_their_users_clusters(app, api):
    """Create (with limits), list, get, stop, the per-user cap of a heartbeat, the admin's
    lists of everyone's live clusters and the metrics: none goes through every cluster."""
    rec = app.reconciler
    ended = [await _create(api, user) for user in ("alice", "alice", "bob")]
    for name, user in zip(ended, ("alice", "alice", "bob"), strict=True):
        r = await api(user, "DELETE", f"/api/v1/clusters/{name}")
        assert r.code == 204
    await _until(lambda: all(rec.clusters[n].ended.is_set() for n in ended), "ended")
    no_scan(rec)

    alice = [await _create(api, "alice") for _ in range(3)]
    bob = await _create(api, "bob")
    r = await api("alice", "POST", "/api/v1/clusters/", {})  # the limit still holds
    assert r.code == 422 and "at most 3 clusters" in json.loads(r.body)["error"]

    r = await api("alice", "GET", "/api/v1/clusters/")
    assert r.code == 200 and set(json.loads(r.body)) == set(alice)
    r = await api("alice", "GET", "/api/v1/clusters/?status=STOPPED")
    assert set(json.loads(r.body)) == set(ended[:2])
    r = await api("bob", "GET", "/api/v1/clusters/")
    assert set(json.loads(r.body)) == {bob}
    r = await api("bob", "GET", f"/api/v1/clusters/{alice[0]}")
    assert r.code == 403
    r = await api("bob", "GET", "/api/v1/clusters/?all=1")
    assert r.code == 403

    r = await api("admin", "GET", "/api/v1/clusters/?all=1")
    listed = json.loads(r.body)
    assert r.code == 200 and set(listed) == {*alice, bob}
    assert {m["username"] for m in listed.values()} == {"alice", "bob"}
    r = await api("admin", "GET", "/api/v1/overview?all=1")
    assert {c["name"] for c in json.loads(r.body)["clusters"]} == {*alice, bob}
    r = await api("admin", "GET", "/api/v1/overview?user=alice&status=STOPPED")
    assert {c["name"] for c in json.loads(r.body)["clusters"]} == set(ended[:2])
    r = await api("alice", "GET", "/api/v1/overview")
    assert {c["name"] for c in json.loads(r.body)["clusters"]} == set(alice)

    # A heartbeat's per-user cap (max_cores 40 across alice's three: 1 core each for the
    # schedulers, 1 per worker) reads alice's clusters only.
    cluster = rec.clusters[alice[0]]
    await _until(lambda: cluster.status == JobStatus.SUBMITTED, "submitted")
    await rec.on_heartbeat(cluster, heartbeat(count=100))
    assert cluster.count == 40 - 3

    r = await api("admin", "DELETE", f"/api/v1/clusters/{bob}")
    assert r.code == 204
    await _until(lambda: rec.clusters[bob].ended.is_set(), "bob's cluster ended")
    metrics = (await api("alice", "GET", "/metrics")).body.decode()
    assert 'dask_gateway_clusters{status="STOPPED"} 4.0' in metrics
    assert 'dask_gateway_clusters{status="RUNNING"} 1.0' in metrics


def test_a_full_session_cache_is_not_gone_through_at_every_login():
    """A client sending its credentials with every request (never the cookie) makes a
    session each time: once the cache is full, logins make room a tenth at a time, not by
    a pass over every session each; the newest sessions stay valid."""
    from dask_gateway_server.auth import SimpleAuthenticator

    auth = SimpleAuthenticator(cache_max_size=100)
    passes = []
    make_room = auth._make_room

    def counted(now: float) -> None:
        passes.append(len(auth._sessions))
        make_room(now)

    auth._make_room = counted  # type: ignore[method-assign]
    values = [auth.new_session(User(f"user{i % 7}")) for i in range(1000)]
    assert len(auth._sessions) <= 100
    assert len(passes) <= (1000 - 100) // 10 + 1
    assert all(
        auth.user_from_cookie(v) == User(f"user{i % 7}") for i, v in enumerate(values[-90:], 910)
    )
    assert auth.user_from_cookie(values[0]) is None
    # Expired sessions go first: a full cache of expired ones keeps every new one.
    auth = SimpleAuthenticator(cache_max_size=10)
    for _ in range(10):
        auth.new_session(User("old"), max_age=-1)
    fresh = auth.new_session(User("new"))
    assert list(auth._sessions) == [fresh]


async def test_a_clusters_flags_make_an_event_only_for_waiters():
    """``ready`` and ``ended`` wake their waiters as an asyncio.Event would; a flag nobody
    waited for (every ended cluster's, thousands) holds no event and no queue."""
    from dask_gateway_server.models import Flag

    flag = Flag()
    waiters = [asyncio.ensure_future(flag.wait()) for _ in range(3)]
    await asyncio.sleep(0)
    assert not flag.is_set() and not any(w.done() for w in waiters)
    flag.set()
    assert await asyncio.gather(*waiters) == [True, True, True]
    assert flag.is_set() and await flag.wait()
    assert flag._event is None
    quiet = Flag()
    quiet.set()
    assert quiet._event is None and await asyncio.wait_for(quiet.wait(), 1)


async def test_shutdown_records_every_stop_in_one_write(make):
    """With stop_clusters_on_shutdown, the stop of every running cluster is recorded in one
    write (thousands may run), and each still ends FAILED, in memory and in the database."""
    gw = await make(FakeBackend, stop_clusters_on_shutdown=True)
    clusters = [await running(gw, user=f"user{i % 3}") for i in range(30)]
    one_by_one: list[str] = []
    batches: list[int] = []
    update_cluster, update_clusters = gw.store.update_cluster, gw.store.update_clusters

    async def one(cluster: Cluster, **changes: Any) -> None:
        if "target" in changes:
            one_by_one.append(cluster.name)
        await update_cluster(cluster, **changes)

    async def many(clusters: list[Cluster], **changes: Any) -> None:
        batches.append(len(clusters))
        await update_clusters(clusters, **changes)

    gw.store.update_cluster = one  # type: ignore[method-assign]
    gw.store.update_clusters = many  # type: ignore[method-assign]
    await gw.reconciler.stop()
    assert batches == [30] and one_by_one == []
    for cluster in clusters:
        assert (cluster.status, cluster.message) == (JobStatus.FAILED, "The gateway shut down")
        stored = await gw.stored_cluster(cluster)
        assert (stored.status, stored.message) == (JobStatus.FAILED, "The gateway shut down")
    assert gw.backend.live == set() and gw.reconciler.live == {}
    assert gw.reconciler.ended_counts == {"FAILED": 30}
