"""Restart without loss, with the public port in a separate proxy process.

Many clusters and connected clients survive a gateway restart (SIGTERM, and SIGKILL while
clusters are being created, scaled and stopped): the clients' connections to their
schedulers are never closed, every cluster reaches its target with the same processes, no
process is left over and no database row is lost or duplicated.

Connections to local schedulers are normally handed to the scheduler itself (see
test_handoff.py); the twenty-cluster test turns that off so that every client connection is
a tunnel through the proxy process, as with schedulers on other machines (Slurm).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from pathlib import Path

import pytest
from support.gateway_process import proxy_processes
from support.http_helpers import basic, call
from support.paths import CONFIGS
from support.procs import cluster_processes

ALICE = basic("alice")
SEPARATE = ["--LocalBackend.stop_clusters_on_shutdown=False", "--Proxy.separate_process=True"]
RUNNING = 3  # JobStatus.RUNNING in the database
TUNNELLED = CONFIGS / "tunnel_gateway_config.py"
# Starting a gateway imports distributed (the fork server); slow on a loaded CI machine.
START = 90


def db_rows(data_dir: Path) -> tuple[list[tuple], list[tuple]]:
    """(clusters, workers) rows as the database holds them, read directly."""
    con = sqlite3.connect(f"file:{data_dir / 'dask_gateway.sqlite'}?mode=ro", uri=True)
    try:
        clusters = con.execute(
            "SELECT id, name, status, target FROM clusters ORDER BY id"
        ).fetchall()
        workers = con.execute(
            "SELECT id, cluster_id, name, status, target FROM workers ORDER BY id"
        ).fetchall()
    finally:
        con.close()
    return clusters, workers


def assert_no_duplicates(clusters: list[tuple], workers: list[tuple]) -> None:
    names = [c[1] for c in clusters]
    assert len(names) == len(set(names)), names
    keys = [(w[1], w[2]) for w in workers]
    assert len(keys) == len(set(keys)), keys


def wait_status(
    api: str, names: list[str], want: dict[str, str], timeout: float, gw
) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while True:
        states = {n: call("GET", f"{api}/{n}", headers=ALICE).json().get("status") for n in names}
        if all(states[n] == want[n] for n in names) or time.monotonic() > deadline:
            assert states == want, gw.log()[-4000:]
            return states
        time.sleep(0.2)


def splice_pipes(pid: int) -> int:
    """Pipe fds of a process: each scheduler tunnel of the proxy splices through 4."""
    fds = Path(f"/proc/{pid}/fd")
    count = 0
    for fd in fds.iterdir():
        try:
            count += os.readlink(fd).startswith("pipe:")
        except OSError:
            pass
    return count


def comm_ids(client) -> tuple[int, int]:
    """The identities of the client's comm and of the scheduler's end of it."""
    cid = client.id
    remote = client.run_on_scheduler(
        lambda dask_scheduler: id(dask_scheduler.client_comms[cid].comm)
    )
    return id(client.scheduler_comm.comm), remote


def test_twenty_clusters_and_clients_survive_sigterm(fresh_gateway):
    from dask_gateway import BasicAuth, Gateway

    gw = fresh_gateway(SEPARATE, config=TUNNELLED)
    gw.start(timeout=START)
    [proxy_pid] = proxy_processes(gw.data_dir)
    api = f"{gw.address}/api/v1/clusters"
    names = [call("POST", f"{api}/", {}, ALICE).json()["name"] for _ in range(20)]
    for name in names:
        answer = call("GET", f"{api}/{name}?wait", headers=ALICE, timeout=120).json()
        assert answer["status"] == "RUNNING", answer
    with_workers = names[:3]
    for name in with_workers:
        call("POST", f"{api}/{name}/scale", {"count": 1}, ALICE)

    gateway = Gateway(gw.address, auth=BasicAuth("alice"))
    clients = []
    for name in with_workers:
        client = gateway.connect(name).get_client(set_as_default=False)
        client.wait_for_workers(1, timeout=60)
        clients.append(client)
    comms = [comm_ids(c) for c in clients]
    # Each client's connection is a tunnel through the proxy process.
    assert splice_pipes(proxy_pid) >= 4 * len(clients)
    schedulers = {n: cluster_processes(n, "scheduler") for n in names}
    workers = {n: cluster_processes(n, "worker") for n in names}
    assert all(len(p) == 1 for p in schedulers.values()), schedulers
    assert [len(workers[n]) for n in names] == [1] * 3 + [0] * 17
    # The gateway records a worker RUNNING at the scheduler's next heartbeat.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        clusters_before, workers_before = db_rows(gw.data_dir)
        if [w[3] for w in workers_before] == [RUNNING] * 3:
            break
        time.sleep(0.2)
    assert len(clusters_before) == 20 and len(workers_before) == 3
    assert {c[2] for c in clusters_before} == {w[3] for w in workers_before} == {RUNNING}

    assert gw.stop(signal.SIGTERM) == 0, gw.log()
    # The gateway is gone; the proxy process and the clients' tunnels are not.
    assert proxy_processes(gw.data_dir) == [proxy_pid]
    assert splice_pipes(proxy_pid) >= 4 * len(clients)
    for i, client in enumerate(clients):
        assert client.submit(lambda x: x + 1, i).result(timeout=30) == i + 1

    t0 = time.monotonic()
    gw.start(timeout=START)
    restart_time = time.monotonic() - t0
    print(f"gateway restarted in {restart_time:.2f}s with 20 clusters")
    assert proxy_processes(gw.data_dir) == [proxy_pid]  # re-attached, not a new one
    # Longer than the heartbeat timeout (2 x 2 s): the schedulers found the new gateway.
    time.sleep(6)
    wait_status(api, names, {n: "RUNNING" for n in names}, 30, gw)
    for i, client in enumerate(clients):
        # The very same connections, never closed, on both ends.
        assert not client.scheduler_comm.comm.closed()
        assert comm_ids(client) == comms[i]
        assert client.submit(lambda x: x * 2, i).result(timeout=30) == 2 * i
        assert len(client.scheduler_info()["workers"]) == 1
    assert {n: cluster_processes(n, "scheduler") for n in names} == schedulers
    assert {n: cluster_processes(n, "worker") for n in names} == workers
    clusters_after, workers_after = db_rows(gw.data_dir)
    assert clusters_after == clusters_before
    assert workers_after == workers_before
    assert_no_duplicates(clusters_after, workers_after)
    # New clients through the re-attached proxy work too.
    with gateway.connect(names[0]).get_client(set_as_default=False) as fresh:
        assert fresh.submit(lambda: 42).result(timeout=30) == 42
    with gateway.connect(names[-1]).get_client(set_as_default=False) as fresh:
        assert fresh.scheduler_info()["workers"] == {}

    for client in clients:
        client.close()
    gateway.close()
    # A gateway that stops its clusters on shutdown stops the proxy process with them.
    assert gw.stop(signal.SIGTERM) == 0
    gw.extra_args = [
        "--LocalBackend.stop_clusters_on_shutdown=True",
        "--Proxy.separate_process=True",
    ]
    gw.start(timeout=START)
    assert proxy_processes(gw.data_dir) == [proxy_pid]
    assert gw.stop(signal.SIGTERM) == 0, gw.log()
    assert proxy_processes(gw.data_dir) == []
    for name in names:
        assert cluster_processes(name, "scheduler") == []
        assert cluster_processes(name, "worker") == []
    clusters_end, workers_end = db_rows(gw.data_dir)
    assert [c[:2] for c in clusters_end] == [c[:2] for c in clusters_before]
    assert [w[:3] for w in workers_end] == [w[:3] for w in workers_before]


def test_sigkill_mid_flight_with_separate_proxy(fresh_gateway):
    from dask_gateway import BasicAuth, Gateway

    gw = fresh_gateway(SEPARATE)
    gw.start(timeout=START)
    [proxy_pid] = proxy_processes(gw.data_dir)
    api = f"{gw.address}/api/v1/clusters"
    stable = call("POST", f"{api}/", {}, ALICE).json()["name"]
    stopping = call("POST", f"{api}/", {}, ALICE).json()["name"]
    for name in (stable, stopping):
        assert call("GET", f"{api}/{name}?wait", headers=ALICE).json()["status"] == "RUNNING"
    call("POST", f"{api}/{stable}/scale", {"count": 1}, ALICE)
    gateway = Gateway(gw.address, auth=BasicAuth("alice"))
    client = gateway.connect(stable).get_client(set_as_default=False)
    client.wait_for_workers(1, timeout=60)
    comm = comm_ids(client)
    scheduler = cluster_processes(stable, "scheduler")

    # In flight when the gateway dies: two new clusters, a scale-up, a stop.
    creating = [call("POST", f"{api}/", {}, ALICE).json()["name"] for _ in range(2)]
    call("POST", f"{api}/{stable}/scale", {"count": 3}, ALICE)
    call("DELETE", f"{api}/{stopping}", headers=ALICE)
    time.sleep(0.3)
    assert gw.stop(signal.SIGKILL) == -signal.SIGKILL
    assert proxy_processes(gw.data_dir) == [proxy_pid]
    assert client.submit(lambda: 1 + 1).result(timeout=30) == 2

    t0 = time.monotonic()
    gw.start(timeout=START)
    print(f"gateway restarted after SIGKILL in {time.monotonic() - t0:.2f}s")
    assert proxy_processes(gw.data_dir) == [proxy_pid]
    everyone = [stable, stopping, *creating]
    want = {n: "RUNNING" for n in everyone} | {stopping: "STOPPED"}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        states = {
            n: call("GET", f"{api}/{n}", headers=ALICE).json().get("status") for n in everyone
        }
        if states == want and len(cluster_processes(stable, "worker")) == 3:
            break
        time.sleep(0.2)
    assert states == want, (states, gw.log()[-4000:])
    client.wait_for_workers(3, timeout=60)
    # The client's connection lived through the SIGKILL, on both ends.
    assert comm_ids(client) == comm
    assert client.submit(lambda: 6 * 7).result(timeout=30) == 42
    assert cluster_processes(stable, "scheduler") == scheduler
    for name in [stable, *creating]:
        assert len(cluster_processes(name, "scheduler")) == 1, name
    assert len(cluster_processes(stable, "worker")) == 3
    assert cluster_processes(stopping, "scheduler") == []
    assert cluster_processes(stopping, "worker") == []
    # The workers are recorded RUNNING on the scheduler's next heartbeat after they joined.
    deadline = time.monotonic() + 30
    while True:
        clusters, workers = db_rows(gw.data_dir)
        stable_id = next(c[0] for c in clusters if c[1] == stable)
        live = [w for w in workers if w[1] == stable_id and w[3] == 3]
        if len(live) == 3 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert sorted(c[1] for c in clusters) == sorted(everyone)
    assert_no_duplicates(clusters, workers)
    assert len(live) == 3, workers
    client.close()
    gateway.close()


def test_http_waits_for_the_gateway_then_503(fresh_gateway):
    """While no gateway is attached, HTTP requests wait for the next one (bounded), then 503."""
    import threading

    gw = fresh_gateway(SEPARATE)
    gw.start(timeout=START)
    [proxy_pid] = proxy_processes(gw.data_dir)
    assert gw.stop(signal.SIGTERM) == 0
    held = {}

    def request() -> None:
        t = time.monotonic()
        held["answer"] = call("GET", f"{gw.address}/api/health", timeout=60)
        held["waited"] = time.monotonic() - t

    thread = threading.Thread(target=request)
    thread.start()
    time.sleep(1)
    gw.start(timeout=START)  # its own health checks wait in the same queue
    thread.join()
    assert held["answer"].status == 200 and held["waited"] > 1, held

    # The hold time is the last attached gateway's.
    gw.extra_args = [*SEPARATE, "--Proxy.separate_process_hold_timeout=1"]
    assert gw.stop(signal.SIGKILL) == -signal.SIGKILL
    gw.start(timeout=START)
    assert gw.stop(signal.SIGTERM) == 0
    t0 = time.monotonic()
    answer = call("GET", f"{gw.address}/api/health", timeout=30)
    waited = time.monotonic() - t0
    assert answer.status == 503 and "restarting" in answer.json()["error"], answer
    assert 0.5 < waited < 10, waited
    assert proxy_processes(gw.data_dir) == [proxy_pid]


def test_gateway_restarts_a_lost_proxy_process(fresh_gateway):
    """If the proxy process dies under a running gateway, the gateway starts a new one."""
    gw = fresh_gateway(SEPARATE)
    gw.start(timeout=START)
    [proxy_pid] = proxy_processes(gw.data_dir)
    os.kill(proxy_pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if call("GET", f"{gw.address}/api/health", timeout=2).status == 200:
                break
        except OSError:
            time.sleep(0.1)
    assert call("GET", f"{gw.address}/api/health").status == 200, gw.log()[-3000:]
    [new_pid] = proxy_processes(gw.data_dir)
    assert new_pid != proxy_pid
    assert gw.proc.poll() is None  # the gateway itself carried on
    assert "Lost the proxy process" in gw.log()

    # A second gateway on the same data directory is refused, not let in to fight over it.
    other = fresh_gateway(SEPARATE)
    other.data_dir, other.log_path = gw.data_dir, gw.data_dir / "other.log"
    with pytest.raises(RuntimeError, match="exited at start"):
        other.start(timeout=START)
    assert "Another gateway" in other.log()
    assert proxy_processes(gw.data_dir) == [new_pid]
    assert call("GET", f"{gw.address}/api/health").status == 200
