"""Dashboards are the owner's code: what they get of a viewer, and what their page can do.

Findings 2 and 3 of the security review, performed for real: alice's scheduler records every
request it gets and serves an attack page; the admin opens her dashboard through the gateway
and through their Jupyter server's relay, with raw HTTP and in headless Chromium.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import time
from urllib.parse import urlsplit

import httpx
import pytest
from dashboard_spy import (
    CLEAR,
    REPORTS,
    SEEN,
    assert_bokeh_live,
    chromium,
    install_source,
    wait_attack_done,
)
from support.http_helpers import basic, call
from support.jupyter_server import JupyterServerProcess, gateway_env
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect
from users import ADMIN, ALICE, BOB, in_scheduler

CLIENT_HEADER = {"X-Dask-Gateway-Client": "1"}


@pytest.fixture
def root_gateway(make_root_gateway):
    """Rendering a dashboard can hold a busy scheduler's loop for seconds: the shared
    configuration's 4 s without a heartbeat would fail the cluster meanwhile."""
    return make_root_gateway(["--LocalBackend.cluster_heartbeat_timeout=60"])


SESSION = "dask-gateway-session"


def raw(method: str, url: str, headers: dict | None = None, body: bytes | None = None):
    """One request, redirects not followed: (status, headers, body)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        path = parts.path + ("?" + parts.query if parts.query else "")
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read()
    finally:
        conn.close()


def session_cookie(gw, user: str) -> str:
    """``name=value`` of the session the gateway starts for ``user``'s credentials."""
    r = call("GET", f"{gw.address}/api/v1/clusters/", headers=basic(user))
    assert r.status == 200, r.body
    morsel = next(c for c in r.headers.get_all("Set-Cookie") if c.startswith(SESSION + "="))
    return morsel.split(";")[0]


def has_bokeh_document(html: bytes) -> bool:
    """A bokeh server page: its document's JSON and the code that renders it."""
    return b"Bokeh" in html and b'type="application/json"' in html and b"<title>" in html


async def _open_ws(url: str, headers: dict) -> None:
    try:
        conn = await websocket_connect(
            HTTPRequest(url, headers=headers, request_timeout=30), subprotocols=["bokeh"]
        )
        conn.close()
    except Exception:
        pass


def wait_status(gw, name: str, user: str, status: str) -> dict:
    for _ in range(600):
        model = call("GET", f"{gw.address}/api/v1/clusters/{name}?wait", headers=basic(user)).json()
        if model["status"] == status:
            return model
        time.sleep(0.1)
    raise AssertionError(f"{name} never reached {status}: {model}")


def wait_running(gw, name: str, user: str) -> dict:
    return wait_status(gw, name, user, "RUNNING")


def test_viewer_credentials_never_reach_the_owners_scheduler(root_gateway, as_user, tmp_path):
    alice = as_user(ALICE)
    cluster = alice.new_cluster()
    gw = root_gateway.address
    admin_cookie = session_cookie(root_gateway, ADMIN)
    admin_basic = basic(ADMIN)["Authorization"]
    jupyter = JupyterServerProcess(
        tmp_path / "admin-jupyter", gateway_env(gw, ADMIN), token="admin-jupyter-secret-token"
    )
    with cluster.get_client() as client:
        assert in_scheduler(client, install_source([]))
        in_scheduler(client, CLEAR)
        base = f"{gw}/clusters/{cluster.name}"
        # The admin opens alice's dashboard through the gateway: credentials, a session
        # cookie, a proxy's credentials; then bokeh's websocket with all of them.
        creds = {
            "Authorization": admin_basic,
            "Cookie": admin_cookie,
            "Proxy-Authorization": "Basic cHJveHk6c2VjcmV0",
        }
        status, headers, body = raw("GET", f"{base}/status", creds)
        assert status == 200 and has_bokeh_document(body)
        assert "sandbox" in headers["Content-Security-Policy"]
        status, headers, body = raw("GET", f"{base}/attack", {"Cookie": admin_cookie})
        assert status == 200
        # What the owner's code sets is not set on the viewer's browser.
        assert not [c for c in headers.get_all("Set-Cookie") or [] if "planted" in c]
        ws = "ws" + base[len("http") :] + "/status/ws"
        asyncio.run(_open_ws(ws, creds))
        # ... and through the Jupyter relay of the admin's own server, which adds the admin's
        # gateway credentials itself (and a link may carry the Jupyter token).
        jupyter.start()
        try:
            relay = f"{jupyter.url}/dask-gateway/dashboard/{cluster.name}"
            page = httpx.get(f"{relay}/status", params={"token": jupyter.token}, timeout=60)
            assert page.status_code == 200 and has_bokeh_document(page.content), page.text
            relay_ws = "ws" + relay[len("http") :] + f"/status/ws?token={jupyter.token}"
            asyncio.run(_open_ws(relay_ws, {}))
        finally:
            jupyter.stop()
        seen = in_scheduler(client, SEEN)

    paths = [s["path"] for s in seen]
    assert paths.count("/status") >= 2 and "/attack" in paths and "/status/ws" in paths, paths
    secrets = [
        admin_cookie.split("=", 1)[1],
        admin_basic.split()[1],
        "cHJveHk6c2VjcmV0",
        jupyter.token,
        base64.b64encode(f"{ADMIN}:".encode()).decode(),
    ]
    for request in seen:
        names = {k.lower() for k, _ in request["headers"]}
        assert not names & {"authorization", "cookie", "proxy-authorization"}, request
        text = repr(request)
        assert not [s for s in secrets if s in text], request

    # Alice replays whatever her scheduler captured: none of it lists everyone's clusters.
    skip = {
        "host",
        "content-length",
        "connection",
        "upgrade",
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "sec-websocket-protocol",
    }
    for request in seen:
        replay = {k: v for k, v in request["headers"] if k.lower() not in skip}
        r = call("GET", f"{gw}/api/v1/clusters/?all=1", headers=replay)
        assert r.status == 401, (request, r.status, r.body)

    # The legitimate use: the owner sees her dashboard; the admin still sees everyone's.
    r = call("GET", f"{gw}/clusters/{cluster.name}/status", headers=basic(ALICE))
    assert r.status == 200 and has_bokeh_document(r.body)
    listed = call("GET", f"{gw}/api/v1/clusters/?all=1", headers=basic(ADMIN)).json()
    assert listed[cluster.name]["username"] == ALICE


