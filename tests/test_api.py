"""The REST API on the wire: shapes, status codes, and every error a client can cause."""

from __future__ import annotations

import base64
import time
from importlib.metadata import version

import pytest
from support.http_helpers import basic, call, create

ALICE = basic("alice")
BOB = basic("bob")
EIGHT_KEYS = {
    "name",
    "dashboard_route",
    "status",
    "start_time",
    "stop_time",
    "options",
    "tls_cert",
    "tls_key",
}


def api(gw, path: str) -> str:
    return f"{gw.address}/api{path}"


@pytest.fixture(scope="module")
def running(gateway):
    """One running cluster owned by alice, shared by the tests of this module."""
    name = create(gateway, ALICE, {})
    r = call("GET", api(gateway, f"/v1/clusters/{name}?wait"), headers=ALICE)
    assert r.json()["status"] == "RUNNING", gateway.log()
    yield name
    call("DELETE", api(gateway, f"/v1/clusters/{name}"), headers=ALICE)


def assert_healthy(gw, name=None):
    assert call("GET", api(gw, "/health")).json() == {"status": "pass"}
    if name:
        r = call("GET", api(gw, f"/v1/clusters/{name}"), headers=ALICE)
        assert r.status == 200 and r.json()["status"] == "RUNNING"


def test_health_and_version(gateway):
    assert call("GET", api(gateway, "/health")).json() == {"status": "pass"}
    # The version written once (jupyter_ext/package.json), as the installed package has it.
    assert call("GET", api(gateway, "/version")).json() == {"version": version("dask-gateway-ng")}


def test_401_first_then_cookie(gateway):
    r = call("GET", api(gateway, "/v1/clusters/"))
    assert r.status == 401
    assert r.headers["WWW-Authenticate"] == "Basic"
    assert r.json() == {"error": "Authentication required"}
    r = call("GET", api(gateway, "/v1/clusters/"), headers=ALICE)
    assert r.status == 200
    cookie = r.headers["Set-Cookie"].split(";")[0]
    r = call("GET", api(gateway, "/v1/clusters/"), headers={"Cookie": cookie})
    assert r.status == 200
    r = call("GET", api(gateway, "/v1/clusters/"), headers={"Cookie": "dask-gateway-session=x"})
    assert r.status == 401


@pytest.mark.parametrize(
    "header",
    [
        "Basic",
        "Basic !!!notbase64",
        "Basicnospace",
        "Bearer abc",
        "Basic " + base64.b64encode(b":").decode(),
    ],
)
def test_malformed_credentials_are_401(gateway, header):
    r = call("GET", api(gateway, "/v1/options"), headers={"Authorization": header})
    assert r.status == 401
    assert "error" in r.json()


def test_non_ascii_user_names(gateway):
    token = base64.b64encode("josé:".encode("latin-1")).decode()
    r = call("GET", api(gateway, "/v1/clusters/"), headers={"Authorization": f"Basic {token}"})
    assert r.status == 200 and r.json() == {}


def test_options_spec(gateway):
    r = call("GET", api(gateway, "/v1/options"), headers=ALICE)
    assert r.json() == {
        "cluster_options": [
            {
                "field": "worker_cores",
                "label": "Worker Cores",
                "default": 1,
                "spec": {"type": "int", "min": 1, "max": 4},
            },
            {
                "field": "worker_memory",
                "label": "Worker Memory (GiB)",
                "default": 1.0,
                "spec": {"type": "float", "min": 0.25, "max": 4.0},
            },
            {
                "field": "environment",
                "label": "Environment",
                "default": "basic",
                "spec": {"type": "select", "options": ["basic", "tensorflow"]},
            },
        ]
    }


@pytest.mark.parametrize(
    "body,message",
    [
        ({"cluster_options": {"worker_cores": 10}}, "worker_cores must be <= 4, got 10"),
        ({"cluster_options": {"worker_cores": "a"}}, "worker_cores must be an integer, got 'a'"),
        ({"cluster_options": {"worker_cores": True}}, "worker_cores must be an integer, got True"),
        ({"cluster_options": {"worker_memory": -1}}, "worker_memory must be >= 0.25, got -1"),
        (
            {"cluster_options": {"environment": "nope"}},
            "'nope' is not a valid option for environment",
        ),
        ({"cluster_options": {"a": 1, "b": 2}}, "Unknown fields ['a', 'b']"),
        ({"cluster_options": [1]}, "options must be a dict, got 'list'"),
        ([1, 2], "Request body must be a JSON object, got list"),
    ],
)
def test_create_rejects_bad_options(gateway, body, message):
    r = call("POST", api(gateway, "/v1/clusters/"), body, ALICE)
    assert r.status == 422
    assert r.json() == {"error": message}


def test_malformed_json_is_400(gateway, running):
    for path in ["/v1/clusters/", f"/v1/clusters/{running}/scale", f"/v1/clusters/{running}/adapt"]:
        r = call("POST", api(gateway, path), raw=b"{not json", headers=ALICE)
        assert r.status == 400, path
        assert r.json() == {"error": "Request body must be valid JSON"}
    assert_healthy(gateway, running)


