"""The local backend says how a scheduler or worker ended: "exited with code 3", "killed by
signal 9 (SIGKILL)". Its processes are children of the fork server (or of the gateway, with
the plain launcher), which reaps them: the parent must tell the gateway each child's status.

Real processes: real workers forked by the backend's launcher join a real scheduler (run in
this process, with the cluster's TLS credentials), and one is made to ``os._exit(3)`` through
a dask client, as a user's code would; another is SIGKILLed.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from dask_gateway_server.backends.launchers import (
    ForkServerLauncher,
    SubprocessLauncher,
    describe_exit,
)
from dask_gateway_server.backends.local import UnsafeLocalBackend, is_alive
from dask_gateway_server.models import Cluster, JobStatus, Worker
from dask_gateway_server.tls import new_keypair

#: How long a test waits for a state it expects before failing (never a measured time).
DEADLINE = 60.0


async def until(predicate, what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[1])


def test_describe_exit():
    assert describe_exit(0) == "exited with code 0"
    assert describe_exit(3) == "exited with code 3"
    assert describe_exit(-9) == "killed by signal 9 (SIGKILL)"
    assert describe_exit(-15) == "killed by signal 15 (SIGTERM)"
    assert describe_exit(-200) == "killed by signal 200"


@pytest.fixture(params=[ForkServerLauncher, SubprocessLauncher], ids=["fork-server", "subprocess"])
async def backend(request, tmp_path: Path):
    backend = UnsafeLocalBackend(
        clusters_directory=str(tmp_path / "clusters"), launcher_class=request.param
    )
    await backend.setup()
    yield backend
    await backend.cleanup()


async def test_worker_exit_code_and_signal(backend, tmp_path: Path):
    """A worker whose code calls os._exit(3), and one SIGKILLed: the backend's check finds
    each dead and ``exit_reason`` says how it ended; the scheduler's own state is left as is."""
    from distributed import Client, Scheduler
    from distributed.security import Security

    cert, key = new_keypair("exitcodes")
    cluster = Cluster(
        name="exitcodes",
        username=os.environ.get("USER", "root"),
        token="t" * 32,
        options={},
        config=backend.cluster_config_class(worker_memory="512 M").to_dict(),
        tls_cert=cert,
        tls_key=key,
    )
    paths = backend._setup_workdir(cluster, None)
    security = Security(
        tls_ca_file=paths["cert"],
        tls_scheduler_cert=paths["cert"],
        tls_scheduler_key=paths["key"],
        tls_client_cert=paths["cert"],
        tls_client_key=paths["key"],
        require_encryption=True,
    )
    async with Scheduler(
        security=security, protocol="tls", host="127.0.0.1", port=0, dashboard=False
    ) as scheduler:
        cluster.scheduler_address = scheduler.address
        workers = [Worker(name=n, cluster_name=cluster.name) for n in ("w-exits", "w-killed")]
        for w in workers:
            w.state = await backend.start_worker(cluster, w)
            w.status = JobStatus.SUBMITTED
        if isinstance(backend.launcher, ForkServerLauncher):  # forked by the fork server
            zygote = backend.launcher._zygotes[sys.executable].proc
            assert zygote is not None
            assert {parent_of(w.state["pid"]) for w in workers} == {zygote.pid}
        async with Client(scheduler.address, security=security, asynchronous=True) as client:
            await client.wait_for_workers(2, timeout=DEADLINE)
            addresses = {
                info["name"]: addr for addr, info in client.scheduler_info()["workers"].items()
            }
            assert await backend.check_workers(cluster, workers) == [True, True]
            assert backend.exit_reason(cluster, workers[0]) == ""  # still running

            # The user's code ends its worker with an exit code...
            # (the call fails: the worker is gone before it answers)
            with pytest.raises(Exception):  # noqa: B017
                await client.run(os._exit, 3, workers=[addresses["w-exits"]])
            await until(lambda: not is_alive(workers[0].state), "the worker to exit")
            assert await backend.check_workers(cluster, workers) == [False, True]
            assert backend.exit_reason(cluster, workers[0]) == "exited with code 3"

            # ... and the kernel's OOM killer (or an admin) kills the other.
            os.kill(workers[1].state["pid"], signal.SIGKILL)
            await until(lambda: not is_alive(workers[1].state), "the worker to die")
            assert await backend.check_workers(cluster, workers) == [False, False]
            assert backend.exit_reason(cluster, workers[1]) == "killed by signal 9 (SIGKILL)"
            assert backend.exit_reason(cluster, workers[0]) == "exited with code 3"

        # A reused pid (another process, started later) is not the worker that ended.
        reused = {**workers[0].state, "start_ticks": workers[0].state["start_ticks"] + 1}
        assert backend.exit_reason(cluster, Worker("x", cluster.name, state=reused)) == ""
        # A process of an earlier gateway (nothing known of it) says nothing.
        assert backend.exit_reason(cluster, Worker("y", cluster.name, state={})) == ""
    await backend.stop_cluster(cluster)