def test_dashboard_grants_two_users_and_an_admin(root_gateway, as_user):
    """A page load gets a grant path for that one cluster; the grant opens nothing else."""
    alice, bob = as_user(ALICE), as_user(BOB)
    ca, cb = alice.new_cluster(), bob.new_cluster()
    gw = root_gateway.address
    wait_running(root_gateway, ca.name, ALICE)
    wait_running(root_gateway, cb.name, BOB)
    html = {"Accept": "text/html"}

    def grant_path(user: str, name: str) -> str:
        status, headers, _ = raw("GET", f"{gw}/clusters/{name}/status", {**basic(user), **html})
        assert status == 302, status
        location = headers["Location"]
        assert location.startswith(f"/clusters/{name}/~") and location.endswith("/status")
        return location

    mine = grant_path(ALICE, ca.name)
    status, headers, body = raw("GET", gw + mine)  # no credentials at all: the grant is one
    assert status == 200 and has_bokeh_document(body)
    csp = headers["Content-Security-Policy"]
    assert "sandbox" in csp and "allow-scripts" in csp and "allow-same-origin" not in csp
    assert headers["Referrer-Policy"] == "no-referrer" and headers.get("Set-Cookie") is None
    grant = mine.split("/")[3]
    # Alice's grant does not open bob's dashboard, a forged one nothing.
    assert raw("GET", f"{gw}/clusters/{cb.name}/{grant}/status")[0] == 403
    assert raw("GET", f"{gw}/clusters/{ca.name}/~forged/status")[0] == 403
    status, headers, _ = raw("GET", f"{gw}/clusters/{ca.name}/~forged/status", html)
    assert status == 302 and headers["Location"] == f"/clusters/{ca.name}/status"
    # Bob gets no grant to alice's dashboard; the admin does.
    status, _, _ = raw("GET", f"{gw}/clusters/{ca.name}/status", {**basic(BOB), **html})
    assert status == 403
    admins = grant_path(ADMIN, ca.name)
    assert raw("GET", gw + admins)[0] == 200
    assert raw("GET", gw + grant_path(BOB, cb.name))[0] == 200
    # Requests that are not page loads (a script, the relay) are served in place.
    status, _, body = raw("GET", f"{gw}/clusters/{ca.name}/status", basic(ALICE))
    assert status == 200 and has_bokeh_document(body)
    # A stopped cluster's grants are gone with it. The shutdown request returns once the
    # gateway has it; the cluster is stopped (and its routes gone) when it says STOPPED.
    ca.shutdown()
    wait_status(root_gateway, ca.name, ALICE, "STOPPED")
    assert raw("GET", gw + mine)[0] == 404


