"""The web console's pages and the overview route, over HTTP (no browser): security headers
on every answer, the login form (errors, CSRF), logout, the static files, and
``GET /api/v1/overview`` with two users and an admin on real clusters.

The browser side (logging in, the clusters, the chart, stopping) is in
``tests/browser/test_console_browser.py``.
"""

from __future__ import annotations

import http.client
import os
import re
import time
import urllib.parse
from dataclasses import dataclass
from http.cookies import SimpleCookie

import pytest
from support.gateway_process import GatewayProcess, _kill_leftovers
from support.http_helpers import basic, call, create
from support.hub import Hub
from support.paths import CONFIGS
from test_hub_web_security import PREFIX as HUB_PREFIX
from test_hub_web_security import Browser as HubBrowser

from dask_gateway_server.console.handlers import CSP

PASSWORD = "console-secret"
ADMIN = "console-admin"
ALICE = "console-alice"
BOB = "console-bob"
SESSION = "dask-gateway-session"
SECURITY = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode()

    def cookies(self) -> dict[str, str]:
        jar: SimpleCookie = SimpleCookie()
        for value in self.headers.get_all("Set-Cookie") or []:
            jar.load(value)
        return {k: m.value for k, m in jar.items()}


def raw(
    gw, method: str, path: str, body: bytes | None = None, headers: dict | None = None
) -> Answer:
    """One request, redirects not followed (their headers are what we check)."""
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return Answer(resp.status, resp.headers, resp.read())
    finally:
        conn.close()


def assert_secure(answer: Answer) -> None:
    for name, value in SECURITY.items():
        assert answer.headers.get(name) == value, (name, answer.status, answer.headers)


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("console-gateway")
    gw = GatewayProcess(
        data_dir,
        [
            f"--SimpleAuthenticator.password={PASSWORD}",
            f"--Authenticator.admin_users={{'{ADMIN}'}}",
            "--LocalBackend.cluster_heartbeat_timeout=60",
        ],
        # alice in group physics, bob in chemistry and physics-students
        config=CONFIGS / "console_gateway_config.py",
    )
    gw.start()
    yield gw
    code = gw.stop()
    _kill_leftovers(data_dir)
    assert code == 0, gw.log()


def login_form(gw) -> tuple[str, str]:
    """GET the login form: its CSRF token and the cookie that goes with it."""
    page = raw(gw, "GET", "/console/login")
    assert page.status == 200
    assert_secure(page)
    token = re.search(r'name="_xsrf" value="([0-9a-f]+)"', page.text).group(1)
    cookie = page.cookies()[f"{SESSION}-login"]
    assert cookie == token
    return token, cookie


def post_login(gw, user: str, password: str, headers: dict | None = None, token=None) -> Answer:
    form_token, cookie = login_form(gw)
    body = urllib.parse.urlencode(
        {"_xsrf": form_token if token is None else token, "username": user, "password": password}
    ).encode()
    h = {
        "Content-Type": "application/x-www-form-urlencoded",
        "Cookie": f"{SESSION}-login={cookie}",
        "Origin": f"http://127.0.0.1:{gw.port}",
        **(headers or {}),
    }
    return raw(gw, "POST", "/console/login", body, h)


def log_in(gw, user: str) -> str:
    """A console session for ``user`` through the form: its cookie value."""
    answer = post_login(gw, user, PASSWORD)
    assert answer.status == 303, answer.text
    assert answer.headers["Location"] == "/console/"
    assert_secure(answer)
    return answer.cookies()[SESSION]


def test_every_console_answer_has_the_security_headers(gw):
    session = log_in(gw, ALICE)
    cookie = {"Cookie": f"{SESSION}={session}"}
    answers = [
        raw(gw, "GET", "/console"),  # redirect to /console/
        raw(gw, "GET", "/console/"),  # no session: to the login form
        raw(gw, "GET", "/console/", headers=cookie),
        raw(gw, "GET", "/console/login"),
        raw(gw, "GET", "/console/login?out=1"),
        raw(gw, "GET", "/console/static/console.js"),
        raw(gw, "GET", "/console/static/console.css"),
        raw(gw, "GET", "/console/static/handlers.py"),
        raw(gw, "GET", "/console/static/..%2Fhandlers.py"),
        raw(gw, "GET", "/console/no/such/page"),
        raw(gw, "POST", "/console/login", b"", {"Origin": "http://evil.example"}),
        raw(gw, "GET", "/console/logout"),
    ]
    assert [a.status for a in answers] == [
        302,
        302,
        200,
        200,
        200,
        200,
        200,
        404,
        404,
        404,
        403,
        405,
    ]
    for answer in answers:
        assert_secure(answer)
    assert answers[0].headers["Location"] == "/console/"
    assert answers[1].headers["Location"] == "/console/login"
    assert "You have logged out." in answers[4].text
    for answer in answers:
        if answer.headers["Content-Type"].startswith("text/html"):
            # The pages load one script and one style sheet, from this origin; nothing inline.
            assert "<style" not in answer.text and " style=" not in answer.text
            scripts = re.findall(r"<script([^>]*)>", answer.text)
            assert all(re.search(r'src="static/console\.js\?v=\w+"', s) for s in scripts)
    shell = answers[2].text
    assert len(re.findall(r"<script", shell)) == 1
    assert len(re.findall(r'rel="stylesheet"', shell)) == 1
    assert f'data-user="{ALICE}"' in shell and 'data-admin="0"' in shell


