"""Root and system accounts (issue 14, finding 6).

With simple auth anyone may log in under any name. A backend that runs processes as the
user's own account must never run them as root, as a system account (a daemon's, whose files
it could then change) or as the gateway's own account, nor try one that does not exist.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support.http_helpers import basic, call
from users import ALICE, SYSTEM


def _processes_under(directory: Path) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.readlink(entry / "cwd").startswith(str(directory)):
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def _entries(directory: Path) -> list[str]:
    return sorted(os.listdir(directory)) if directory.exists() else []


@pytest.mark.parametrize(
    "who, says",
    [
        ("root", "never run as root"),
        (SYSTEM, "is a system account"),
        ("dgwsec-no-such-user", "has no account on this machine"),
    ],
)
def test_root_and_system_accounts_get_no_cluster(root_gateway, local_users, who, says):
    before = _entries(root_gateway.clusters_dir)
    r = call(
        "POST", f"{root_gateway.address}/api/v1/clusters/", {"cluster_options": {}}, basic(who)
    )
    assert r.status == 403, r.body
    assert says in r.json()["error"], r.body
    # Nothing was created or started for them.
    listed = call(
        "GET",
        f"{root_gateway.address}/api/v1/clusters/?status=pending,running,stopped,failed",
        headers=basic(who),
    )
    assert listed.status == 200 and listed.json() == {}, listed.body
    assert _entries(root_gateway.clusters_dir) == before
    assert _processes_under(root_gateway.clusters_dir) == []

    # The legitimate use: an ordinary user's cluster starts, as that user.
    r = call(
        "POST", f"{root_gateway.address}/api/v1/clusters/", {"cluster_options": {}}, basic(ALICE)
    )
    assert r.status == 201, r.body
    name = r.json()["name"]
    r = call("GET", f"{root_gateway.address}/api/v1/clusters/{name}?wait", headers=basic(ALICE))
    assert r.json()["status"] == "RUNNING", r.body
    pids = _processes_under(root_gateway.clusters_dir / name)
    assert pids and {os.stat(f"/proc/{p}").st_uid for p in pids} == {local_users[ALICE].uid}
    r = call("DELETE", f"{root_gateway.address}/api/v1/clusters/{name}", headers=basic(ALICE))
    assert r.status == 204, r.body