def test_cluster_json_has_exactly_eight_keys(gateway, running):
    r = call("GET", api(gateway, f"/v1/clusters/{running}"), headers=ALICE)
    model = r.json()
    assert set(model) == EIGHT_KEYS
    assert model["status"] == "RUNNING"
    assert model["dashboard_route"] == f"/clusters/{running}/status"
    assert model["tls_cert"].startswith("-----BEGIN CERTIFICATE-----")
    assert "PRIVATE KEY" in model["tls_key"]
    assert model["options"] == {"worker_cores": 1, "worker_memory": 1.0, "environment": "basic"}
    assert isinstance(model["start_time"], int) and model["stop_time"] is None
    listing = call("GET", api(gateway, "/v1/clusters/"), headers=ALICE).json()
    assert listing[running] == model


def test_list_status_filter(gateway, running):
    r = call("GET", api(gateway, "/v1/clusters/?status=running,pending"), headers=ALICE)
    assert running in r.json()
    r = call("GET", api(gateway, "/v1/clusters/?status=STOPPED"), headers=ALICE)
    assert running not in r.json()
    r = call("GET", api(gateway, "/v1/clusters/?status=foo"), headers=ALICE)
    assert r.status == 422
    assert r.json() == {"error": "'foo' is not a valid ClusterStatus"}


def test_unknown_cluster_is_404_everywhere(gateway):
    for method, path, body in [
        ("GET", "/v1/clusters/nope", None),
        ("POST", "/v1/clusters/nope/scale", {"count": 1}),
        ("POST", "/v1/clusters/nope/adapt", {}),
    ]:
        r = call(method, api(gateway, path), body, ALICE)
        assert r.status == 404, path
        assert r.json() == {"error": "Cluster nope not found"}
    # Stopping is idempotent: an unknown cluster is already stopped.
    assert call("DELETE", api(gateway, "/v1/clusters/nope"), headers=ALICE).status == 204


def test_unknown_route_is_json_404(gateway):
    r = call("GET", api(gateway, "/v1/clusters"))  # no trailing slash
    assert r.status == 404 and r.json() == {"error": "Not Found"}


def test_other_users_cluster_is_403(gateway, running):
    for method, path, body, verb in [
        ("GET", f"/v1/clusters/{running}", None, "view"),
        ("POST", f"/v1/clusters/{running}/scale", {"count": 1}, "scale"),
        ("POST", f"/v1/clusters/{running}/adapt", {}, "adapt"),
        ("DELETE", f"/v1/clusters/{running}", None, "stop"),
    ]:
        r = call(method, api(gateway, path), body, BOB)
        assert r.status == 403, path
        assert r.json() == {"error": f"User bob lacks permissions to {verb} cluster {running}"}
        assert "tls_key" not in r.body.decode()
    assert running not in call("GET", api(gateway, "/v1/clusters/"), headers=BOB).json()
    assert_healthy(gateway, running)


@pytest.mark.parametrize(
    "body", [{}, {"count": -1}, {"count": "2"}, {"count": 1.5}, {"count": True}, [3]]
)
def test_scale_rejects_bad_counts(gateway, running, body):
    r = call("POST", api(gateway, f"/v1/clusters/{running}/scale"), body, ALICE)
    assert r.status == 422
    assert r.json()["error"].startswith("Scale expects a non-negative integer")


@pytest.mark.parametrize(
    "body", [{"minimum": -1}, {"maximum": "x"}, {"active": "yes"}, {"minimum": 5, "maximum": 2}]
)
def test_adapt_rejects_bad_bounds(gateway, running, body):
    r = call("POST", api(gateway, f"/v1/clusters/{running}/adapt"), body, ALICE)
    assert r.status == 422
    assert "error" in r.json()


def test_scale_over_limit_is_clamped_with_message(gateway, running):
    r = call("POST", api(gateway, f"/v1/clusters/{running}/scale"), {"count": 50}, ALICE)
    assert r.status == 200
    assert r.json() == {
        "ok": False,
        "msg": "Scale request of 50 workers would exceed resource limit of 10 workers. "
        "Scaling to 10 instead.",
    }
    r = call(
        "POST", api(gateway, f"/v1/clusters/{running}/adapt"), {"minimum": 1, "maximum": 20}, ALICE
    )
    assert r.json() == {
        "ok": False,
        "msg": "Adapt with `maximum=20, minimum=1` workers would exceed resource limit of "
        "10 workers. Using `maximum=10, minimum=1` instead.",
    }
    r = call("POST", api(gateway, f"/v1/clusters/{running}/scale"), {"count": 0}, ALICE)
    assert r.json() == {"ok": True, "msg": None}


def test_heartbeat_needs_the_cluster_token(gateway, running):
    url = api(gateway, f"/v1/clusters/{running}/heartbeat")
    r = call("POST", url, {}, ALICE)
    assert r.status == 401 and r.headers["WWW-Authenticate"] == "token"
    r = call("POST", url, {}, {"Authorization": "token wrong"})
    assert r.status == 401 and r.json() == {"error": "Unauthorized"}
    assert_healthy(gateway, running)


def test_wait_returns_early_when_ready(gateway, running):
    start = time.monotonic()
    r = call("GET", api(gateway, f"/v1/clusters/{running}?wait=1"), headers=ALICE)
    assert r.json()["status"] == "RUNNING"
    assert time.monotonic() - start < 5


def test_method_not_allowed_is_json(gateway):
    r = call("PUT", api(gateway, "/v1/clusters/"), {}, ALICE)
    assert r.status == 405
    assert "error" in r.json()
