"""Clusters' logs through the API (issue 18): live while a cluster runs, kept after it
stopped, followed as they are written, long-polled, capped, and only for their owner and
admins. Real gateway, real schedulers and workers."""

from __future__ import annotations

import http.client
import json
import os
import sys
import threading
import urllib.parse
import uuid
from pathlib import Path

import cloudpickle
import pytest
from support.gateway_process import GatewayProcess, _kill_leftovers
from support.http_helpers import basic, call
from support.paths import CONFIGS
from support.waiting import wait_for

# The functions run in schedulers and workers travel by value (those cannot import tests).
cloudpickle.register_pickle_by_value(sys.modules[__name__])

ALICE, BOB, ADMIN = "logs-alice", "logs-bob", "logs-admin"
MAX_BYTES = 64 * 1024
BROKEN_PYTHON = "/usr/bin/python3"  # Debian's, without distributed


def write_config(folder: Path) -> Path:
    """The tests' gateway configuration with an admin, a small cap on logs and a broken
    environment."""
    config = folder / "config.py"
    config.write_text(
        f"load_subconfig({str(CONFIGS / 'gateway_config.py')!r})\n"
        f"c.Authenticator.admin_users = {{{ADMIN!r}}}\n"
        f"c.DaskGateway.cluster_log_max_bytes = {MAX_BYTES}\n"
        # An environment whose Python cannot import distributed: its scheduler fails.
        "import sys\n"
        "from dask_gateway_server.options import Options, Select\n"
        "c.Backend.cluster_options = Options(\n"
        "    Select('environment', [('basic', sys.executable), ('broken', "
        f"{BROKEN_PYTHON!r})], target='python'),\n"
        "    handler=lambda options: {'python': options.python},\n"
        ")\n"
    )
    return config


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    """A gateway of this module's own."""
    data_dir = tmp_path_factory.mktemp("logs-gateway")
    gw = GatewayProcess(data_dir / "gw", config=write_config(data_dir))
    gw.start()
    yield gw
    gw.stop()
    _kill_leftovers(gw.data_dir)


def logs(gw, name: str, user: str = ALICE, timeout: float = 90, **query):
    q = urllib.parse.urlencode(query)
    return call(
        "GET",
        f"{gw.address}/api/v1/clusters/{name}/logs" + (f"?{q}" if q else ""),
        headers=basic(user),
        timeout=timeout,
    )


def status(gw, name: str) -> str:
    return call("GET", f"{gw.address}/api/v1/clusters/{name}", headers=basic(ALICE)).json()[
        "status"
    ]


def say(dask_scheduler=None, text: str = "") -> None:
    """Run in the scheduler or a worker: a line in its log."""
    import sys

    print(text, file=sys.stderr, flush=True)


def scheduler_says(client, text: str) -> None:
    client.run_on_scheduler(say, text=text)


def scheduler_log(gw, name: str) -> Path:
    return gw.clusters_dir / name / "logs" / "scheduler.log"


@pytest.fixture
def cluster(gw):
    """A running cluster of alice's with one worker, and a client of it."""
    with _gateway(gw, ALICE) as gateway:
        cluster = gateway.new_cluster()
        cluster.scale(1)
        client = cluster.get_client()
        client.wait_for_workers(1, timeout=60)
        try:
            yield cluster, client
        finally:
            client.close()
            try:
                cluster.shutdown()
            except Exception:
                pass


def _gateway(gw, user: str):
    from dask_gateway import Gateway
    from dask_gateway.auth import BasicAuth

    return Gateway(gw.address, auth=BasicAuth(user))


def _stopped(gw, name: str) -> None:
    wait_for(lambda: status(gw, name) == "STOPPED", timeout=60, what="the cluster stopped")