async def test_status_of_a_fork_server_that_died_is_lost_not_waited_for(tmp_path: Path):
    """The fork server killed under running children: their ends can no longer be told, and
    a check does not wait for them (nor invent one)."""
    probe = tmp_path / "mods" / "exitcodes_probe.py"
    probe.parent.mkdir()
    probe.write_text("import time\nif __name__ == '__main__':\n    time.sleep(600)\n")
    launcher = ForkServerLauncher(environment={"PYTHONPATH": str(probe.parent)})
    try:
        state = await launcher.launch(
            [sys.executable, "-m", "exitcodes_probe"],
            {},
            str(tmp_path / "work"),
            str(tmp_path / "probe.log"),
        )
        zygote = launcher._zygotes[sys.executable]
        assert zygote.proc is not None
        zygote_pid = zygote.proc.pid
        os.kill(zygote_pid, signal.SIGKILL)
        await until(lambda: zygote._statuses is not None and zygote._statuses.done(), "EOF")
        os.kill(state["pid"], signal.SIGKILL)  # an orphan now: init reaps it, not ours
        await until(lambda: not is_alive(state), "the orphan to die")
        key = (state["pid"], state["start_ticks"])
        assert key not in launcher.exits._running  # given up: a check will not wait for it
        assert await launcher.wait_exit(state, DEADLINE) is None
        assert launcher.exit_status(state) is None
    finally:
        await launcher.close()


def test_worker_ends_through_the_events_route(gateway):
    """As the user reads it: a gateway process, a worker whose code calls os._exit(3) and one
    SIGKILLed; each one's worker-failed event says how it ended."""
    from support.http_helpers import basic, call
    from support.waiting import wait_for

    from dask_gateway import BasicAuth, Gateway

    def failures(name: str) -> dict[str, str]:
        r = call("GET", f"{gateway.address}/api/v1/clusters/{name}/events", headers=basic("ec"))
        assert r.status == 200, r.body
        events = r.json()["events"]
        return {e["worker"]: e["message"] for e in events if e["kind"] == "worker-failed"}

    with Gateway(gateway.address, auth=BasicAuth(username="ec", password="x")) as gw:
        with gw.new_cluster() as cluster, cluster.get_client() as client:
            cluster.scale(2)
            client.wait_for_workers(2, timeout=DEADLINE)
            info = client.scheduler_info()["workers"]
            (exits, exits_addr), (killed, killed_addr) = sorted(
                (w["name"], addr) for addr, w in info.items()
            )
            with pytest.raises(Exception):  # noqa: B017 (the worker is gone before it answers)
                client.run(os._exit, 3, workers=[exits_addr])
            pid = client.run(os.getpid, workers=[killed_addr])[killed_addr]
            os.kill(pid, signal.SIGKILL)
            failed = wait_for(
                lambda: len(failures(cluster.name)) == 2 and failures(cluster.name),
                timeout=DEADLINE,
                what="two worker-failed events",
            )
            assert failed == {
                exits: f"Worker {exits} failed: exited with code 3",
                killed: f"Worker {killed} failed: killed by signal 9 (SIGKILL)",
            }
