"""Faults: a frozen scheduler, the database restarting or locked under the gateway, backend
commands that hang. Each ends in a clear state with a clear message, within a bounded time,
while the gateway keeps serving other users."""

from __future__ import annotations

import base64
import functools
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from support import waiting
from support.gateway_process import GatewayProcess, _kill_leftovers, free_port
from support.http_helpers import basic, call, create
from support.paths import CONFIGS, ROOT
from support.procs import cluster_processes

ALICE = basic("alice")
BOB = basic("bob")
wait_for = functools.partial(waiting.wait_for, interval=0.1)


def status(gw, name, who=ALICE) -> str:
    return call("GET", f"{gw.address}/api/v1/clusters/{name}", headers=who).json()["status"]


def served_quickly(gw, name, who=BOB, within: float = 5.0) -> float:
    """Another user's read and listing answer promptly: the gateway is not stuck."""
    t0 = time.monotonic()
    r = call("GET", f"{gw.address}/api/v1/clusters/{name}", headers=who, timeout=within)
    assert r.status == 200 and r.json()["status"] == "RUNNING", r.body
    assert name in call("GET", f"{gw.address}/api/v1/clusters/", headers=who, timeout=within).json()
    took = time.monotonic() - t0
    assert took < within
    return took


def compute_on(gw, name, username: str) -> None:
    """The cluster really works: a task runs on one of its workers."""
    from dask_gateway import BasicAuth, Gateway

    with Gateway(gw.address, auth=BasicAuth(username)) as gateway:
        cluster = gateway.connect(name)
        cluster.scale(1)
        with cluster.get_client(set_as_default=False) as client:
            client.wait_for_workers(1, timeout=60)
            assert client.submit(lambda x: x + 1, 41).result(timeout=60) == 42
        cluster.close()


def log_lines_with(gw, *words: str) -> list[str]:
    return [line for line in gw.log().splitlines() if all(w in line for w in words)]


def _pids_of(cmdline: bytes) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes() == cmdline:
                    state = (entry / "stat").read_bytes().rsplit(b")", 1)[1].split()[0]
                    if state != b"Z":
                        pids.append(int(entry.name))
            except OSError:
                pass
    return pids


# -- 1. a scheduler that stops heartbeating but stays up ------------------------------------
def test_frozen_scheduler_fails_cluster_and_is_killed(fresh_gateway):
    gw = fresh_gateway(
        ["--LocalBackend.cluster_heartbeat_period=1", "--LocalBackend.cluster_heartbeat_timeout=4"]
    )
    gw.start(timeout=120)
    frozen, other = create(gw, ALICE), create(gw, BOB)
    for name, who in ((frozen, ALICE), (other, BOB)):
        wait_for(
            lambda name=name, who=who: status(gw, name, who) == "RUNNING",
            timeout=60,
            what="RUNNING",
        )
    call("POST", f"{gw.address}/api/v1/clusters/{frozen}/scale", {"count": 1}, ALICE)
    wait_for(lambda: cluster_processes(frozen, "worker"), timeout=60, what="a worker")
    (pid,) = cluster_processes(frozen, "scheduler")

    os.kill(pid, signal.SIGSTOP)  # alive, holding its ports, saying nothing
    t0 = time.monotonic()
    try:
        slowest = 0.0
        while status(gw, frozen) != "FAILED":
            assert time.monotonic() - t0 < 30, "the frozen cluster was not failed in 30 s"
            slowest = max(slowest, served_quickly(gw, other))
            time.sleep(0.2)
        failed_after = time.monotonic() - t0
        # Not before the heartbeat timeout (less the up to 1 s since the last heartbeat),
        # and soon after it: one timeout check period (2 s here) plus a busy machine's slack.
        assert 2.5 < failed_after < 4 + 2 + 10, failed_after
        # Its processes go too: the stopped scheduler is continued or killed, not waited on.
        wait_for(
            lambda: (
                not cluster_processes(frozen, "scheduler")
                and not cluster_processes(frozen, "worker")
            ),
            timeout=20,
            what="the frozen cluster's processes gone",
        )
        gone_after = time.monotonic() - t0
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    # The reason, for the admin and the user who asks: in the gateway's log.
    assert log_lines_with(gw, frozen, "No heartbeat from the scheduler for 4 s"), gw.log()
    assert status(gw, frozen) == "FAILED"
    assert frozen not in call("GET", f"{gw.address}/api/v1/clusters/", headers=ALICE).json()
    # Bob's cluster ran on throughout, and still computes.
    assert status(gw, other, BOB) == "RUNNING"
    compute_on(gw, other, "bob")
    print(
        f"\nfrozen scheduler: FAILED after {failed_after:.1f} s, processes gone after "
        f"{gone_after:.1f} s; slowest other-user request {slowest:.2f} s"
    )


