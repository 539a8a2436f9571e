"""The Jupyter extension's event stream (``GET dask-gateway/stream``, Server-Sent Events).

Two users and an admin each run their own Jupyter server against one real gateway. Each
user's stream carries their own clusters' events only (the admin's ``?all=1`` everyone's, a
user's ``?all=1`` is refused); the tabs of one server share one upstream long-poll (the
``poller`` of the stream's ``ready`` names it: the same for every tab, a new one once every
tab left, so the old one stopped); a tab that leaves is let go cleanly; against the public
dask-gateway-server the stream answers 501 and the sidebar polls.
"""

from __future__ import annotations

import contextlib
import functools
import json
import queue
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support import jupyter_site, waiting
from support.jupyter_server import JupyterServerProcess, gateway_env
from support.jupyter_site import running_site
from support.paths import CONFIGS
from support.upstream_server import UPSTREAM_CONFIG, upstream_server

ALICE, BOB, ADMIN = "dgjs-alice", "dgjs-bob", "dgjs-admin"
USERS = (ALICE, BOB, ADMIN)

CONFIG = """
load_subconfig(GATEWAY_CONFIG)
c.Authenticator.admin_users = {ADMIN}
c.LocalBackend.cluster_heartbeat_timeout = 60
"""

#: How long a test waits for one event before it fails (a busy machine is slow, never this).
EVENT_TIMEOUT = 90

wait_for = functools.partial(waiting.wait_for, timeout=90, interval=0.3)


class Stream:
    """One open ``dask-gateway/stream``, as a browser tab holds it: a thread reads its
    Server-Sent Events into a queue."""

    def __init__(self, url: str, params: dict[str, str]):
        self.messages: queue.Queue[tuple[str, dict]] = queue.Queue()
        self._client = httpx.Client(timeout=httpx.Timeout(30, read=None))
        self._response = self._client.send(
            self._client.build_request("GET", url, params=params), stream=True
        )
        self.status = self._response.status_code
        self.headers = self._response.headers
        self.ended = threading.Event()
        if self.status == 200:
            threading.Thread(target=self._read, daemon=True).start()
        else:
            self.body = self._response.read().decode()
            self.close()

    def _read(self) -> None:
        event, data = "message", []
        try:
            for line in self._response.iter_lines():
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].strip())
                elif not line:
                    if data:
                        self.messages.put((event, json.loads("\n".join(data))))
                    event, data = "message", []
        except (httpx.HTTPError, OSError, ValueError):
            pass  # closed by the test
        finally:
            self.ended.set()

    def next(self, event: str | None = None) -> tuple[str, dict]:
        """The next message (of kind ``event``, skipping others)."""
        while True:
            got = self.messages.get(timeout=EVENT_TIMEOUT)
            if event is None or got[0] == event:
                return got

    def ready(self) -> dict:
        kind, data = self.next()
        assert kind == "ready", (kind, data)
        return data

    def events_until(self, cluster: str, kind: str) -> list[dict]:
        """Cluster events up to ``cluster``'s first of ``kind``."""
        seen = []
        while True:
            _, data = self.next("cluster")
            seen.append(data)
            if data["cluster"] == cluster and data["kind"] == kind:
                return seen

    def close(self) -> None:
        self._response.close()
        self._client.close()


class Site(jupyter_site.Site):
    @contextlib.contextmanager
    def stream(self, user: str, **params: str) -> Iterator[Stream]:
        server = self.servers[user]
        s = Stream(f"{server.url}/dask-gateway/stream", {"token": server.token, **params})
        try:
            yield s
        finally:
            s.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    config = f"GATEWAY_CONFIG = {str(CONFIGS / 'gateway_config.py')!r}\nADMIN = {ADMIN!r}\n{CONFIG}"
    with running_site(root, USERS, config) as running:
        yield Site(running.gateway, running.servers)
    for server in running.servers.values():
        log = server.log()
        assert "[E " not in log, log  # no error logged (a tab leaving is no error)


