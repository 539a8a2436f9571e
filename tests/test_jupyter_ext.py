"""The Jupyter server extension (dask_gateway_jupyter) against a real gateway.

Each route is called over HTTP on a real `jupyter server` process whose extension talks to
the session gateway, as the sidebar would call it: Jupyter auth, XSRF on writes, gateway
errors passed through as JSON with their status.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from support import waiting
from support.gateway_process import GatewayProcess, _kill_leftovers, free_port
from support.http_helpers import basic
from support.jupyter_server import USER, JupyterServerProcess, gateway_env

BIN = Path(sys.executable).parent
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


#: Rendering a dashboard page can hold a scheduler's event loop for seconds on a busy
#: machine; the shared test config fails a cluster after 4 s without a heartbeat.
PATIENT_GATEWAY = ["--LocalBackend.cluster_heartbeat_timeout=60"]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    """This module's own gateway (the shared one fails busy schedulers too quickly)."""
    data_dir = tmp_path_factory.mktemp("gateway-jupyter-ext")
    gw = GatewayProcess(data_dir, PATIENT_GATEWAY)
    try:
        gw.start()
        yield gw
    finally:
        code = gw.stop()
        _kill_leftovers(data_dir)
    assert code == 0, gw.log()


@pytest.fixture(scope="module")
def jupyter(gateway, tmp_path_factory):
    server = JupyterServerProcess(tmp_path_factory.mktemp("jupyter"), gateway_env(gateway.address))
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def api(jupyter):
    with jupyter.client() as client:
        yield client


wait_for = functools.partial(waiting.wait_for, timeout=60, interval=0.3)


def find(api: httpx.Client, name: str) -> dict | None:
    r = api.get("clusters")
    assert r.status_code == 200, r.text
    return next((c for c in r.json()["clusters"] if c["name"] == name), None)


# -- the extension is installed and enabled ------------------------------------------------


