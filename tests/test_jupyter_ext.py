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
import time
from pathlib import Path

import httpx
import pytest
import waiting
from gateway_process import GatewayProcess, _kill_leftovers, free_port

TOKEN = "dgj-test-token"
USER = "jupyter-ext-user"
BIN = Path(sys.executable).parent
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class JupyterServerProcess:
    """`jupyter server` (or `jupyter lab`) in a subprocess with scratch Jupyter dirs."""

    def __init__(
        self,
        root: Path,
        env: dict[str, str],
        app: str = "jupyter_server",
        token: str = TOKEN,
        notebook_dir: Path | None = None,
    ):
        self.root = root
        self.port = free_port()
        self.token = token
        self.app = app
        self.notebook_dir = notebook_dir or root / "notebooks"
        self.log_path = root / f"{app}.log"
        self.env = {**os.environ, **env}
        for var, sub in (
            ("JUPYTER_CONFIG_DIR", "config"),
            ("JUPYTER_DATA_DIR", "data"),
            ("JUPYTER_RUNTIME_DIR", "runtime"),
            ("JUPYTERLAB_SETTINGS_DIR", "lab-settings"),
            ("JUPYTERLAB_WORKSPACES_DIR", "lab-workspaces"),
        ):
            path = root / sub
            path.mkdir(parents=True, exist_ok=True)
            self.env[var] = str(path)
        if app == "jupyter_server":
            # Only our extension: the REST tests need no Lab (and the machine is shared).
            others = (
                "jupyterlab",
                "jupyter_lsp",
                "jupyter_server_terminals",
                "notebook_shim",
                "notebook",
            )
            config = {
                "ServerApp": {
                    "jpserver_extensions": {
                        **{name: False for name in others},
                        "dask_gateway_jupyter": True,
                    }
                }
            }
            (root / "config" / "jupyter_server_config.json").write_text(json.dumps(config))
        self.env.pop("JUPYTERHUB_API_TOKEN", None)
        self.env["PYDEVD_DISABLE_FILE_VALIDATION"] = "1"
        self.notebook_dir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 180) -> None:
        cmd = [
            sys.executable,
            "-m",
            self.app,
            "--no-browser",
            "--allow-root",
            f"--port={self.port}",
            "--ip=127.0.0.1",
            f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={self.notebook_dir}",
            "--ServerApp.port_retries=0",
        ]
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.app} exited at start:\n{self.log()}")
            try:
                r = httpx.get(f"{self.url}/api/status", params={"token": self.token}, timeout=2)
                if r.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"{self.app} did not start:\n{self.log()}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-20000:]
        except OSError:
            return ""

    def client(self) -> httpx.Client:
        """An API client that authenticates with the token header (no XSRF needed)."""
        return httpx.Client(
            base_url=f"{self.url}/dask-gateway/",
            headers={"Authorization": f"token {self.token}"},
            timeout=60,
        )


def gateway_env(address: str, user: str = USER) -> dict[str, str]:
    """Dask config for the extension, the way a user or an admin would set it."""
    return {
        "DASK_GATEWAY__ADDRESS": address,
        "DASK_GATEWAY__AUTH__TYPE": "basic",
        "DASK_GATEWAY__AUTH__KWARGS__USERNAME": user,
    }


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
    line = next((l for l in out.splitlines() if "dask-gateway-jupyterlab" in l), "")
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
        assert find(api, name) is None

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
