"""The gateway as a JupyterHub service behind the hub's proxy, attacked from browsers.

Findings 7 and 10 of the security review, performed with a real hub: the session cookie
must stay with the gateway's path (not reach users' servers on the same origin) and be
Secure under HTTPS; a browser login cannot be finished in another browser (login CSRF);
OAuth codes stay out of the log; forwarded headers do not choose the redirect URI.
"""

from __future__ import annotations

import http.cookiejar
import http.server
import os
import re
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import ClassVar

import pytest
from support.gateway_process import GatewayProcess, _kill_leftovers, free_port
from support.http_helpers import basic, call
from support.hub import Hub
from support.paths import CONFIGS

PREFIX = "/services/dask-gateway"
SESSION = "dask-gateway-session"


@pytest.fixture(scope="module")
def hub_prefix(tmp_path_factory):
    """A real hub and a gateway that is its service at /services/dask-gateway, reached by
    browsers through the hub's proxy."""
    tmp = tmp_path_factory.mktemp("hubweb")
    # Sessions last longer than the shared configuration's 2 s: a browser's session must
    # still be there when the tests look where it goes.
    gw = GatewayProcess(
        tmp / "gateway",
        [f"--Proxy.prefix={PREFIX}", "--JupyterHubAuthenticator.token_cache_ttl=600"],
        config=CONFIGS / "hub_gateway_config.py",
    )
    hub = Hub(tmp / "hub", gw.address)
    hub.oauth_redirect_uri = f"{hub.url}{PREFIX}/oauth_callback"
    hub.start()
    os.environ["TEST_HUB_API_URL"] = hub.api_url
    os.environ["TEST_HUB_GATEWAY_TOKEN"] = hub.gateway_token
    try:
        gw.start(health_path=f"{PREFIX}/api/health")
        for user in ("alice", "bob"):
            hub.add_user(user)
        hub.add_user("hubadmin", admin=True)
        yield hub, gw
    finally:
        gw.stop()
        _kill_leftovers(gw.data_dir)
        hub.stop()
        os.environ.pop("TEST_HUB_API_URL", None)
        os.environ.pop("TEST_HUB_GATEWAY_TOKEN", None)


def token_header(token: str) -> dict:
    return {"Authorization": f"jupyterhub {token}"}


class StopAtCallback(urllib.request.HTTPRedirectHandler):
    """Follows redirects, except to the gateway's OAuth callback: that URL is kept."""

    def __init__(self):
        self.callback: str | None = None

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if "/oauth_callback" in newurl and self.callback is None:
            self.callback = newurl
            return None
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class Browser:
    """A browser of sorts: a cookie jar (RFC 6265 paths) that asks for HTML; with
    ``stop_at_callback`` it keeps the first OAuth callback URL instead of following it."""

    def __init__(self, stop_at_callback: bool = False):
        self.jar = http.cookiejar.CookieJar()
        self.stop = StopAtCallback()
        if not stop_at_callback:
            self.stop.callback = "followed"
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(self.jar), self.stop
        )
        self.opener.addheaders = [("Accept", "text/html")]

    def open(self, url: str, data: bytes | None = None):
        try:
            with self.opener.open(url, data, timeout=30) as r:
                return r.status, r.url, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.url, e.read()

    def hub_login(self, hub: Hub, user: str) -> None:
        self.open(f"{hub.url}/hub/login")
        xsrf = next(c.value for c in self.jar if c.name == "_xsrf")
        form = urllib.parse.urlencode({"username": user, "password": "x", "_xsrf": xsrf})
        self.open(f"{hub.url}/hub/login", form.encode())

    def cookie(self, name: str):
        return next((c for c in self.jar if c.name == name), None)


def create_cluster(hub: Hub, user: str) -> tuple[str, str]:
    token, _ = hub.token(user)
    base = f"{hub.url}{PREFIX}/api/v1/clusters"
    r = call("POST", f"{base}/", {}, token_header(token))
    assert r.status == 201, r.body
    name = r.json()["name"]
    for _ in range(600):
        if (
            call("GET", f"{base}/{name}?wait", headers=token_header(token)).json()["status"]
            == "RUNNING"
        ):
            return name, token
        time.sleep(0.1)
    raise AssertionError(f"{name} never ran")


class _Spy(http.server.BaseHTTPRequestHandler):
    """Bob's server: records the Cookie header of every request."""

    seen: ClassVar[list[str]] = []

    def do_GET(self):
        type(self).seen.append(self.headers.get("Cookie") or "")
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"bob's server")

    def log_message(self, *args):
        pass


def test_session_cookie_stays_with_the_gateway(hub_prefix):
    """Bob's server behind the same hub never receives alice's gateway session."""
    hub, _ = hub_prefix
    token, _ = hub.token("alice")
    r = call("GET", f"{hub.url}{PREFIX}/api/v1/clusters/", headers=token_header(token))
    assert r.status == 200
    cookie = next(c for c in r.headers.get_all("Set-Cookie") if c.startswith(SESSION))
    attrs = {a.strip().split("=")[0].lower(): a.strip() for a in cookie.split(";")[1:]}
    assert attrs["path"] == f"Path={PREFIX}" and "httponly" in attrs
    assert attrs["samesite"].lower() == "samesite=lax" and "secure" not in attrs  # plain HTTP

    spy = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), _Spy)
    threading.Thread(target=spy.serve_forever, daemon=True).start()
    try:
        hub.add_proxy_route("/user/bob", f"http://127.0.0.1:{spy.server_address[1]}")
        # Alice's browser: logged in to the hub, then to the gateway through its OAuth.
        alice = Browser()
        alice.hub_login(hub, "alice")
        name, _ = create_cluster(hub, "alice")
        status, url, _ = alice.open(f"{hub.url}{PREFIX}/clusters/{name}/status")
        assert status == 200 and f"{PREFIX}/clusters/{name}/~" in url, (status, url)
        session = alice.cookie(SESSION)
        assert session is not None and session.path == PREFIX
        # The attack: a link to bob's server, which records what the browser sends it.
        _Spy.seen.clear()
        status, _, body = alice.open(f"{hub.url}/user/bob/collect")
        assert status == 200 and body == b"bob's server"
        assert _Spy.seen and not [c for c in _Spy.seen if SESSION in c], _Spy.seen
        # The gateway still gets it.
        status, _, body = alice.open(f"{hub.url}{PREFIX}/api/v1/clusters/")
        assert status == 200 and name.encode() in body
    finally:
        spy.shutdown()
        spy.server_close()


