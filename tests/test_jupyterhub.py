"""JupyterHub token auth against a real JupyterHub: users apart, admins, dashboards, limits."""

from __future__ import annotations

import http.cookiejar
import os
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest
from support.gateway_process import GatewayProcess
from support.http_helpers import call, create
from support.hub import Hub
from support.paths import CONFIGS


@pytest.fixture(scope="module")
def hub_env(tmp_path_factory):
    """A real JupyterHub and a gateway that is its "dask-gateway" service."""
    tmp = tmp_path_factory.mktemp("hub")
    gw = GatewayProcess(tmp / "gateway", config=CONFIGS / "hub_gateway_config.py")
    hub = Hub(tmp / "hub", gw.address)
    hub.start()
    os.environ["TEST_HUB_API_URL"] = hub.api_url
    os.environ["TEST_HUB_GATEWAY_TOKEN"] = hub.gateway_token
    try:
        gw.start()
        for user in ["alice", "bob", "carol", "erin", "frank", "dave"]:
            hub.add_user(user)
        hub.add_user("hubadmin", admin=True)
        hub.add_group("gateway-admins", ["dave"])
        hub.add_group("small-mem", ["frank"])
        yield hub, gw
    finally:
        gw.stop()
        hub.stop()
        os.environ.pop("TEST_HUB_API_URL", None)
        os.environ.pop("TEST_HUB_GATEWAY_TOKEN", None)


def as_user(token: str) -> dict:
    return {"Authorization": f"jupyterhub {token}"}


def api(gw, path):
    return f"{gw.address}/api{path}"


def wait_running(gw, name, headers):
    for _ in range(600):
        model = call("GET", api(gw, f"/v1/clusters/{name}?wait"), headers=headers).json()
        if model["status"] == "RUNNING":
            return model
        time.sleep(0.05)
    raise AssertionError(f"{name} never ran: {model}\n{gw.log()}")


def test_user_token(hub_env):
    hub, gw = hub_env
    token, _ = hub.token("alice")
    r = call("GET", api(gw, "/v1/clusters/"))
    assert r.status == 401 and r.headers["WWW-Authenticate"] == "jupyterhub"
    r = call("GET", api(gw, "/v1/clusters/"), headers=as_user(token))
    assert r.status == 200 and r.json() == {}


def test_invalid_token_is_401_not_500(hub_env):
    _, gw = hub_env
    r = call("GET", api(gw, "/v1/clusters/"), headers=as_user("not-a-real-token"))
    assert r.status == 401
    assert r.json() == {"error": "Invalid, expired or revoked JupyterHub token"}


def test_token_without_access_scope(hub_env):
    hub, gw = hub_env
    token, _ = hub.token("alice", scopes=["read:users:name!user=alice"])
    r = call("GET", api(gw, "/v1/clusters/"), headers=as_user(token))
    assert r.status == 401
    assert r.json() == {"error": "This token does not grant access to the 'dask-gateway' service"}


def test_service_token(hub_env):
    hub, gw = hub_env
    r = call("GET", api(gw, "/v1/clusters/"), headers=as_user(hub.other_token))
    assert r.status == 200
    # Services are users named "service:<name>", apart from every real user.
    name = create(gw, as_user(hub.other_token))
    alice, _ = hub.token("alice")
    assert name not in call("GET", api(gw, "/v1/clusters/"), headers=as_user(alice)).json()
    assert (
        call("DELETE", api(gw, f"/v1/clusters/{name}"), headers=as_user(hub.other_token)).status
        == 204
    )


def test_revoked_token_stops_working_within_the_ttl(hub_env, tmp_path):
    hub, _ = hub_env
    gw = GatewayProcess(
        tmp_path / "gateway",
        extra_args=["--JupyterHubAuthenticator.token_cache_ttl=1"],
        config=CONFIGS / "hub_gateway_config.py",
    )
    gw.start()
    try:
        token, token_id = hub.token("bob")
        assert call("GET", api(gw, "/v1/clusters/"), headers=as_user(token)).status == 200
        hub.revoke("bob", token_id)
        time.sleep(1.5)  # past this gateway's 1 s token_cache_ttl: the cached answer expired
        r = call("GET", api(gw, "/v1/clusters/"), headers=as_user(token))
        assert r.status == 401
    finally:
        gw.stop()


