"""The public dask-gateway client (2026.3.0, from PyPI, in its own venv) against our server."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from support.gateway_process import GatewayProcess
from support.paths import CONFIGS, ROOT, SUPPORT

UPSTREAM_VENV = Path(os.environ.get("DASK_GATEWAY_UPSTREAM_VENV", ROOT / ".venv-upstream"))

pytestmark = pytest.mark.interop


@pytest.fixture
def compat_gateway(tmp_path):
    # The shared test config fails a cluster after 4 s without a heartbeat; the first render
    # of a dashboard (the workflow fetches one) can hold the scheduler's event loop longer on
    # a busy machine. Nothing here waits for a heartbeat timeout.
    gw = GatewayProcess(
        tmp_path / "gw",
        ["--LocalBackend.cluster_heartbeat_timeout=60"],
        config=CONFIGS / "compat_gateway_config.py",
    )
    gw.start()
    yield gw
    gw.stop()


def test_public_client_runs_the_workflow_on_our_server(compat_gateway):
    python = UPSTREAM_VENV / "bin" / "python"
    if not python.exists():
        pytest.fail(f"{python} is missing: create it with scripts/make-upstream-venv.sh")
    out = subprocess.run(
        [str(python), str(SUPPORT / "upstream_client_workflow.py"), compat_gateway.address],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT / "bench",
    )
    assert out.returncode == 0, out.stderr + "\n" + compat_gateway.log()
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["initial_list"] == []
    assert r["options"] == {
        "worker_cores": 1,
        "worker_memory": 1.0,
        "size": "small",
        "label": "none",
        "broken": False,
        "env": {},
    }
    # The public client validates locally, in its own words.
    assert r["bad_option"] == "worker_cores must be <= 4.000000, got 10"
    assert r["server_bad_option"] == "worker_cores must be <= 4, got 99"
    assert r["cluster_options"] == {
        "worker_cores": 2,
        "worker_memory": 1.0,
        "size": "medium",
        "label": "hello",
        "broken": False,
        "env": {"A": "1"},
    }
    assert r["scale_warning"] == [
        "Scale request of 5 workers would exceed resource limit of 3 workers. Scaling to 3 instead."
    ]
    assert abs(r["mean"]) < 0.01 and r["workers"] == 2
    assert r["dashboard_status"] == 200
    assert r["ctx_status"] == "RUNNING" and r["gc_ctx"] is True
    assert r["listed"] == [True]
    assert r["connected_compute"] == 42
    assert "failed to start" in r["failed_cluster"]
    assert r["unknown_cluster"] == f"Cluster {'0' * 32} not found"
