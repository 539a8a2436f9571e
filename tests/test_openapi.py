"""The OpenAPI document the gateway serves matches the gateway.

Every route the gateway serves is documented with its methods; every documented operation
is called on a real gateway with a sample request and answers with a documented status and a
body of the documented shape.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import re
import time
import urllib.parse

import jsonschema
import pytest
from support.http_helpers import basic, call
from tornado import web

import dask_gateway_server.api
from dask_gateway_server.api.base import NotFoundHandler
from dask_gateway_server.api.clusters import ClusterHandler
from dask_gateway_server.app import API_ROUTES, web_routes
from dask_gateway_server.console import ROUTES as CONSOLE_ROUTES
from dask_gateway_server.console.handlers import ConsoleHandler
from dask_gateway_server.openapi import openapi_spec
from dask_gateway_server.proxy import Proxy

SPEC = openapi_spec()
METHODS = ("get", "post", "delete", "put", "patch")


def operations(spec: dict) -> dict[str, tuple[str, str, dict]]:
    """operationId -> (method, path template, operation)."""
    out = {}
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if method in METHODS:
                assert op["operationId"] not in out, op["operationId"]
                out[op["operationId"]] = (method, path, op)
    return out


def concrete(template: str) -> str:
    """A path template with sample values: /clusters/{cluster_name} -> /clusters/x1."""
    return re.sub(r"\{[^}]+\}", "x1", template)


def routes() -> list[tuple[str, type]]:
    """Every route the gateway app serves (API and dashboards), with its handler, as the
    app builds them; the catch-all 404 and the web console's HTML pages (not API: no
    OpenAPI entries) aside."""
    served = [(spec[0], spec[1]) for spec in web_routes("", Proxy())]
    return [
        (pattern, handler)
        for pattern, handler in served
        if handler is not NotFoundHandler and not issubclass(handler, ConsoleHandler)
    ]


def test_console_pages_are_not_api_routes():
    """The console's pages are served, but are neither in the API's route list nor in the
    document (they are HTML for browsers, not operations)."""
    served = {spec[1] for spec in web_routes("", Proxy())}
    assert all(handler in served for _, handler in CONSOLE_ROUTES)
    assert not any(path.startswith("/console") for path in SPEC["paths"])
    assert not set(CONSOLE_ROUTES) & set(API_ROUTES)


def implemented(handler: type) -> set[str]:
    return {m for m in METHODS if getattr(handler, m) is not getattr(web.RequestHandler, m)}


def route_problems(api_routes: list[tuple[str, type]], spec: dict) -> list[str]:
    """Where the API modules' route lists and the document disagree: an operation routed
    but not described, or described but not routed. Paths the proxy serves for the
    schedulers' dashboards (``x-proxied-methods``) are not the API's."""
    routed = {(path, m) for path, handler in api_routes for m in implemented(handler)}
    described = {
        (path, m)
        for path, item in spec["paths"].items()
        if "x-proxied-methods" not in item
        for m in item
        if m in METHODS
    }
    return [
        f"{m.upper()} {path} is routed but not described in openapi.py"
        for path, m in sorted(routed - described)
    ] + [
        f"{m.upper()} {path} is described in openapi.py but not routed"
        for path, m in sorted(described - routed)
    ]


def test_route_lists_and_document_agree():
    """The routes the API modules list (and app.py serves) are exactly the operations the
    document describes: same path templates, same methods."""
    assert route_problems(API_ROUTES, SPEC) == []


def test_a_route_cannot_be_added_without_its_description():
    class PauseHandler(web.RequestHandler):
        async def post(self, name: str) -> None: ...

    class PatchableClusterHandler(ClusterHandler):
        async def patch(self, name: str) -> None: ...

    added = [*API_ROUTES, ("/api/v1/clusters/{cluster_name}/pause", PauseHandler)]
    assert route_problems(added, SPEC) == [
        "POST /api/v1/clusters/{cluster_name}/pause is routed but not described in openapi.py"
    ]
    method = [
        (path, PatchableClusterHandler if handler is ClusterHandler else handler)
        for path, handler in API_ROUTES
    ]
    assert route_problems(method, SPEC) == [
        "PATCH /api/v1/clusters/{cluster_name} is routed but not described in openapi.py"
    ]
    dropped = [(path, h) for path, h in API_ROUTES if path != "/api/version"]
    assert route_problems(dropped, SPEC) == [
        "GET /api/version is described in openapi.py but not routed"
    ]


def test_every_api_module_list_is_served():
    """A module's ROUTES the app forgot to serve would be documented and never answer."""
    package = dask_gateway_server.api
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        for route in getattr(module, "ROUTES", []):
            assert route in API_ROUTES, f"{info.name}.ROUTES: {route} is not in app.API_ROUTES"