# -- 2. the database restarted, or locked, under the gateway ---------------------------------
class PrivatePostgres:
    """A PostgreSQL of this test's own (start-pg.sh on a private directory and port), so
    stopping it disturbs no other test."""

    def __init__(self) -> None:
        self.env = {
            **os.environ,
            "PG_DIR": f"/tmp/dg-faults-pg-{uuid.uuid4().hex[:8]}",
            "PG_PORT": str(free_port()),
        }
        self.dir = self.env["PG_DIR"]
        out = subprocess.run(
            ["bash", str(ROOT / "scripts/services/start-pg.sh")],
            env=self.env,
            check=True,
            capture_output=True,
            text=True,
            timeout=300,
        )
        self.url = out.stdout.strip().splitlines()[-1]
        bins = sorted(
            Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
            key=lambda p: [int(x) for x in p.parts[-3].split(".") if x.isdigit()],
        )
        self.pg_ctl = str(bins[-1])

    def _ctl(self, *args: str) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", self.pg_ctl, "-D", f"{self.dir}/data", *args],
            check=True,
            capture_output=True,
            timeout=120,
        )

    def stop(self) -> None:
        self._ctl("-m", "fast", "-w", "-t", "60", "stop")

    def start(self) -> None:
        self._ctl(
            "-l",
            f"{self.dir}/server.log",
            "-w",
            "-t",
            "60",
            "start",
            "-o",
            f"-p {self.env['PG_PORT']} -k {self.dir} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=off",
        )

    def remove(self) -> None:
        subprocess.run(
            ["bash", str(ROOT / "scripts/services/stop-pg.sh")],
            env=self.env,
            capture_output=True,
            timeout=120,
        )


@pytest.fixture
def private_pg():
    pg = PrivatePostgres()
    yield pg
    pg.remove()


