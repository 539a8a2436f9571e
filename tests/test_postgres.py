"""PostgreSQL as the state store: a real server, a restart, nothing lost."""

from __future__ import annotations

import base64
import getpass
import os
import signal
import time

import pytest
import sqlalchemy as sa
from support.http_helpers import basic, call

from dask_gateway_server.store import Store


@pytest.fixture
def pg_url():
    url = os.environ.get("TEST_POSTGRES_URL")
    if not url:
        pytest.fail(
            "TEST_POSTGRES_URL is not set: start one with scripts/services/start-pg.sh "
            "(scripts/test.sh does this)"
        )
    engine = sa.create_engine(url)
    with engine.begin() as conn:  # a clean database for each test
        conn.execute(sa.text("DROP TABLE IF EXISTS workers, clusters, events"))
    engine.dispose()
    return url


def test_gateway_on_postgres_keeps_clusters_across_restart(fresh_gateway, pg_url, monkeypatch):
    from dask_gateway import Gateway

    old_key = base64.urlsafe_b64encode(os.urandom(32)).decode()
    new_key = base64.urlsafe_b64encode(os.urandom(32)).decode()
    monkeypatch.setenv("DASK_GATEWAY_ENCRYPT_KEYS", old_key)
    gw_proc = fresh_gateway(
        [f"--DBBackendBase.db_url={pg_url}", "--LocalBackend.stop_clusters_on_shutdown=False"]
    )
    gw_proc.start()
    with Gateway(gw_proc.address, auth="basic") as gw:
        cluster = gw.new_cluster(shutdown_on_close=False, worker_cores=2)
        name = cluster.name
        cluster.close()
    assert gw_proc.stop(signal.SIGTERM) == 0
    engine = sa.create_engine(pg_url)
    with engine.connect() as conn:
        row = conn.execute(sa.text("SELECT name, username, start_time, token FROM clusters")).one()
    engine.dispose()
    assert row.name == name and row.username == os.environ.get("USER", row.username)
    assert row.start_time > 2**31  # milliseconds need a 64-bit column
    assert name.encode() not in bytes(row.token)

    # Key rotation: a new key in front re-encrypts everything at start ...
    monkeypatch.setenv("DASK_GATEWAY_ENCRYPT_KEYS", f"{new_key};{old_key}")
    gw_proc.start()
    assert gw_proc.stop(signal.SIGTERM) == 0
    assert "Re-encrypted the secrets of 1 clusters" in gw_proc.log()
    # ... after which the old key can go.
    monkeypatch.setenv("DASK_GATEWAY_ENCRYPT_KEYS", new_key)
    gw_proc.start()
    with Gateway(gw_proc.address, auth="basic") as gw:
        (report,) = gw.list_clusters()
        assert report.name == name and report.options["worker_cores"] == 2
        cluster = gw.connect(name)
        cluster.scale(1)
        client = cluster.get_client()
        assert client.submit(lambda: "pg").result() == "pg"
        client.close()
        cluster.shutdown()
    # Its history, from PostgreSQL: across the restarts, in order, ending with the stop.
    url = f"{gw_proc.address}/api/v1/clusters/{name}/events?wait=10"
    headers = basic(getpass.getuser())
    deadline = time.monotonic() + 60
    while not (history := call("GET", url, headers=headers).json())["done"]:
        assert time.monotonic() < deadline, history
    kinds = [e["kind"] for e in history["events"]]
    assert kinds[:4] == ["submitted", "starting", "scheduler-started", "running"]
    assert kinds[-3:] == ["stop-requested", "worker-left", "stopped"], kinds
    assert "worker-started" in kinds  # (joined: only if a heartbeat came before the stop)


async def test_event_retention_on_postgres(pg_url, monkeypatch):
    """The retention's queries (ended clusters, forgotten ones without an end) in
    PostgreSQL's SQL dialect."""
    store = Store(pg_url, [base64.urlsafe_b64encode(os.urandom(32))])
    await store.setup()
    try:
        for cluster, kind, time_ms in [
            ("old", "submitted", 100),
            ("old", "stopped", 200),
            ("recent", "submitted", 100),
            ("recent", "failed", 2000),
            ("unended", "submitted", 100),
        ]:
            await store.add_event(
                {
                    "cluster": cluster,
                    "username": "alice",
                    "time": time_ms,
                    "kind": kind,
                    "worker": None,
                    "message": kind,
                    "detail": "",
                }
            )
        assert await store.delete_events_ended_before(1000) == ["old", "unended"]
        assert [e["kind"] for e in await store.query_events("recent", since=1000)] == ["failed"]
        assert await store.event_owner("recent") == "alice"
    finally:
        await store.close()


def test_custom_db_url_without_keys_is_a_clear_error(fresh_gateway, pg_url, monkeypatch):
    monkeypatch.delenv("DASK_GATEWAY_ENCRYPT_KEYS", raising=False)
    gw_proc = fresh_gateway([f"--DBBackendBase.db_url={pg_url}"])
    with pytest.raises(RuntimeError) as info:
        gw_proc.start(timeout=20)
    assert "db_encrypt_keys (or DASK_GATEWAY_ENCRYPT_KEYS) must be set" in str(info.value)