def test_scheduler_and_worker_logs_live_then_kept(gw, cluster):
    cluster, client = cluster
    name = cluster.name
    mark, wmark = f"SCHED-{uuid.uuid4().hex}", f"WORKER-{uuid.uuid4().hex}"
    scheduler_says(client, mark)
    client.run(say, text=wmark)
    (worker,) = client.scheduler_info()["workers"].values()
    component = f"worker:{worker['name']}"

    everything = logs(gw, name)
    assert everything.status == 200, everything.body
    texts = everything.json()["logs"]
    assert list(texts) == ["scheduler", component]
    assert mark in texts["scheduler"] and wmark in texts[component]

    one = logs(gw, name, component="scheduler")
    body = one.json()
    assert one.status == 200 and set(body) == {"logs", "offset", "start", "done"}
    assert mark in body["logs"]["scheduler"] and body["done"] is False
    assert body["offset"] == scheduler_log(gw, name).stat().st_size
    assert body["start"] == 0

    # Owner and admins only; what was never there is a 404 naming what is.
    assert logs(gw, name, user=BOB).status == 403
    assert logs(gw, name, user=BOB, component="scheduler").status == 403
    assert mark in logs(gw, name, user=ADMIN).json()["logs"]["scheduler"]
    for missing in ("nanny", "worker:never-existed", "worker:", "scheduler:1"):
        r = logs(gw, name, component=missing)
        assert r.status == 404, (missing, r.body)
        assert "scheduler" in r.json()["error"] and component in r.json()["error"]
    assert logs(gw, "no-such-cluster").status == 404
    for bad in ({"tail": "0"}, {"tail": "x"}, {"tail": "100001"}, {"offset": "-1"}):
        assert logs(gw, name, component="scheduler", **bad).status == 400, bad
    assert logs(gw, name, component="scheduler", offset="0", wait="61").status == 400
    assert logs(gw, name, offset="0").status == 400  # offset needs a component

    client.close()
    cluster.shutdown()
    _stopped(gw, name)
    assert not (gw.clusters_dir / name).exists()  # the live files are gone...
    kept = logs(gw, name).json()["logs"]  # ...and the gateway kept them
    assert list(kept) == ["scheduler", component]
    assert mark in kept["scheduler"] and wmark in kept[component]
    after = logs(gw, name, component="scheduler").json()
    assert after["done"] is True and mark in after["logs"]["scheduler"]
    # Offsets go on from the live log: what was read live is not sent again.
    rest = logs(gw, name, component="scheduler", offset=str(body["offset"])).json()
    assert mark not in rest["logs"]["scheduler"] and rest["start"] == body["offset"]
    assert logs(gw, name, user=BOB).status == 403
    assert mark in logs(gw, name, user=ADMIN).json()["logs"]["scheduler"]
    # A follow of a stopped cluster sends what is kept and ends.
    r = logs(gw, name, component="scheduler", follow="1", timeout=30)
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
    assert mark in r.body.decode()


def _stream(gw, name: str, query: str):
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=90)
    conn.request("GET", f"/api/v1/clusters/{name}/logs?{query}", headers=basic(ALICE))
    resp = conn.getresponse()
    assert resp.status == 200, resp.read()
    assert resp.getheader("Content-Type").startswith("text/plain")
    return conn, resp


def _read_until(resp, needle: str) -> str:
    seen = b""
    while needle.encode() not in seen:
        piece = resp.read1(65536)
        assert piece, f"the stream ended before {needle!r}: {seen[-2000:]!r}"
        seen += piece
    return seen.decode()


def test_follow_streams_new_lines_and_ends_with_the_cluster(gw, cluster):
    cluster, client = cluster
    first = f"FIRST-{uuid.uuid4().hex}"
    scheduler_says(client, first)
    conn, resp = _stream(gw, cluster.name, "component=scheduler&follow=1")
    try:
        _read_until(resp, first)
        for _ in range(3):  # each new line arrives while the stream stays open
            line = f"LIVE-{uuid.uuid4().hex}"
            scheduler_says(client, line)
            _read_until(resp, line)
        client.close()
        cluster.shutdown()
        # The rest, up to the end of the chunked answer: a clean end (an answer cut short
        # raises IncompleteRead), and nothing sent twice.
        rest = resp.read()
        assert first not in rest.decode()
    finally:
        conn.close()


