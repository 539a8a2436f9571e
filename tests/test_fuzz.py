"""Hostile input, generated: every route of the OpenAPI document fuzzed against a real
gateway (bench/fuzz.py at CI size; the bench runs tens of thousands of cases).

A user must never get a 5xx or a traceback, every error must be a JSON ``{"error": ...}``,
every answer must be what the document says, and afterwards the gateway must be healthy with
every cluster still there."""

from __future__ import annotations

import io
import sys
import time
from pathlib import Path

from support.http_helpers import basic, call, create

sys.path.insert(0, str(Path(__file__).parent.parent / "bench"))
import fuzz

ALICE = basic("alice")
CASES = 2000
METHODS = {"get", "put", "post", "delete", "patch"}


def test_fuzz_every_route(fresh_gateway):
    gw = fresh_gateway(fuzz.FUZZ_ARGS)
    gw.start(timeout=120)  # a busy machine starts it slowly
    targets = fuzz.prepare(gw.address, str(gw.data_dir))
    before = fuzz.snapshot(gw.address)
    assert set(before) == {targets.own, targets.other}

    start = time.monotonic()
    report = fuzz.fuzz(targets, CASES, seed=0)
    seconds = time.monotonic() - start
    out = io.StringIO()
    fuzz.print_report(report, out=out)
    summary = out.getvalue()
    print(summary, f"\nfuzzing took {seconds:.0f} s")

    spec = call("GET", f"{gw.address}/api/openapi.json").json()
    operations = {
        f"{m.upper()} {path}" for path, item in spec["paths"].items() for m in item if m in METHODS
    }
    assert set(report.cases) == operations
    # Each operation gets its share (a few requests the client library refuses to send,
    # such as header values it cannot encode, are not counted).
    assert report.total >= CASES * 0.9, summary
    for op, n in report.cases.items():
        assert n >= CASES / len(operations) * 0.8, (op, summary)
    assert report.server_errors == 0, summary + "\n" + gw.log()[-5000:]
    assert report.failures == [], summary
    # The generated requests got past authentication into the handlers, not only 401s.
    by_op = report.by_operation
    assert by_op["POST /api/v1/clusters/"][201] >= 1, summary
    assert by_op["POST /api/v1/clusters/"][422] >= 1, summary
    for op in (
        "POST /api/v1/clusters/{cluster_name}/scale",
        "POST /api/v1/clusters/{cluster_name}/adapt",
        "POST /api/v1/clusters/{cluster_name}/heartbeat",
        "GET /api/v1/clusters/{cluster_name}/workers",
        "GET /api/v1/clusters/{cluster_name}",
    ):
        assert by_op[op][200] >= 1, (op, summary)
        assert sum(n for s, n in by_op[op].items() if 400 <= s < 500 and s != 401) >= 1, (
            op,
            summary,
        )
    for op in report.cases:
        if op not in {
            "GET /api/health",
            "GET /api/version",
            "GET /api/openapi.json",
            "GET /metrics",
            "GET /oauth_callback",
        }:
            assert by_op[op][401] >= 1, (op, summary)

    # What the generator does not make: bodies nested deeper than JSON decoders follow.
    for method, path, headers, body in fuzz.nested_bodies(targets):
        r = call(method, gw.address + path, headers=headers, raw=body)
        assert 400 <= r.status < 500, (path, body[:60], r.status, r.body[:200])
        assert isinstance(r.json()["error"], str)

    assert gw.proc.poll() is None, gw.log()
    assert fuzz.problems_after(gw.address, before) == []
    # alice's cluster still answers.
    r = call("GET", f"{gw.address}/api/v1/clusters/{targets.own}/workers", headers=fuzz.ALICE)
    assert r.status == 200
    # The fuzzing could create one cluster (alice's limit is two); it stops like any other.
    assert fuzz.stop_new_clusters(gw.address, before) <= 1
    listing = call("GET", f"{gw.address}/api/v1/clusters/", headers=fuzz.ALICE).json()
    assert set(listing) == {targets.own}


def test_worker_counts_beyond_what_the_store_holds_are_refused(fresh_gateway):
    """Found by the fuzzer: with no cluster_max_workers, scale(2**63) answered 500 (the
    count did not fit the database) after the in-memory count had been set, so the gateway
    went on adding workers without end."""
    gw = fresh_gateway(["--ClusterConfig.cluster_max_workers=None"])
    gw.start(timeout=120)  # a busy machine starts it slowly
    name = create(gw, ALICE)
    for _ in range(10):  # ?wait holds each call until a change (bounded): a slow start
        model = call("GET", f"{gw.address}/api/v1/clusters/{name}?wait=1", headers=ALICE).json()
        if model["status"] != "PENDING":
            break
    assert model["status"] == "RUNNING"
    url = f"{gw.address}/api/v1/clusters/{name}"
    huge = 2**63
    r = call("POST", f"{url}/scale", {"count": huge}, ALICE)
    assert r.status == 422
    assert r.json() == {"error": f"Scale expects at most 2147483647 workers, got {huge}"}
    r = call("POST", f"{url}/adapt", {"maximum": huge}, ALICE)
    assert r.status == 422
    assert r.json() == {
        "error": f"Adapt expects a maximum of at most 2147483647 workers, got {huge}"
    }
    r = call("POST", f"{url}/adapt", {"minimum": huge, "maximum": None}, ALICE)
    assert r.status == 422
    r = call("GET", f"{url}/workers", headers=ALICE)
    assert r.json() == {
        "workers": 0,
        "cores": 0,
        "memory": 0,
        "requested": 0,
        "pending": 0,
    }
    assert call("DELETE", url, headers=ALICE).status == 204
    assert call("GET", f"{gw.address}/api/health").status == 200
