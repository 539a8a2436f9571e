"""What the JupyterLab dashboard panes use of the server extension, with two users and an admin.

The panes add no route: they read ``dask-gateway/dashboard/<name>/individual-plots.json``
through the dashboard relay, load each plot (``.../<name>/individual-task-stream``) as a
frame, which the relay redirects under a grant and serves sandboxed, and follow the cluster
with ``clusters/<name>`` and ``clusters/<name>/events``. Each user runs their own Jupyter
server holding their own gateway credentials; the test checks that the relay's sandbox and
grants hold for the plot pages, and that one user's server never opens another's plots.
"""

from __future__ import annotations

import functools
import json

import httpx
import pytest
from support import waiting
from support.jupyter_server import JupyterServerProcess, gateway_env
from support.jupyter_site import running_site
from support.upstream_server import UPSTREAM_CONFIG, upstream_server

ALICE, BOB, ADMIN = "dgp-alice", "dgp-bob", "dgp-admin"
PLOT = "individual-task-stream"
#: What a browser sends when it loads a frame (an iframe's src).
FRAME_LOAD = {"Sec-Fetch-Dest": "iframe", "Accept": "text/html"}

wait_for = functools.partial(waiting.wait_for, timeout=120, interval=0.5)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A gateway with an admin, and one Jupyter server per user."""
    config = (
        f"c.Authenticator.admin_users = {{{ADMIN!r}}}\n"
        "c.LocalBackend.cluster_heartbeat_timeout = 60\n"
    )
    with running_site(tmp_path_factory.mktemp("panes"), (ALICE, BOB, ADMIN), config) as site:
        yield site.gateway, site.servers


def relay(server: JupyterServerProcess, name: str, path: str, **kwargs) -> httpx.Response:
    """GET a path of the relay with the server's token (as JupyterLab's fetches do)."""
    headers = {"Authorization": f"token {server.token}", **kwargs.pop("headers", {})}
    return httpx.get(
        f"{server.url}/dask-gateway/dashboard/{name}/{path}",
        headers=headers,
        timeout=60,
        follow_redirects=False,
        **kwargs,
    )


def start_cluster(server: JupyterServerProcess) -> str:
    with server.client() as api:
        r = api.post("clusters", content=json.dumps({"cluster_options": {}}))
        assert r.status_code == 201, r.text
        name = r.json()["name"]
        wait_for(lambda: api.get(f"clusters/{name}").json()["status"] == "RUNNING")
    return name


def test_plot_panes_two_users_and_an_admin(setup):
    gw, servers = setup
    alice, bob, admin = servers[ALICE], servers[BOB], servers[ADMIN]
    mine = start_cluster(alice)
    bobs = start_cluster(bob)

    # -- the plot list, relayed as JSON with alice's credentials added by her server
    r = relay(alice, mine, "individual-plots.json")
    assert r.status_code == 200, r.text
    plots = r.json()
    assert isinstance(plots, dict) and f"/{PLOT}" in plots.values(), plots
    assert "dask-gateway" not in r.headers.get("set-cookie", "")  # the gateway's stays there

    # -- a plot page: a frame load is redirected under a grant for that one cluster...
    r = relay(alice, mine, PLOT, headers=FRAME_LOAD)
    assert r.status_code == 302, r.text
    location = r.headers["location"]
    prefix = f"/dask-gateway/dashboard/{mine}/~"
    assert location.startswith(prefix) and location.endswith(f"/{PLOT}"), location
    grant = location[len(prefix) :].split("/", 1)[0]
    # ...served sandboxed (opaque origin: its scripts cannot act on Jupyter as alice),
    # with the grant as the only credential (no token, no cookie).
    page = httpx.get(alice.url + location, timeout=60)
    assert page.status_code == 200, page.text
    assert "bokeh" in page.text.lower()
    csp = page.headers["content-security-policy"]
    assert "sandbox" in csp and "allow-scripts" in csp and "allow-same-origin" not in csp
    assert page.headers["referrer-policy"] == "no-referrer"
    # The page's own requests (its scripts) under the grant work; the grant opens no other
    # cluster, and no other Jupyter server knows it.
    assert httpx.get(f"{alice.url}{prefix}{grant}/individual-plots.json").status_code == 200
    other = f"/dask-gateway/dashboard/{bobs}/~{grant}/{PLOT}"
    assert httpx.get(alice.url + other, timeout=60).status_code == 403
    assert httpx.get(bob.url + location, timeout=60).status_code == 403
    assert httpx.get(admin.url + location, timeout=60).status_code == 403
    # Without Jupyter's auth nothing is relayed.
    r = httpx.get(f"{alice.url}/dask-gateway/dashboard/{mine}/individual-plots.json")
    assert r.status_code in (302, 403)

    # -- bob's server speaks to the gateway as bob: alice's plots are not his
    r = relay(bob, mine, "individual-plots.json")
    assert r.status_code in (403, 404), r.text
    assert "bokeh" not in r.text.lower() and "individual" not in r.text
    r = relay(bob, mine, PLOT, headers=FRAME_LOAD)
    assert r.status_code == 302  # a grant of bob's server, for bob...
    page = httpx.get(bob.url + r.headers["location"], timeout=60)
    assert page.status_code in (403, 404)  # ...which the gateway refuses
    with bob.client() as api:
        assert api.get(f"clusters/{mine}").status_code == 403  # a pane of it says so
        assert api.get(f"clusters/{mine}/events").status_code in (403, 404)
    # His own plots work.
    assert relay(bob, bobs, "individual-plots.json").status_code == 200

    # -- the admin may view alice's plots (the gateway lets admins see every dashboard)
    r = relay(admin, mine, "individual-plots.json")
    assert r.status_code == 200 and f"/{PLOT}" in r.json().values()

    # -- alice stops her cluster: the state a pane follows says so, and the relay is a
    # plain 404 (the pane shows its own message instead)
    with alice.client() as api:
        events = api.get(f"clusters/{mine}/events").json()
        assert api.delete(f"clusters/{mine}").status_code == 204
        wait_for(lambda: api.get(f"clusters/{mine}").json()["status"] == "STOPPED")
        after = api.get(f"clusters/{mine}/events", params={"after": events["cursor"]}).json()
        assert after["done"] is True and after["events"]
    r = relay(alice, mine, "individual-plots.json")
    assert r.status_code == 404 and "Traceback" not in r.text
    assert httpx.get(alice.url + location, timeout=60).status_code == 404


def test_plot_panes_on_the_public_gateway(tmp_path):
    """The public dask-gateway-server: the plots come through the relay the same way, and
    its missing events route is a plain 404 (the pane then polls the cluster's state)."""
    password = "jupyter-panes-public"
    with upstream_server(tmp_path / "upstream", password, UPSTREAM_CONFIG) as address:
        env = {**gateway_env(address, "alice"), "DASK_GATEWAY__AUTH__KWARGS__PASSWORD": password}
        server = JupyterServerProcess(tmp_path / "jupyter", env, token="public-panes-token")
        server.start()
        try:
            name = start_cluster(server)
            r = relay(server, name, "individual-plots.json")
            assert r.status_code == 200 and f"/{PLOT}" in r.json().values(), r.text
            r = relay(server, name, PLOT, headers=FRAME_LOAD)
            assert r.status_code == 302, r.text
            page = httpx.get(server.url + r.headers["location"], timeout=60)
            assert page.status_code == 200 and "bokeh" in page.text.lower()
            assert "allow-same-origin" not in page.headers["content-security-policy"]
            with server.client() as api:
                r = api.get(f"clusters/{name}/events")
                assert r.status_code == 404 and r.json()["error"], r.text  # the watch polls
                assert api.delete(f"clusters/{name}").status_code == 204
                wait_for(
                    lambda: (
                        (r := api.get(f"clusters/{name}")).status_code == 404
                        or r.json()["status"] == "STOPPED"
                    )
                )
        finally:
            server.stop()
        assert "Traceback" not in server.log(), server.log()
