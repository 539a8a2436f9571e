"""The admin's all-users view of the Jupyter extension (``GET dask-gateway/clusters?all=1``,
``GET dask-gateway/admin``).

Two users and an admin each run their own Jupyter server, with their own gateway credentials,
against one real gateway: the admin's server lists every user's clusters with each owner; the
users' servers get a 403 with the gateway's message and are told they are no admin. The admin
scales and stops another user's cluster from their server; a user trying the same on another's
cluster gets the gateway's refusal, word for word. Against the public dask-gateway-server
(no overview route) nobody is an admin and the listing is a 403, never a 500.
"""

from __future__ import annotations

import functools
from pathlib import Path

import httpx
import pytest
from support import jupyter_site, waiting
from support.jupyter_server import JupyterServerProcess, gateway_env
from support.jupyter_site import error_of, running_site
from support.paths import CONFIGS
from support.upstream_server import UPSTREAM_CONFIG, upstream_server

ALICE, BOB, ADMIN = "dgja-alice", "dgja-bob", "dgja-admin"
USERS = (ALICE, BOB, ADMIN)

CONFIG = """
load_subconfig(GATEWAY_CONFIG)
c.Authenticator.admin_users = {ADMIN}
c.LocalBackend.cluster_heartbeat_timeout = 60
"""

wait_for = functools.partial(waiting.wait_for, timeout=120, interval=0.3)


class Site(jupyter_site.Site):
    def listing(self, whose: str, **params) -> list[dict]:
        r = self.request(whose, "GET", "clusters", params=params)
        assert r.status_code == 200, r.text
        return r.json()["clusters"]

    def row(self, whose: str, name: str, **params) -> dict | None:
        return next((c for c in self.listing(whose, **params) if c["name"] == name), None)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("admin-view")
    config = (
        f"GATEWAY_CONFIG = {str(CONFIGS / 'gateway_config.py')!r}\n"
        f"ADMIN, ALICE, BOB = {ADMIN!r}, {ALICE!r}, {BOB!r}\n{CONFIG}"
    )
    with running_site(root, USERS, config) as running:
        yield Site(running.gateway, running.servers)


