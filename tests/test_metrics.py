"""Prometheus metrics: what an operator's dashboards and alerts read."""

from __future__ import annotations

import re

from support.http_helpers import basic, call, create


def scrape(gw) -> dict[str, float]:
    r = call("GET", f"{gw.address}/metrics")
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
    out = {}
    for line in r.body.decode().splitlines():
        m = re.fullmatch(r"([a-z_]+(?:\{[^}]*\})?) ([0-9.e+-]+)", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def test_metrics(gateway):
    alice = basic("alice")
    name = create(gateway, alice)
    assert (
        call("GET", f"{gateway.address}/api/v1/clusters/{name}?wait", headers=alice).json()[
            "status"
        ]
        == "RUNNING"
    )
    call("GET", f"{gateway.address}/api/v1/clusters/nope", headers=alice)
    m = scrape(gateway)
    assert m['dask_gateway_clusters{status="RUNNING"}'] >= 1
    assert 'dask_gateway_workers{status="RUNNING"}' in m
    assert m['dask_gateway_requests_total{code="201",method="POST",route="ClustersHandler"}'] >= 1
    assert m['dask_gateway_requests_total{code="404",method="GET",route="ClusterHandler"}'] >= 1
    assert (
        m['dask_gateway_request_duration_seconds_count{method="POST",route="ClustersHandler"}'] >= 1
    )
    assert "dask_gateway_event_loop_lag_seconds" in m
    assert m["dask_gateway_reconcile_wait_seconds_count"] >= 1
    assert "dask_gateway_reconcile_queue_length" in m
    # Nothing that names a user or a cluster.
    body = call("GET", f"{gateway.address}/metrics").body.decode()
    assert name not in body and "alice" not in body
    call("DELETE", f"{gateway.address}/api/v1/clusters/{name}", headers=alice)
