"""Unit tests of the client: options, config, auth, cookies, TLS settings, and the REST
error mapping against a tiny in-test tornado server speaking the gateway wire protocol."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime
import json
import ssl
import sys
import threading
import warnings
from importlib.metadata import version
from pathlib import Path

import dask.config
import pytest
from tornado import web
from tornado.httpclient import HTTPClientError
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

import dask_gateway
from dask_gateway import (
    BasicAuth,
    ClusterEvent,
    Gateway,
    GatewayCluster,
    GatewayClusterError,
    GatewayServerError,
    GatewayUnsupportedError,
    GatewayWarning,
    JupyterHubAuth,
    KerberosAuth,
    Options,
)
from dask_gateway._http import CookieJar, proxy_settings
from dask_gateway.auth import GatewayAuth, get_auth
from dask_gateway.client import ClusterReport, ClusterStatus, GatewaySecurity
from dask_gateway.comm import _split_address
from dask_gateway.config import (
    format_template,
    resolve_address,
    resolve_proxy_address,
    resolve_public_address,
)
from dask_gateway.errors import GatewayRequestError
from dask_gateway.events import EventPage
from dask_gateway.options import Float, Integer, Mapping, Select, String

OPTIONS_SPEC = {
    "cluster_options": [
        {
            "field": "worker_cores",
            "label": "Worker Cores",
            "default": 1,
            "spec": {"type": "int", "min": 1, "max": 4},
        },
        {
            "field": "worker_memory",
            "label": "Worker Memory",
            "default": 1,
            "spec": {"type": "float", "min": 1.0, "max": 8.5},
        },
        {
            "field": "environment",
            "label": "Environment",
            "default": "basic",
            "spec": {"type": "select", "options": ["basic", "tensorflow"]},
        },
        {"field": "image", "label": "image", "default": "", "spec": {"type": "string"}},
        {"field": "debug", "label": "debug", "default": False, "spec": {"type": "bool"}},
        {"field": "env", "label": "env", "default": {}, "spec": {"type": "mapping"}},
    ]
}


# ---------------------------------------------------------------------------- options


def test_options_from_spec_defaults_and_repr():
    opts = Options._from_spec(OPTIONS_SPEC)
    assert dict(opts) == {
        "worker_cores": 1,
        "worker_memory": 1.0,
        "environment": "basic",
        "image": "",
        "debug": False,
        "env": {},
    }
    assert isinstance(opts.worker_memory, float)
    assert repr(opts).startswith("Options<worker_cores=1, worker_memory=1.0, environment='basic'")
    assert len(opts) == 6 and list(opts)[0] == "worker_cores"
    assert "worker_cores" in dir(opts)


def test_options_set_and_validate():
    opts = Options._from_spec(OPTIONS_SPEC)
    opts.worker_cores = 2
    opts["worker_memory"] = 3  # ints are accepted for floats
    opts.environment = "tensorflow"
    opts.env = {"A": "1"}
    assert opts["worker_cores"] == 2 and opts.worker_memory == 3.0
    assert opts.environment == "tensorflow" and opts["env"] == {"A": "1"}

    with pytest.raises(ValueError, match=r"^worker_cores must be <= 4, got 10$"):
        opts.worker_cores = 10
    with pytest.raises(ValueError, match=r"^worker_cores must be >= 1, got 0$"):
        opts.worker_cores = 0
    with pytest.raises(TypeError, match=r"^worker_cores must be an integer, got 'a'$"):
        opts.worker_cores = "a"
    with pytest.raises(TypeError, match="must be an integer"):
        opts.worker_cores = True
    with pytest.raises(ValueError, match=r"^worker_memory must be <= 8.5, got 9.0$"):
        opts.worker_memory = 9
    with pytest.raises(ValueError, match=r"^'medium' is not a valid option for environment$"):
        opts.environment = "medium"
    with pytest.raises(TypeError, match="image must be a string"):
        opts.image = 1
    with pytest.raises(TypeError, match="debug must be a bool"):
        opts.debug = 1
    with pytest.raises(TypeError, match="env must be a mapping"):
        opts.env = []
    # failed sets leave the old value
    assert opts.worker_cores == 2


def test_options_unknown_and_delete():
    opts = Options._from_spec(OPTIONS_SPEC)
    with pytest.raises(AttributeError, match="No option 'nope' available"):
        opts.nope  # noqa: B018  (the attribute read is what raises)
    with pytest.raises(AttributeError, match="No option 'nope' available"):
        opts.nope = 1
    with pytest.raises(KeyError, match="No option 'nope' available"):
        opts["nope"]
    with pytest.raises(KeyError, match="No option 'nope' available"):
        opts.update(nope=1)
    with pytest.raises(TypeError):
        del opts["worker_cores"]
    with pytest.raises(TypeError):
        del opts.worker_cores


def test_options_constructed_directly():
    opts = Options(
        Integer("n", default=2, max=3),
        Float("x", default=0.5),
        Select("s", options=["a", "b"]),
        String("t"),
        Mapping("m"),
        n=3,
    )
    assert dict(opts) == {"n": 3, "x": 0.5, "s": "a", "t": "", "m": {}}
    with pytest.raises(ValueError, match="n must be <= 3, got 4"):
        Options(Integer("n", max=3), n=4)


def test_options_mapping_defaults_not_shared():
    spec = {"cluster_options": [{"field": "m", "default": {"a": [1]}, "spec": {"type": "mapping"}}]}
    a, b = Options._from_spec(spec), Options._from_spec(spec)
    a.m["a"].append(2)
    assert b.m == {"a": [1]}


def test_options_spec_forward_compatibility():
    spec = {
        "cluster_options": [
            {
                "field": "n",
                "label": "N",
                "default": 1,
                "description": "new key",
                "spec": {"type": "int", "min": None, "max": None, "step": 2},
            },
        ]
    }
    assert dict(Options._from_spec(spec)) == {"n": 1}
    bad = {"cluster_options": [{"field": "q", "default": 1, "spec": {"type": "quantity"}}]}
    with pytest.raises(ValueError, match="type 'quantity'"):
        Options._from_spec(bad)


# ---------------------------------------------------------------------------- config


def test_config_defaults_registered():
    assert dask.config.get("gateway.auth.type") == "basic"
    assert dask.config.get("gateway.auth.kwargs") == {}
    assert dask.config.get("gateway.http-client.proxy") is True
    assert dask.config.get("gateway.cluster.options") == {}
    assert dask.config.get("gateway.address") is None
    # Written once (jupyter_ext/package.json); the package reads it from its metadata.
    assert dask_gateway.__version__ == version("dask-gateway-ng")
    package_json = Path(__file__).parent.parent / "jupyter_ext" / "package.json"
    assert json.loads(package_json.read_text())["version"] == dask_gateway.__version__


def test_format_template(monkeypatch):
    monkeypatch.setenv("TEST_DG_TOKEN", "abc")
    assert format_template({"a": ["x-{TEST_DG_TOKEN}", 1], "b": None}) == {
        "a": ["x-abc", 1],
        "b": None,
    }
    monkeypatch.delenv("TEST_DG_MISSING", raising=False)
    with pytest.raises(ValueError, match="TEST_DG_MISSING"):
        format_template("{TEST_DG_MISSING}")


def test_resolve_address(monkeypatch):
    assert resolve_address("http://h:8000/") == "http://h:8000"
    with dask.config.set({"gateway.address": None}):
        with pytest.raises(ValueError, match="No dask-gateway address"):
            resolve_address(None)
    monkeypatch.setenv("TEST_DG_HOST", "example.com")
    with dask.config.set({"gateway.address": "https://{TEST_DG_HOST}/services/dg/"}):
        assert resolve_address(None) == "https://example.com/services/dg"
    assert resolve_public_address(None, "http://a") == "http://a"
    assert resolve_public_address("/services/dg/", "http://a") == "/services/dg"
    with dask.config.set({"gateway.public-address": "https://pub/"}):
        assert resolve_public_address(None, "http://a") == "https://pub"


@pytest.mark.parametrize(
    "proxy, address, expected",
    [
        (None, "http://h:8000", "gateway://h:8000"),
        (None, "http://h", "gateway://h:80"),
        (None, "https://h/prefix", "gateway://h:443"),
        (None, "tcp://h", "gateway://h:8786"),
        (9000, "https://h/prefix", "gateway://h:9000"),
        ("9000", "https://h", "gateway://h:9000"),
        ("other:8786", "https://h", "gateway://other:8786"),
        ("tls://other:8786", "https://h", "gateway://other:8786"),
        ("gateway://other:8786", "https://h", "gateway://other:8786"),
        (None, "http://[::1]:8000", "gateway://[::1]:8000"),
    ],
)
def test_resolve_proxy_address(proxy, address, expected):
    assert resolve_proxy_address(proxy, address) == expected


def test_proxy_address_from_config_and_env(monkeypatch):
    with dask.config.set({"gateway.proxy-address": 8786}):
        assert resolve_proxy_address(None, "http://h:80") == "gateway://h:8786"
    monkeypatch.setenv("DASK_GATEWAY__PROXY_ADDRESS", "tls://p:1234")
    monkeypatch.setenv("DASK_GATEWAY__ADDRESS", "http://envhost:8000")
    dask.config.refresh()
    try:
        gateway = Gateway()
        try:
            assert gateway.address == "http://envhost:8000"
            assert gateway.proxy_address == "gateway://p:1234"
            assert repr(gateway) == "Gateway<http://envhost:8000>"
        finally:
            gateway.close()
    finally:
        monkeypatch.delenv("DASK_GATEWAY__PROXY_ADDRESS")
        monkeypatch.delenv("DASK_GATEWAY__ADDRESS")
        dask.config.refresh()


def test_http_proxy_settings(monkeypatch):
    for var in ("HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(var, raising=False)
    assert proxy_settings("http://h", False) is None
    assert proxy_settings("http://h", None) is None
    assert proxy_settings("http://h", True) is None
    with pytest.raises(TypeError):
        proxy_settings("http://h", 3)
    with pytest.raises(ValueError, match="Invalid HTTP proxy URL"):
        proxy_settings("http://h", "http://")
    assert proxy_settings("http://h", "proxy:3128") == "http://proxy:3128"
    assert proxy_settings("http://h", "http://user:pw@proxy:3128") == "http://user:pw@proxy:3128"
    monkeypatch.setenv("http_proxy", "http://proxy:3128")
    assert proxy_settings("http://h", True) == "http://proxy:3128"
    monkeypatch.setenv("no_proxy", "h")
    assert proxy_settings("http://h", True) is None


# ---------------------------------------------------------------------------- auth


def test_basic_auth(monkeypatch):
    monkeypatch.setattr("getpass.getuser", lambda: "localuser")
    auth = BasicAuth()
    assert (auth.username, auth.password) == ("localuser", "")
    headers, ctx = BasicAuth("alice", "pw").pre_request(None)
    assert headers == {"Authorization": "Basic " + base64.b64encode(b"alice:pw").decode()}
    assert ctx is None


def test_jupyterhub_auth(monkeypatch):
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "tok")
    assert JupyterHubAuth().pre_request(None)[0] == {"Authorization": "jupyterhub tok"}
    assert JupyterHubAuth("other").api_token == "other"
    monkeypatch.delenv("JUPYTERHUB_API_TOKEN")
    with pytest.raises(ValueError, match="JUPYTERHUB_API_TOKEN"):
        JupyterHubAuth()


def test_kerberos_auth_missing_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "kerberos", None)  # import kerberos -> ImportError
    auth = KerberosAuth()  # pykerberos is needed only to answer a challenge
    assert isinstance(auth, GatewayAuth)
    with pytest.raises(ImportError, match="pykerberos"):
        auth.pre_request(None)


class CustomAuth(GatewayAuth):
    def __init__(self, token="default"):
        self.token = token


def test_get_auth(monkeypatch):
    auth = BasicAuth("x")
    assert get_auth(auth) is auth
    assert isinstance(get_auth("basic"), BasicAuth)
    assert isinstance(get_auth(None), BasicAuth)
    assert isinstance(get_auth(CustomAuth), CustomAuth)
    assert isinstance(get_auth(f"{__name__}.CustomAuth"), CustomAuth)
    monkeypatch.setenv("TEST_DG_TOKEN", "secret")
    with dask.config.set(
        {"gateway.auth.type": "jupyterhub", "gateway.auth.kwargs": {"api_token": "{TEST_DG_TOKEN}"}}
    ):
        hub = get_auth()
        assert isinstance(hub, JupyterHubAuth) and hub.api_token == "secret"
    with pytest.raises(ImportError, match="Unknown auth type 'bogus'"):
        get_auth("bogus")
    with pytest.raises(ImportError):
        get_auth("no_such_module_xyz.Auth")
    with pytest.raises(TypeError):
        get_auth(1)
    with pytest.raises(TypeError, match="GatewayAuth"):
        get_auth(dict)


# ---------------------------------------------------------------------------- cookies


def test_cookie_jar_ip_hosts_paths_and_expiry():
    jar = CookieJar()
    jar.update("http://127.0.0.1:8000/api/v1/clusters/", ["sess=abc; Max-Age=600; Path=/"])
    jar.update("http://127.0.0.1:8000/api/", ["scoped=1; Path=/api/v1"])
    assert jar.header_for("http://127.0.0.1:8000/api/version") == "sess=abc"
    assert jar.header_for("http://127.0.0.1:8000/api/v1/options") == "sess=abc; scoped=1"
    assert jar.header_for("http://10.0.0.1:8000/api/version") is None
    jar.update("http://127.0.0.1:8000/", ["sess=; Max-Age=0; Path=/"])
    assert jar.header_for("http://127.0.0.1:8000/api/version") is None
    jar.update("http://a.example.com/", ["d=1; Domain=example.com; Secure"])
    assert jar.header_for("https://b.example.com/") == "d=1"
    assert jar.header_for("http://b.example.com/") is None


# ---------------------------------------------------------------------------- models


def test_cluster_status():
    assert ClusterStatus.from_name("running") is ClusterStatus.RUNNING
    assert ClusterStatus.from_name("FAILED") == 5
    with pytest.raises(ValueError, match="'foo' is not a valid ClusterStatus"):
        ClusterStatus.from_name("foo")


def test_cluster_report_from_json():
    data = {
        "name": "abc",
        "dashboard_route": "/clusters/abc/status",
        "status": "RUNNING",
        "start_time": 1712345678901,
        "stop_time": None,
        "options": {"worker_cores": 2},
        "tls_cert": None,
        "tls_key": None,
        "future_key": "ignored",
    }
    report = ClusterReport._from_json(data, "https://pub/prefix", "gateway://p:8786")
    assert repr(report) == "ClusterReport<name=abc, status=RUNNING>"
    assert report.scheduler_address == "gateway://p:8786/abc"
    assert report.dashboard_link == "https://pub/prefix/clusters/abc/status"
    assert report.start_time == datetime.datetime.fromtimestamp(1712345678.901)
    assert report.start_time.tzinfo is None
    assert report.stop_time is None and report.security is None
    stopped = ClusterReport._from_json(
        dict(data, status="STOPPED", dashboard_route=None, stop_time=1712345679000),
        "https://pub",
        "gateway://p:8786",
    )
    assert stopped.scheduler_address is None and stopped.dashboard_link is None
    assert stopped.stop_time == datetime.datetime.fromtimestamp(1712345679)


def test_gateway_security(tmp_path, monkeypatch):
    from support.tls import self_signed

    cert_pem, key_pem = self_signed(["abc"])
    key, cert = key_pem.decode(), cert_pem.decode()
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)
    sec = GatewaySecurity(tls_key=key, tls_cert=cert)
    args = sec.get_connection_args("client")
    ctx = args["ssl_context"]
    assert args["require_encryption"] is True
    assert isinstance(ctx, ssl.SSLContext)
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname is False
    assert ctx.cert_store_stats()["x509"] == 1  # the cluster cert is its own CA
    assert list(tmp_path.iterdir()) == []  # key material is not left on disk
    assert sec.get_connection_args("client")["ssl_context"] is ctx
    assert key not in repr(sec)


def test_split_gateway_address():
    assert _split_address("gateway://h:8000/ns.abc") == ("h:8000", "ns.abc")
    assert _split_address("h:8000/abc") == ("h:8000", "abc")
    with pytest.raises(ValueError, match="cluster name"):
        _split_address("gateway://h:8000")


# ---------------------------------------------------------------------------- fake server


def cluster_json(name, status="RUNNING"):
    return {
        "name": name,
        "dashboard_route": f"/clusters/{name}/status" if status == "RUNNING" else None,
        "status": status,
        "start_time": 1712345678901,
        "stop_time": None,
        "options": {},
        "tls_cert": None,
        "tls_key": None,
    }


T0 = 1765000000000  # ms since the epoch: the fake clusters' first event

BROKEN_LOG = [f"log line {i}" for i in range(1, 30)] + [
    "ModuleNotFoundError: No module named 'distributed'"
]

# The fake's event histories; a cluster not listed has no events route, as on the public server.
EVENTS = {
    "broken": [
        {"id": 1, "time": T0, "kind": "submitted", "message": "Submitted by alice"},
        {"id": 2, "time": T0 + 100, "kind": "starting", "message": "Starting the scheduler"},
        {
            "id": 3,
            "time": T0 + 2100,
            "kind": "failed",
            "message": "The scheduler exited before it started: "
            "ModuleNotFoundError: No module named 'distributed'",
            "detail": "\n".join(BROKEN_LOG) + "\n",
        },
    ],
    "halted": [
        {"id": 7, "time": T0, "kind": "submitted", "message": "Submitted by alice"},
        {
            "id": 8,
            "time": T0 + 50,
            "kind": "stop-requested",
            "message": "Stop requested by admin bob",
        },
        {"id": 9, "time": T0 + 60, "kind": "stopped", "message": "Stopped"},
    ],
    "failing-quietly": [{"id": 1, "time": T0, "kind": "submitted", "message": "Submitted"}],
    "a": [
        {"id": 1, "time": T0, "kind": "submitted", "message": "Submitted by alice"},
        {"id": 2, "time": T0 + 1000, "kind": "running", "message": "Scheduler running on h1"},
        {
            "id": 3,
            "time": T0 + 5000,
            "kind": "worker-failed",
            "worker": "w1",
            "message": "Worker w1 failed: exited with code 3",
            "detail": "boom\n",
            "cluster": "a",
            "colour": "red",  # unknown keys are ignored
        },
    ],
}
LOGS = {"scheduler": "scheduler line 1\nscheduler line 2\n", "worker:w1": "worker line\n"}
LIFECYCLES = {  # statuses a cluster goes through when polled with ?wait
    "failing": "FAILED",
    "stopped": "STOPPED",
    "broken": "FAILED",
    "halted": "STOPPED",
    "failing-quietly": "FAILED",
}


class FakeState:
    def __init__(self):
        self.auth_headers = []  # Authorization headers received (None if absent)
        self.bodies = []  # (path, JSON body) of POSTs
        self.polls = 0
        self.deleted = []  # names of DELETEd clusters
        self.event_queries = []  # (name, query arguments) of the events route
        self.log_queries = []
        # Set by a test: the fake answers PENDING until the events route has been read.
        self.hold_until_events_read = False
        self.events_read: asyncio.Event | None = None


class Base(web.RequestHandler):
    def initialize(self, state):
        self.state = state

    def prepare(self):
        header = self.request.headers.get("Authorization")
        self.state.auth_headers.append(header)
        if self.get_cookie("fake-session") == "ok":
            return
        expected = "Basic " + base64.b64encode(b"alice:pw").decode()
        if header != expected:
            self.set_header("WWW-Authenticate", "Basic")
            self.fail(401, "Authentication required")
            return
        self.set_cookie("fake-session", "ok", expires_days=1)

    def fail(self, code, msg):
        self.set_status(code)
        self.finish({"error": msg})

    def body(self):
        data = json.loads(self.request.body)
        self.state.bodies.append((self.request.path, data))
        return data


class Version(web.RequestHandler):
    def get(self):
        self.finish({"version": "9.9.9"})


class OptionsHandler(Base):
    def get(self):
        self.finish(OPTIONS_SPEC)


class Clusters(Base):
    def get(self):
        status = self.get_query_argument("status", None)
        if status == "BOGUS":
            return self.fail(422, "'bogus' is not a valid ClusterStatus")
        self.finish({"a": cluster_json("a"), "b": cluster_json("b", "PENDING")})

    def post(self):
        options = self.body()["cluster_options"]
        if options.get("worker_cores", 1) > 4:
            return self.fail(422, "worker_cores must be <= 4.000000, got 10")
        self.set_status(201)
        environment = options.get("environment")
        if environment in LIFECYCLES:
            return self.finish({"name": environment})
        self.finish({"name": "failing" if environment == "doomed" else "new"})


class Cluster(Base):
    async def get(self, name):
        if name == "missing":
            return self.fail(404, f"Cluster {name} not found")
        if name == "forbidden":
            return self.fail(403, f"User alice lacks permissions to view cluster {name}")
        if name == "boom":
            self.set_status(500)
            return self.finish("500: Internal Server Error")
        if name in LIFECYCLES:
            self.state.polls += 1
            assert self.get_query_argument("wait", None) == ""
            if self.state.hold_until_events_read and self.state.events_read is not None:
                await self.state.events_read.wait()
            status = "PENDING" if self.state.polls == 1 else LIFECYCLES[name]
            return self.finish(cluster_json(name, status))
        self.finish(cluster_json(name))

    def delete(self, name):
        self.state.deleted.append(name)
        self.set_status(204)
        self.finish()


class Scale(Base):
    def post(self, name):
        self.body()
        if name == "stopped":
            return self.fail(409, f"cluster {name} is not running")
        self.finish({"ok": False, "msg": "Scale request of 10 workers would exceed resource limit"})


class Adapt(Base):
    def post(self, name):
        self.body()
        self.finish({"ok": True, "msg": None})


def _public_server_404(handler):
    """What the public dask-gateway-server answers for a path it has no route for."""
    handler.set_status(404)
    handler.set_header("Content-Type", "text/plain; charset=utf-8")
    handler.finish("404: Not Found")


class Events(Base):
    def get(self, name):
        query = {k: self.get_query_argument(k) for k in self.request.query_arguments}
        self.state.event_queries.append((name, query))
        if name == "missing":
            return self.fail(404, f"Cluster {name} not found")
        if name == "old-ours":  # this project's server before it had the route
            return self.fail(404, "Not Found")
        if name not in EVENTS:
            return _public_server_404(self)
        after = int(query.get("after", 0))
        events = [e for e in EVENTS[name] if e["id"] > after]
        self.finish(
            {
                "events": events,
                "cursor": events[-1]["id"] if events else after,
                "done": name != "a",
            }
        )
        if self.state.events_read is not None:
            self.state.events_read.set()


class Logs(Base):
    def get(self, name):
        query = {k: self.get_query_argument(k) for k in self.request.query_arguments}
        self.state.log_queries.append((name, query))
        if name != "a":
            return _public_server_404(self)
        logs = dict(LOGS)
        component = query.get("component")
        if component is not None:
            if component not in logs:
                known = ", ".join(logs)
                return self.fail(404, f"No log {component!r} in cluster a (known: {known})")
            logs = {component: logs[component]}
        self.finish({"logs": logs})


@pytest.fixture(scope="module")
def fake_gateway():
    """A wire-protocol-speaking fake gateway running on its own thread."""
    state = FakeState()
    started = threading.Event()
    holder = {}

    def run():
        async def main():
            kw = {"state": state}
            app = web.Application(
                [
                    (r"/api/version", Version),
                    (r"/api/v1/options", OptionsHandler, kw),
                    (r"/api/v1/clusters/", Clusters, kw),
                    (r"/api/v1/clusters/([^/]+)", Cluster, kw),
                    (r"/api/v1/clusters/([^/]+)/scale", Scale, kw),
                    (r"/api/v1/clusters/([^/]+)/adapt", Adapt, kw),
                    (r"/api/v1/clusters/([^/]+)/events", Events, kw),
                    (r"/api/v1/clusters/([^/]+)/logs", Logs, kw),
                ]
            )
            sockets = bind_sockets(0, "127.0.0.1")
            server = HTTPServer(app)
            server.add_sockets(sockets)
            holder["port"] = sockets[0].getsockname()[1]
            holder["stop"] = asyncio.Event()
            holder["loop"] = asyncio.get_running_loop()
            state.events_read = asyncio.Event()
            started.set()
            await holder["stop"].wait()
            server.stop()

        asyncio.run(main())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(10)
    yield f"http://127.0.0.1:{holder['port']}", state
    holder["loop"].call_soon_threadsafe(holder["stop"].set)
    thread.join(10)


@pytest.fixture
def gateway(fake_gateway):
    address, state = fake_gateway
    with Gateway(address, auth=BasicAuth("alice", "pw")) as gateway:
        yield gateway, state


def test_auth_flow_uses_cookie_after_first_login(fake_gateway):
    address, state = fake_gateway
    with Gateway(address, auth=BasicAuth("alice", "pw")) as gateway:
        state.auth_headers.clear()
        gateway.list_clusters()
        gateway.list_clusters()
    # first request: no credentials -> 401; retry with Basic; then only the cookie
    assert state.auth_headers[0] is None
    assert state.auth_headers[1].startswith("Basic ")
    assert state.auth_headers[2] is None and len(state.auth_headers) == 3


def test_bad_credentials_raise_http_error(fake_gateway):
    address, _ = fake_gateway
    with Gateway(address, auth=BasicAuth("alice", "wrong")) as gateway:
        with pytest.raises(HTTPClientError) as info:
            gateway.list_clusters()
    assert info.value.code == 401
    assert "Authentication required" in str(info.value)


def test_list_get_versions_options(gateway):
    gateway, state = gateway
    clusters = gateway.list_clusters()
    assert [c.name for c in clusters] == ["a", "b"]
    assert clusters[0].status is ClusterStatus.RUNNING
    assert clusters[0].scheduler_address == f"{gateway.proxy_address}/a"
    assert clusters[0].dashboard_link == f"{gateway.address}/clusters/a/status"
    assert clusters[1].scheduler_address is None
    gateway.list_clusters(status=["running", ClusterStatus.PENDING])
    with pytest.raises(ValueError, match="not a valid ClusterStatus"):
        gateway.list_clusters(status="bogus")
    assert gateway.get_versions() == {
        "server": {"version": "9.9.9"},
        "client": {"version": dask_gateway.__version__},
    }
    assert gateway.get_cluster("a").name == "a"
    opts = gateway.cluster_options()
    assert opts.worker_cores == 1
    with dask.config.set({"gateway.cluster.options": {"worker_cores": 3}}):
        assert gateway.cluster_options().worker_cores == 3
        assert gateway.cluster_options(use_local_defaults=False).worker_cores == 1
    with dask.config.set({"gateway.cluster.options": {"unknown": 3}}):
        with pytest.raises(KeyError, match="No option 'unknown'"):
            gateway.cluster_options()


def test_submit(gateway):
    gateway, state = gateway
    opts = gateway.cluster_options()
    opts.worker_cores = 2
    state.bodies.clear()
    assert gateway.submit(opts, environment="tensorflow") == "new"
    sent = state.bodies[-1][1]["cluster_options"]
    assert sent["worker_cores"] == 2 and sent["environment"] == "tensorflow"
    with dask.config.set({"gateway.cluster.options": {"worker_cores": 3}}):
        gateway.submit(worker_memory=2)
    assert state.bodies[-1][1] == {"cluster_options": {"worker_cores": 3, "worker_memory": 2}}
    with pytest.raises(TypeError, match="must be an `Options`"):
        gateway.submit({"worker_cores": 1})
    with pytest.raises(ValueError, match=r"^worker_cores must be <= 4.000000, got 10$"):
        gateway.submit(worker_cores=10)


def test_error_mapping(gateway):
    gateway, _ = gateway
    with pytest.raises(ValueError, match="^Cluster missing not found$"):
        gateway.get_cluster("missing")
    with pytest.raises(GatewayServerError, match="Internal Server Error"):
        gateway.get_cluster("boom")
    with pytest.raises(HTTPClientError) as info:
        gateway.get_cluster("forbidden")
    assert info.value.code == 403
    assert "lacks permissions to view cluster forbidden" in str(info.value)
    with pytest.raises(GatewayClusterError, match="cluster stopped is not running"):
        gateway.scale_cluster("stopped", 1)
    gateway.stop_cluster("a")


def test_scale_adapt_warning(gateway):
    gateway, state = gateway
    with pytest.warns(GatewayWarning, match="exceed resource limit"):
        gateway.scale_cluster("a", 10)
    assert state.bodies[-1] == ("/api/v1/clusters/a/scale", {"count": 10})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gateway.adapt_cluster("a", maximum=5)
    assert state.bodies[-1] == (
        "/api/v1/clusters/a/adapt",
        {"minimum": None, "maximum": 5, "active": True},
    )


@pytest.mark.parametrize(
    "name, msg",
    [
        ("failing", "Cluster 'failing' failed to start, see logs for more information"),
        ("stopped", "Cluster 'stopped' is already stopped"),
    ],
)
def test_connect_to_failed_or_stopped_cluster(gateway, name, msg):
    gateway, state = gateway
    state.polls = 0
    state.deleted.clear()
    with pytest.raises(GatewayClusterError, match=f"^{msg}$"):
        gateway.connect(name)
    assert state.polls == 2  # re-polled while PENDING
    assert state.deleted == []  # attaching never stops the cluster


def test_new_cluster_failing_to_start_is_stopped(gateway):
    gateway, state = gateway
    state.polls = 0
    state.deleted.clear()
    with pytest.raises(GatewayClusterError, match="failed to start"):
        gateway.new_cluster(environment="doomed")
    assert state.deleted == ["failing"]


async def test_async_gateway(fake_gateway):
    address, _ = fake_gateway
    async with Gateway(address, auth=BasicAuth("alice", "pw"), asynchronous=True) as gateway:
        clusters = await gateway.list_clusters()
        assert {c.name for c in clusters} == {"a", "b"}
        assert (await gateway.cluster_options()).environment == "basic"
        with pytest.raises(ValueError, match="not found"):
            await gateway.get_cluster("missing")
        with pytest.warns(GatewayWarning):
            await gateway.scale_cluster("a", 10)


def test_gateway_closed_errors(fake_gateway):
    address, _ = fake_gateway
    gateway = Gateway(address, auth=BasicAuth("alice", "pw"))
    gateway.close()
    gateway.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        gateway.list_clusters()


async def test_synchronous_gateway_in_async_with(fake_gateway):
    """Closing a synchronous gateway at the end of ``async with`` once awaited None."""
    address, _ = fake_gateway
    async with Gateway(address, auth=BasicAuth("alice", "pw")) as gateway:
        assert {c.name for c in gateway.list_clusters()} == {"a", "b"}
    assert gateway._closed


async def test_scaling_a_cluster_not_yet_submitted(fake_gateway):
    address, _ = fake_gateway
    cluster = GatewayCluster(address, auth=BasicAuth("alice", "pw"), asynchronous=True)
    with pytest.raises(GatewayClusterError, match="not been submitted yet: await it first"):
        cluster.scale(2)
    await cluster.close()


def test_running_cluster_reported_without_credentials(gateway):
    """A running cluster whose JSON lacks its TLS credentials: a clear error, not a crash."""
    gateway, _ = gateway
    with pytest.raises(GatewayClusterError, match="without its scheduler's address or credentials"):
        gateway.connect("a")


def test_collected_gateway_never_blocks_the_collecting_thread(fake_gateway):
    """The garbage collector runs ``__del__`` in whatever thread allocates, e.g. one that
    holds distributed's LoopRunner lock while another Gateway starts its loop. Stopping the
    collected Gateway's loop there deadlocked that start for 10 s, then failed it."""
    from distributed.utils import LoopRunner

    address, _ = fake_gateway
    gateway = Gateway(address, auth=BasicAuth("alice", "pw"))
    runner = gateway._loop_runner._loop_thread
    assert runner is not None
    loop_thread = runner._thread  # distributed wraps the thread that runs the loop
    assert loop_thread.is_alive()
    with LoopRunner._lock:  # as LoopRunner.start holds it while a new loop comes up
        collecting = threading.Thread(target=gateway.__del__)
        collecting.start()
        collecting.join(timeout=5)
        assert not collecting.is_alive(), "the finalizer blocked on the LoopRunner lock"
    # Once the lock is free, the collected Gateway's loop thread is still stopped.
    loop_thread.join(timeout=30)
    assert not loop_thread.is_alive()