def test_cookie_only_writes_are_refused(root_gateway, as_user):
    """A forged request from a browser carries the session cookie and nothing else: it may
    read, never write. Our client (and any client answering the 401) still writes."""
    alice = as_user(ALICE)
    cluster = alice.new_cluster()
    gw = root_gateway.address
    wait_running(root_gateway, cluster.name, ALICE)
    url = f"{gw}/api/v1/clusters/{cluster.name}"
    cookies = {user: session_cookie(root_gateway, user) for user in (ALICE, BOB, ADMIN)}
    for user in (ALICE, ADMIN):
        only_cookie = {"Cookie": cookies[user]}
        r = call("POST", url + "/scale", {"count": 1}, only_cookie)
        assert r.status == 401 and r.headers["WWW-Authenticate"] == "Basic", r.body
        assert "X-Dask-Gateway-Client" in r.json()["error"]
        assert call("DELETE", url, headers=only_cookie).status == 401
        r = call("POST", f"{gw}/api/v1/clusters/", {}, only_cookie)
        assert r.status == 401
        assert call("GET", url, headers=only_cookie).status == 200  # reads stay cookie-only
    # Credentials a browser remembers are as ambient as a cookie: writes from another site
    # (or a sandboxed dashboard, Origin "null") are refused whatever they carry.
    for extra in (
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
    ):
        r = call("POST", url + "/scale", {"count": 1}, {**basic(ALICE), **extra})
        assert r.status == 403, (extra, r.body)
        assert call("DELETE", url, headers={**basic(ADMIN), **extra}).status == 403
    same = {"Origin": gw, "Sec-Fetch-Site": "same-origin"}
    assert call("POST", url + "/scale", {"count": 0}, {**basic(ALICE), **same}).status == 200
    # With the header, the cookie is its owner's: alice scales, bob may not, the admin stops.
    assert (
        call(
            "POST", url + "/scale", {"count": 1}, {"Cookie": cookies[ALICE], **CLIENT_HEADER}
        ).status
        == 200
    )
    r = call("POST", url + "/scale", {"count": 1}, {"Cookie": cookies[BOB], **CLIENT_HEADER})
    assert r.status == 403
    assert call("DELETE", url, headers={"Cookie": cookies[BOB], **CLIENT_HEADER}).status == 403
    assert call("DELETE", url, headers={"Cookie": cookies[ADMIN], **CLIENT_HEADER}).status == 204
    # Our client reuses its session cookie for writes: scaling and stopping still work.
    other = alice.new_cluster()
    other.scale(1)
    assert (
        call("GET", f"{gw}/api/v1/clusters/{other.name}/workers", headers=basic(ALICE)).json()[
            "requested"
        ]
        == 1
    )
    other.shutdown()
    assert alice.list_clusters() == []


ATTACK_ON_GATEWAY = [
    ("list", "/api/v1/clusters/?all=1", {}),
    ("delete", "/api/v1/clusters/BOB", {"method": "DELETE"}),
    ("scale", "/api/v1/clusters/BOB/scale", {"method": "POST", "body": '{"count": 2}'}),
    (
        "scale_nocors",
        "/api/v1/clusters/BOB/scale",
        {"method": "POST", "mode": "no-cors", "body": '{"count": 2}'},
    ),
    ("create_nocors", "/api/v1/clusters/", {"method": "POST", "mode": "no-cors", "body": "{}"}),
]


def _attempts(template, bob_cluster: str):
    return [(k, u.replace("BOB", bob_cluster), o) for k, u, o in template]


def _assert_attack_failed(report: dict, secret_names: list[str]) -> None:
    for key, outcome in report.items():
        if key in ("cookie", "storage"):
            continue
        # Either the browser refused (no CORS for an opaque origin), or the gateway did;
        # never a readable answer holding anyone's clusters.
        assert (
            "error" in outcome or outcome["type"] == "opaque" or outcome["status"] in (401, 403)
        ), (key, outcome)
        assert not [n for n in secret_names if n in outcome.get("body", "")], (key, outcome)
    assert report["cookie"].startswith("error") and report["storage"].startswith("error")


