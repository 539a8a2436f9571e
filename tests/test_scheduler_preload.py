"""Tests for dask_gateway.scheduler_preload against a real scheduler subprocess.

A tiny fake gateway (a tornado app recording heartbeats and DELETEs) stands in
for the gateway server; scheduler and workers are real ``distributed`` processes.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tornado import httpserver, netutil, web, websocket
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest, HTTPResponse

from dask_gateway.scheduler_preload import (
    DASHBOARD_KEY_HEADER,
    APIError,
    GatewayConfig,
    SchedulerService,
    WorkerTracker,
    dashboard_key,
    parse_bind_address,
    read_token,
    validate_count,
)

TOKEN = "secret-cluster-token"
CLUSTER = "abc123"
START_TIMEOUT = 60  # a cold interpreter importing distributed on a busy 2-core box


# ---------------------------------------------------------------------------
# Fake gateway
# ---------------------------------------------------------------------------


class FakeGateway:
    """Records what the scheduler sends; can pretend to be down for N heartbeats."""

    def __init__(self) -> None:
        self.heartbeats: list[tuple[float, dict[str, Any], dict[str, str]]] = []
        self.failed_heartbeats: list[float] = []
        self.deletes: list[tuple[float, dict[str, str]]] = []
        self.delete_reasons: list[str | None] = []  # ?reason= of each DELETE
        self.fail_next = 0
        self.url = ""
        self._server: httpserver.HTTPServer | None = None

    def start(self) -> None:
        gw = self

        class Heartbeat(web.RequestHandler):
            def post(self, name: str) -> None:
                if gw.fail_next > 0:
                    gw.fail_next -= 1
                    gw.failed_heartbeats.append(time.monotonic())
                    self.set_status(503)
                    return
                assert name == CLUSTER
                gw.heartbeats.append(
                    (time.monotonic(), json.loads(self.request.body), dict(self.request.headers))
                )

        class Cluster(web.RequestHandler):
            def delete(self, name: str) -> None:
                assert name == CLUSTER
                gw.deletes.append((time.monotonic(), dict(self.request.headers)))
                gw.delete_reasons.append(self.get_query_argument("reason", None))
                self.set_status(204)

        app = web.Application(
            [
                (r"/api/v1/clusters/([^/]+)/heartbeat", Heartbeat),
                (r"/api/v1/clusters/([^/]+)", Cluster),
            ],
            log_function=lambda handler: None,
        )
        sockets = netutil.bind_sockets(0, address="127.0.0.1")
        self._server = httpserver.HTTPServer(app)
        self._server.add_sockets(sockets)
        self.url = f"http://127.0.0.1:{sockets[0].getsockname()[1]}/api"

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()

    @property
    def last(self) -> dict[str, Any]:
        return self.heartbeats[-1][1]

    async def wait_heartbeat(
        self, pred: Callable[[dict[str, Any]], bool], timeout: float = 15, after: int = 0
    ) -> tuple[float, dict[str, Any]]:
        """Wait for a heartbeat (index >= after) matching pred; return (time, body)."""
        deadline = time.monotonic() + timeout
        while True:
            for t, body, _ in self.heartbeats[after:]:
                if pred(body):
                    return t, body
            if time.monotonic() > deadline:
                seen = [b for _, b, _ in self.heartbeats[-3:]]
                raise AssertionError(f"no matching heartbeat in {timeout}s; last: {seen}")
            await asyncio.sleep(0.05)


# ---------------------------------------------------------------------------
# Fixtures and helpers
# ---------------------------------------------------------------------------


@pytest.fixture
async def gateway():
    gw = FakeGateway()
    gw.start()
    yield gw
    gw.stop()


@pytest.fixture
def procs():
    """Every subprocess started by a test; all are killed on teardown."""
    started: list[subprocess.Popen] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
    for p in started:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover
            pass


@pytest.fixture
async def http():
    client = AsyncHTTPClient(force_instance=True)
    yield client
    client.close()


def start_scheduler(
    procs: list,
    gateway: FakeGateway,
    tmp_path: Path,
    *extra: str,
    env: dict[str, str] | None = None,
) -> tuple[subprocess.Popen, Path]:
    env = dict(
        os.environ,
        DASK_GATEWAY_API_URL=gateway.url,
        DASK_GATEWAY_API_TOKEN=TOKEN,
        DASK_GATEWAY_CLUSTER_NAME=CLUSTER,
        **(env or {}),
    )
    cmd = [
        sys.executable, "-m", "distributed.cli.dask_scheduler",
        "--host", "127.0.0.1", "--port", "0",
        "--dashboard-address", "127.0.0.1:0",
        "--preload", "dask_gateway.scheduler_preload",
        "--dg-api-address", "127.0.0.1:0",
        "--dg-heartbeat-period", "1",
        "--dg-adaptive-period", "0.5",
        *extra,
    ]  # fmt: skip
    log = tmp_path / "scheduler.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)
    procs.append(proc)
    return proc, log


def start_worker(procs: list, address: str, name: str, tmp_path: Path) -> subprocess.Popen:
    cmd = [
        sys.executable, "-m", "distributed.cli.dask_worker", address,
        "--name", name, "--no-nanny", "--nthreads", "1", "--no-dashboard",
    ]  # fmt: skip
    with open(tmp_path / f"worker-{name}.log", "wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
    procs.append(proc)
    return proc


async def wait_first_heartbeat(gateway: FakeGateway, log: Path) -> tuple[float, dict]:
    """Wait for the first heartbeat and check it came right after the scheduler was up."""
    deadline = time.monotonic() + START_TIMEOUT
    scheduler_up: float | None = None
    while not gateway.heartbeats:
        if scheduler_up is None:
            text = await asyncio.to_thread(log.read_text, errors="replace")
            if "Scheduler at:" in text:
                scheduler_up = time.monotonic()
        if time.monotonic() >= deadline:
            raise AssertionError(await asyncio.to_thread(log.read_text, errors="replace"))
        await asyncio.sleep(0.05)
    t, body, _ = gateway.heartbeats[0]
    if scheduler_up is not None:
        assert t - scheduler_up < 2.0, "first heartbeat should be sent right after startup"
    return t, body


async def comm(
    http: AsyncHTTPClient, api: str, body: Any, token: str | None = TOKEN, raw: bytes | None = None
) -> HTTPResponse:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"token {token}"
    return await http.fetch(
        f"{api}/api/comm",
        method="POST",
        headers=headers,
        body=raw if raw is not None else json.dumps(body),
        raise_error=False,
    )


async def wait_exit(proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        assert time.monotonic() < deadline, "process did not exit"
        await asyncio.sleep(0.1)


# ---------------------------------------------------------------------------
# Tests against a real scheduler
# ---------------------------------------------------------------------------


async def test_heartbeat_api_scale_and_worker_lifecycle(gateway, procs, http, tmp_path):
    _, log = start_scheduler(procs, gateway, tmp_path)
    _, first = await wait_first_heartbeat(gateway, log)

    # First heartbeat: the three addresses, nothing else yet.
    assert first["scheduler_address"].startswith("tcp://127.0.0.1:")
    assert first["dashboard_address"].startswith("http://127.0.0.1:")
    assert first["api_address"].startswith("http://127.0.0.1:")
    assert first["count"] == 0
    assert first["active_workers"] == first["closing_workers"] == first["closed_workers"] == []
    headers = gateway.heartbeats[0][2]
    assert headers["Authorization"] == f"token {TOKEN}"
    assert headers["Content-Type"] == "application/json"
    api = first["api_address"]
    sched_addr = first["scheduler_address"]

    # Scheduler API: health, auth, and error bodies.
    resp = await http.fetch(f"{api}/api/health", raise_error=False)
    assert resp.code == 200
    assert (await comm(http, api, {"op": "scale", "count": 1}, token=None)).code == 403
    assert (await comm(http, api, {"op": "scale", "count": 1}, token="wrong")).code == 403
    resp = await comm(http, api, None, raw=b"{not json")
    assert resp.code == 400 and "error" in json.loads(resp.body)
    resp = await comm(http, api, {"op": "explode"})
    assert resp.code == 422
    assert json.loads(resp.body) == {"error": "op must be one of {scale, adapt}"}
    assert (await comm(http, api, {"op": "scale", "count": -1})).code == 422

    # Scaling up interrupts the heartbeat wait.
    n = len(gateway.heartbeats)
    t0 = time.monotonic()
    assert (await comm(http, api, {"op": "scale", "count": 2})).code == 200
    t, _ = await gateway.wait_heartbeat(lambda b: b["count"] == 2, after=n)
    assert t - t0 < 0.9

    # Real workers show up by name.
    workers = {name: start_worker(procs, sched_addr, name, tmp_path) for name in ("w1", "w2")}
    await gateway.wait_heartbeat(
        lambda b: sorted(b["active_workers"]) == ["w1", "w2"], timeout=START_TIMEOUT
    )

    # Scale down: a victim is reported closing, then closed, and its process exits.
    n = len(gateway.heartbeats)
    assert (await comm(http, api, {"op": "scale", "count": 1})).code == 200
    _, hb = await gateway.wait_heartbeat(lambda b: b["closing_workers"], after=n)
    assert hb["count"] == 1 and len(hb["closing_workers"]) == 1
    victim = hb["closing_workers"][0]
    assert victim not in hb["active_workers"]
    (survivor,) = set(workers) - {victim}
    _, hb = await gateway.wait_heartbeat(lambda b: victim in b["closed_workers"], after=n)
    assert hb["closing_workers"] == [] and hb["active_workers"] == [survivor]
    await wait_exit(workers[victim], timeout=15)
    # Reported departures are cleared after a successful heartbeat.
    n = len(gateway.heartbeats)
    _, hb = await gateway.wait_heartbeat(lambda b: True, after=n)
    assert hb["closed_workers"] == []

    # A worker beyond count is noticed soon and one worker is closed again.
    n = len(gateway.heartbeats)
    workers["w3"] = start_worker(procs, sched_addr, "w3", tmp_path)
    _, hb = await gateway.wait_heartbeat(
        lambda b: b["closing_workers"], after=n, timeout=START_TIMEOUT
    )
    (extra,) = hb["closing_workers"]
    await wait_exit(workers[extra], timeout=15)
    (survivor,) = {survivor, "w3"} - {extra}
    await gateway.wait_heartbeat(lambda b: extra in b["closed_workers"], after=n)

    # An unexpected death is reported soon, not at the next regular period.
    n = len(gateway.heartbeats)
    t0 = time.monotonic()
    workers[survivor].send_signal(signal.SIGKILL)
    t, hb = await gateway.wait_heartbeat(lambda b: survivor in b["closed_workers"], after=n)
    assert t - t0 < 2.5
    assert hb["active_workers"] == [] and hb["count"] == 1


async def test_backoff_and_adapt(gateway, procs, http, tmp_path):
    gateway.fail_next = 3  # the gateway is "down" for the first three heartbeats
    _, log = start_scheduler(procs, gateway, tmp_path)
    await wait_first_heartbeat(gateway, log)

    fails = gateway.failed_heartbeats
    assert len(fails) == 3
    first_ok = gateway.heartbeats[0][0]
    gaps = [b - a for a, b in zip(fails, fails[1:] + [first_ok], strict=True)]
    # 0.25, 0.5, 1.0 (capped at the 1 s period); generous upper bounds for a busy box.
    for gap, expected in zip(gaps, [0.25, 0.5, 1.0], strict=True):
        assert expected * 0.8 <= gap <= expected + 0.75, gaps
    text = log.read_text()
    assert text.count("heartbeat to") == 1, "one warning per failure streak"
    assert "Traceback" not in text

    api = gateway.last["api_address"]
    n = len(gateway.heartbeats)
    resp = await comm(http, api, {"op": "adapt", "minimum": 2, "maximum": 5, "active": True})
    assert resp.code == 200
    await gateway.wait_heartbeat(lambda b: b["count"] == 2, after=n, timeout=5)

    # Deactivating adaptive keeps the current count.
    resp = await comm(http, api, {"op": "adapt", "minimum": 3, "maximum": 5, "active": False})
    assert resp.code == 200
    n = len(gateway.heartbeats)
    await gateway.wait_heartbeat(lambda b: True, after=n + 1)
    assert gateway.last["count"] == 2


async def test_idle_timeout_requests_delete(gateway, procs, tmp_path):
    proc, log = start_scheduler(procs, gateway, tmp_path, "--dg-idle-timeout", "1")
    t_hb, _ = await wait_first_heartbeat(gateway, log)
    deadline = time.monotonic() + 10
    while not gateway.deletes:
        assert time.monotonic() < deadline, "no DELETE from idle timeout"
        await asyncio.sleep(0.1)
    t_del, headers = gateway.deletes[0]
    assert headers["Authorization"] == f"token {TOKEN}"
    assert gateway.delete_reasons == ["idle"]  # for the cluster's events
    assert t_del - t_hb >= 0.9
    # The scheduler keeps running (and heartbeating) until the gateway stops it.
    await asyncio.sleep(1.5)
    assert proc.poll() is None
    assert len(gateway.deletes) == 1
    # SIGINT (how the local backend stops schedulers) runs dask_teardown cleanly.
    proc.send_signal(signal.SIGINT)
    await wait_exit(proc, timeout=15)
    text = log.read_text()
    assert "Traceback" not in text and "Error" not in text, text


# ---------------------------------------------------------------------------
# Small unit tests (no subprocess)
# ---------------------------------------------------------------------------


def test_config_helpers(tmp_path, monkeypatch):
    assert parse_bind_address("127.0.0.1:0") == ("127.0.0.1", 0)
    assert parse_bind_address(":8788") == (None, 8788)
    assert parse_bind_address("[::1]:5") == ("::1", 5)
    tok = tmp_path / "api-token"
    tok.write_text("from-file\n")
    assert read_token(str(tok)) == "from-file"
    assert read_token("plain") == "plain"

    monkeypatch.delenv("DASK_GATEWAY_API_URL", raising=False)
    with pytest.raises(RuntimeError, match="DASK_GATEWAY_API_URL"):
        GatewayConfig.from_env()
    monkeypatch.setenv("DASK_GATEWAY_API_URL", "http://gw/api/")
    monkeypatch.setenv("DASK_GATEWAY_API_TOKEN", str(tok))
    monkeypatch.setenv("DASK_GATEWAY_CLUSTER_NAME", "c")
    cfg = GatewayConfig.from_env(idle_timeout=5.0)
    assert (cfg.api_url, cfg.api_token, cfg.idle_timeout) == ("http://gw/api", "from-file", 5.0)


def test_validate_count():
    assert validate_count(3, "count") == 3
    assert validate_count(None, "minimum") is None
    for bad in (True, -1, 1.5, "2"):
        with pytest.raises(APIError):
            validate_count(bad, "count")
    with pytest.raises(APIError):
        validate_count(None, "count", allow_none=False)


def test_worker_tracker_expected_and_unexpected():
    class WS:
        def __init__(self, name: Any) -> None:
            self.name = name

    class FakeScheduler:
        workers = {"tcp://a": WS("a"), "tcp://b": WS(7)}

    departures: list[tuple[str, bool]] = []
    tr = WorkerTracker(on_departure=lambda n, e: departures.append((n, e)))
    s = FakeScheduler()
    tr.add_worker(s, "tcp://a")
    tr.add_worker(s, "tcp://b")
    assert list(tr.active) == ["a", "7"]
    tr.mark_closing(["a"])
    assert list(tr.active) == ["7"] and list(tr.closing) == ["a"]
    tr.remove_worker(s, "tcp://a", stimulus_id="x")
    tr.remove_worker(s, "tcp://b", stimulus_id="x")
    tr.remove_worker(s, "tcp://b", stimulus_id="x")  # duplicate removal is ignored
    assert departures == [("a", True), ("7", False)]
    assert list(tr.closed) == ["a", "7"] and not tr.closing and not tr.active
    tr.forget_closed(["a"])
    assert list(tr.closed) == ["7"]


def test_adapt_scales_up_at_once_and_down_slowly():
    class FakeScheduler:
        targets: list[int] = []
        workers: dict = {}

        def adaptive_target(self) -> int:
            return self.targets.pop(0)

    cfg = GatewayConfig(api_url="http://gw/api", api_token="t", cluster_name="c")
    service = SchedulerService(FakeScheduler(), cfg)
    service.adaptive = (1, 4)  # as set by adapt(); the loop itself isn't started here
    FakeScheduler.targets = [10, 0, 2, 0, 0, 0]
    counts = []
    for _ in range(6):
        service.adapt_once()
        counts.append(service.count)
    # 10 clamps to 4 at once; then down only to the max of the last 3 (clamped) targets.
    assert counts == [4, 4, 4, 2, 2, 1]


#: What ``_dashboard_statuses`` finds on a scheduler's whole dashboard, key given (but the
#: sitemap, which distributed itself answers with a 500).
WHOLE_DASHBOARD = {
    "/status": 200,
    "/individual-plots.json": 200,
    "/health": 200,
    "/info/main/workers.html": 200,
    "/statics/css/base.css": 200,
    "/no-such-page": 404,
    "websocket": 101,
}


async def _dashboard_statuses(http: AsyncHTTPClient, base: str, headers: dict) -> dict:
    """Status of each kind of page of a scheduler's HTTP server, and of Bokeh's websocket."""
    out = {}
    for page in (
        "/status",
        "/individual-plots.json",
        "/sitemap.json",
        "/health",
        "/info/main/workers.html",
        "/statics/css/base.css",
        "/no-such-page",
    ):
        r = await http.fetch(
            base + page, headers=headers, raise_error=False, follow_redirects=False
        )
        out[page] = r.code
    try:
        conn = await websocket.websocket_connect(
            HTTPRequest("ws" + base[len("http") :] + "/status/ws", headers=headers)
        )
        conn.close()
        out["websocket"] = 101
    except HTTPClientError as e:
        out["websocket"] = e.code
    return out


async def test_dashboard_requires_the_key_the_gateway_sends(gateway, procs, http, tmp_path):
    """With DASK_GATEWAY_DASHBOARD_AUTH (set by our gateway), every request of the scheduler's
    HTTP server needs the cluster's dashboard key; the server derives the same key."""
    from dask_gateway_server.models import Cluster

    record = Cluster(
        name=CLUSTER, username="u", token=TOKEN, options={}, config={}, tls_cert=b"", tls_key=b""
    )
    assert record.dashboard_key == dashboard_key(TOKEN) != dashboard_key(TOKEN + "x")

    _, log = start_scheduler(procs, gateway, tmp_path, env={"DASK_GATEWAY_DASHBOARD_AUTH": "1"})
    _, first = await wait_first_heartbeat(gateway, log)
    base = first["dashboard_address"]
    refused = await _dashboard_statuses(http, base, {})
    assert set(refused.values()) == {403}, refused
    forged = await _dashboard_statuses(http, base, {DASHBOARD_KEY_HEADER: dashboard_key("x")})
    assert set(forged.values()) == {403}, forged
    r = await http.fetch(base + "/status", raise_error=False)
    assert json.loads(r.body) == {"error": "This dashboard is reached through the Dask Gateway"}
    allowed = await _dashboard_statuses(http, base, {DASHBOARD_KEY_HEADER: dashboard_key(TOKEN)})
    allowed.pop("/sitemap.json")  # distributed's own 500 (KeyError 'path'), key or not
    assert allowed == WHOLE_DASHBOARD, allowed