def test_every_route_is_documented_and_every_documented_route_exists():
    documented = {}  # concrete path -> methods
    for method, path, _ in operations(SPEC).values():
        documented.setdefault(concrete(path), set()).add(method)
    for path, item in SPEC["paths"].items():
        documented[concrete(path)] |= set(item.get("x-proxied-methods", []))
    served = routes()
    for pattern, handler in served:
        paths = [p for p in documented if re.fullmatch(pattern, p)]
        assert paths, f"route {pattern} ({handler.__name__}) is not in the OpenAPI document"
        for p in paths:
            assert documented[p] == implemented(handler), (
                f"{p}: documented {sorted(documented[p])}, "
                f"{handler.__name__} implements {sorted(implemented(handler))}"
            )
    for p in documented:
        assert any(re.fullmatch(pattern, p) for pattern, _ in served), (
            f"documented path {p} is served by no handler"
        )


def test_document_is_well_formed():
    assert SPEC["openapi"].startswith("3.")
    text = json.dumps(SPEC)
    for ref in set(re.findall(r'"\$ref": "#/([^"]+)"', text)):
        node = SPEC
        for part in ref.split("/"):
            assert part in node, f"dangling $ref #/{ref}"
            node = node[part]
    for op_id, (_method, path, op) in operations(SPEC).items():
        assert op.get("summary"), op_id
        assert op["responses"], op_id
        for status in op["responses"]:
            assert re.fullmatch(r"[1-5]\d\d", status), (op_id, status)
        names = {p["name"] for p in SPEC["paths"][path].get("parameters", [])}
        names |= {p["name"] for p in op.get("parameters", [])}
        for param in re.findall(r"\{([^}]+)\}", path):
            assert param in names, f"{op_id}: path parameter {param} undocumented"
        for scheme in op.get("security", SPEC["security"]):
            assert set(scheme) <= set(SPEC["components"]["securitySchemes"]), op_id


def check_response(op_id: str, status: int, resp) -> None:
    """The response's status is documented for the operation and its body has the shape."""
    method, path, op = operations(SPEC)[op_id]
    documented = op["responses"]
    assert str(status) in documented, f"{op_id}: {status} is not documented"
    assert resp.status == status, f"{op_id}: expected {status}, got {resp.status} {resp.body!r}"
    entry = documented[str(status)]
    if "$ref" in entry:
        entry = SPEC["components"]["responses"][entry["$ref"].rsplit("/", 1)[1]]
    content = entry.get("content")
    if not content:
        assert resp.body == b"", f"{op_id} {status}: expected no body, got {resp.body!r}"
        return
    mime, media = next(iter(content.items()))
    assert resp.headers.get("Content-Type", "").startswith(mime), (op_id, resp.headers)
    if mime == "application/json":
        schema = {**media["schema"], "components": SPEC["components"]}
        jsonschema.Draft202012Validator(schema).validate(resp.json())