def test_users_apart_admins_and_dashboards(hub_env):
    hub, gw = hub_env
    alice, _ = hub.token("alice")
    bob, _ = hub.token("bob")
    admin, _ = hub.token("hubadmin")
    dave, _ = hub.token("dave")  # admin through the gateway-admins group
    name = create(gw, as_user(alice))
    model = wait_running(gw, name, as_user(alice))

    for method, path, body, verb in [
        ("GET", f"/v1/clusters/{name}", None, "view"),
        ("POST", f"/v1/clusters/{name}/scale", {"count": 1}, "scale"),
        ("POST", f"/v1/clusters/{name}/adapt", {}, "adapt"),
        ("DELETE", f"/v1/clusters/{name}", None, "stop"),
    ]:
        r = call(method, api(gw, path), body, as_user(bob))
        assert r.status == 403, (path, r.body)
        assert r.json() == {"error": f"User bob lacks permissions to {verb} cluster {name}"}
        assert model["tls_key"] not in r.body.decode()
    assert call("GET", api(gw, "/v1/clusters/"), headers=as_user(bob)).json() == {}
    r = call("GET", api(gw, "/v1/clusters/?all=1"), headers=as_user(bob))
    assert r.status == 403

    # Dashboards: the owner and admins only.
    link = f"{gw.address}/clusters/{name}/status"
    r = call("GET", link)
    assert r.status == 401 and r.headers["WWW-Authenticate"] == "jupyterhub"
    assert call("GET", link, headers=as_user(bob)).status == 403
    r = call("GET", link, headers=as_user(alice))
    assert r.status == 200 and b"Dask" in r.body
    cookie = r.headers["Set-Cookie"].split(";")[0]
    assert call("GET", link, headers={"Cookie": cookie}).status == 200
    assert call("GET", link, headers=as_user(admin)).status == 200

    # Admins see everyone's clusters (with their owners) and can stop them.
    for token in (admin, dave):
        listing = call("GET", api(gw, "/v1/clusters/?all=1"), headers=as_user(token)).json()
        assert listing[name]["username"] == "alice"
        # ... while their own default listing stays their own.
        assert name not in call("GET", api(gw, "/v1/clusters/"), headers=as_user(token)).json()
    assert call("DELETE", api(gw, f"/v1/clusters/{name}"), headers=as_user(dave)).status == 204
    for _ in range(300):
        status = call("GET", api(gw, f"/v1/clusters/{name}"), headers=as_user(alice)).json()
        if status["status"] == "STOPPED":
            break
        time.sleep(0.05)
    assert status["status"] == "STOPPED"


def test_browser_logged_in_to_the_hub_sees_the_dashboard(hub_env):
    """A browser session of the hub is enough: the gateway logs it in through the hub's OAuth."""
    hub, gw = hub_env
    alice, _ = hub.token("alice")
    name = create(gw, as_user(alice))
    wait_running(gw, name, as_user(alice))
    jar = http.cookiejar.CookieJar()
    browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    browser.addheaders = [("Accept", "text/html")]
    link = f"{gw.address}/clusters/{name}/status"

    # Not logged in anywhere: the gateway sends the browser to the hub's login page.
    with browser.open(link, timeout=30) as r:
        assert r.url.startswith(f"http://127.0.0.1:{hub.port}/hub/login")
    # Log in to the hub as alice (its test authenticator takes any password).
    xsrf = next(c.value for c in jar if c.name == "_xsrf")
    form = urllib.parse.urlencode({"username": "alice", "password": "x", "_xsrf": xsrf})
    with browser.open(f"http://127.0.0.1:{hub.port}/hub/login", form.encode(), timeout=30):
        pass
    # Now the dashboard link works: hub -> gateway /oauth_callback -> the dashboard, under a
    # grant path for the sandboxed page's own requests.
    with browser.open(link, timeout=30) as r:
        assert r.url.startswith(f"{gw.address}/clusters/{name}/~") and r.status == 200
        assert r.url.endswith("/status")
        assert b"Dask" in r.read()
    assert any(c.name == "dask-gateway-session" for c in jar)

    # Bob's hub session gets no further than a refusal.
    bob_jar = http.cookiejar.CookieJar()
    bob = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(bob_jar))
    bob.addheaders = [("Accept", "text/html")]
    with bob.open(link, timeout=30):
        pass
    xsrf = next(c.value for c in bob_jar if c.name == "_xsrf")
    form = urllib.parse.urlencode({"username": "bob", "password": "x", "_xsrf": xsrf})
    with bob.open(f"http://127.0.0.1:{hub.port}/hub/login", form.encode(), timeout=30):
        pass
    with pytest.raises(urllib.error.HTTPError) as info:
        bob.open(link, timeout=30)
    assert info.value.code == 403
    call("DELETE", api(gw, f"/v1/clusters/{name}"), headers=as_user(alice))