def test_offset_and_wait_long_poll(gw, cluster):
    cluster, client = cluster
    name = cluster.name
    scheduler_says(client, "BEFORE")
    now = logs(gw, name, component="scheduler").json()
    offset = now["offset"]
    # Nothing new: the answer after the wait is empty, at the same offset.
    idle = logs(gw, name, component="scheduler", offset=str(offset), wait="0.5").json()
    assert idle["logs"]["scheduler"] == "" or "BEFORE" not in idle["logs"]["scheduler"]
    offset = idle["offset"]
    answer: dict = {}

    def poll() -> None:
        r = logs(gw, name, component="scheduler", offset=str(offset), wait="60")
        answer.update(r.json())

    waiting = threading.Thread(target=poll)
    waiting.start()
    line = f"AFTER-{uuid.uuid4().hex}"
    scheduler_says(client, line)
    waiting.join(90)
    assert not waiting.is_alive()
    assert line in answer["logs"]["scheduler"] and "BEFORE" not in answer["logs"]["scheduler"]
    assert answer["start"] == offset and answer["offset"] > offset
    assert answer["done"] is False


def test_tail(gw, cluster):
    cluster, client = cluster
    lines = [f"TAIL-{i}-{uuid.uuid4().hex}" for i in range(5)]
    scheduler_says(client, "\n".join(lines))
    wait_for(
        lambda: (
            lines[-1] in logs(gw, cluster.name, component="scheduler").json()["logs"]["scheduler"]
        ),
        timeout=30,
        what="the lines in the log",
    )
    r = logs(gw, cluster.name, component="scheduler", tail="2").json()
    text = r["logs"]["scheduler"]
    assert text.splitlines() == lines[-2:]
    assert r["offset"] - r["start"] == len(text.encode())
    everything = logs(gw, cluster.name, tail="2").json()["logs"]
    assert everything["scheduler"].splitlines() == lines[-2:]
    assert all(len(t.splitlines()) <= 2 for t in everything.values())


def test_a_log_of_gigabytes_answers_its_capped_tail(gw, cluster):
    """The scheduler's log grows to 2 GB (sparse: its user extends the file), then gets
    lines: answers hold only the newest bytes, cut at a line start."""
    cluster, client = cluster
    path = scheduler_log(gw, cluster.name)
    os.truncate(path, 2 * 2**30)
    lines = [f"BIG-{i:05d}-{'x' * 60}" for i in range(2000)]  # ~140 KB: over the cap
    scheduler_says(client, "\n".join(lines))
    size = path.stat().st_size
    assert size > 2 * 2**30
    body = logs(gw, cluster.name, component="scheduler").json()
    text = body["logs"]["scheduler"]
    assert "\0" not in text and len(text.encode()) <= MAX_BYTES
    big = [line for line in text.splitlines() if line.startswith("BIG-")]
    assert len(big) > 100 and big == lines[-len(big) :]
    assert text.splitlines()[0] == big[0]  # cut at a line start
    assert body["offset"] == size and body["start"] == size - len(text.encode())
    # From an old offset: still only the newest bytes.
    old = logs(gw, cluster.name, component="scheduler", offset="0").json()
    assert old["logs"]["scheduler"] == text
    everything = logs(gw, cluster.name).json()["logs"]
    assert everything["scheduler"] == text
    # Kept after the stop: the newest bytes too.
    name = cluster.name
    client.close()
    cluster.shutdown()
    _stopped(gw, name)
    kept = logs(gw, name, component="scheduler").json()
    kept_text = kept["logs"]["scheduler"]
    assert kept["done"] and len(kept_text.encode()) <= MAX_BYTES and "\0" not in kept_text
    assert lines[-1] in kept_text and kept_text.splitlines()[0] in lines
    assert kept["start"] > 2 * 2**30