# ---------------------------------------------------------------------------- events and logs


def test_cluster_event_from_json():
    event = ClusterEvent._from_json(EVENTS["a"][2])
    assert event == ClusterEvent(
        id=3,
        time=datetime.datetime(2025, 12, 6, 5, 46, 45, tzinfo=datetime.timezone.utc),
        kind="worker-failed",
        message="Worker w1 failed: exited with code 3",
        worker="w1",
        detail="boom\n",
        cluster="a",
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.kind = "x"  # type: ignore[misc]
    assert str(event).endswith(" worker-failed: Worker w1 failed: exited with code 3")
    bare = ClusterEvent._from_json({"id": 1, "time": T0, "kind": "new-kind", "message": None})
    assert (bare.kind, bare.message, bare.worker, bare.detail) == ("new-kind", "", None, "")


def test_events_and_logs(gateway):
    gateway, state = gateway
    events = gateway.events("a")
    assert [e.kind for e in events] == ["submitted", "running", "worker-failed"]
    assert events[1].time - events[0].time == datetime.timedelta(seconds=1)
    assert events[2].worker == "w1"
    state.event_queries.clear()
    assert [e.id for e in gateway.events("a", after=2, wait=5)] == [3]
    assert gateway.events("a", after=3, wait=100) == []
    assert state.event_queries == [
        ("a", {"after": "2", "wait": "5"}),
        ("a", {"after": "3", "wait": "60"}),  # the route's own limit
    ]
    with pytest.raises(ValueError, match="after must be a non-negative event id"):
        gateway.events("a", after=-1)
    with pytest.raises(ValueError, match="wait must be a number of seconds"):
        gateway.events("a", wait="soon")
    # An unknown cluster is the cluster's 404, not a missing feature.
    with pytest.raises(GatewayRequestError, match="^Cluster missing not found$"):
        gateway.events("missing")

    assert gateway.get_logs("a") == LOGS
    assert gateway.get_logs("a", component="worker:w1", tail=5) == {"worker:w1": "worker line\n"}
    assert state.log_queries[-1] == ("a", {"component": "worker:w1", "tail": "5"})
    with pytest.raises(GatewayRequestError, match=r"No log 'worker:zz' in cluster a \(known: sch"):
        gateway.get_logs("a", component="worker:zz")
    for bad in (0, -3, 1.5, True):
        with pytest.raises(ValueError, match="tail must be a number of lines >= 1"):
            gateway.get_logs("a", tail=bad)


@pytest.mark.parametrize("name", ["public", "old-ours"])
def test_events_and_logs_of_a_server_without_them(gateway, name):
    """The public server answers a plain-text 404 for the routes; ours before it had them a
    JSON "Not Found": either way a clear error that says so, not a cluster's 404."""
    gateway, _ = gateway
    with pytest.raises(GatewayUnsupportedError) as info:
        gateway.events(name)
    assert str(info.value).startswith(
        f"The gateway at {gateway.address} does not keep cluster events: it has no events route"
    )
    assert isinstance(info.value, GatewayServerError)
    with pytest.raises(GatewayUnsupportedError, match="does not keep cluster logs"):
        gateway.get_logs("public")


async def test_events_and_logs_asynchronous(fake_gateway):
    address, _ = fake_gateway
    async with Gateway(address, auth=BasicAuth("alice", "pw"), asynchronous=True) as gateway:
        assert [e.id for e in await gateway.events("a", after=1)] == [2, 3]
        assert (await gateway.get_logs("a", component="scheduler")) == {
            "scheduler": LOGS["scheduler"]
        }
        with pytest.raises(GatewayUnsupportedError):
            await gateway.get_logs("public")


def test_cluster_object_events_and_logs(gateway, monkeypatch):
    """``GatewayCluster.events()`` / ``get_logs()`` ask about its own cluster."""
    gateway, _ = gateway
    cluster = GatewayCluster.__new__(GatewayCluster)
    cluster.name = "a"
    cluster.gateway = gateway
    assert [e.kind for e in cluster.events(after=2)] == ["worker-failed"]
    assert cluster.get_logs(tail=10) == LOGS
    assert list(cluster.get_logs(component="scheduler")) == ["scheduler"]


def test_failed_start_names_the_reason_and_the_last_log_lines(gateway):
    gateway, state = gateway
    state.polls = 0
    state.deleted.clear()
    with pytest.raises(GatewayClusterError) as info:
        gateway.new_cluster(environment="broken")
    message = str(info.value)
    assert message.splitlines()[0] == (
        "Cluster 'broken' failed to start: The scheduler exited before it started: "
        "ModuleNotFoundError: No module named 'distributed'"
    )
    # The last 20 lines of the detail, indented, then where to read more.
    assert message.splitlines()[1:21] == ["    " + line for line in BROKEN_LOG[-20:]]
    assert "log line 10\n" not in message
    assert message.splitlines()[21] == (
        "(All of its history: gateway.events('broken'); its logs: gateway.get_logs('broken'))"
    )
    assert state.deleted == ["broken"]
    # The history the message was made of comes with the error.
    assert [e.kind for e in info.value.events] == ["submitted", "starting", "failed"]
    # A stopped cluster says who stopped it.
    state.polls = 0
    with pytest.raises(GatewayClusterError, match=r"^Cluster 'halted' is already stopped: Stop "):
        gateway.connect("halted")
    # Events without a failure: today's sentence, and where the logs are.
    state.polls = 0
    with pytest.raises(GatewayClusterError) as info:
        gateway.connect("failing-quietly")
    assert str(info.value) == (
        "Cluster 'failing-quietly' failed to start, see logs for more information "
        "(its logs: gateway.get_logs('failing-quietly'))"
    )


def test_failed_start_shows_progress_on_stderr(gateway, capsys):
    """With ``gateway.progress: true`` each phase is a line on stderr as it is read."""
    gateway, state = gateway
    state.polls = 0
    state.events_read.clear()
    state.hold_until_events_read = True  # the first events answer comes before the failure
    try:
        with dask.config.set({"gateway.progress": True}):
            with pytest.raises(GatewayClusterError, match="No module named 'distributed'"):
                gateway.new_cluster(environment="broken")
    finally:
        state.hold_until_events_read = False
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "dask-gateway: cluster broken: Submitted by alice",
        "dask-gateway: cluster broken: Starting the scheduler (+0 s)",
        "dask-gateway: cluster broken: The scheduler exited before it started: "
        "ModuleNotFoundError: No module named 'distributed' (+2 s)",
    ]