def test_per_user_limits(hub_env):
    hub, gw = hub_env
    carol, _ = hub.token("carol")
    erin, _ = hub.token("erin")
    frank, _ = hub.token("frank")

    first = create(gw, as_user(carol))
    r = call("POST", api(gw, "/v1/clusters/"), {}, as_user(carol))
    assert r.status == 422
    assert r.json() == {
        "error": "User carol may run at most 1 clusters at once and already runs 1: stop one first"
    }

    name = create(gw, as_user(erin))
    wait_running(gw, name, as_user(erin))
    assert (
        call("POST", api(gw, f"/v1/clusters/{name}/scale"), {"count": 2}, as_user(erin)).status
        == 200
    )
    r = call("POST", api(gw, f"/v1/clusters/{name}/scale"), {"count": 3}, as_user(erin))
    assert r.status == 422
    assert r.json() == {
        "error": "User erin is limited to 3 cores across all clusters; this "
        "request needs 4, 1 over the limit"
    }

    name2 = create(gw, as_user(frank))
    wait_running(gw, name2, as_user(frank))
    assert (
        call("POST", api(gw, f"/v1/clusters/{name2}/scale"), {"count": 1}, as_user(frank)).status
        == 200
    )
    r = call("POST", api(gw, f"/v1/clusters/{name2}/scale"), {"count": 2}, as_user(frank))
    assert r.status == 422
    assert r.json() == {
        "error": "User frank is limited to 3.00 GiB of memory across all "
        "clusters; this request needs 4.00 GiB, 1024.00 MiB over "
        "the limit"
    }
    for token, cluster in [(carol, first), (erin, name), (frank, name2)]:
        call("DELETE", api(gw, f"/v1/clusters/{cluster}"), headers=as_user(token))


def test_workflow_with_only_a_hub_token(hub_env):
    """A notebook inside JupyterHub: JUPYTERHUB_API_TOKEN and dask config, nothing else."""
    hub, gw = hub_env
    token, _ = hub.token("alice")
    script = textwrap.dedent("""
        from dask_gateway import Gateway
        gateway = Gateway()
        with gateway.new_cluster() as cluster:
            cluster.scale(1)
            client = cluster.get_client()
            print(client.submit(lambda: 40 + 2).result())
            print(gateway.list_clusters()[0].name == cluster.name)
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_GATEWAY")}
    env.update(
        JUPYTERHUB_API_TOKEN=token,
        DASK_GATEWAY__ADDRESS=gw.address,
        DASK_GATEWAY__AUTH__TYPE="jupyterhub",
    )
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=180
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["42", "True"]


def test_hub_down_is_a_clear_503(hub_env):
    hub, gw = hub_env
    fresh, _ = hub.token("alice")
    hub.stop()
    try:
        r = call("GET", api(gw, "/v1/clusters/"), headers=as_user(fresh))
        assert r.status == 503
        assert r.json()["error"].startswith("JupyterHub is unreachable")
        assert call("GET", api(gw, "/health")).json() == {"status": "pass"}
    finally:
        hub.start()
    assert call("GET", api(gw, "/v1/clusters/"), headers=as_user(fresh)).status == 200