def test_kept_logs_are_the_gateways(gw, cluster):
    """Where the gateway keeps them: its data directory, its own, mode 0700."""
    cluster, client = cluster
    name = cluster.name
    client.close()
    cluster.shutdown()
    _stopped(gw, name)
    folder = gw.data_dir / "cluster-logs" / name
    assert oct(folder.stat().st_mode & 0o777) == "0o700"
    assert oct(folder.parent.stat().st_mode & 0o777) == "0o700"
    index = json.loads((folder / "index.json").read_text())
    assert index["user"] == ALICE
    assert [c["component"] for c in index["components"]][0] == "scheduler"


def test_a_failed_schedulers_log_says_why(gw):
    """A scheduler whose Python cannot import distributed: its log, kept after the failure,
    has the ImportError."""
    from dask_gateway import GatewayClusterError

    with _gateway(gw, ALICE) as gateway:
        with pytest.raises(GatewayClusterError):
            gateway.new_cluster(environment="broken")
        (report,) = [c for c in gateway.list_clusters(status="failed")]
    name = report.name
    body = logs(gw, name, component="scheduler").json()
    assert body["done"] is True
    assert "No module named" in body["logs"]["scheduler"], body
    assert "No module named" in logs(gw, name).json()["logs"]["scheduler"]


def test_kept_logs_outlive_the_cluster_until_retention(tmp_path):
    """Once the gateway forgot a stopped cluster, its kept logs stay readable by its owner
    and admins (others 403) until events_max_age; then 404 and their directory is gone."""
    config = write_config(tmp_path)
    data_dir = tmp_path / "gw"
    first = GatewayProcess(data_dir, config=config)
    first.start()
    mark = f"KEPT-{uuid.uuid4().hex}"
    try:
        with _gateway(first, ALICE) as gateway:
            cluster = gateway.new_cluster()
            with cluster.get_client() as client:
                scheduler_says(client, mark)
            name = cluster.name
            cluster.shutdown()
        _stopped(first, name)
    finally:
        assert first.stop() == 0, first.log()
    folder = data_dir / "cluster-logs" / name
    assert (folder / "index.json").exists()

    forgetful = GatewayProcess(
        data_dir,
        ["--LocalBackend.db_cluster_max_age=0", "--LocalBackend.db_cleanup_period=0.2"],
        config=config,
    )
    forgetful.start()
    try:
        wait_for(
            lambda: (
                call(
                    "GET", f"{forgetful.address}/api/v1/clusters/{name}", headers=basic(ALICE)
                ).status
                == 404
            ),
            what="the cluster forgotten",
        )
        kept = logs(forgetful, name, component="scheduler").json()
        assert mark in kept["logs"]["scheduler"] and kept["done"] is True
        assert mark in logs(forgetful, name).json()["logs"]["scheduler"]
        assert mark in logs(forgetful, name, user=ADMIN).json()["logs"]["scheduler"]
        assert logs(forgetful, name, user=BOB).status == 403
        assert logs(forgetful, name, component="worker:x").status == 404
        r = logs(forgetful, name, component="scheduler", follow="1", timeout=30)
        assert r.status == 200 and mark in r.body.decode()
    finally:
        assert forgetful.stop() == 0, forgetful.log()

    strict = GatewayProcess(
        data_dir,
        ["--DaskGateway.events_max_age=0.5", "--LocalBackend.db_cleanup_period=0.2"],
        config=config,
    )
    strict.start()
    try:
        wait_for(lambda: logs(strict, name).status == 404, what="the kept logs removed")
        assert logs(strict, name, user=ADMIN).status == 404
        assert not folder.exists()
    finally:
        assert strict.stop() == 0, strict.log()
        _kill_leftovers(data_dir)
