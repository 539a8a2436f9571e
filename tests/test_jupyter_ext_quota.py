"""The Jupyter extension's quota relay (``GET dask-gateway/quota``, the sidebar's usage).

Two users and an admin each run their own Jupyter server, with their own gateway
credentials, against one real gateway with quotas: each sees their own use and quotas, and
only their own (a ``user`` query is not passed on, and the admin's server shows the admin's
use, not everyone's). The states come from real clusters: Alice's use passes the warning share
of her large quota (creating and scaling from her panel then carry the gateway's warning), Bob's
uses up his tiny one, and creating another cluster past it is the gateway's 429 with its
message. Against the public dask-gateway-server, the relay answers 501 (the sidebar then hides
its usage section).
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

ALICE, BOB, ADMIN = "dgjq-alice", "dgjq-bob", "dgjq-admin"
USERS = (ALICE, BOB, ADMIN)

# Alice: 1000 core-hours, her first seconds of use pass the (tiny) warning share and never
# the limit; Bob: a limit his first scheduler uses up at once; the admin: no quota.
CONFIG = """
load_subconfig(GATEWAY_CONFIG)
c.Authenticator.admin_users = {ADMIN}
c.LocalBackend.cluster_heartbeat_timeout = 60
c.UsageQuotas.period = "week"
c.UsageQuotas.warn_at = 1e-9
c.UsageQuotas.users = {ALICE: {"core_hours": 1000.0}, BOB: {"core_hours": 1e-9}}
"""

wait_for = functools.partial(waiting.wait_for, timeout=90, interval=0.3)


class Site(jupyter_site.Site):
    def quota(self, whose: str, **params) -> dict:
        r = self.get(whose, "quota", **params)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("application/json"), r.text
        assert r.headers["cache-control"] == "no-store"
        return r.json()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("quota-relay")
    config = (
        f"GATEWAY_CONFIG = {str(CONFIGS / 'gateway_config.py')!r}\n"
        f"ADMIN, ALICE, BOB = {ADMIN!r}, {ALICE!r}, {BOB!r}\n{CONFIG}"
    )
    with running_site(root, USERS, config) as running:
        yield Site(running.gateway, running.servers)


def core_quota(answer: dict) -> dict:
    (quota,) = [q for q in answer["quotas"] if q["kind"] == "core_hours"]
    return quota


def test_each_user_sees_their_own_use_and_quota(site):
    # -- before any cluster: no use, each one's own quotas
    alice0 = site.quota(ALICE)
    assert alice0["user"] == ALICE and alice0["period"] == "week"
    assert alice0["period_start"] < alice0["period_end"]
    assert alice0["use"]["core_hours"] == 0
    assert alice0["state"] == "ok" and alice0["message"] is None
    quota = core_quota(alice0)
    assert (quota["scope"], quota["limit"], quota["used"]) == ("user", 1000.0, 0)
    admin0 = site.quota(ADMIN)
    assert admin0["user"] == ADMIN
    assert admin0["quotas"] == [] and admin0["state"] == "ok"

    alice, bob = site.client(ALICE), site.client(BOB)
    try:
        alices = alice.submit()
        bob.submit()

        # -- Alice's use passes the warning share: the answer says so, in her words
        warned = wait_for(
            lambda: (a := site.quota(ALICE))["state"] == "warning" and a, what="warning"
        )
        assert warned["user"] == ALICE
        assert warned["use"]["core_hours"] > 0
        quota = core_quota(warned)
        assert quota["limit"] == 1000.0 and quota["used"] > 0 and quota["share"] < 1
        assert warned["message"] and "core-hours" in warned["message"]
        # Creating and scaling from her panel now: done, with the gateway's warning to show
        # (captured by the relay rather than logged on the Jupyter server).
        r = site.post(ALICE, "clusters", {"cluster_options": {}})
        assert r.status_code == 201, r.text
        assert "core-hours" in r.json()["msg"]
        r = site.post(ALICE, f"clusters/{alices}/scale", {"count": 1})
        assert r.status_code == 200, r.text
        assert "core-hours" in r.json()["msg"]

        # -- Bob's is used up: his own answer, and another cluster is refused with the reason
        exhausted = wait_for(
            lambda: (b := site.quota(BOB))["state"] == "exhausted" and b, what="exhausted"
        )
        assert exhausted["user"] == BOB
        assert core_quota(exhausted)["share"] >= 1
        assert exhausted["message"] and "core-hours" in exhausted["message"]
        assert "core-hours" in error_of(site.post(BOB, "clusters", {"cluster_options": {}}), 429)

        # -- only one's own: a user query is not passed on, and the admin sees the admin's
        # (no use, no quota), not the users'
        as_bob = site.quota(ALICE, user=BOB)
        assert as_bob["user"] == ALICE and as_bob["state"] == "warning"
        admin = site.quota(ADMIN)
        assert admin["user"] == ADMIN and admin["use"]["core_hours"] == 0
        assert admin["quotas"] == [] and admin["state"] == "ok"
        admin_as_alice = site.quota(ADMIN, user=ALICE)
        assert admin_as_alice["user"] == ADMIN

        # -- Jupyter's own auth guards the relay
        r = httpx.get(f"{site.servers[ALICE].url}/dask-gateway/quota", timeout=30)
        assert r.status_code == 403
        r = site.get(BOB, "quota", token=site.servers[ALICE].token)
        assert r.status_code == 403  # Alice's token does not open Bob's server
    finally:
        for gw in (alice, bob):
            for report in gw.list_clusters():
                gw.stop_cluster(report.name)
            gw.close()


def test_public_gateway_answers_501(tmp_path: Path):
    """The public dask-gateway-server counts no use: the relay says so with a 501 (the
    sidebar hides its usage section), not a 500 nor a traceback."""
    password = "jupyter-quota-public"
    with upstream_server(tmp_path / "upstream", password, UPSTREAM_CONFIG) as address:
        env = {**gateway_env(address, "alice"), "DASK_GATEWAY__AUTH__KWARGS__PASSWORD": password}
        server = JupyterServerProcess(tmp_path / "jupyter", env, token="public-quota-token")
        server.start()
        try:
            r = httpx.get(
                f"{server.url}/dask-gateway/quota", params={"token": server.token}, timeout=60
            )
            message = error_of(r, 501)
            assert "quota" in message.lower(), message
            # The rest of the extension works against it as before.
            r = httpx.get(
                f"{server.url}/dask-gateway/clusters", params={"token": server.token}, timeout=60
            )
            assert r.status_code == 200 and r.json()["clusters"] == [], r.text
        finally:
            server.stop()
        assert "Traceback" not in server.log(), server.log()
