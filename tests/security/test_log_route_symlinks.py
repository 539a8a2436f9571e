"""The logs route reads files in each cluster's directory, which is its user's (issue 18).

The gateway runs as root. Alice, from her own scheduler, swaps her logs for symlinks to a
file only root may read and to bob's scheduler log (or for a FIFO, to hang the read), then
asks the gateway for her logs, live and after her cluster stopped (when the gateway keeps a
copy): none of it may come back, and the gateway must keep serving.
"""

from __future__ import annotations

import os
import sys
import textwrap
import threading
import urllib.parse
import uuid

import cloudpickle
import pytest
from support.http_helpers import basic, call
from support.waiting import wait_for
from users import ADMIN, ALICE, BOB, in_scheduler

# Functions of this module run in schedulers and workers, which cannot import the tests.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _logs(gw, name: str, user: str, **query) -> dict:
    q = urllib.parse.urlencode(query)
    r = call(
        "GET",
        f"{gw.address}/api/v1/clusters/{name}/logs" + (f"?{q}" if q else ""),
        headers=basic(user),
        timeout=60,
    )
    assert r.status == 200, (r.status, r.body)
    return r.json()


def _say(text: str) -> None:
    import sys

    print(text, file=sys.stderr, flush=True)


@pytest.mark.parametrize("swapped", ["files", "directory"])
def test_symlinked_logs_never_show_what_they_point_to(root_gateway, as_user, public_tmp, swapped):
    """``files``: each worker's log becomes a link (to root's file, to bob's log) or a FIFO;
    ``directory``: the whole ``logs`` directory becomes a link to bob's."""
    secret = f"ROOT-ONLY-{uuid.uuid4().hex}"
    secret_file = public_tmp / "secret"
    secret_file.write_text(secret + "\n")
    secret_file.chmod(0o600)
    bobs_secret = f"BOB-ONLY-{uuid.uuid4().hex}"

    bob = as_user(BOB)
    bob_cluster = bob.new_cluster()
    with bob_cluster.get_client() as bob_client:
        bob_client.run_on_scheduler(_say, bobs_secret)
    # The legitimate use: bob reads his own log.
    assert bobs_secret in _logs(root_gateway, bob_cluster.name, BOB)["logs"]["scheduler"]
    bobs_log = root_gateway.clusters_dir / bob_cluster.name / "logs" / "scheduler.log"
    assert bobs_log.exists()

    alice = as_user(ALICE)
    cluster = alice.new_cluster()
    cluster.scale(3)
    name = cluster.name
    with cluster.get_client() as client:
        client.wait_for_workers(3, timeout=60)
        own = f"ALICE-OWN-{uuid.uuid4().hex}"
        client.run(_say, own)
        client.run_on_scheduler(_say, own)
        workers = sorted(w["name"] for w in client.scheduler_info()["workers"].values())
        # The legitimate use: alice reads her own logs, scheduler and workers.
        before = _logs(root_gateway, name, ALICE)["logs"]
        assert set(before) == {"scheduler", *(f"worker:{w}" for w in workers)}
        assert all(own in text for text in before.values()), before

        # The attack, from her scheduler (her own code, as her).
        attack = (
            "import os; os.rename('logs', 'logs.moved'); "
            f"os.symlink({str(bobs_log.parent)!r}, 'logs')"
            if swapped == "directory"
            else ""
        )
        in_scheduler(
            client,
            attack
            or textwrap.dedent(f"""
            import os
            os.remove("logs/worker-{workers[0]}.log")
            os.symlink({str(secret_file)!r}, "logs/worker-{workers[0]}.log")
            os.remove("logs/worker-{workers[1]}.log")
            os.mkfifo("logs/worker-{workers[1]}.log")
            os.remove("logs/worker-{workers[2]}.log")
            os.symlink({str(bobs_log)!r}, "logs/worker-{workers[2]}.log")
        """),
        )

        def nothing_leaks(answer: dict) -> None:
            for text in answer["logs"].values():
                assert secret not in text and bobs_secret not in text, answer

        nothing_leaks(_logs(root_gateway, name, ALICE))
        nothing_leaks(_logs(root_gateway, name, ADMIN))
        for component in ("scheduler", *(f"worker:{w}" for w in workers)):
            nothing_leaks(_logs(root_gateway, name, ALICE, component=component))
            nothing_leaks(_logs(root_gateway, name, ALICE, component=component, offset="0"))
        # A follow of the swapped log gets nothing of bob's while it runs, then ends.
        streamed: list[bytes] = []

        url = f"{root_gateway.address}/api/v1/clusters/{name}/logs"

        def follow() -> None:
            r = call(
                "GET",
                f"{url}?component=worker:{workers[2]}&follow=1",
                headers=basic(ALICE),
                timeout=120,
            )
            streamed.append(r.body)

        follower = threading.Thread(target=follow)
        follower.start()
    cluster.shutdown()
    follower.join(120)
    assert not follower.is_alive(), "the follow did not end with the cluster"
    assert secret.encode() not in streamed[0] and bobs_secret.encode() not in streamed[0]

    wait_for(
        lambda: _logs(root_gateway, name, ALICE, component="scheduler")["done"],
        timeout=60,
        what="alice's cluster stopped",
    )
    # What the gateway kept did not follow the links either.
    kept = _logs(root_gateway, name, ALICE)
    nothing_leaks(kept)
    folder = root_gateway.data_dir / "cluster-logs" / name
    for path in folder.glob("*"):
        data = path.read_bytes()
        assert secret.encode() not in data and bobs_secret.encode() not in data, path
    if swapped == "files":  # the legitimate use: her own scheduler's log was kept
        assert own in kept["logs"]["scheduler"]
        assert (folder / "scheduler.log").exists()
    assert secret not in root_gateway.log() and bobs_secret not in root_gateway.log()
    # Bob's log is untouched and still his alone to read.
    assert bobs_secret in _logs(root_gateway, bob_cluster.name, BOB)["logs"]["scheduler"]
    r = call(
        "GET",
        f"{root_gateway.address}/api/v1/clusters/{bob_cluster.name}/logs",
        headers=basic(ALICE),
    )
    assert r.status == 403
    bob_cluster.shutdown()
    assert os.path.exists(secret_file)