@pytest.fixture
def api(gateway):
    """Call the gateway by operationId with a sample request, checking the answer."""
    calls = []

    def run(
        op_id: str,
        status: int,
        params: dict | None = None,
        body=None,
        user: str | None = "openapi-user",
        query: str = "",
        raw: bytes | None = None,
        headers: dict | None = None,
    ):
        method, path, _ = operations(SPEC)[op_id]
        for k, v in (params or {}).items():
            path = path.replace("{" + k + "}", urllib.parse.quote(v, safe=""))
        h = dict(headers or {})
        if user:
            h.update(basic(user))
        if body is not None or raw is not None:
            h["Content-Type"] = "application/json"
        resp = call(method.upper(), gateway.address + path + query, body=body, raw=raw, headers=h)
        check_response(op_id, status, resp)
        calls.append(op_id)
        return resp

    run.calls = calls
    return run


def test_every_operation_answers_as_documented(gateway, api):
    """One pass through the API as a user would go, plus the errors users meet."""
    api("health", 200, user=None)
    assert api("version", 200, user=None).json()["version"]
    assert b"dask_gateway_clusters" in api("metrics", 200, user=None).body
    served = api("openapi", 200, user=None).json()
    assert served == openapi_spec(""), "the served document differs from openapi.py"

    resp = api("getOptions", 401, user=None)
    assert resp.headers["WWW-Authenticate"] == "Basic"
    fields = api("getOptions", 200).json()["cluster_options"]
    assert [f["field"] for f in fields] == ["worker_cores", "worker_memory", "environment"]

    api("listClusters", 200)
    api("listClusters", 403, query="?all=1")
    api("listClusters", 422, query="?status=sleeping")
    api("createCluster", 422, body={"cluster_options": {"colour": "red"}})
    api("createCluster", 400, raw=b"{not json")
    name = api("createCluster", 201, body={"cluster_options": {"worker_memory": 0.5}}).json()[
        "name"
    ]
    try:
        cluster = {"cluster_name": name}
        for _ in range(10):
            model = api("getCluster", 200, cluster, query="?wait=1").json()
            if model["status"] == "RUNNING":
                break
        assert model["status"] == "RUNNING" and model["tls_cert"] and model["dashboard_route"]
        listed = api("listClusters", 200, query="?status=running").json()
        assert set(listed[name]) == set(SPEC["components"]["schemas"]["Cluster"]["required"])
        api("getCluster", 404, {"cluster_name": "no-such-cluster"})
        api("getCluster", 403, cluster, user="intruder")

        assert api("scaleCluster", 200, cluster, body={"count": 1}).json() == {
            "ok": True,
            "msg": None,
        }
        lowered = api("scaleCluster", 200, cluster, body={"count": 50}).json()
        assert lowered["ok"] is False and "limit of 10 workers" in lowered["msg"]
        api("scaleCluster", 422, cluster, body={"count": -1})
        api("scaleCluster", 404, {"cluster_name": "no-such-cluster"}, body={"count": 1})
        api("scaleCluster", 403, cluster, body={"count": 1}, user="intruder")
        api("scaleCluster", 200, cluster, body={"count": 1})

        # The scale to 10 and back leaves one worker once the heartbeats settle.
        want = {"workers": 1, "cores": 1, "memory": 2**29, "requested": 1, "pending": 0}
        deadline = time.monotonic() + 60
        while (workers := api("clusterWorkers", 200, cluster).json()) != want:
            assert time.monotonic() < deadline, f"workers never settled: {workers}"
            time.sleep(0.2)

        assert "scheduler" in api("clusterLogs", 200, cluster).json()["logs"]
        one = api("clusterLogs", 200, cluster, query="?component=scheduler&tail=5").json()
        assert set(one) == {"logs", "offset", "start", "done"}
        api("clusterLogs", 400, cluster, query="?component=scheduler&tail=0")
        api("clusterLogs", 401, cluster, user=None)
        api("clusterLogs", 403, cluster, user="intruder")
        api("clusterLogs", 404, cluster, query="?component=nanny")
        api("clusterLogs", 404, {"cluster_name": "no-such-cluster"})

        assert (
            api("adaptCluster", 200, cluster, body={"minimum": 1, "maximum": 2}).json()["ok"]
            is True
        )
        api("adaptCluster", 422, cluster, body={"minimum": 3, "maximum": 1})
        api("adaptCluster", 200, cluster, body={"active": False})

        # Heartbeats come with the cluster's own token, which only its scheduler knows; the
        # scheduler's successful ones are what made the cluster RUNNING above.
        resp = api(
            "heartbeat",
            401,
            cluster,
            body={},
            user=None,
            headers={"Authorization": "token not-the-token"},
        )
        assert resp.headers["WWW-Authenticate"] == "token"

        page = api("dashboard", 200, {"cluster_name": name, "path": "status"})
        assert b"<html" in page.body.lower()
        api("dashboard", 401, {"cluster_name": name, "path": "status"}, user=None)
        api("dashboard", 403, {"cluster_name": name, "path": "status"}, user="intruder")
        api("dashboard", 404, {"cluster_name": "no-such-cluster", "path": "status"})

        # This gateway authenticates with Basic auth: no browser login to come back from.
        api("oauthCallback", 404, user=None, query="?state=x&code=y")

        api("stopCluster", 403, cluster, user="intruder")

        history = api("clusterEvents", 200, cluster).json()
        assert [e["kind"] for e in history["events"]][:2] == ["submitted", "starting"]
        api("clusterEvents", 200, cluster, query=f"?after={history['cursor']}&wait=0.1")
        api("clusterEvents", 400, cluster, query="?limit=0")
        api("clusterEvents", 403, cluster, user="intruder")
        api("clusterEvents", 404, {"cluster_name": "no-such-cluster"})
        mine = api("userEvents", 200, query="?limit=5").json()
        assert all(e["user"] == "openapi-user" for e in mine["events"]), mine
        api("userEvents", 400, query="?since=yesterday")
        api("userEvents", 403, query="?all=1")
        mine = api("getUsage", 200, query="?by=cluster").json()
        assert all(r["user"] == "openapi-user" for r in mine["rows"]), mine
        api("getUsage", 200, query="?by=day")
        api("getUsage", 400, query="?by=week")
        api("getUsage", 403, query="?user=someone-else")
        api("getUsage", 401, user=None)
        assert api("getQuota", 200).json()["user"] == "openapi-user"
        api("getQuota", 403, query="?user=intruder")
        api("getQuota", 400, query="?user=")

        mine = api("overview", 200).json()["clusters"]
        assert [c["name"] for c in mine] == [name] and mine[0]["user"] == "openapi-user"
        api("overview", 200, query="?status=running,stopped&user=self")
        api("overview", 403, query="?all=1")
        api("overview", 403, query="?user=someone-else")
        api("overview", 422, query="?status=sleeping")
        api("overview", 401, user=None)
    finally:
        api("stopCluster", 204, {"cluster_name": name})
    api("stopCluster", 204, {"cluster_name": name})  # idempotent
    assert api("getCluster", 200, {"cluster_name": name}).json()["status"] in (
        "STOPPING",
        "STOPPED",
    )

    assert set(api.calls) == set(operations(SPEC)), (
        f"operations without a sample: {set(operations(SPEC)) - set(api.calls)}"
    )


def test_served_under_a_prefix(fresh_gateway):
    """Behind Proxy.prefix the document says where the API is."""
    gw = fresh_gateway(["--Proxy.prefix=/gw"])
    gw.start(health_path="/gw/api/health")
    resp = call("GET", f"{gw.address}/gw/api/openapi.json")
    assert resp.status == 200
    assert resp.json()["servers"] == [
        {"url": "/gw", "description": SPEC["servers"][0]["description"]}
    ]
    assert call("GET", f"{gw.address}/api/openapi.json").status == 404
