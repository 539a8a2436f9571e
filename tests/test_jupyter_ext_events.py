"""The Jupyter extension's events and logs relays, and its listing of ended clusters.

Two users and an admin each run their own Jupyter server, holding their own gateway
credentials, against one real gateway: each reads their own clusters' events and logs through
their server, the admin anyone's, and nobody another user's, even with that user's gateway
credentials sent along (the relay speaks to the gateway as its own user only). A cluster whose
scheduler cannot import distributed stays listed, failed, with its reason.
"""

from __future__ import annotations

import asyncio
import functools
import http.server
import logging
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest
from support import jupyter_site, waiting
from support.http_helpers import basic
from support.jupyter_server import JupyterServerProcess, gateway_env
from support.jupyter_site import error_of, running_site
from support.paths import CONFIGS

ALICE, BOB, ADMIN = "dgj-alice", "dgj-bob", "dgj-admin"
USERS = (ALICE, BOB, ADMIN)
NO_DISTRIBUTED = "No module named 'distributed'"

CONFIG = """
load_subconfig(BROKEN_ENV_CONFIG)
c.Authenticator.admin_users = {ADMIN}
# A busy machine can hold a scheduler's heartbeat for seconds.
c.LocalBackend.cluster_heartbeat_timeout = 60
"""

wait_for = functools.partial(waiting.wait_for, timeout=90, interval=0.3)


class Site(jupyter_site.Site):
    def __init__(self, running: jupyter_site.Site, gate: Path):
        super().__init__(running.gateway, running.servers)
        self.gate = gate  # "gated" schedulers start once it exists

    def listed(self, user: str, name: str) -> dict | None:
        r = self.get(user, "clusters")
        assert r.status_code == 200, r.text
        return next((c for c in r.json()["clusters"] if c["name"] == name), None)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("relays")
    config = (
        f"BROKEN_ENV_CONFIG = {str(CONFIGS / 'broken_env_gateway_config.py')!r}\n"
        f"ADMIN = {ADMIN!r}\n{CONFIG}"
    )
    # DGJ_SCHEDULER_GATE: read by the gateway's config
    gate = {"DGJ_SCHEDULER_GATE": str(root / "gate")}
    with running_site(root, USERS, config, gateway_environ=gate) as running:
        yield Site(running, root / "gate")