def test_postgres_restart_under_the_gateway(fresh_gateway, private_pg, monkeypatch):
    monkeypatch.setenv(
        "DASK_GATEWAY_ENCRYPT_KEYS", base64.urlsafe_b64encode(os.urandom(32)).decode()
    )
    gw = fresh_gateway([f"--DBBackendBase.db_url={private_pg.url}", "--DBBackendBase.db_timeout=3"])
    gw.start(timeout=120)
    running = create(gw, ALICE)
    wait_for(lambda: status(gw, running) == "RUNNING", timeout=60, what="RUNNING")
    compute_on(gw, running, "alice")  # a worker too, with its row

    private_pg.stop()
    down_at = time.monotonic()
    # Writes: a clear 503 with a JSON error, promptly; nothing half-done.
    t0 = time.monotonic()
    r = call("POST", f"{gw.address}/api/v1/clusters/", {}, BOB)
    write_503_in = time.monotonic() - t0
    assert r.status == 503, r.body
    assert "database is temporarily unavailable" in r.json()["error"], r.body
    assert r.headers["Retry-After"]
    assert write_503_in < 3 + 5
    r = call("DELETE", f"{gw.address}/api/v1/clusters/{running}", headers=ALICE)
    assert r.status == 503 and "database" in r.json()["error"], r.body
    # Reads are served from memory; the cluster was not stopped by the refused DELETE, and
    # keeps running past a heartbeat timeout (4 s) even though its heartbeats cannot be saved.
    while time.monotonic() - down_at < 8:
        served_quickly(gw, running, ALICE)
        time.sleep(0.5)
    compute_on(gw, running, "alice")
    assert call("GET", f"{gw.address}/api/v1/clusters/", headers=BOB).json() == {}

    private_pg.start()
    # Back without a gateway restart: the first write after it succeeds (no stale
    # connection error), and the new cluster starts.
    up_at = time.monotonic()
    new = wait_for(
        lambda: (
            (r := call("POST", f"{gw.address}/api/v1/clusters/", {}, BOB)).status == 201
            and r.json()["name"]
        ),
        timeout=30,
        what="a write after PG",
    )
    first_write_after = time.monotonic() - up_at
    wait_for(lambda: status(gw, new, BOB) == "RUNNING", timeout=60, what="RUNNING")
    assert status(gw, running) == "RUNNING"
    assert call("DELETE", f"{gw.address}/api/v1/clusters/{running}", headers=ALICE).status == 204
    wait_for(lambda: status(gw, running) == "STOPPED", timeout=60, what="STOPPED")

    # What the database holds: each cluster once, as the API says; no worker row twice.
    engine = sa.create_engine(private_pg.url)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT name, username, status FROM clusters")).all()
        workers = conn.execute(
            sa.text(
                "SELECT w.name, c.name AS cluster FROM workers w JOIN clusters c "
                "ON c.id = w.cluster_id"
            )
        ).all()
    engine.dispose()
    assert sorted((r.name, r.username) for r in rows) == sorted([(running, "alice"), (new, "bob")])
    from dask_gateway_server.models import JobStatus

    by_name = {r.name: JobStatus(r.status) for r in rows}
    assert by_name == {running: JobStatus.STOPPED, new: JobStatus.RUNNING}
    assert len({w.name for w in workers}) == len(workers)
    assert {w.cluster for w in workers} == {running}
    assert "The gateway's database is unavailable" in gw.log()
    assert "The gateway's database is available again" in gw.log()
    assert "Traceback" not in gw.log()
    print(
        f"\npostgres down: write answered 503 in {write_503_in:.2f} s; after restart the "
        f"first write succeeded {first_write_after:.1f} s after PG was up"
    )