def test_each_user_streams_their_own_events_and_admins_everyones(site):
    alice, bob = site.client(ALICE), site.client(BOB)
    try:
        with (
            site.stream(ALICE) as a,
            site.stream(BOB) as b,
            site.stream(ADMIN, all="1") as everyone,
        ):
            for s in (a, b, everyone):
                assert s.status == 200
                assert s.headers["content-type"].startswith("text/event-stream")
                assert s.headers["cache-control"] == "no-store"
            assert a.ready()["all"] is False
            b.ready()
            assert everyone.ready()["all"] is True

            alices = alice.submit()
            bobs = bob.submit()
            # Each follows their own cluster up to running: every event on the way is theirs,
            # while the other's cluster starts at the same time.
            seen_a = a.events_until(alices, "running")
            seen_b = b.events_until(bobs, "running")
            assert {e["cluster"] for e in seen_a} == {alices}, seen_a
            assert {e["cluster"] for e in seen_b} == {bobs}, seen_b
            assert [e["kind"] for e in seen_a][0] == "submitted"
            for e in seen_a:
                assert set(e) == {"cluster", "kind", "worker", "time"}
                assert isinstance(e["time"], int)

            # A scale is an event at once (before any heartbeat).
            alice.scale_cluster(alices, 2)
            (scaled,) = [e for e in a.events_until(alices, "scaled") if e["kind"] == "scaled"]
            assert scaled["cluster"] == alices

            # The admin's all-users stream saw both clusters.
            names: set[str] = set()
            while names != {alices, bobs}:
                _, data = everyone.next("cluster")
                names.add(data["cluster"])

        # A user's ?all=1 is the gateway's 403, as JSON; the admin's own stream is theirs.
        with site.stream(ALICE, all="1") as refused:
            assert refused.status == 403
            assert "admin" in json.loads(refused.body)["error"]
        # Jupyter's own auth guards the route.
        server = site.servers[ALICE]
        r = httpx.get(f"{server.url}/dask-gateway/stream", timeout=30)
        assert r.status_code == 403
        r = httpx.get(
            f"{site.servers[BOB].url}/dask-gateway/stream",
            params={"token": server.token},
            timeout=30,
        )
        assert r.status_code == 403  # Alice's token does not open Bob's server
    finally:
        for gw in (alice, bob):
            for report in gw.list_clusters():
                gw.stop_cluster(report.name)
            gw.close()


def test_tabs_share_one_upstream_poll_and_it_stops_with_the_last(site):
    alice = site.client(ALICE)
    try:
        with site.stream(ALICE) as one, site.stream(ALICE) as two, site.stream(ALICE) as three:
            pollers = {s.ready()["poller"] for s in (one, two, three)}
            assert len(pollers) == 1, pollers  # one upstream long-poll for the three tabs
            (poller,) = pollers
            name = alice.submit()
            for s in (one, two, three):  # each tab gets the event of the one poll
                s.events_until(name, "submitted")
            alice.stop_cluster(name)
            for s in (one, two, three):
                s.events_until(name, "stopped")
        for s in (one, two, three):
            assert s.ended.wait(30)

        # Every tab left: the poller stops (the server learns that a tab left when its next
        # keep-alive write fails), and the next tab starts a new one.
        server = site.servers[ALICE]
        stopped = f"Dask Gateway event stream: poller {poller} stopped"
        wait_for(lambda: stopped in server.log(), what=stopped)
        with site.stream(ALICE) as again:
            assert again.ready()["poller"] > poller
    finally:
        for report in alice.list_clusters():
            alice.stop_cluster(report.name)
        alice.close()


def test_public_gateway_answers_501(tmp_path: Path):
    """The public dask-gateway-server keeps no events: the stream says so with a 501 before
    it starts (the sidebar then polls), not a 500 nor a traceback."""
    password = "jupyter-stream-public"
    with upstream_server(tmp_path / "upstream", password, UPSTREAM_CONFIG) as address:
        env = {**gateway_env(address, "alice"), "DASK_GATEWAY__AUTH__KWARGS__PASSWORD": password}
        server = JupyterServerProcess(tmp_path / "jupyter", env, token="public-stream-token")
        server.start()
        try:
            r = httpx.get(
                f"{server.url}/dask-gateway/stream", params={"token": server.token}, timeout=60
            )
            assert r.status_code == 501, r.text
            assert r.headers["content-type"].startswith("application/json")
            assert "events" in r.json()["error"]
            # Asked again (a reload): the same answer, and the listing works as before.
            r = httpx.get(
                f"{server.url}/dask-gateway/stream", params={"token": server.token}, timeout=60
            )
            assert r.status_code == 501, r.text
            r = httpx.get(
                f"{server.url}/dask-gateway/clusters", params={"token": server.token}, timeout=60
            )
            assert r.status_code == 200 and r.json()["clusters"] == [], r.text
        finally:
            server.stop()
        assert "Traceback" not in server.log(), server.log()