def test_relays_serve_the_owner_and_admins_only(site):
    alice, bob = site.client(ALICE), site.client(BOB)
    try:
        name = alice.submit()
        bobs = bob.submit()
        wait_for(
            lambda: (c := site.listed(ALICE, name)) and c["status"] == "RUNNING", what="running"
        )

        # -- the owner: events, with a cursor to follow them
        r = site.get(ALICE, f"clusters/{name}/events")
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("application/json")
        data = r.json()
        kinds = [e["kind"] for e in data["events"]]
        assert kinds[0] == "submitted", kinds
        assert data["cursor"] == data["events"][-1]["id"]
        assert data["done"] is False
        r = site.get(ALICE, f"clusters/{name}/events", after=data["cursor"], wait=0)
        assert r.status_code == 200, r.text
        assert r.json() == {"events": [], "cursor": data["cursor"], "done": False}

        # -- the owner: logs, every component, then one with its byte positions
        r = site.get(ALICE, f"clusters/{name}/logs")
        assert r.status_code == 200, r.text
        assert "scheduler" in r.json()["logs"]
        r = site.get(ALICE, f"clusters/{name}/logs", component="scheduler")
        assert r.status_code == 200, r.text
        log = r.json()
        assert isinstance(log["offset"], int) and log["done"] is False

        # -- a long-poll from the last offset answers with what the scheduler writes next
        with site.client(ALICE) as own:
            cluster = own.connect(name)
            client = cluster.get_client(set_as_default=False)
            try:
                client.run_on_scheduler(
                    lambda: logging.getLogger("distributed.scheduler").warning("RELAY-MARKER")
                )
            finally:
                client.close()
                cluster.close()
        offset, seen = log["offset"], ""
        while "RELAY-MARKER" not in seen:
            r = site.get(
                ALICE, f"clusters/{name}/logs", component="scheduler", offset=offset, wait=20
            )
            assert r.status_code == 200, r.text
            assert r.json()["done"] is False, seen
            seen += r.json()["logs"]["scheduler"]
            offset = r.json()["offset"]

        # -- another user, through their own server: refused, as the gateway refuses them
        for route in ("events", "logs"):
            error_of(site.get(BOB, f"clusters/{name}/{route}"), 403)
            error_of(site.get(BOB, f"clusters/{name}/{route}", component="scheduler"), 403)
        # ...and the admin reads anyone's.
        r = site.get(ADMIN, f"clusters/{name}/events")
        assert r.status_code == 200 and r.json()["events"][0]["kind"] == "submitted", r.text
        r = site.get(ADMIN, f"clusters/{name}/logs", component="scheduler")
        assert r.status_code == 200 and "RELAY-MARKER" in r.json()["logs"]["scheduler"]

        # -- Bob's gateway credentials, sent along to Alice's server for Bob's own cluster, are
        # never forwarded: her server speaks to the gateway as her, and is refused.
        assert bob.get_cluster(bobs).name == bobs
        session = httpx.get(
            f"{site.gateway.address}/api/v1/clusters/", headers=basic(BOB), timeout=30
        ).cookies.get("dask-gateway-session")
        assert session
        as_bob = {"Cookie": f"dask-gateway-session={session}", **basic(BOB)}
        assert (
            httpx.get(
                f"{site.gateway.address}/api/v1/clusters/{bobs}/events", headers=as_bob, timeout=30
            ).status_code
            == 200
        )  # the credentials are good...
        for route in ("events", "logs"):
            # ...but not used by the relay.
            error_of(site.get(ALICE, f"clusters/{bobs}/{route}", headers=as_bob), 403)
        assert site.listed(ALICE, bobs) is None

        # -- bad requests: the gateway's 404/400 pass through with their message
        assert "nope" in error_of(site.get(ALICE, "clusters/nope/events"), 404)
        error_of(site.get(ALICE, "clusters/nope/logs", component="scheduler"), 404)
        message = error_of(
            site.get(ALICE, f"clusters/{name}/logs", component="worker:never-was"), 404
        )
        assert "scheduler" in message  # it names the known components
        error_of(site.get(ALICE, f"clusters/{name}/events", after="x"), 400)
        error_of(site.get(ALICE, f"clusters/{name}/events", wait="1000"), 400)
        error_of(site.get(ALICE, f"clusters/{name}/logs", component="scheduler", offset=-1), 400)
        error_of(site.get(ALICE, f"clusters/{name}/logs", tail="many"), 400)
        assert "follow" in error_of(site.get(ALICE, f"clusters/{name}/logs", follow=1), 400)
        # Jupyter's own auth guards the relays.
        server = site.servers[ALICE]
        r = httpx.get(f"{server.url}/dask-gateway/clusters/{name}/events", timeout=30)
        assert r.status_code == 403
        r = site.get(BOB, f"clusters/{name}/events", token=site.servers[ALICE].token)
        assert r.status_code == 403  # Alice's token does not open Bob's server
    finally:
        for gw in (alice, bob):
            for report in gw.list_clusters():
                gw.stop_cluster(report.name)
            gw.close()


def test_listing_keeps_failed_and_stopped_clusters(site):
    alice = site.client(ALICE)
    try:
        broken = alice.submit(environment="no-distributed")
        normal = alice.submit()
        failed = wait_for(
            lambda: (c := site.listed(ALICE, broken)) and c["reason"] and c,
            what="the failure reason",
        )
        assert failed["status"] == "FAILED"
        assert NO_DISTRIBUTED in failed["reason"]
        assert failed["phase"] is None
        assert isinstance(failed["stop_time"], int)
        # Its events and logs say the same, and are complete.
        r = site.get(ALICE, f"clusters/{broken}/events")
        assert r.status_code == 200, r.text
        assert r.json()["done"] is True
        assert r.json()["events"][-1]["kind"] == "failed"
        r = site.get(ALICE, f"clusters/{broken}/logs", component="scheduler")
        assert r.status_code == 200, r.text
        assert NO_DISTRIBUTED in r.json()["logs"]["scheduler"] and r.json()["done"] is True

        wait_for(
            lambda: (c := site.listed(ALICE, normal)) and c["status"] == "RUNNING", what="running"
        )
        running = site.listed(ALICE, normal)
        assert running["phase"] is None and running["reason"] is None
        assert running["stop_time"] is None
        alice.stop_cluster(normal)
        stopped = wait_for(
            lambda: (c := site.listed(ALICE, normal)) and c["status"] == "STOPPED" and c,
            what="stopped",
        )
        assert stopped["reason"] is None and isinstance(stopped["stop_time"], int)
        # Another user's server lists none of them.
        for name in (broken, normal):
            assert site.listed(BOB, name) is None
    finally:
        for report in alice.list_clusters():
            alice.stop_cluster(report.name)
        alice.close()


