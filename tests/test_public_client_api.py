"""Our client against the public dask-gateway client's documented API (2026.3.0).

The first test compares, name by name and signature by signature, what the public package
in the upstream venv offers (tests/client_api_dump.py run by its Python) with ours. The
others check, for each difference found, the behaviour the public client documents, and
where ours deliberately differs, that it does so as docs/admin-guide.md says.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import threading

import dask.config
import ipywidgets
import pytest
from support.client_api_dump import describe
from support.paths import SUPPORT
from support.upstream_server import require_upstream_venv
from tornado import web
from tornado.httpclient import HTTPRequest, HTTPResponse
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from dask_gateway import BasicAuth, Gateway, KerberosAuth, Options
from dask_gateway.auth import AuthResponse, GatewayAuth, get_auth
from dask_gateway.comm import parse_gateway_address
from dask_gateway.options import (
    Bool,
    Field,
    Float,
    Integer,
    Mapping,
    Number,
    Select,
    String,
    register_field_type,
)
from dask_gateway.scheduler_preload import (
    GatewayClient,
    GatewaySchedulerService,
    make_gateway_client,
)
from dask_gateway.utils import cancel_task, format_template

# Public parameter names ours spells differently, on purpose (always passed by position).
RENAMED = {
    f"dask_gateway.options:{cls}.validate": "x -> value"
    for cls in ("Field", "String", "Bool", "Number", "Integer", "Float", "Select", "Mapping")
}


@pytest.fixture(scope="module")
def public_api():
    python = require_upstream_venv() / "bin" / "python"
    out = subprocess.run(
        [str(python), "-P", str(SUPPORT / "client_api_dump.py")],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(out.stdout)


def _problems(key: str, theirs: list, ours: list) -> list[str]:
    """Why a call valid for the public signature ``theirs`` could fail with ``ours``."""

    def split(params):
        pos = [p for p in params if p[1] in ("POSITIONAL_ONLY", "POSITIONAL_OR_KEYWORD")]
        kw = {p[0]: p for p in params if p[1] == "KEYWORD_ONLY"}
        kinds = {p[1] for p in params}
        return pos, kw, "VAR_POSITIONAL" in kinds, "VAR_KEYWORD" in kinds

    t_pos, t_kw, t_args, t_kwargs = split(theirs)
    o_pos, o_kw, o_args, o_kwargs = split(ours)
    out = []
    for i, p in enumerate(t_pos):
        if i >= len(o_pos):
            if not o_args:
                out.append(f"no positional parameter {p[0]!r}")
            continue
        q = o_pos[i]
        if (
            p[1] == "POSITIONAL_OR_KEYWORD"
            and (q[0] != p[0] or q[1] != p[1])
            and key not in RENAMED
        ):
            out.append(f"parameter {i} is {q[0]!r} ({q[1]}), public {p[0]!r} ({p[1]})")
        if p[2] and (not q[2] or q[3] != p[3]):
            out.append(f"{p[0]!r} default {q[3] if q[2] else 'none'}, public {p[3]}")
    out += [f"extra required parameter {q[0]!r}" for q in o_pos[len(t_pos) :] if not q[2]]
    for name, p in t_kw.items():
        q = o_kw.get(name) or next((q for q in o_pos if q[0] == name), None)
        if q is None and not o_kwargs:
            out.append(f"no keyword {name!r}")
        elif q is not None and p[2] and (not q[2] or q[3] != p[3]):
            out.append(f"{name!r} default {q[3] if q[2] else 'none'}, public {p[3]}")
    out += [f"extra required keyword {n!r}" for n, q in o_kw.items() if not q[2] and n not in t_kw]
    if t_args and not o_args:
        out.append("no *args")
    if t_kwargs and not o_kwargs:
        out.append("no **kwargs")
    return out


def test_every_public_name_and_signature(public_api):
    assert len(public_api) > 100  # the dump really walked the public package
    problems = {}
    for key, theirs in sorted(public_api.items()):
        ours = describe(key)
        if ours["kind"] != theirs["kind"]:
            problems[key] = f"is a {ours['kind']}, public a {theirs['kind']}"
        elif theirs.get("params") is not None and ours.get("params") is not None:
            found = _problems(key, theirs["params"], ours["params"])
            if found:
                problems[key] = found
    assert problems == {}


# ------------------------------------------------------------------------- options


def test_option_fields_take_the_public_positional_order():
    # (field, default, label, *type parameters): a label given by position is the label
    n = Integer("workers", 2, "Workers", 1, 8)
    assert (n.default, n.label, n.min, n.max) == (2, "Workers", 1, 8)
    x = Float("memory", 1.5, "Memory (GiB)", 0.5, 4)
    assert (x.value, x.label, x.min, x.max) == (1.5, "Memory (GiB)", 0.5, 4)
    s = Select("env", "gpu", "Environment", ["basic", "gpu"])
    assert (s.value, s.label, s.options) == ("gpu", "Environment", ("basic", "gpu"))
    assert String("image", "debian", "Image").label == "Image"
    assert Bool("debug", True, "Debug").label == "Debug"
    assert Mapping("env", {"A": "1"}, "Environment").value == {"A": "1"}
    # Without a default (ours only): Select the first choice, numbers their minimum.
    assert Select("env", options=["basic", "gpu"]).value == "basic"
    assert Integer("workers", min=1).value == 1 and Float("f").value == 0.0
    assert isinstance(n, Number) and isinstance(x, Number)


def test_select_choices_are_a_tuple_of_strings():
    with pytest.raises(TypeError, match="Select options must be strings, got 1"):
        Select("size", "a", options=["a", 1])
    with pytest.raises(TypeError, match="options must be a sequence of strings"):
        Select("size", "a", options="abc")
    with pytest.raises(ValueError, match="at least one choice"):
        Select("size", "a", options=[])
    # The choices where the default goes (the server's order): refused, with the way out.
    with pytest.raises(TypeError, match=r"pass the choices as options=\[\.\.\.\]"):
        Select("size", ["small", "large"])
    with pytest.raises(TypeError, match="size must be a string, got 1"):
        Select("size", "small", options=["small"]).set(1)
    with pytest.raises(ValueError, match="'huge' is not a valid option for size"):
        Select("size", "huge", options=["small"])


def test_fields_hold_their_value_with_get_and_set():
    n = Integer("n", 2, max=3)
    assert n.value == n.get() == 2
    n.set(3)
    assert n.value == 3
    with pytest.raises(ValueError, match="n must be <= 3, got 4"):
        n.set(4)
    assert n.get() == 3  # a refused value leaves the old one
    # The default is validated like any value, as by the public client.
    with pytest.raises(ValueError, match="n must be <= 3, got 5"):
        Integer("n", 5, max=3)
    # An Options object reads and writes its fields' values.
    opts = Options(n, Mapping("m"))
    n.set(1)
    assert opts.n == 1
    opts["n"] = 2
    assert n.value == 2
    # Deliberate: True is not a count (the public Integer takes it, being an int).
    with pytest.raises(TypeError, match="n must be an integer, got True"):
        n.set(True)
    assert Mapping("m").transform({}) == "" and Mapping("m").transform({"A": 1}) == "A: 1\n"


def test_field_widget_row_edits_the_field():
    n = Integer("count", 2, "Count", 1, 8)
    label, box, status = n.widget()
    assert isinstance(label, ipywidgets.HTML) and "Count" in label.value
    box.value = 5
    assert n.value == 5 and status.value == ""
    box.value = 50  # shown as an error, never clamped
    assert n.value == 5 and "count must be &lt;= 8, got 50" in status.value
    n.set(3)
    assert box.value == 3


def test_register_field_type_and_public_spec_list():
    @register_field_type("path")
    class Path(Field):
        def __init__(self, field, default, label=None, prefix="/"):
            self.prefix = prefix
            super().__init__(field, default, label)

        def validate(self, x):
            if not isinstance(x, str) or not x.startswith(self.prefix):
                raise ValueError(f"{self.field} must start with {self.prefix}")
            return x

    spec = [
        {
            "field": "data",
            "label": "Data",
            "default": "/srv/a",
            "spec": {"type": "path", "prefix": "/srv/"},
        },
        {"field": "n", "label": "N", "default": 1, "spec": {"type": "int", "min": 1}},
    ]
    spec.append({"field": "s", "label": "S", "default": None, "spec": {"type": "string"}})
    opts = Options._from_spec(spec)  # the list alone, as the public client takes it
    assert dict(opts) == {"data": "/srv/a", "n": 1, "s": ""}  # null: the type's default
    assert opts._fields["data"].prefix == "/srv/"
    with pytest.raises(ValueError, match="data must start with /srv/"):
        opts.data = "/etc/passwd"


# ------------------------------------------------------------------------- auth


def test_gateway_auth_takes_keyword_arguments():
    class Token(GatewayAuth):
        def __init__(self, token="t", **kwargs):
            super().__init__(**kwargs)
            self.token = token

    assert GatewayAuth(anything=1) is not None
    assert Token(token="x", extra=2).token == "x"
    assert GatewayAuth().post_response(None) is None  # context defaults to None


def test_kerberos_auth_without_pykerberos(monkeypatch):
    monkeypatch.setitem(sys.modules, "kerberos", None)  # import kerberos -> ImportError
    auth = KerberosAuth()  # constructing needs no pykerberos, as with the public client
    with dask.config.set(
        {"gateway.auth.type": "kerberos", "gateway.auth.kwargs": {"service": "HTTP"}}
    ):
        assert isinstance(get_auth(), KerberosAuth)  # config kwargs are accepted
    with pytest.raises(ImportError, match="pip install pykerberos"):
        auth.pre_request(None)  # ... but answering a challenge does


class _Challenge(web.RequestHandler):
    def get(self):
        if self.request.headers.get("Authorization") != "Token 127.0.0.1:401:ok":
            self.set_status(401)
            self.set_header("WWW-Authenticate", "Token")
            self.finish(json.dumps({"error": "who are you"}))
            return
        self.set_header("X-Seen", "yes")
        self.finish(json.dumps({"version": "x"}))


@pytest.fixture
def challenge_server():
    loop = asyncio.new_event_loop()
    sockets = bind_sockets(0, "127.0.0.1")
    ready = threading.Event()

    def run():
        asyncio.set_event_loop(loop)
        HTTPServer(web.Application([(r"/api/version", _Challenge)])).add_sockets(sockets)
        loop.call_soon(ready.set)
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    ready.wait()
    yield f"http://127.0.0.1:{sockets[0].getsockname()[1]}"
    loop.call_soon_threadsafe(loop.stop)
    thread.join()


def test_auth_hooks_get_the_response_attributes_public_hooks_use(challenge_server):
    seen = {}

    class AiohttpStyle(GatewayAuth):
        """Written for the public client, whose hooks get aiohttp responses."""

        def pre_request(self, resp):
            seen["challenge"] = resp.headers["www-authenticate"]
            return {"Authorization": f"Token {resp.url.host}:{resp.status}:ok"}, "ctx"

        def post_response(self, resp, context=None):
            seen["post"] = (resp.status, resp.headers.get("x-seen"), context)

    with Gateway(challenge_server, auth=AiohttpStyle()) as gateway:
        assert gateway.get_versions()["server"] == {"version": "x"}
    assert seen == {"challenge": "Token", "post": (200, "yes", "ctx")}
    resp = AuthResponse.wrap(HTTPResponse(HTTPRequest("http://h:1/x"), 401))
    assert resp.url.host == "h" and resp.url.port == 1 and resp.status == resp.code == 401


def test_basic_auth_header_unchanged():
    headers, _ = BasicAuth("alice", "pw").pre_request(None)
    assert headers == {"Authorization": "Basic " + base64.b64encode(b"alice:pw").decode()}


# ------------------------------------------------------------------------- the rest


def test_comm_and_utils_names(monkeypatch):
    assert parse_gateway_address("gateway://proxy:8786/abc") == ("proxy", 8786, "abc")
    assert parse_gateway_address("proxy/abc") == ("proxy", None, "abc")
    assert parse_gateway_address("gateway://[::1]:80/c") == ("::1", 80, "c")
    with pytest.raises(ValueError, match="Invalid gateway address"):
        parse_gateway_address("gateway://proxy:8786")

    async def main():
        task = asyncio.ensure_future(asyncio.sleep(60))
        await cancel_task(task)
        return task.cancelled()

    assert asyncio.run(main()) is True
    monkeypatch.setenv("DGW_API_TEST_VAR", "v")
    assert format_template("a-{DGW_API_TEST_VAR}") == "a-v"
    assert format_template(x=3) == 3


def test_make_gateway_client(monkeypatch, tmp_path):
    for name in ("DASK_GATEWAY_CLUSTER_NAME", "DASK_GATEWAY_API_URL", "DASK_GATEWAY_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    client = make_gateway_client(cluster_name="c", api_url="http://gw/api", api_token="t")
    assert isinstance(client, GatewayClient)
    assert (client.cluster_name, client.api_url, client.token) == ("c", "http://gw/api", "t")
    with pytest.raises(RuntimeError, match="DASK_GATEWAY_API_URL, DASK_GATEWAY_API_TOKEN"):
        make_gateway_client(cluster_name="c")
    token = tmp_path / "token"
    token.write_text("secret\n")
    monkeypatch.setenv("DASK_GATEWAY_CLUSTER_NAME", "env-c")
    monkeypatch.setenv("DASK_GATEWAY_API_URL", "http://gw2/api")
    monkeypatch.setenv("DASK_GATEWAY_API_TOKEN", str(token))  # a path: read the file
    client = make_gateway_client()
    assert (client.cluster_name, client.api_url, client.token) == (
        "env-c",
        "http://gw2/api",
        "secret",
    )


def test_scheduler_service_keyword_construction():
    class FakeScheduler:
        address = "tls://127.0.0.1:1"

    gateway = GatewayClient("c", "t", "http://gw/api/")
    service = GatewaySchedulerService(
        FakeScheduler(),
        gateway=gateway,
        heartbeat_period=0,
        adaptive_period=1.5,
        adaptive_window=5,
        target_duration=7,
        idle_timeout=-3,
    )
    config = service.service.config
    assert (config.api_url, config.api_token, config.cluster_name) == ("http://gw/api", "t", "c")
    assert (config.heartbeat_period, config.adaptive_period, config.idle_timeout) == (0, 1.5, 0)
    assert service.service._adapt_history.maxlen == 5
    assert service.service.target_duration == 7
    assert service.port is None  # not listening yet


def test_client_and_preload_agree_on_the_features_key():
    from dask_gateway.client import SCHEDULER_FEATURES_KEY
    from dask_gateway.scheduler_preload import FEATURES_KEY

    assert SCHEDULER_FEATURES_KEY == FEATURES_KEY