def test_dashboard_script_cannot_act_as_the_viewer(root_gateway, as_user):
    """The admin opens alice's dashboard in Chromium; her page's script tries the API."""
    alice, bob = as_user(ALICE), as_user(BOB)
    ca, cb = alice.new_cluster(), bob.new_cluster()
    gw = root_gateway.address
    wait_running(root_gateway, cb.name, BOB)
    with ca.get_client() as client:
        in_scheduler(client, install_source(_attempts(ATTACK_ON_GATEWAY, cb.name)))
        with chromium(http_credentials={"username": ADMIN, "password": "x"}) as page:
            # The legitimate use first: bokeh renders, live, for the admin.
            response = page.goto(f"{gw}/clusters/{ca.name}/status")
            assert f"/clusters/{ca.name}/~" in page.url
            assert "sandbox" in response.headers["content-security-policy"]
            assert_bokeh_live(page, "/status/ws")
            page.goto(f"{gw}/clusters/{ca.name}/attack")
            wait_attack_done(page)
        reports = in_scheduler(client, REPORTS)
    assert len(reports) == 1, reports
    _assert_attack_failed(reports[0], [ca.name, cb.name])
    # Bob's cluster is untouched, and nothing was made in the admin's name.
    workers = call("GET", f"{gw}/api/v1/clusters/{cb.name}/workers", headers=basic(BOB))
    assert workers.status == 200 and workers.json()["requested"] == 0
    assert call("GET", f"{gw}/api/v1/clusters/", headers=basic(ADMIN)).json() == {}
    # The admin still sees and stops anyone's cluster.
    listed = call("GET", f"{gw}/api/v1/clusters/?all=1", headers=basic(ADMIN)).json()
    assert {ca.name, cb.name} <= set(listed)
    assert call("DELETE", f"{gw}/api/v1/clusters/{cb.name}", headers=basic(ADMIN)).status == 204


ATTACK_ON_JUPYTER = [
    ("contents", "/api/contents", {}),
    ("kernel_nocors", "/api/kernels", {"method": "POST", "mode": "no-cors", "body": "{}"}),
    ("kernel", "/api/kernels", {"method": "POST", "body": "{}"}),
    ("list", "/dask-gateway/clusters", {}),
    ("delete", "/dask-gateway/clusters/BOB", {"method": "DELETE"}),
    (
        "scale_nocors",
        "/dask-gateway/clusters/BOB/scale",
        {"method": "POST", "mode": "no-cors", "body": '{"count": 2}'},
    ),
]


def test_relayed_dashboard_script_cannot_act_as_the_viewer(root_gateway, as_user, tmp_path):
    """The same through the admin's Jupyter server: the page is on Jupyter's origin."""
    alice, bob = as_user(ALICE), as_user(BOB)
    ca, cb = alice.new_cluster(), bob.new_cluster()
    gw = root_gateway.address
    wait_running(root_gateway, cb.name, BOB)
    jupyter = JupyterServerProcess(
        tmp_path / "admin-jupyter", gateway_env(gw, ADMIN), token="admin-jupyter-secret-token"
    )
    jupyter.start()
    try:
        with ca.get_client() as client:
            in_scheduler(client, install_source(_attempts(ATTACK_ON_JUPYTER, cb.name)))
            in_scheduler(client, CLEAR)
            relay = f"/dask-gateway/dashboard/{ca.name}"
            with chromium() as page:
                page.goto(f"{jupyter.url}{relay}/status?token={jupyter.token}")
                assert f"{relay}/~" in page.url and jupyter.token not in page.url
                assert_bokeh_live(page, "/status/ws")
                # The relay's grant opens that one dashboard, and only it.
                grant = page.url.split(f"{relay}/")[1].split("/")[0]
                direct = httpx.get(f"{jupyter.url}{relay}/{grant}/status", timeout=60)
                assert direct.status_code == 200 and has_bokeh_document(direct.content)
                other = f"{jupyter.url}/dask-gateway/dashboard/{cb.name}/{grant}/status"
                assert httpx.get(other, timeout=60).status_code == 403
                no_grant = httpx.get(f"{jupyter.url}{relay}/status", timeout=60)
                assert no_grant.status_code in (302, 403)  # Jupyter's own login
                page.goto(f"{jupyter.url}{relay}/attack")
                wait_attack_done(page)
            reports = in_scheduler(client, REPORTS)
            seen = in_scheduler(client, SEEN)
        assert len(reports) == 1, reports
        _assert_attack_failed(reports[0], [ca.name, cb.name])
        kernels = httpx.get(
            f"{jupyter.url}/api/kernels",
            headers={"Authorization": f"token {jupyter.token}"},
            timeout=30,
        )
        assert kernels.status_code == 200 and kernels.json() == []
        assert not [s for s in seen if jupyter.token in repr(s)]
        assert not [
            s for s in seen if {k.lower() for k, _ in s["headers"]} & {"authorization", "cookie"}
        ]
    finally:
        jupyter.stop()
    workers = call("GET", f"{gw}/api/v1/clusters/{cb.name}/workers", headers=basic(BOB))
    assert workers.status == 200 and workers.json()["requested"] == 0
    assert call("DELETE", f"{gw}/api/v1/clusters/{cb.name}", headers=basic(ADMIN)).status == 204
