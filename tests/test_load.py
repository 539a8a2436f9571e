"""Issue 9's load check, CI-sized: many users at once, nothing lost, stuck or left running.

The same code as ``bench/load.py`` (imported, not copied), with 10 users for 35 seconds.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import load


@pytest.mark.timeout(600)
def test_ten_users_for_35_seconds(tmp_path):
    result, server = load.run_with_server(users=10, duration=35, home=tmp_path / "gw")
    print(result.table())
    assert result.server_errors == 0, (result.table(), server.log_tail())
    assert result.problems == [], (result.problems, server.log_tail())
    assert result.rounds >= 10 and len(result.created) >= 10, result.table()
    # Every route of a user's round was exercised.
    routes = {route for _, route in result.samples}
    assert {
        "/api/v1/clusters/",
        "/api/v1/clusters/{name}",
        "/api/v1/clusters/{name}/scale",
        "/api/v1/clusters/{name}?wait",
        "/api/v1/options",
    } <= routes, routes
