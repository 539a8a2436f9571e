"""Units of the all-users listing (``dask_gateway_jupyter.allusers``): which ended clusters
stay listed, how an overview entry becomes a sidebar row, what ``?all=`` means. The real
gateway and Jupyter servers are in test_jupyter_ext_admin.py."""

from __future__ import annotations

import time

from dask_gateway.client import ClusterReport
from dask_gateway_jupyter.allusers import (
    ENDED_LISTED_FOR,
    ENDED_LISTED_MAX,
    entry_model,
    listed_entries,
    wants_all,
)


def entry(name: str, status: str, start: float, stop: float | None = None, **extra) -> dict:
    return {
        "name": name,
        "user": "alice",
        "status": status,
        "workers": {"requested": 3, "running": 2, "pending": 1},
        "cores": 3.0,
        "memory": 3 * 2**30,
        "start_time": int(start * 1000),
        "stop_time": None if stop is None else int(stop * 1000),
        "options": {"worker_cores": 1},
        "dashboard_route": f"/clusters/{name}/status" if status == "RUNNING" else None,
        **extra,
    }


def test_wants_all_reads_the_query_as_the_gateway_does():
    assert wants_all("1") and wants_all("") and wants_all("true") and wants_all("YES")
    assert not wants_all(None) and not wants_all("0") and not wants_all("no")
    assert not wants_all("all")


def test_ended_clusters_listed_for_an_hour_and_at_most_the_newest():
    now = time.time()
    active = [entry(f"a{i}", s, now - 10) for i, s in enumerate(("PENDING", "RUNNING", "STOPPING"))]
    old = entry("old", "STOPPED", now - 2 * ENDED_LISTED_FOR, now - ENDED_LISTED_FOR - 5)
    ended = [
        entry(f"e{i:03}", "FAILED" if i % 2 else "STOPPED", now - 100, now - 100 + i)
        for i in range(ENDED_LISTED_MAX + 5)
    ]
    kept = listed_entries([*active, old, *ended], now)
    names = [e["name"] for e in kept]
    assert names[:3] == ["a0", "a1", "a2"]
    assert "old" not in names
    # The newest ended ones: the last ENDED_LISTED_MAX, newest first.
    expected = [f"e{i:03}" for i in range(ENDED_LISTED_MAX + 4, 4, -1)]
    assert names[3:] == expected


def test_entry_model_has_the_rows_keys_and_the_owner():
    now = time.time()
    running = entry("c1", "RUNNING", now - 30)
    report = ClusterReport._from_json(running, "http://gw", "gateway://gw:8786")
    model = entry_model(running, report, None, None, {"minimum": 1, "maximum": 4}, now)
    assert model["user"] == "alice"
    assert model["status"] == "RUNNING"
    assert (model["workers"], model["requested"]) == (2, 3)
    assert (model["cores"], model["memory"]) == (3.0, 3 * 2**30)
    assert model["dashboard_link"] == "http://gw/clusters/c1/status"
    assert model["adapt"] == {"minimum": 1, "maximum": 4}
    assert 29 <= model["age"] <= 60
    assert set(model) == {
        "name", "user", "status", "start_time", "stop_time", "phase", "reason", "age",
        "dashboard_link", "options", "workers", "cores", "memory", "requested", "adapt",
    }  # fmt: skip

    failed = entry("c2", "FAILED", now - 60, now - 5)
    report = ClusterReport._from_json(failed, "http://gw", "gateway://gw:8786")
    model = entry_model(failed, report, None, "It failed.", None, now)
    assert model["reason"] == "It failed."
    assert model["workers"] is None and model["requested"] is None and model["cores"] is None
    assert model["dashboard_link"] is None


def test_entry_model_ignores_malformed_counts():
    now = time.time()
    odd = entry("c3", "RUNNING", now, workers={"running": "2", "requested": True}, cores="x")
    report = ClusterReport._from_json(odd, "http://gw", "gateway://gw:8786")
    model = entry_model(odd, report, None, None, None, now)
    assert model["workers"] is None and model["requested"] is None and model["cores"] is None
