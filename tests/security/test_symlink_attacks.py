"""Root through a symlink (issue 14, finding 1).

A cluster's working directory is its user's, and the user's code runs in it (their scheduler).
Whatever the gateway later does there as root, the user can redirect with a symlink: make it
create and chown a directory anywhere, create files in root's directories, or read root's
files into the failure details of the gateway's log. And the clusters directory itself, under
/tmp by default, can be created first by anyone.
"""

from __future__ import annotations

import os
import stat
import textwrap
from pathlib import Path

import pytest
from support.waiting import wait_for
from users import ALICE, BOB, in_scheduler, run_as, user_gateway


def _fingerprint(path: Path) -> tuple:
    """Everything an attack through a symlink could change in a directory of root's."""
    st = path.stat()
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode), sorted(os.listdir(path))


@pytest.fixture
def victim(public_tmp):
    """A directory of root's, as /etc or /root would be, with a file in it."""
    path = public_tmp / "victim"
    path.mkdir(mode=0o755)
    (path / "keep").write_text("root's own\n")
    return path


def _start_failed(gw, cluster_name: str) -> bool:
    log = gw.log()
    return (
        f"of cluster {cluster_name} exited while starting" in log
        or f"of cluster {cluster_name} failed to start" in log
    )


@pytest.mark.parametrize("replaced", ["workers", "logs"])
def test_symlinked_cluster_directory_gives_the_user_nothing_of_roots(
    root_gateway, as_user, local_users, victim, replaced
):
    """The scheduler swaps ``workers`` (where the gateway made and chowned each worker's
    directory) or ``logs`` (where root opened each worker's log) for a symlink to a directory
    of root's, then asks for one more worker."""
    before = _fingerprint(victim)
    alice = as_user(ALICE)
    cluster = alice.new_cluster()
    cluster.scale(1)
    with cluster.get_client() as client:
        # The legitimate use: a worker in its own directory, with its log, as alice.
        client.wait_for_workers(1, timeout=60)
        assert client.submit(lambda x: x + 1, 41).result() == 42
        assert set(client.run(os.getuid).values()) == {local_users[ALICE].uid}
        workdir = Path(in_scheduler(client, "import os; result = os.getcwd()"))

        in_scheduler(
            client,
            textwrap.dedent(f"""
            import os
            os.rename({replaced!r}, {replaced + ".moved"!r})
            os.symlink({str(victim)!r}, {replaced!r})
            # and a link the gateway's clean-up must not follow
            os.symlink({str(victim)!r}, "victim-link")
        """),
        )
        cluster.scale(2)
        wait_for(
            lambda: _fingerprint(victim) != before or _start_failed(root_gateway, cluster.name),
            timeout=60,
            what="the gateway to try the second worker",
        )
        assert _fingerprint(victim) == before, "the gateway acted as root through the symlink"
        assert not any(p.stat().st_uid == local_users[ALICE].uid for p in victim.iterdir())
        # Its files are its own: the gateway did not make them as root.
        for path in workdir.rglob("*.log"):
            assert path.lstat().st_uid == local_users[ALICE].uid, path
    cluster.shutdown()
    wait_for(lambda: not workdir.exists(), timeout=30, what="the working directory removed")
    assert _fingerprint(victim) == before and (victim / "keep").read_text() == "root's own\n"


def test_scheduler_log_symlink_does_not_leak_roots_file(root_gateway, as_user, public_tmp):
    """The failure details are the end of the scheduler's log, read by root: the scheduler
    makes its log a symlink to a file only root may read (or a FIFO, to hang that read),
    then dies."""
    secret = public_tmp / "secret"
    secret.write_text("ROOT-ONLY-" + os.urandom(8).hex() + "\n")
    secret.chmod(0o600)
    alice = as_user(ALICE)
    names = []
    for attack in ("symlink", "fifo", None):
        cluster = alice.new_cluster()
        names.append(cluster.name)
        with cluster.get_client() as client:
            if attack == "symlink":
                setup = f"os.remove(log); os.symlink({str(secret)!r}, log)"
            elif attack == "fifo":
                setup = "os.remove(log); os.mkfifo(log)"
            else:  # the legitimate use: the end of its own log explains the failure
                setup = "print('ALICE-OWN-LOG-LINE', file=sys.stderr, flush=True)"
            in_scheduler(
                client,
                textwrap.dedent(f"""
                import os, sys, threading
                log = "logs/scheduler.log"
                {setup}
                threading.Timer(0.2, os._exit, (3,)).start()
            """),
            )
        failed = f"Cluster {cluster.name} failed"
        wait_for(
            lambda failed=failed: failed in root_gateway.log(),
            timeout=60,
            what=failed,
        )
        cluster.close()
        assert "ROOT-ONLY-" not in root_gateway.log()
    log = root_gateway.log()
    legit = log[log.index(f"Cluster {names[2]} failed") :]
    assert "ALICE-OWN-LOG-LINE" in legit
    # The FIFO hung nothing: the gateway still serves and starts clusters.
    with alice.new_cluster() as cluster, cluster.get_client() as client:
        cluster.scale(1)
        client.wait_for_workers(1, timeout=60)
        assert client.submit(lambda: 6 * 7).result() == 42


@pytest.mark.parametrize("made_by_bob", ["directory", "symlink"])
def test_clusters_directory_someone_else_made_first(
    make_root_gateway, public_tmp, local_users, made_by_bob
):
    """/tmp is anyone's: bob creates the gateway's default clusters directory (or a symlink
    there) before the gateway first starts, to own every cluster directory made in it."""
    tmp = public_tmp / "tmp"
    tmp.mkdir()
    tmp.chmod(0o1777)  # like /tmp
    squatted = tmp / "dask-gateway-clusters"
    made = run_as(
        BOB,
        textwrap.dedent(f"""
        import os
        if {made_by_bob!r} == "directory":
            os.mkdir({str(squatted)!r}, 0o777)
            os.chmod({str(squatted)!r}, 0o777)
        else:
            os.mkdir({str(tmp / "bobs")!r}, 0o777)
            os.symlink({str(tmp / "bobs")!r}, {str(squatted)!r})
    """),
    )
    assert made.returncode == 0, made.stderr
    with pytest.raises(RuntimeError, match="gateway exited at start") as failed:
        make_root_gateway(clusters_dir=squatted)
    message = str(failed.value)
    if made_by_bob == "directory":
        assert f"is owned by {BOB}" in message, message
    else:
        assert "is a symbolic link" in message, message
    assert "clusters_directory" in message
    assert not any(os.scandir(tmp / "bobs" if made_by_bob == "symlink" else squatted))

    # The legitimate use: where no one came first, the gateway makes it root's, mode 0755,
    # and runs clusters in it.
    fresh = tmp / "dask-gateway-clusters-fresh"
    gw = make_root_gateway(clusters_dir=fresh)
    st = fresh.lstat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode), stat.S_ISDIR(st.st_mode)) == (0, 0o755, True)
    with user_gateway(gw, ALICE) as alice, alice.new_cluster() as cluster:
        assert (fresh / cluster.name).stat().st_uid == local_users[ALICE].uid