def test_no_progress_from_a_server_without_events(gateway, capsys):
    gateway, state = gateway
    state.polls = 0
    state.event_queries.clear()
    with dask.config.set({"gateway.progress": True}):
        with pytest.raises(
            GatewayClusterError, match="^Cluster 'failing' failed to start, see"
        ) as info:
            gateway.new_cluster(environment="doomed")
    assert capsys.readouterr().err == ""
    assert info.value.events == ()


@pytest.mark.parametrize(
    "setting, tty, kernel, mode",
    [
        ("auto", False, False, None),
        ("auto", True, False, "text"),
        ("auto", False, True, "jupyter"),
        (True, False, False, "text"),
        ("true", False, False, "text"),
        ("True", False, True, "jupyter"),
        (False, True, True, None),
        ("false", True, False, None),
    ],
)
def test_progress_mode(monkeypatch, setting, tty, kernel, mode):
    from dask_gateway import progress

    monkeypatch.setattr(progress, "_stderr_is_tty", lambda: tty)
    monkeypatch.setattr(progress, "in_jupyter_kernel", lambda: kernel)
    with dask.config.set({"gateway.progress": setting}):
        assert progress.progress_mode() == mode


def test_progress_setting_default_and_bad_values(monkeypatch):
    from dask_gateway import progress

    assert dask.config.get("gateway.progress") == "auto"
    with dask.config.set({"gateway.progress": "sometimes"}):
        with pytest.raises(ValueError, match="gateway.progress must be true, false or 'auto'"):
            progress.progress_mode()
    assert progress.in_jupyter_kernel() is False  # pytest is no kernel