def test_listing_shows_a_starting_clusters_phase(site):
    """While its scheduler is held back, a pending cluster's phase is its latest event; once
    it runs, there is no phase."""
    alice = site.client(ALICE)
    try:
        name = alice.submit(environment="gated")
        pending = wait_for(
            lambda: (c := site.listed(ALICE, name)) and c["phase"] and c, what="a phase"
        )
        assert pending["status"] == "PENDING" and pending["reason"] is None
        r = site.get(ALICE, f"clusters/{name}/events")
        assert r.status_code == 200, r.text
        messages = [e["message"] for e in r.json()["events"]]
        assert pending["phase"] in messages, (pending["phase"], messages)
        site.gate.touch()
        running = wait_for(
            lambda: (c := site.listed(ALICE, name)) and c["status"] == "RUNNING" and c,
            what="running",
        )
        assert running["phase"] is None
    finally:
        site.gate.touch()
        for report in alice.list_clusters():
            alice.stop_cluster(report.name)
        alice.close()


# -- what reaches the gateway ---------------------------------------------------------------


class RecordingForwarder(http.server.ThreadingHTTPServer):
    """Stands between a Jupyter server and the gateway: forwards every request and records
    the headers and path the gateway would see."""

    daemon_threads = True

    def __init__(self, target: str):
        super().__init__(("127.0.0.1", 0), _Forward)
        self.target = target
        self.seen: list[tuple[str, dict[str, str]]] = []

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Forward(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: RecordingForwarder
    _HOP = ("host", "content-length", "connection", "transfer-encoding", "accept-encoding")

    def log_message(self, *args) -> None:
        pass

    def _forward(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        self.server.seen.append((self.path, dict(self.headers.items())))
        headers = {k: v for k, v in self.headers.items() if k.lower() not in self._HOP}
        r = httpx.request(
            self.command, self.server.target + self.path, headers=headers, content=body, timeout=120
        )
        self.send_response(r.status_code)
        for key, value in r.headers.multi_items():
            if key.lower() not in self._HOP + ("content-encoding",):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(r.content)))
        self.end_headers()
        self.wfile.write(r.content)

    do_GET = do_POST = do_DELETE = _forward


def test_relays_never_pass_the_browsers_credentials_on(site, tmp_path):
    """Every request Alice's server makes to the gateway, recorded on the way: it carries her
    gateway credentials (or the session they got her), never the Jupyter token nor the Cookie
    and Authorization the browser sent, here Bob's valid gateway credentials."""
    forwarder = RecordingForwarder(site.gateway.address)
    thread = threading.Thread(target=forwarder.serve_forever, daemon=True)
    thread.start()
    server = JupyterServerProcess(
        tmp_path / "alice", gateway_env(forwarder.address, ALICE), token="alice-recorded-token"
    )
    alice, bob = site.client(ALICE), site.client(BOB)
    try:
        server.start()
        name, bobs = alice.submit(), bob.submit()
        r = httpx.get(f"{site.gateway.address}/api/v1/clusters/", headers=basic(BOB), timeout=30)
        bob_session = r.cookies.get("dask-gateway-session")
        assert bob_session
        browser = {"Cookie": f"dask-gateway-session={bob_session}; _xsrf=x", **basic(BOB)}

        def relay(path: str, **params) -> httpx.Response:
            return httpx.get(
                f"{server.url}/dask-gateway/{path}",
                params={"token": server.token, **params},
                headers=browser,
                timeout=90,
            )

        # Alice's own cluster: served, as Alice.
        wait_for(lambda: relay(f"clusters/{name}/events").status_code == 200, what="events")
        r = relay(f"clusters/{name}/events", after=0, wait=0)
        assert r.status_code == 200 and r.json()["events"][0]["kind"] == "submitted", r.text
        r = relay(f"clusters/{name}/logs", tail=5)
        assert r.status_code == 200, r.text
        listing = relay("clusters")
        assert listing.status_code == 200 and bobs not in listing.text
        # Bob's: refused, his credentials notwithstanding.
        for route in ("events", "logs"):
            error_of(relay(f"clusters/{bobs}/{route}"), 403)

        assert forwarder.seen
        alice_basic = basic(ALICE)["Authorization"]
        for path, headers in forwarder.seen:
            assert server.token not in path, path
            lower = {k.lower(): v for k, v in headers.items()}
            assert lower.get("authorization") in (None, alice_basic), (path, headers)
            assert bob_session not in lower.get("cookie", ""), (path, headers)
            assert "_xsrf" not in lower.get("cookie", ""), (path, headers)
            for value in headers.values():
                assert server.token not in value and bob_session not in value, (path, headers)
        relayed = {path.split("?")[0] for path, _ in forwarder.seen}
        assert f"/api/v1/clusters/{name}/events" in relayed
        assert f"/api/v1/clusters/{bobs}/logs" in relayed
    finally:
        server.stop()
        forwarder.shutdown()
        forwarder.server_close()
        for gw in (alice, bob):
            for report in gw.list_clusters():
                gw.stop_cluster(report.name)
            gw.close()
    assert "Traceback" not in server.log(), server.log()


