"""The legitimate use the attacks must leave working: each user's cluster runs as that user,
computes, and is theirs alone; an admin sees and stops anyone's."""

from __future__ import annotations

import os

from support.http_helpers import basic, call
from users import ADMIN, ALICE, BOB, in_scheduler, user_gateway


def _uid_of(pid: int) -> int:
    return os.stat(f"/proc/{pid}").st_uid


def test_each_cluster_runs_as_its_user_and_admin_sees_all(root_gateway, as_user, local_users):
    alice, bob = as_user(ALICE), as_user(BOB)
    ca = alice.new_cluster()
    cb = bob.new_cluster()
    ca.scale(1)
    with ca.get_client() as client:
        client.wait_for_workers(1, timeout=60)
        assert client.submit(sum, [1, 2, 3]).result() == 6
        pid = in_scheduler(client, "import os; result = os.getpid()")
        assert _uid_of(pid) == local_users[ALICE].uid
        worker_uids = client.run(os.getuid)
        assert set(worker_uids.values()) == {local_users[ALICE].uid}
    assert [c.name for c in alice.list_clusters()] == [ca.name]
    assert [c.name for c in bob.list_clusters()] == [cb.name]

    admin = user_gateway(root_gateway, ADMIN)
    try:
        listed = call("GET", f"{root_gateway.address}/api/v1/clusters/?all=1", headers=basic(ADMIN))
        assert listed.status == 200
        assert {ca.name, cb.name} <= set(listed.json())
        denied = call("GET", f"{root_gateway.address}/api/v1/clusters/?all=1", headers=basic(BOB))
        assert denied.status == 403
        admin.stop_cluster(cb.name)
        assert bob.list_clusters() == []
    finally:
        admin.close()
    ca.shutdown()