def _event(id, seconds, kind, message):
    return ClusterEvent(
        id=id,
        time=datetime.datetime.fromtimestamp(T0 / 1000 + seconds, tz=datetime.timezone.utc),
        kind=kind,
        message=message,
    )


class ScriptedEvents:
    """The events route of a cluster being started, answering pages a test hands it."""

    def __init__(self):
        self.pages: asyncio.Queue = asyncio.Queue()
        self.calls: list[tuple[int, float]] = []
        self._called = asyncio.Event()

    async def until_called(self, n):
        """Until the reader has asked ``n`` times."""
        while len(self.calls) < n:
            self._called.clear()
            await self._called.wait()

    async def fetch(self, after, wait):
        self.calls.append((after, wait))
        self._called.set()
        if wait == 0 and self.pages.empty():
            return EventPage([], after, False)
        page = await self.pages.get()
        if isinstance(page, Exception):
            raise page
        return page


class Lines:
    def __init__(self):
        self.shown = []

    def show(self, lines, live, ended):
        self.shown.append((list(lines), live, ended))


async def test_start_progress_phases_and_queue_time():
    from dask_gateway.progress import StartProgress

    route, view = ScriptedEvents(), Lines()
    progress = StartProgress("c1", route.fetch, view)
    await route.pages.put(
        EventPage(
            [
                _event(1, 0, "submitted", "Submitted by alice"),
                _event(2, 0.2, "starting", "Starting the scheduler"),
                _event(3, 1, "queued", "Waiting in Slurm's queue: Priority"),
            ],
            3,
            False,
        )
    )
    await route.pages.put(
        EventPage(
            [
                _event(4, 20, "queued", "Waiting in Slurm's queue: Resources"),
                _event(5, 21, "scaled", "Scaled to 2 workers by alice"),  # not a phase
                _event(6, 43, "scheduler-started", "Scheduler started: Slurm job 7 on n1"),
            ],
            6,
            False,
        )
    )
    await route.pages.put(
        EventPage([_event(7, 44, "running", "Scheduler running on n1")], 7, False)
    )
    await progress._reader  # ends by itself once it has read "running"
    await progress.finish()
    assert route.calls == [(0, 30), (3, 30), (6, 30)]  # nothing read after "running"
    lines, live, ended = view.shown[-1]
    assert ended and live is None
    assert lines == [
        "cluster c1: Submitted by alice",
        "cluster c1: Starting the scheduler (+0 s)",
        "cluster c1: Waiting in Slurm's queue: Priority (+1 s)",
        "cluster c1: Waiting in Slurm's queue: Resources (+20 s)",
        "cluster c1: Scheduler started: Slurm job 7 on n1 (+43 s, after 42 s in the queue)",
        "cluster c1: Scheduler running on n1 (+44 s)",
    ]
    # While queued, the live line gives the time in the queue.
    queued = view.shown[0]
    assert queued[1].startswith(
        "cluster c1: Waiting in Slurm's queue: Priority (+1 s): queued for "
    )