def test_session_cookie_is_secure_under_https(tmp_path):
    from support.tls import write_self_signed

    cert, key = write_self_signed(str(tmp_path), ["localhost"])
    ctx = ssl.create_default_context(cafile=cert)
    ctx.check_hostname = False
    gw = GatewayProcess(
        tmp_path / "gw", [f"--Proxy.tls_cert={cert}", f"--Proxy.tls_key={key}"], ssl_context=ctx
    )
    gw.start()
    try:
        assert gw.address.startswith("https://")
        jar = http.cookiejar.CookieJar()
        opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(jar), urllib.request.HTTPSHandler(context=ctx)
        )
        req = urllib.request.Request(f"{gw.address}/api/v1/clusters/", headers=basic("alice"))
        with opener.open(req, timeout=30) as r:
            cookie = next(c for c in r.headers.get_all("Set-Cookie") if c.startswith(SESSION))
        attrs = [a.strip().lower() for a in cookie.split(";")[1:]]
        assert "secure" in attrs and "httponly" in attrs and "samesite=lax" in attrs
        assert "path=/" in attrs
        # A browser sends it back over HTTPS only, never in clear text to the same host.
        plain = urllib.request.Request(f"http://127.0.0.1:{gw.port}/api/v1/clusters/")
        jar.add_cookie_header(plain)
        assert plain.get_header("Cookie") is None
        secure = urllib.request.Request(f"{gw.address}/api/v1/clusters/")
        jar.add_cookie_header(secure)
        assert SESSION in (secure.get_header("Cookie") or "")
        with opener.open(secure, timeout=30) as r:
            assert r.status == 200  # the session alone reads
    finally:
        gw.stop()
        _kill_leftovers(gw.data_dir)


def test_login_cannot_be_finished_in_another_browser(hub_prefix):
    """Login CSRF: bob sends alice the callback link of his own login; her browser must not
    end up in a gateway session as bob. Bob himself, and an admin, still log in."""
    hub, gw = hub_prefix
    name, _ = create_cluster(hub, "bob")
    link = f"{hub.url}{PREFIX}/clusters/{name}/status"

    bob = Browser(stop_at_callback=True)
    bob.hub_login(hub, "bob")
    status, _, _ = bob.open(link)
    callback = bob.stop.callback
    assert status == 302 and callback and "code=" in callback, (status, callback)
    binding = bob.cookie(f"{SESSION}-oauth-state")
    assert binding is not None and binding.path == f"{PREFIX}/oauth_callback"
    code = urllib.parse.parse_qs(urllib.parse.urlsplit(callback).query)["code"][0]

    # Alice opens bob's link: with no login of hers under way, and with one.
    for started in (False, True):
        alice = Browser(stop_at_callback=True)
        alice.hub_login(hub, "alice")
        if started:  # her own login, stopped at the hub's answer
            assert alice.open(link)[0] == 302
            assert alice.cookie(f"{SESSION}-oauth-state") is not None
        status, _, body = alice.open(callback)
        assert status == 400 and b"another browser" in body, (status, body)
        assert alice.cookie(SESSION) is None

    # Bob finishes his own login: his dashboard, with a session of his.
    status, url, body = bob.open(callback)
    assert status == 200 and f"{PREFIX}/clusters/{name}/~" in url and b"Bokeh" in body
    assert bob.cookie(SESSION) is not None and bob.cookie(f"{SESSION}-oauth-state") is None
    # Alice, logged in for real, is refused bob's dashboard; the hub's admin sees it.
    alice = Browser()
    alice.hub_login(hub, "alice")
    assert alice.open(link)[0] == 403
    admin = Browser()
    admin.hub_login(hub, "hubadmin")
    status, url, _ = admin.open(link)
    assert status == 200 and f"{PREFIX}/clusters/{name}/~" in url

    # Codes and states never reach the gateway's log; the callback's path does.
    log = gw.log()
    assert code not in log and "oauth_callback?" not in log
    assert re.search(r"(302|400) GET /services/dask-gateway/oauth_callback ", log), log[-3000:]


def test_forwarded_headers_do_not_choose_the_redirect_uri(hub_prefix):
    hub, _ = hub_prefix
    name, _ = create_cluster(hub, "alice")
    forged = {
        "Accept": "text/html",
        "X-Forwarded-Host": "evil.example",
        "X-Forwarded-Proto": "https",
    }
    req = urllib.request.Request(f"{hub.url}{PREFIX}/clusters/{name}/status", headers=forged)

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args):
            return None

    try:
        urllib.request.build_opener(NoRedirect()).open(req, timeout=30)
        raise AssertionError("expected a redirect to the hub's login")
    except urllib.error.HTTPError as e:
        assert e.code == 302
        location = e.headers["Location"]
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(location).query)
    assert query["redirect_uri"] == [f"{hub.url}{PREFIX}/oauth_callback"], location