def test_locked_sqlite_is_a_bounded_wait_then_503(fresh_gateway):
    gw = fresh_gateway(["--DBBackendBase.db_timeout=2"])
    gw.start(timeout=120)
    other = create(gw, BOB)
    wait_for(lambda: status(gw, other, BOB) == "RUNNING", timeout=60, what="RUNNING")

    lock = sqlite3.connect(gw.data_dir / "dask_gateway.sqlite", isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")  # another process holding the write lock
    try:
        result = {}

        def write():
            t0 = time.monotonic()
            result["r"] = call("POST", f"{gw.address}/api/v1/clusters/", {}, ALICE)
            result["took"] = time.monotonic() - t0

        writer = threading.Thread(target=write)
        writer.start()
        time.sleep(0.5)  # the write now waits on the lock, in the store's thread
        reads = [served_quickly(gw, other, BOB, within=2) for _ in range(3)]
        writer.join(30)
        assert not writer.is_alive()
        r = result["r"]
        assert r.status == 503, r.body
        assert "database is locked" in r.json()["error"], r.body
        assert 1.5 < result["took"] < 2 + 6
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    name = create(gw, ALICE)  # the lock is gone: writes work again
    wait_for(lambda: status(gw, name) == "RUNNING", timeout=60, what="RUNNING")
    with sqlite3.connect(gw.data_dir / "dask_gateway.sqlite") as db:
        names = sorted(n for (n,) in db.execute("SELECT name FROM clusters"))
    assert names == sorted([other, name])
    print(
        f"\nlocked sqlite: 503 after {result['took']:.1f} s; other user's reads meanwhile "
        f"took at most {max(reads):.2f} s"
    )


async def test_failed_write_leaves_memory_as_the_database(tmp_path):
    """A write refused by a locked database raises StoreUnavailable after the store's
    timeout, and the in-memory object is as the database still has it."""
    from cryptography.fernet import Fernet

    from dask_gateway_server.models import Cluster, JobStatus
    from dask_gateway_server.store import Store, StoreUnavailable

    path = tmp_path / "db.sqlite"
    store = Store(f"sqlite:///{path}", [Fernet.generate_key()], timeout=0.5)
    await store.setup()
    cluster = Cluster(
        name="c",
        username="alice",
        token="t",
        options={},
        config={},
        tls_cert=b"cert",
        tls_key=b"key",
    )
    await store.add_cluster(cluster)
    lock = sqlite3.connect(path, isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    t0 = time.monotonic()
    with pytest.raises(StoreUnavailable, match="database is locked"):
        await store.update_cluster(cluster, status=JobStatus.RUNNING, message="up")
    assert time.monotonic() - t0 < 0.5 + 5
    assert (cluster.status, cluster.message) == (JobStatus.CREATED, "")
    assert not store.available
    lock.execute("ROLLBACK")
    lock.close()
    await store.update_cluster(cluster, status=JobStatus.RUNNING, message="up")
    assert store.available
    (loaded,) = await store.load()
    assert (loaded.status, loaded.message) == (JobStatus.RUNNING, "up")
    await store.close()


# -- 3. a hung backend command -------------------------------------------------------------
HANG_CONFIG = """
import sys
exec(open({base!r}).read())
from dask_gateway_server.options import Float, Integer, Options, Select

def handler(options):
    config = {{"worker_cores": options.worker_cores,
              "worker_memory": int(options.worker_memory * 2**30), "python": options.python}}
    if options.python == "hang":
        config.update(python=sys.executable, scheduler_cmd=[{hang!r}])  # never comes up
    return config

c.Backend.cluster_options = Options(
    Integer("worker_cores", default=1, min=1, max=4),
    Float("worker_memory", default=1, min=0.25, max=4),
    Select("environment", [("basic", sys.executable), ("hang", "hang"),
                           ("hung-python", {hang_python!r})], target="python"),
    handler=handler,
)
"""


@pytest.fixture
def hang_gateway(tmp_path):
    """A gateway offering environments whose scheduler command, or whose Python (the fork
    server's start), hangs forever."""
    marks = random.sample(range(100000, 999999), 2)
    scripts = []
    for mark, name in zip(marks, ("hang", "hung-python"), strict=True):
        script = tmp_path / name
        script.write_text(f"#!/bin/sh\nexec sleep {mark}\n")
        script.chmod(0o755)
        scripts.append(str(script))
    config = tmp_path / "hang_config.py"
    config.write_text(
        HANG_CONFIG.format(
            base=str(CONFIGS / "gateway_config.py"), hang=scripts[0], hang_python=scripts[1]
        )
    )
    gw = GatewayProcess(tmp_path / "gw", ["--LocalBackend.cluster_start_timeout=5"], config=config)
    gw.marks = [f"sleep\0{m}\0".encode() for m in marks]
    yield gw
    try:
        gw.stop(signal.SIGKILL)
    finally:
        _kill_leftovers(gw.data_dir)
        for mark in gw.marks:
            for pid in _pids_of(mark):
                os.kill(pid, signal.SIGKILL)


def test_hung_scheduler_command_fails_cluster_in_bounded_time(hang_gateway):
    gw = hang_gateway
    gw.start(timeout=120)
    other = create(gw, BOB)
    wait_for(lambda: status(gw, other, BOB) == "RUNNING", timeout=60, what="RUNNING")
    t0 = time.monotonic()
    hung = create(gw, ALICE, {"environment": "hang"})
    hung_python = create(gw, ALICE, {"environment": "hung-python"})
    wait_for(
        lambda: _pids_of(gw.marks[0]) and _pids_of(gw.marks[1]),
        timeout=20,
        what="both hung commands running",
    )
    slowest, done = 0.0, {}
    while len(done) < 2:
        assert time.monotonic() - t0 < 40, f"not failed in 40 s: {done}"
        for name in (hung, hung_python):
            if name not in done and status(gw, name) == "FAILED":
                done[name] = time.monotonic() - t0
        slowest = max(slowest, served_quickly(gw, other))
        time.sleep(0.2)
    # The start timeout (5 s), plus one timeout check period (2 s) and a busy machine's slack.
    assert all(5 <= t < 5 + 2 + 10 for t in done.values()), done
    # The hung processes are killed, and the reasons logged.
    wait_for(
        lambda: not _pids_of(gw.marks[0]) and not _pids_of(gw.marks[1]),
        timeout=15,
        what="the hung processes killed",
    )
    assert log_lines_with(gw, hung, "Cluster did not start within 5 s"), gw.log()
    assert log_lines_with(
        gw, hung_python, "Cluster failed to start: the backend did not start it within 5 s"
    ), gw.log()
    # Bob's cluster worked throughout, and Alice can still start a normal one: the hung
    # fork server was replaced, not left blocking its Python's launches.
    compute_on(gw, other, "bob")
    fine = create(gw, ALICE)
    wait_for(lambda: status(gw, fine) == "RUNNING", timeout=60, what="RUNNING")
    print(
        f"\nhung commands: FAILED after {done[hung]:.1f} s (scheduler command) and "
        f"{done[hung_python]:.1f} s (fork server start); slowest other-user request "
        f"{slowest:.2f} s"
    )


def _fake_command(tmp_path: Path, name: str, mark: int) -> str:
    path = tmp_path / name
    path.write_text(f"#!/bin/sh\nexec sleep {mark}\n")
    path.chmod(0o755)
    return str(path)


async def test_hung_slurm_commands_time_out_and_are_killed(tmp_path):
    """sbatch, squeue and scancel that never return: each call fails after command_timeout
    with a message naming the command, and the hung process is gone."""
    from dask_gateway_server.backends.slurm import SlurmBackend
    from dask_gateway_server.models import Cluster

    marks = dict(
        zip(("sbatch", "squeue", "scancel"), random.sample(range(100000, 999999), 3), strict=True)
    )
    fakes = {name: _fake_command(tmp_path, name, mark) for name, mark in marks.items()}
    backend = SlurmBackend(
        sbatch=fakes["sbatch"],
        squeue=fakes["squeue"],
        scancel=fakes["scancel"],
        command_timeout=1,
        user_switch="none",
        api_url="http://127.0.0.1:1/api",
    )
    cluster = Cluster(
        name="hung",
        username="alice",
        token="t",
        options={},
        config={"staging_directory": str(tmp_path / "staging")},
        tls_cert=b"cert",
        tls_key=b"key",
    )
    try:
        t0 = time.monotonic()
        with pytest.raises(RuntimeError, match=r"^sbatch timed out after 1 s$"):
            await backend.start_cluster(cluster)
        assert time.monotonic() - t0 < 1 + 5
        t0 = time.monotonic()
        with pytest.raises(RuntimeError, match=r"^squeue timed out after 1 s$"):
            await backend.check_clusters(
                [
                    Cluster(
                        name="c",
                        username="alice",
                        token="t",
                        options={},
                        config={},
                        tls_cert=b"",
                        tls_key=b"",
                        state={"job_id": "12"},
                    )
                ]
            )
        assert time.monotonic() - t0 < 1 + 5
        t0 = time.monotonic()
        with pytest.raises(RuntimeError, match=r"^scancel timed out after 1 s$"):
            await backend._cancel("alice", "12")
        assert time.monotonic() - t0 < 1 + 5
        for name, mark in marks.items():
            assert _pids_of(f"sleep\0{mark}\0".encode()) == [], f"{name} still runs"

        # A launcher that hangs as a whole (a stuck shared file system, say) is killed with
        # everything it started, past command_timeout and a margin.
        backend.launcher_python = _fake_command(tmp_path, "python", 424242 + os.getpid())
        t0 = time.monotonic()
        with pytest.raises(RuntimeError, match=r"Slurm launcher.* timed out after 6 s"):
            await backend.start_cluster(cluster)
        assert time.monotonic() - t0 < 6 + 5
        assert _pids_of(f"sleep\0{424242 + os.getpid()}\0".encode()) == []
    finally:
        for mark in [*marks.values(), 424242 + os.getpid()]:
            for pid in _pids_of(f"sleep\0{mark}\0".encode()):
                os.kill(pid, signal.SIGKILL)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-v", "-s"]))