def test_extensions_enabled_after_pip_install():
    """`pip install .` alone enables both halves (scripts/test.sh installs non-editable)."""
    env = {**os.environ}
    for var in ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_PATH", "JUPYTER_CONFIG_PATH"):
        env.pop(var, None)
    jupyter = shutil.which("jupyter", path=str(BIN)) or str(BIN / "jupyter")
    server = subprocess.run(
        [jupyter, "server", "extension", "list"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = _ANSI.sub("", server.stdout + server.stderr)
    assert "dask_gateway_jupyter enabled" in out, out
    assert "Validating dask_gateway_jupyter" in out and "dask_gateway_jupyter" in out
    lab = subprocess.run(
        [jupyter, "labextension", "list"], env=env, capture_output=True, text=True, timeout=120
    )
    out = _ANSI.sub("", lab.stdout + lab.stderr)
    line = next((ln for ln in out.splitlines() if "dask-gateway-jupyterlab" in ln), "")
    assert "enabled" in line and "OK" in line, out
    prefix = Path(sys.prefix)
    assert (prefix / "share/jupyter/labextensions/dask-gateway-jupyterlab/package.json").exists()
    assert (prefix / "etc/jupyter/jupyter_server_config.d/dask_gateway_jupyter.json").exists()


# -- Jupyter's own protection --------------------------------------------------------------


def test_routes_need_jupyter_auth(jupyter):
    for method, path in (
        ("GET", "clusters"),
        ("GET", "options"),
        ("POST", "clusters"),
        ("DELETE", "clusters/x"),
        ("POST", "clusters/x/scale"),
        ("GET", "clusters/x/dashboard"),
    ):
        r = httpx.request(method, f"{jupyter.url}/dask-gateway/{path}", timeout=30)
        assert r.status_code == 403, (method, path, r.status_code, r.text)
    r = httpx.get(
        f"{jupyter.url}/dask-gateway/clusters", headers={"Authorization": "token wrong"}, timeout=30
    )
    assert r.status_code == 403


def test_writes_need_xsrf_with_cookie_auth(jupyter):
    """A browser session (cookie) must send the XSRF token on writes; reads work without."""
    with httpx.Client(base_url=jupyter.url, timeout=60) as browser:
        r = browser.get("/login", params={"next": "/tree"})
        assert r.status_code == 200
        r = browser.post(
            "/login", data={"password": jupyter.token, "_xsrf": browser.cookies.get("_xsrf")}
        )
        assert r.status_code in (200, 302), r.text
        xsrf = browser.cookies.get("_xsrf")
        assert xsrf and any(k.startswith("username-") for k in browser.cookies.keys())

        r = browser.get("/dask-gateway/clusters")
        assert r.status_code == 200, r.text

        body = json.dumps({"cluster_options": {"worker_cores": 99}})
        r = browser.post("/dask-gateway/clusters", content=body)
        assert r.status_code == 403, r.text
        assert r.json()["message"] == "'_xsrf' argument missing from POST"
        r = browser.post("/dask-gateway/clusters/x/scale", content='{"count": 1}')
        assert r.status_code == 403
        r = browser.delete("/dask-gateway/clusters/x")
        assert r.status_code == 403

        # With the header the request reaches the gateway (which rejects the value).
        r = browser.post("/dask-gateway/clusters", content=body, headers={"X-XSRFToken": xsrf})
        assert r.status_code == 422, r.text
        assert r.json()["error"] == "worker_cores must be <= 4, got 99"


# -- reads ---------------------------------------------------------------------------------


def test_options_spec(api):
    r = api.get("options")
    assert r.status_code == 200, r.text
    fields = {f["field"]: f for f in r.json()["cluster_options"]}
    assert list(fields) == ["worker_cores", "worker_memory", "environment"]
    assert fields["worker_cores"] == {
        "field": "worker_cores",
        "label": "Worker Cores",
        "default": 1,
        "spec": {"type": "int", "min": 1, "max": 4},
    }
    assert fields["worker_memory"]["spec"] == {"type": "float", "min": 0.25, "max": 4}
    assert fields["environment"]["spec"] == {"type": "select", "options": ["basic", "tensorflow"]}
    assert fields["environment"]["default"] == "basic"


def test_list_is_json_and_only_this_users(api, gateway):
    from dask_gateway.auth import BasicAuth

    other = gateway.new_gateway(auth=BasicAuth("someone-else"))
    name = other.submit()
    try:
        r = api.get("clusters")
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("application/json")
        data = r.json()
        assert data["address"] == gateway.address
        assert name not in [c["name"] for c in data["clusters"]]
    finally:
        other.stop_cluster(name)
        other.close()


# -- create validation ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "body, status, message",
    [
        ({"cluster_options": {"worker_cores": 10}}, 422, "worker_cores must be <= 4, got 10"),
        ({"cluster_options": {"worker_cores": 0}}, 422, "worker_cores must be >= 1, got 0"),
        (
            {"cluster_options": {"worker_cores": "2"}},
            422,
            "worker_cores must be an integer, got '2'",
        ),
        ({"cluster_options": {"worker_memory": 5}}, 422, "worker_memory must be <= 4, got 5.0"),
        (
            {"cluster_options": {"environment": "gpu"}},
            422,
            "'gpu' is not a valid option for environment",
        ),
        ({"cluster_options": {"bogus": 1}}, 422, "No option 'bogus' available"),
        ({"cluster_options": [1]}, 422, "cluster_options must be an object of field: value"),
        ([1, 2], 400, "Request body must be a JSON object"),
    ],
)
def test_create_rejects_bad_options(api, body, status, message):
    r = api.post("clusters", content=json.dumps(body))
    assert r.status_code == status, r.text
    assert r.json() == {"error": message, "message": message}


def test_create_rejects_invalid_json(api):
    r = api.post("clusters", content=b"{not json")
    assert r.status_code == 400
    assert r.json()["error"] == "Request body must be valid JSON"


# -- a cluster's whole life through the extension -----------------------------------------


def test_cluster_lifecycle(api, jupyter):
    r = api.post(
        "clusters",
        content=json.dumps({"cluster_options": {"worker_cores": 2, "worker_memory": 0.5}}),
    )
    assert r.status_code == 201, r.text
    name = r.json()["name"]
    try:
        cluster = wait_for(
            lambda: (c := find(api, name)) and c["status"] == "RUNNING" and c, what="RUNNING"
        )
        assert cluster["options"] == {
            "worker_cores": 2,
            "worker_memory": 0.5,
            "environment": "basic",
        }
        assert (cluster["workers"], cluster["cores"], cluster["memory"]) == (0, 0, 0)
        assert 0 <= cluster["age"] < 120
        assert cluster["adapt"] is None
        assert cluster["dashboard_link"].endswith(f"/clusters/{name}/status")

        r = api.get(f"clusters/{name}")
        assert r.status_code == 200 and r.json()["status"] == "RUNNING"

        r = api.post(f"clusters/{name}/scale", content='{"count": 2}')
        assert r.status_code == 200, r.text
        assert r.json() == {"ok": True, "msg": None}
        cluster = wait_for(
            lambda: (c := find(api, name)) and c["workers"] == 2 and c, what="2 workers"
        )
        assert cluster["cores"] == 4
        assert cluster["memory"] == 2 * int(0.5 * 2**30)
        assert cluster["requested"] == 2

        r = api.post(f"clusters/{name}/adapt", content=json.dumps({"minimum": 1, "maximum": 2}))
        assert r.status_code == 200, r.text
        assert r.json() == {"ok": True, "msg": None}
        assert find(api, name)["adapt"] == {"minimum": 1, "maximum": 2}

        # The gateway clamps to its limit (10 workers) and says so.
        r = api.post(f"clusters/{name}/adapt", content=json.dumps({"minimum": 1, "maximum": 50}))
        assert r.status_code == 200, r.text
        assert r.json()["ok"] is False
        assert "would exceed resource limit of 10 workers" in r.json()["msg"]

        r = api.post(f"clusters/{name}/adapt", content=json.dumps({"active": False}))
        assert r.status_code == 200, r.text
        assert find(api, name)["adapt"] is None

        r = api.get(f"clusters/{name}/dashboard")
        assert r.status_code == 200, r.text
        assert r.json() == {
            "url": f"/dask-gateway/dashboard/{name}/status",
            "gateway_url": cluster["dashboard_link"],
        }
        check_dashboard_relay(jupyter, name, cluster["dashboard_link"])

        r = api.delete(f"clusters/{name}")
        assert r.status_code == 204
        # It stays listed, ended, for the sidebar to show dimmed until dismissed.
        stopped = wait_for(
            lambda: (c := find(api, name)) and c["status"] == "STOPPED" and c, what="STOPPED"
        )
        assert stopped["reason"] is None and isinstance(stopped["stop_time"], int)
        assert stopped["adapt"] is None

        # A stopped cluster can no longer be scaled: the gateway's 409 passes through.
        r = api.post(f"clusters/{name}/scale", content='{"count": 1}')
        assert r.status_code == 409, r.text
        assert r.json()["error"] == f"cluster {name} is not running"
        r = api.get(f"clusters/{name}/dashboard")
        assert r.status_code == 409
        assert "has no dashboard" in r.json()["error"]
        # Stopping twice is fine, as on the gateway.
        assert api.delete(f"clusters/{name}").status_code == 204
    finally:
        api.delete(f"clusters/{name}")


def check_dashboard_relay(jupyter: JupyterServerProcess, name: str, gateway_url: str) -> None:
    """The dashboard needs gateway credentials; this server adds them, the browser has none."""
    assert httpx.get(gateway_url, timeout=30).status_code == 401
    base = f"{jupyter.url}/dask-gateway/dashboard/{name}"
    # Jupyter's auth protects the relay: no token, no dashboard.
    r = httpx.get(f"{base}/status", timeout=30)
    assert r.status_code in (302, 403)
    with httpx.Client(headers={"Authorization": f"token {jupyter.token}"}, timeout=60) as c:
        r = c.get(base)
        assert r.status_code == 302 and r.headers["location"] == f"/dask-gateway/dashboard/{name}/"
        page = c.get(f"{base}/status")
        assert page.status_code == 200, page.text
        assert page.headers["content-type"].startswith("text/html")
        assert "<title>Dask Diagnostic UI</title>" in page.text and "bokeh" in page.text
        assert "set-cookie" not in page.headers  # the gateway's session stays here
        css = c.get(f"{base}/statics/css/base.css")
        assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
        missing = c.get(f"{base}/no-such-page")
        assert missing.status_code == 404


def test_dashboard_relay_of_unknown_cluster(jupyter):
    with httpx.Client(headers={"Authorization": f"token {jupyter.token}"}, timeout=60) as c:
        r = c.get(f"{jupyter.url}/dask-gateway/dashboard/nope/status")
        assert r.status_code == 404


def test_cluster_created_from_python_is_listed(api, gateway):
    """Clusters made elsewhere (a notebook) show up: the list is the gateway's."""
    from dask_gateway.auth import BasicAuth

    gw = gateway.new_gateway(auth=BasicAuth(USER))
    name = gw.submit()
    try:
        assert wait_for(lambda: find(api, name), what="listed") is not None
    finally:
        gw.stop_cluster(name)
        gw.close()


# -- errors from the gateway and bad requests ----------------------------------------------


def test_unknown_cluster_is_the_gateways_404(api):
    for method, path, body in (
        ("GET", "clusters/nope", None),
        ("POST", "clusters/nope/scale", '{"count": 1}'),
        ("POST", "clusters/nope/adapt", '{"minimum": 0, "maximum": 1}'),
        ("GET", "clusters/nope/dashboard", None),
    ):
        r = api.request(method, path, content=body)
        assert r.status_code == 404, (path, r.text)
        assert r.json()["error"] == "Cluster nope not found"
    # Stopping an unknown cluster is a no-op on the gateway.
    assert api.delete("clusters/nope").status_code == 204


@pytest.mark.parametrize(
    "path, body, message",
    [
        ("scale", {"count": -1}, "count must be a non-negative integer, got -1"),
        ("scale", {"count": "2"}, 'count must be a non-negative integer, got "2"'),
        ("scale", {}, "count must be a non-negative integer, got null"),
        ("adapt", {"minimum": 3, "maximum": 1}, "minimum (3) must not exceed maximum (1)"),
        ("adapt", {"minimum": 1.5}, "minimum must be a non-negative integer, got 1.5"),
        ("adapt", {"active": "no"}, 'active must be true or false, got "no"'),
    ],
)
def test_scale_and_adapt_validate_input(api, path, body, message):
    r = api.post(f"clusters/some-cluster/{path}", content=json.dumps(body))
    assert r.status_code == 422, r.text
    assert r.json()["error"] == message


def test_gateway_down_is_a_readable_502(tmp_path):
    port = free_port()  # nothing listens here
    server = JupyterServerProcess(tmp_path, gateway_env(f"http://127.0.0.1:{port}"))
    server.start()
    try:
        with server.client() as api:
            for path in ("clusters", "options"):
                r = api.get(path)
                assert r.status_code == 502, r.text
                msg = r.json()["error"]
                assert msg.startswith(f"Cannot reach the Dask Gateway at http://127.0.0.1:{port}")
    finally:
        server.stop()
    assert "Traceback" not in server.log()


def test_unconfigured_gateway_is_a_readable_503(tmp_path):
    env = {k: "" for k in ("DASK_GATEWAY__ADDRESS",)}
    server = JupyterServerProcess(tmp_path, env)
    server.start()
    try:
        with server.client() as api:
            r = api.get("clusters")
            assert r.status_code == 503, r.text
            assert r.json()["error"].startswith(
                "Dask Gateway is not configured: No dask-gateway address provided"
            )
    finally:
        server.stop()


def test_gateway_auth_failure_passes_through(gateway, tmp_path):
    """A gateway 401 (bad credentials) reaches the browser as 401 with the gateway's words."""
    env = {
        **gateway_env(gateway.address),
        "DASK_GATEWAY__AUTH__TYPE": "jupyterhub",
        "DASK_GATEWAY__AUTH__KWARGS__API_TOKEN": "not-a-hub-token",
    }
    env.pop("DASK_GATEWAY__AUTH__KWARGS__USERNAME")
    server = JupyterServerProcess(tmp_path, env)
    server.start()
    try:
        with server.client() as api:
            r = api.get("clusters")
            assert r.status_code == 401, r.text
            assert r.json()["error"] == "Authentication required"
    finally:
        server.stop()


# -- robustness: what a visitor or a user can send never ends in a traceback --------------


def _log_since(server: JupyterServerProcess, offset: int) -> str:
    with open(server.log_path, "rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


def test_dashboard_relay_without_login_redirects_without_traceback(jupyter):
    """A visitor without a Jupyter login is sent to the login page, and nothing fails.

    The relay's GET awaited what tornado's ``@web.authenticated`` returned, which is None
    when it redirects: each such visit logged a TypeError traceback (mypy's "await of a
    non-awaitable")."""
    offset = jupyter.log_path.stat().st_size
    for method in ("GET", "HEAD"):
        r = httpx.request(method, f"{jupyter.url}/dask-gateway/dashboard/some-cluster/status")
        assert r.status_code == 302, (method, r.status_code)
        assert r.headers["location"].startswith("/login?next=")
    # The legitimate use: with a login, the same path reaches the gateway (no such cluster).
    r = httpx.get(
        f"{jupyter.url}/dask-gateway/dashboard/some-cluster/status",
        headers={"Authorization": f"token {jupyter.token}"},
        timeout=60,
    )
    assert r.status_code == 404
    log = _log_since(jupyter, offset)
    assert "Traceback" not in log and "Uncaught exception" not in log, log


@pytest.mark.parametrize("path", ["clusters", "options/validate"])
def test_deeply_nested_json_is_a_400(api, jupyter, path):
    """JSON nested past Python's recursion limit is a bad request, not an internal error."""
    offset = jupyter.log_path.stat().st_size
    r = api.post(path, content="[" * 100_000)
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "Request body must be valid JSON"
    assert "Traceback" not in _log_since(jupyter, offset)


# -- the form's validation: the client's own Options, through the server ------------------


def _client_messages(gateway, values: dict) -> dict[str, str]:
    """What the Python client itself says about each value (``options[key] = value``)."""
    from dask_gateway.auth import BasicAuth

    gw = gateway.new_gateway(auth=BasicAuth(USER))
    try:
        options = gw.cluster_options()
    finally:
        gw.close()
    messages = {}
    for key, value in values.items():
        try:
            options[key] = value
        except KeyError as e:
            messages[key] = e.args[0]
        except (TypeError, ValueError) as e:
            messages[key] = str(e)
    return messages


def test_validate_options_gives_the_clients_messages(api, gateway):
    bad = {
        "worker_cores": 10,
        "worker_memory": 0,
        "environment": "gpu",
        "bogus": 1,
    }
    r = api.post("options/validate", content=json.dumps({"cluster_options": bad}))
    assert r.status_code == 200, r.text
    errors = r.json()["errors"]
    assert errors == {
        "worker_cores": "worker_cores must be <= 4, got 10",
        "worker_memory": "worker_memory must be >= 0.25, got 0.0",
        "environment": "'gpu' is not a valid option for environment",
        "bogus": "No option 'bogus' available",
    }
    assert errors == _client_messages(gateway, bad)
    # Each field on its own: one bad value does not hide another's message.
    for values, expected in (
        ({"worker_cores": "2"}, {"worker_cores": "worker_cores must be an integer, got '2'"}),
        ({"worker_cores": 2.5}, {"worker_cores": "worker_cores must be an integer, got 2.5"}),
        ({"worker_cores": True}, {"worker_cores": "worker_cores must be an integer, got True"}),
        ({"worker_memory": "a"}, {"worker_memory": "worker_memory must be a float, got 'a'"}),
        ({"worker_cores": 4, "worker_memory": 0.25, "environment": "tensorflow"}, {}),
        ({}, {}),
    ):
        r = api.post("options/validate", content=json.dumps({"cluster_options": values}))
        assert r.status_code == 200, r.text
        assert r.json() == {"errors": expected}, values
        assert expected == _client_messages(gateway, values)


@pytest.mark.parametrize(
    "content, status, message",
    [
        (
            json.dumps({"cluster_options": [1]}),
            422,
            "cluster_options must be an object of field: value",
        ),
        (
            json.dumps({"cluster_options": "x"}),
            422,
            "cluster_options must be an object of field: value",
        ),
        (json.dumps([1]), 400, "Request body must be a JSON object"),
        ("{not json", 400, "Request body must be valid JSON"),
        (b"\xff\xfe", 400, "Request body must be valid JSON"),
    ],
)
def test_validate_options_rejects_bad_requests(api, content, status, message):
    r = api.post("options/validate", content=content)
    assert r.status_code == status, r.text
    assert r.json() == {"error": message, "message": message}


def test_validate_options_needs_jupyter_auth_and_xsrf(jupyter):
    body = json.dumps({"cluster_options": {"worker_cores": 2}})
    url = f"{jupyter.url}/dask-gateway/options/validate"
    assert httpx.post(url, content=body, timeout=30).status_code == 403
    r = httpx.post(url, content=body, headers={"Authorization": "token wrong"}, timeout=30)
    assert r.status_code == 403
    with httpx.Client(base_url=jupyter.url, timeout=60) as browser:
        browser.get("/login", params={"next": "/tree"})
        r = browser.post(
            "/login", data={"password": jupyter.token, "_xsrf": browser.cookies.get("_xsrf")}
        )
        assert r.status_code in (200, 302), r.text
        r = browser.post("/dask-gateway/options/validate", content=body)
        assert r.status_code == 403, r.text
        r = browser.post(
            "/dask-gateway/options/validate",
            content=body,
            headers={"X-XSRFToken": browser.cookies.get("_xsrf")},
        )
        assert r.status_code == 200 and r.json() == {"errors": {}}, r.text


def test_validate_options_unreachable_gateway_is_a_502(tmp_path):
    port = free_port()
    server = JupyterServerProcess(tmp_path, gateway_env(f"http://127.0.0.1:{port}"))
    server.start()
    try:
        with server.client() as api:
            r = api.post("options/validate", content='{"cluster_options": {}}')
            assert r.status_code == 502, r.text
            assert r.json()["error"].startswith("Cannot reach the Dask Gateway")
    finally:
        server.stop()
    assert "Traceback" not in server.log()


#: Each user may ask for as many cores as the gateway allows them: alice 2, bob 3, admins 8.
PER_USER_OPTIONS = """
from dask_gateway_server.options import Integer, Options

c.Authenticator.admin_users = {"dgj-admin"}
LIMITS = {"dgj-alice": 2, "dgj-bob": 3}


def options(user):
    top = 8 if user.admin else LIMITS.get(user.name, 1)
    return Options(Integer("worker_cores", default=1, min=1, max=top, label="Worker Cores"))


c.Backend.cluster_options = options
"""


def test_validate_options_two_users_and_an_admin(tmp_path):
    """Each Jupyter server validates with its own user's gateway options and credentials.

    Alice, bob and an admin each run a Jupyter server holding their own gateway credentials;
    the gateway offers each of them a different limit. Alice cannot reach bob's server with
    her token, and the gateway credentials of bob she sends along through her own server are
    never used: her answers stay hers."""
    config = tmp_path / "per_user_gateway_config.py"
    config.write_text(PER_USER_OPTIONS)
    gw = GatewayProcess(tmp_path / "gateway", config=config)
    servers: dict[str, JupyterServerProcess] = {}
    try:
        gw.start()
        for user in ("dgj-alice", "dgj-bob", "dgj-admin"):
            servers[user] = JupyterServerProcess(
                tmp_path / user, gateway_env(gw.address, user), token=f"{user}-secret-token"
            )
            servers[user].start()

        def validate(
            user: str, cores, token: str | None = None, headers: dict | None = None
        ) -> httpx.Response:
            """POST as a script with a Jupyter token would (in the query: the Authorization
            header stays free for other credentials)."""
            server = servers[user]
            return httpx.post(
                f"{server.url}/dask-gateway/options/validate",
                params={"token": token or server.token},
                content=json.dumps({"cluster_options": {"worker_cores": cores}}),
                headers=headers or {},
                timeout=60,
            )

        def error(r: httpx.Response) -> str | None:
            assert r.status_code == 200, r.text
            return r.json()["errors"].get("worker_cores")

        # The legitimate use: each user's own limit.
        assert error(validate("dgj-alice", 2)) is None
        assert error(validate("dgj-alice", 3)) == "worker_cores must be <= 2, got 3"
        assert error(validate("dgj-bob", 3)) is None
        assert error(validate("dgj-bob", 4)) == "worker_cores must be <= 3, got 4"
        assert error(validate("dgj-admin", 8)) is None
        assert error(validate("dgj-admin", 9)) == "worker_cores must be <= 8, got 9"
        # Creating checks the same way: alice cannot start a 3-core cluster.
        with servers["dgj-alice"].client() as api:
            r = api.post("clusters", content=json.dumps({"cluster_options": {"worker_cores": 3}}))
            assert r.status_code == 422 and r.json()["error"] == "worker_cores must be <= 2, got 3"

        # Alice's token does not open bob's server (nor the admin's).
        for other in ("dgj-bob", "dgj-admin"):
            r = validate(other, 3, token=servers["dgj-alice"].token)
            assert r.status_code == 403, r.text
        # Bob's (and the admin's) gateway credentials, sent along to alice's own server, are
        # never forwarded: the server speaks to the gateway as alice only.
        for other in ("dgj-bob", "dgj-admin"):
            r = httpx.get(f"{gw.address}/api/v1/clusters/", headers=basic(other), timeout=30)
            session = r.cookies.get("dask-gateway-session")
            assert r.status_code == 200 and session
            r = validate(
                "dgj-alice",
                3,
                headers={"Cookie": f"dask-gateway-session={session}", **basic(other)},
            )
            assert error(r) == "worker_cores must be <= 2, got 3"
    finally:
        for server in servers.values():
            server.stop()
        gw.stop()
        _kill_leftovers(gw.data_dir)
    for server in servers.values():
        assert "Traceback" not in server.log(), server.log()