# -- the listing's load: only what it needs, from the last cursor ---------------------------


def _report(name: str, status: str, stopped_ago: float | None = None):
    from dask_gateway.client import ClusterReport, ClusterStatus

    now = datetime.now()
    return ClusterReport(
        name=name,
        options={},
        status=ClusterStatus.from_name(status),
        scheduler_address=None,
        dashboard_link=None,
        start_time=now - timedelta(hours=3),
        stop_time=None if stopped_ago is None else now - timedelta(seconds=stopped_ago),
    )


def test_listed_keeps_active_and_recently_ended_clusters():
    from dask_gateway_jupyter.handlers import ENDED_LISTED_MAX, listed

    reports = [
        _report("run", "RUNNING"),
        _report("old", "STOPPED", stopped_ago=2 * 3600),
        _report("new", "FAILED", stopped_ago=60),
        _report("stopping", "STOPPING"),
        *(_report(f"s{i:02}", "STOPPED", stopped_ago=100 + i) for i in range(ENDED_LISTED_MAX)),
    ]
    names = [r.name for r in listed(reports, time.time())]
    assert names[:3] == ["run", "stopping", "new"]
    assert "old" not in names
    assert len(names) == 2 + ENDED_LISTED_MAX  # the most recent ended ones only
    assert f"s{ENDED_LISTED_MAX - 1:02}" not in names


def test_notes_ask_only_pending_and_failed_clusters_from_their_cursor():
    from dask_gateway_jupyter.notes import ClusterNotes

    asked: list[tuple[str, dict]] = []
    answers: dict[str, list] = {
        "pending": [
            {
                "events": [
                    {"id": 1, "kind": "submitted", "message": "Submitted by alice"},
                    {"id": 2, "kind": "queued", "message": "Waiting in Slurm's queue: Resources"},
                ],
                "cursor": 2,
                "done": False,
            },
            {"events": [], "cursor": 2, "done": False},
        ],
        "failed": [
            {
                "events": [
                    {"id": 3, "kind": "failed", "message": "The scheduler exited."},
                    {"id": 4, "kind": "worker-left", "message": "Worker w left"},
                ],
                "cursor": 4,
                "done": True,
            }
        ],
    }

    class NotFound(Exception):
        status = 404

    async def get(path: str, query: dict, timeout: float):
        name = path.split("/")[4]
        asked.append((name, query))
        if name == "old-server":
            raise NotFound("Not Found")
        return answers[name].pop(0)

    async def main():
        notes = ClusterNotes(get, logging.getLogger("test"))
        pending, failed = _report("pending", "PENDING"), _report("failed", "FAILED", 5)
        old = _report("old-server", "PENDING")
        assert await notes.note(pending) == ("Waiting in Slurm's queue: Resources", None)
        assert await notes.note(failed) == (None, "The scheduler exited.")
        assert await notes.note(old) == (None, None)
        assert await notes.note(_report("running", "RUNNING")) == (None, None)
        assert await notes.note(_report("stopped", "STOPPED", 5)) == (None, None)
        # Again: the pending one from its cursor; the failed one is complete, the one on a
        # server without the route was answered 404: neither is asked again.
        assert await notes.note(pending) == ("Waiting in Slurm's queue: Resources", None)
        assert await notes.note(failed) == (None, "The scheduler exited.")
        assert await notes.note(old) == (None, None)
        notes.forget_except(["failed"])
        assert set(notes._notes) == {"failed"}

    asyncio.run(main())
    assert asked == [
        ("pending", {"after": "0"}),
        ("failed", {"after": "0"}),
        ("old-server", {"after": "0"}),
        ("pending", {"after": "2"}),
    ]