def test_static_files_have_their_types(gw):
    js = raw(gw, "GET", "/console/static/console.js")
    css = raw(gw, "GET", "/console/static/console.css")
    assert js.headers["Content-Type"] == "application/javascript; charset=utf-8"
    assert css.headers["Content-Type"] == "text/css; charset=utf-8"
    assert b"X-Dask-Gateway-Client" in js.body  # the console's own bundle
    assert b"prefers-color-scheme" in css.body
    # The script sets user text as text only: no markup parsing anywhere in it.
    assert b"innerHTML" not in js.body and b"insertAdjacentHTML" not in js.body
    again = raw(
        gw, "GET", "/console/static/console.js", headers={"If-None-Match": js.headers["Etag"]}
    )
    assert again.status == 304


def test_login_form_errors(gw):
    wrong = post_login(gw, ALICE, "not-the-password")
    assert wrong.status == 401
    assert_secure(wrong)
    assert "Invalid username or password" in wrong.text
    assert SESSION not in wrong.cookies()
    assert 'name="password"' in wrong.text and f'value="{ALICE}"' in wrong.text
    empty = post_login(gw, "", PASSWORD)
    assert empty.status == 401 and "Invalid username or password" in empty.text
    bad_name = post_login(gw, "a/b", PASSWORD)
    assert bad_name.status == 401 and "Invalid username or password" in bad_name.text
    # The form's token is required and must be this browser's.
    forged = post_login(gw, ALICE, PASSWORD, token="0" * 32)
    assert forged.status == 403 and "expired or came from another site" in forged.text
    assert SESSION not in forged.cookies()
    missing = raw(
        gw,
        "POST",
        "/console/login",
        urllib.parse.urlencode({"username": ALICE, "password": PASSWORD}).encode(),
        {"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert missing.status == 403 and SESSION not in missing.cookies()


@pytest.mark.parametrize(
    "headers",
    [{"Origin": "http://evil.example"}, {"Sec-Fetch-Site": "cross-site"}],
    ids=["origin", "sec-fetch-site"],
)
def test_cross_site_login_and_logout_are_refused(gw, headers):
    """A page of another site posting the form (with a token it somehow got) logs nobody
    in; nor can it log the user out."""
    answer = post_login(gw, ALICE, PASSWORD, headers=headers)
    assert answer.status == 403
    assert_secure(answer)
    assert SESSION not in answer.cookies()
    session = log_in(gw, ALICE)
    cookie = f"{SESSION}={session}"
    out = raw(gw, "POST", "/console/logout", b"", {"Cookie": cookie, **headers})
    assert out.status == 403
    assert raw(gw, "GET", "/api/v1/overview", headers={"Cookie": cookie}).status == 200


def test_login_session_and_logout(gw):
    session = log_in(gw, BOB)
    cookie = {"Cookie": f"{SESSION}={session}"}
    shell = raw(gw, "GET", "/console/", headers=cookie)
    assert shell.status == 200 and f'data-user="{BOB}"' in shell.text
    assert raw(gw, "GET", "/api/v1/overview", headers=cookie).status == 200
    # A write with the cookie alone needs the client header the console sends.
    assert call("POST", f"{gw.address}/api/v1/clusters/", {}, cookie).status == 401
    out = raw(
        gw, "POST", "/console/logout", b"", {**cookie, "Origin": f"http://127.0.0.1:{gw.port}"}
    )
    assert out.status == 303 and out.headers["Location"] == "/console/login?out=1"
    assert_secure(out)
    assert out.cookies()[SESSION] == ""  # the browser drops it
    # The gateway forgot the session: the old cookie opens nothing.
    assert raw(gw, "GET", "/api/v1/overview", headers=cookie).status == 401
    assert raw(gw, "GET", "/console/", headers=cookie).headers["Location"] == "/console/login"


def test_hostile_user_name_is_escaped_in_the_shell(gw):
    name = '<img src=x onerror="alert(1)">'
    session = log_in(gw, name)
    shell = raw(gw, "GET", "/console/", headers={"Cookie": f"{SESSION}={session}"}).text
    assert name not in shell
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in shell


def wait_for(check, timeout=60.0):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def overview(gw, user: str, query: str = "") -> tuple[int, dict]:
    r = call("GET", f"{gw.address}/api/v1/overview{query}", headers=basic(user, PASSWORD))
    return r.status, r.json()


def test_overview_two_users_and_an_admin(gw):
    a = create(gw, basic(ALICE, PASSWORD), {"worker_memory": 0.5, "worker_cores": 2})
    b = create(gw, basic(BOB, PASSWORD))
    try:
        for user in (ALICE, BOB):
            wait_for(lambda u=user: overview(gw, u)[1]["clusters"][0]["status"] == "RUNNING")
        r = call(
            "POST", f"{gw.address}/api/v1/clusters/{a}/scale", {"count": 1}, basic(ALICE, PASSWORD)
        )
        assert r.status == 200, r.body

        def settled():
            status, body = overview(gw, ALICE)
            assert status == 200
            (c,) = body["clusters"]
            return c if c["status"] == "RUNNING" and c["workers"]["running"] == 1 else None

        mine = wait_for(settled)
        assert mine["name"] == a and mine["user"] == ALICE and mine["groups"] == ["physics"]
        assert mine["workers"] == {"requested": 1, "running": 1, "pending": 0}
        # What it holds: the scheduler (1 core, 2 GiB by default) and one worker.
        assert mine["cores"] == 1 + 2
        assert mine["memory"] == 2 * 2**30 + 2**29
        assert mine["options"]["worker_memory"] == 0.5 and mine["options"]["label"] == ""
        assert mine["dashboard_route"] == f"/clusters/{a}/status"

        # Users see their own only; everyone's and other users' are for admins.
        assert [c["name"] for c in overview(gw, BOB)[1]["clusters"]] == [b]
        assert overview(gw, ALICE, "?all=1")[0] == 403
        assert overview(gw, ALICE, f"?user={BOB}")[0] == 403
        assert overview(gw, ALICE, f"?user={ALICE}")[0] == 200
        assert overview(gw, ALICE, "?status=sleeping")[0] == 422
        everyone = overview(gw, ADMIN, "?all=1")[1]["clusters"]
        assert {(c["name"], c["user"]) for c in everyone} >= {(a, ALICE), (b, BOB)}
        assert [c["name"] for c in overview(gw, ADMIN, f"?user={BOB}")[1]["clusters"]] == [b]
        # Groups: the owner's at creation, matched whole.
        physics = overview(gw, ADMIN, "?all=1&group=physics")[1]["clusters"]
        assert [c["name"] for c in physics] == [a]
        (bobs,) = overview(gw, ADMIN, "?all=1&group=chemistry")[1]["clusters"]
        assert bobs["name"] == b and bobs["groups"] == ["chemistry", "physics-students"]
        assert overview(gw, ADMIN, "?all=1&group=biology")[1]["clusters"] == []
        assert overview(gw, ADMIN, f"?all=1&group=physics&user={BOB}")[1]["clusters"] == []
        assert overview(gw, ADMIN)[1]["clusters"] == []  # the admin's own: none

        # The admin stops bob's cluster; it then shows among the ended ones only.
        assert (
            call(
                "DELETE", f"{gw.address}/api/v1/clusters/{b}", headers=basic(ADMIN, PASSWORD)
            ).status
            == 204
        )
        wait_for(lambda: overview(gw, BOB)[1]["clusters"] == [])
        ended = overview(gw, BOB, "?status=stopping,stopped,failed")[1]["clusters"]
        assert [c["name"] for c in ended] == [b]
        wait_for(lambda: overview(gw, BOB, "?status=stopped")[1]["clusters"])
        (stopped,) = overview(gw, BOB, "?status=stopped")[1]["clusters"]
        assert stopped["cores"] == 0 and stopped["memory"] == 0 and stopped["stop_time"]
        assert stopped["dashboard_route"] is None
    finally:
        for name, user in ((a, ALICE), (b, BOB)):
            call("DELETE", f"{gw.address}/api/v1/clusters/{name}", headers=basic(user, PASSWORD))


def test_other_authenticators_log_in_their_own_way(fresh_gateway):
    """JupyterHub: the console sends a browser to the hub's OAuth login (and back to the
    console); Kerberos: the Negotiate challenge. Neither has the login form."""
    hub = fresh_gateway(
        [
            "--DaskGateway.authenticator_class=jupyterhub",
            "--JupyterHubAuthenticator.jupyterhub_api_url=http://127.0.0.1:9/hub/api",
            "--JupyterHubAuthenticator.jupyterhub_service_name=dask-gateway",
            "--JupyterHubAuthenticator.oauth_client_secret=not-a-real-secret",
        ]
    )
    hub.start()
    page = raw(hub, "GET", "/console/")
    assert page.status == 302
    assert_secure(page)
    location = urllib.parse.urlsplit(page.headers["Location"])
    assert location.path == "/hub/api/oauth2/authorize"
    assert urllib.parse.parse_qs(location.query)["client_id"] == ["service-dask-gateway"]
    assert f"{SESSION}-oauth-state" in page.cookies()
    assert raw(hub, "GET", "/console/login").headers["Location"] == "/console/"
    assert raw(hub, "POST", "/console/login", b"").status == 404

    krb = fresh_gateway(
        [
            "--DaskGateway.authenticator_class=kerberos",
            "--KerberosAuthenticator.realm=EXAMPLE.ORG",
            "--KerberosAuthenticator.keytab=/nonexistent.keytab",
        ]
    )
    krb.start()
    challenge = raw(krb, "GET", "/console/")
    assert challenge.status == 401
    assert challenge.headers["WWW-Authenticate"] == "Negotiate"
    assert_secure(challenge)
    assert "log in to the gateway" in challenge.text


@pytest.fixture(scope="module")
def short_hub(tmp_path_factory):
    """A real hub, and a gateway that is its service behind the hub's proxy, checking tokens
    with the hub every second (sessions last as long)."""
    tmp = tmp_path_factory.mktemp("console-hub")
    gw = GatewayProcess(
        tmp / "gateway",
        [f"--Proxy.prefix={HUB_PREFIX}", "--JupyterHubAuthenticator.token_cache_ttl=1"],
        config=CONFIGS / "hub_gateway_config.py",
    )
    hub = Hub(tmp / "hub", gw.address)
    hub.oauth_redirect_uri = f"{hub.url}{HUB_PREFIX}/oauth_callback"
    hub.start()
    os.environ["TEST_HUB_API_URL"] = hub.api_url
    os.environ["TEST_HUB_GATEWAY_TOKEN"] = hub.gateway_token
    try:
        gw.start(health_path=f"{HUB_PREFIX}/api/health")
        for user in ("alice", "bob"):
            hub.add_user(user)
        yield hub, gw
    finally:
        gw.stop()
        _kill_leftovers(gw.data_dir)
        hub.stop()
        os.environ.pop("TEST_HUB_API_URL", None)
        os.environ.pop("TEST_HUB_GATEWAY_TOKEN", None)


def hub_console_login(hub, user: str) -> HubBrowser:
    """A browser logged in to the hub, then to the console through the hub's OAuth."""
    browser = HubBrowser()
    browser.hub_login(hub, user)
    status, url, body = browser.open(f"{hub.url}{HUB_PREFIX}/console/")
    assert (status, url) == (200, f"{hub.url}{HUB_PREFIX}/console/")
    assert f'data-user="{user}"'.encode() in body
    assert f'data-prefix="{HUB_PREFIX}"'.encode() in body
    return browser


def test_console_through_the_hubs_login(short_hub):
    """With a real hub: a browser logged in to the hub opens the console, goes through the
    hub's OAuth and lands back on it, logged in as its hub user. The session outlives the
    token check's second, renewed by asking the hub again with the login's token, until the
    hub revokes that token; logging out ends it at once."""
    hub, _ = short_hub
    overview = f"{hub.url}{HUB_PREFIX}/api/v1/overview"
    alice = hub_console_login(hub, "alice")
    assert alice.open(overview)[::2] == (200, b'{"clusters": []}')
    session = alice.cookie(SESSION).value
    time.sleep(1.5)  # the session's second (cache_max_age) is over: renewed with the hub
    assert alice.open(overview)[0] == 200
    assert alice.cookie(SESSION).value == session

    # The hub revokes the login's token: the next renewal fails, the session ends.
    status, tokens = hub.api("GET", "/users/alice/tokens")
    assert status == 200, tokens
    oauth = [t["id"] for t in tokens["api_tokens"] if t.get("oauth_client")]
    assert oauth, tokens
    for token_id in oauth:
        hub.revoke("alice", token_id)
    time.sleep(1.5)  # past the session's second and the token cache's
    assert alice.open(overview)[0] == 401
    assert alice.open(overview)[0] == 401

    # Logging out (a POST from the page's own origin) forgets the session and its renewal.
    bob = hub_console_login(hub, "bob")
    old = bob.cookie(SESSION).value
    bob.opener.addheaders = [("Accept", "text/html"), ("Origin", hub.url)]
    status, _, body = bob.open(f"{hub.url}{HUB_PREFIX}/console/logout", b"")
    assert status == 200 and b"You have logged out" in body
    assert bob.cookie(SESSION) is None
    # A copy of the old cookie opens nothing, now or once it would have been renewed.
    assert call("GET", overview, headers={"Cookie": f"{SESSION}={old}"}).status == 401
    time.sleep(1.5)
    assert call("GET", overview, headers={"Cookie": f"{SESSION}={old}"}).status == 401