async def test_dashboard_is_open_without_the_gateways_request(gateway, procs, http, tmp_path):
    """Under the public dask-gateway (no DASK_GATEWAY_DASHBOARD_AUTH), whose proxy sends no
    key, the dashboard answers as before."""
    _, log = start_scheduler(procs, gateway, tmp_path)
    _, first = await wait_first_heartbeat(gateway, log)
    r = await http.fetch(first["dashboard_address"] + "/status", raise_error=False)
    assert r.code == 200 and b"bokeh" in r.body.lower()


#: What our gateway sets for a scheduler with ``ClusterConfig.dashboard_on_demand`` (the default).
ON_DEMAND = {"DASK_GATEWAY_DASHBOARD_ON_DEMAND": "1"}


async def test_dashboard_on_demand_loads_at_the_first_request(gateway, procs, http, tmp_path):
    """Started as our gateway starts it (DASK_GATEWAY_DASHBOARD_ON_DEMAND), the scheduler
    reports RUNNING without the Bokeh dashboard; requests refused for lack of the
    key load nothing; the first allowed requests (several at once) wait for the one load
    and get the whole dashboard: pages, the individual plots' list, Bokeh's websocket."""
    _, log = start_scheduler(
        procs, gateway, tmp_path, env={**ON_DEMAND, "DASK_GATEWAY_DASHBOARD_AUTH": "1"}
    )
    _, first = await wait_first_heartbeat(gateway, log)
    base = first["dashboard_address"]
    assert base.startswith("http://127.0.0.1:")
    refused = await _dashboard_statuses(http, base, {})
    assert set(refused.values()) == {403}, refused
    assert "dashboard loaded" not in log.read_text()

    key = {DASHBOARD_KEY_HEADER: dashboard_key(TOKEN)}
    plots, status = await asyncio.gather(
        http.fetch(base + "/individual-plots.json", headers=key, raise_error=False),
        http.fetch(base + "/status", headers=key, raise_error=False),
    )
    assert plots.code == 200 and "Individual Task Stream" in json.loads(plots.body), plots.body
    assert status.code == 200 and b"bokeh" in status.body.lower()
    allowed = await _dashboard_statuses(http, base, key)
    allowed.pop("/sitemap.json")  # distributed's own 500 (KeyError 'path'), key or not
    assert allowed == WHOLE_DASHBOARD, allowed
    assert log.read_text().count("dashboard loaded") == 1


async def test_dashboard_on_demand_without_bokeh_says_so(gateway, procs, http, tmp_path):
    """In an environment without bokeh, the dashboard loaded on demand is distributed's own
    page naming what to install (as a scheduler started with its dashboard shows), not a
    404 or an error."""
    shadow = tmp_path / "no-bokeh"
    (shadow / "bokeh").mkdir(parents=True)
    (shadow / "bokeh" / "__init__.py").write_text("raise ImportError('No module named bokeh')\n")
    _, log = start_scheduler(procs, gateway, tmp_path, env={**ON_DEMAND, "PYTHONPATH": str(shadow)})
    _, first = await wait_first_heartbeat(gateway, log)
    r = await http.fetch(first["dashboard_address"] + "/status", raise_error=False)
    assert r.code == 200 and b"Dask needs bokeh" in r.body, (r.code, r.body[:300])
    health = await http.fetch(first["dashboard_address"] + "/health", raise_error=False)
    assert health.code == 200