def test_admin_lists_and_acts_on_every_users_clusters(site):
    # -- who is an admin: the gateway says so, each server asks for its own user
    for user, admin in ((ALICE, False), (BOB, False), (ADMIN, True)):
        r = site.request(user, "GET", "admin")
        assert r.status_code == 200, r.text
        assert r.json() == {"admin": admin}
        assert r.headers["cache-control"] == "no-store"

    # -- a cluster each for Alice (from her panel) and Bob (from Python)
    r = site.request(ALICE, "POST", "clusters", json={"cluster_options": {}})
    assert r.status_code == 201, r.text
    alices = r.json()["name"]
    bob = site.client(BOB)
    try:
        bobs = bob.submit()
        wait_for(lambda: (c := site.row(ALICE, alices)) and c["status"] == "RUNNING", what="up")
        wait_for(lambda: (c := site.row(BOB, bobs)) and c["status"] == "RUNNING", what="up")

        # -- the admin's all-users listing: both, each with its owner
        everyone = {c["name"]: c for c in site.listing(ADMIN, all="1")}
        assert everyone[alices]["user"] == ALICE
        assert everyone[bobs]["user"] == BOB
        for c in everyone.values():
            assert set(c) >= {"name", "status", "workers", "requested", "cores", "memory"}
        # The admin's own listing stays their own (none), and the users' stay theirs.
        assert site.listing(ADMIN) == []
        assert [c["name"] for c in site.listing(ALICE)] == [alices]
        assert "user" not in site.listing(ALICE)[0]

        # -- the users: the gateway's 403, in its words; no one else's cluster leaks
        for user in (ALICE, BOB):
            r = site.request(user, "GET", "clusters", params={"all": "1"})
            message = error_of(r, 403)
            assert "not an admin" in message, message
            assert alices not in r.text and bobs not in r.text

        # -- the admin scales Alice's cluster: Alice's own panel and the admin's view show it
        r = site.request(ADMIN, "POST", f"clusters/{alices}/scale", json={"count": 1})
        assert r.status_code == 200, r.text
        assert r.json() == {"ok": True, "msg": None}
        wait_for(lambda: site.row(ALICE, alices)["requested"] == 1, what="alice's requested")
        wait_for(lambda: site.row(ADMIN, alices, all="1")["workers"] == 1, what="a worker running")

        # -- Bob tries the same on Alice's cluster: refused with the gateway's message
        r = site.request(BOB, "POST", f"clusters/{alices}/scale", json={"count": 3})
        message = error_of(r, 403)
        assert message == f"User {BOB} lacks permissions to scale cluster {alices}", message
        r = site.request(BOB, "DELETE", f"clusters/{alices}")
        message = error_of(r, 403)
        assert message == f"User {BOB} lacks permissions to stop cluster {alices}", message
        assert site.row(ALICE, alices)["status"] == "RUNNING"
        assert site.row(ALICE, alices)["requested"] == 1

        # -- the admin stops Bob's cluster; Bob's panel sees it end, the admin's too (owner kept)
        r = site.request(ADMIN, "DELETE", f"clusters/{bobs}")
        assert r.status_code == 204, r.text
        wait_for(lambda: site.row(BOB, bobs)["status"] == "STOPPED", what="bob's stopped")
        ended = site.row(ADMIN, bobs, all="1")
        assert ended["status"] == "STOPPED" and ended["user"] == BOB
        assert ended["workers"] is None and ended["requested"] is None
        with site.client(BOB) as again:
            events = again.events(bobs)
        assert any(f"admin {ADMIN}" in e.message for e in events), events
    finally:
        for user in (ALICE, BOB):
            with site.client(user) as gw:
                for report in gw.list_clusters():
                    gw.stop_cluster(report.name)
        bob.close()


def test_jupyter_auth_guards_the_admin_routes(site):
    """Jupyter's own auth comes first: no token, or another server's token, is refused."""
    admin = site.servers[ADMIN]
    r = httpx.get(f"{admin.url}/dask-gateway/clusters", params={"all": "1"}, timeout=30)
    assert r.status_code == 403
    r = httpx.get(
        f"{admin.url}/dask-gateway/admin",
        headers={"Authorization": f"token {site.servers[ALICE].token}"},
        timeout=30,
    )
    assert r.status_code == 403


def test_public_gateway_has_no_admins(tmp_path: Path):
    """The public dask-gateway-server has no overview: nobody is an admin here, and the
    all-users listing is a 403 with a clear message (never the user's own list passed off
    as everyone's, which a gateway ignoring ``?all=1`` would give)."""
    password = "jupyter-admin-public"
    with upstream_server(tmp_path / "upstream", password, UPSTREAM_CONFIG) as address:
        env = {**gateway_env(address, "alice"), "DASK_GATEWAY__AUTH__KWARGS__PASSWORD": password}
        server = JupyterServerProcess(tmp_path / "jupyter", env, token="public-admin-token")
        server.start()
        try:
            auth = {"Authorization": f"token {server.token}"}
            r = httpx.get(f"{server.url}/dask-gateway/admin", headers=auth, timeout=60)
            assert r.status_code == 200 and r.json() == {"admin": False}, r.text
            r = httpx.get(
                f"{server.url}/dask-gateway/clusters", params={"all": "1"}, headers=auth, timeout=60
            )
            message = error_of(r, 403)
            assert "overview" in message, message
            r = httpx.get(f"{server.url}/dask-gateway/clusters", headers=auth, timeout=60)
            assert r.status_code == 200 and r.json()["clusters"] == [], r.text
        finally:
            server.stop()
        assert "Traceback" not in server.log(), server.log()