async def test_start_progress_finish_reads_what_the_reader_missed():
    """The cluster runs before the reader saw it: ``finish`` reads once more without
    waiting, then ends with a running line of its own if the event is not there yet."""
    from dask_gateway.progress import StartProgress

    route, view = ScriptedEvents(), Lines()
    progress = StartProgress("c2", route.fetch, view)
    await route.pages.put(EventPage([_event(1, 0, "submitted", "Submitted by bob")], 1, False))
    await route.until_called(2)
    assert route.calls == [(0, 30), (1, 30)]
    await route.pages.put(EventPage([_event(2, 1, "starting", "Starting the scheduler")], 2, False))
    await progress.finish()  # cancels the held read; the page above is read by the flush
    assert route.calls[-1] == (1, 0)
    assert view.shown[-1] == (
        [
            "cluster c2: Submitted by bob",
            "cluster c2: Starting the scheduler (+1 s)",
            "cluster c2: running",
        ],
        None,
        True,
    )


async def test_start_progress_silent_without_the_route():
    from dask_gateway.progress import StartProgress

    route, view = ScriptedEvents(), Lines()
    progress = StartProgress("c3", route.fetch, view)
    await route.pages.put(GatewayUnsupportedError("no events route"))
    await progress._reader
    await progress.finish()
    assert view.shown == [] and route.calls == [(0, 30)]  # no second try at the flush


async def test_start_progress_abort_stops_reading():
    from dask_gateway.progress import StartProgress

    route, view = ScriptedEvents(), Lines()
    progress = StartProgress("c4", route.fetch, view, tick=True)
    await route.pages.put(EventPage([_event(1, 0, "submitted", "Submitted")], 1, False))
    await route.until_called(2)
    progress.abort()
    await asyncio.gather(progress._reader, progress._ticker, return_exceptions=True)
    assert progress._reader.cancelled() and progress._ticker.cancelled()
    assert view.shown[-1] == (["cluster c4: Submitted"], None, True)


async def test_start_progress_finish_never_hangs_on_a_slow_gateway(monkeypatch):
    """The last read after the start is bounded: a gateway that holds it gets the client's
    own running line after ``FLUSH_TIMEOUT``."""
    from dask_gateway import progress as progress_module
    from dask_gateway.progress import StartProgress

    monkeypatch.setattr(progress_module, "FLUSH_TIMEOUT", 0.05)

    async def held(after, wait):
        await asyncio.Event().wait()  # never answers

    view = Lines()
    progress = StartProgress("c5", held, view)
    progress._add(_event(1, 0, "submitted", "Submitted"))
    await progress.finish()
    assert view.shown[-1] == (["cluster c5: Submitted", "cluster c5: running"], None, True)


async def test_start_progress_abort_shows_the_end_the_reader_missed():
    """The failure's history reached the error before the reader: ``abort`` shows the
    events the reader had not (by id: none twice), the failure among them."""
    from dask_gateway.progress import StartProgress

    route, view = ScriptedEvents(), Lines()
    progress = StartProgress("c6", route.fetch, view)
    submitted = _event(1, 0, "submitted", "Submitted")
    await route.pages.put(EventPage([submitted], 1, False))
    await route.until_called(2)  # the first page shown; the second read is held
    history = [
        submitted,
        _event(2, 1, "starting", "Starting the scheduler"),
        _event(3, 2, "worker-failed", "not a phase"),
        _event(4, 3, "failed", "The scheduler exited before it started: boom"),
    ]
    progress.abort(history)
    assert view.shown[-1] == (
        [
            "cluster c6: Submitted",
            "cluster c6: Starting the scheduler (+1 s)",
            "cluster c6: The scheduler exited before it started: boom (+3 s)",
        ],
        None,
        True,
    )
