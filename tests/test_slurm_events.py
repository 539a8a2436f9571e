"""What Slurm does with a cluster's jobs, told to the cluster's history, and the jobs' output
files read as logs (issue 18), against the real single-node Slurm (start-slurm.sh's default
config; these tests never restart it).

The reconciler and the Slurm backend run in this process (as the gateway would, as root),
with a test event sink; jobs are submitted as a user this module creates, whose job scripts
only run shell (the scheduler's setup lines print a marker and sleep, so no Python of ours
must be reachable for them). An impossible request that Slurm keeps pending, rather than
refuses at sbatch: ``--begin`` an hour from now (reason BeginTime).
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from support import waiting
from support.gateway_process import GatewayProcess, free_port
from support.http_helpers import basic, call, create
from support.paths import CONFIGS
from support.slurm_user import SYSTEM_PYTHON, job_cluster, slurm_test_user

from dask_gateway_server.backends.slurm import SlurmBackend
from dask_gateway_server.models import Cluster, JobStatus, User, Worker
from dask_gateway_server.reconciler import Reconciler
from dask_gateway_server.store import Store, load_or_create_key_file

USER = "dgslurmev"
DEADLINE = 60.0  # how long a test waits for what it expects (never a measured time)
LOGGER = "test-slurm-events"
SLEEP = "echo {marker}; sleep 600"


async def until(predicate, what: str, deadline: float = DEADLINE) -> None:
    end = time.monotonic() + deadline
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def squeue(*args: str) -> list[list[str]]:
    out = subprocess.run(
        ["squeue", "--noheader", f"--user={USER}", *args],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [line.split("|") for line in out.splitlines() if line.strip()]


def scontrol(*args: str) -> None:
    subprocess.run(["scontrol", *args], check=True, capture_output=True)


def active_jobs() -> list[str]:
    return [r[0] for r in squeue("--format=%i")]


@pytest.fixture(scope="module")
def slurm_user():
    """Slurm up and a user whose jobs these are (its passwd entry)."""
    yield from slurm_test_user(USER)


def make_backend(**settings: Any) -> SlurmBackend:
    return SlurmBackend(
        launcher_python=SYSTEM_PYTHON,
        api_url="http://127.0.0.1:9/api",
        cluster_status_period=0.3,
        worker_status_period=0.3,
        check_timeouts_period=0.3,
        backoff_base_delay=0.05,
        backoff_max_delay=0.5,
        stop_clusters_on_shutdown=True,
        **settings,
    )


class Events:
    """A test event sink: what the backend tells the gateway (passed on to a sink the
    reconciler may have set, so the gateway's own history is unchanged)."""

    def __init__(self, backend: SlurmBackend) -> None:
        self.seen: list[tuple[str, str, str, str, str]] = []
        before = backend.event_sink

        def sink(cluster: Cluster, kind: str, message: str, worker, detail: str) -> None:
            self.seen.append((cluster.name, kind, message, worker.name if worker else "", detail))
            if before is not None:
                before(cluster, kind, message, worker, detail)

        backend.event_sink = sink

    def of(self, cluster: Cluster, kind: str | None = None) -> list[tuple[str, str, str]]:
        return [
            (k, m, w) for (c, k, m, w, _) in self.seen if c == cluster.name and kind in (None, k)
        ]


@pytest.fixture
async def gateway(slurm_user, tmp_path: Path, caplog):
    """``await gateway(**settings)``: a store, a Slurm backend and the reconciler, in this
    process, and the backend's events."""
    made: list[tuple[Reconciler, Store]] = []
    caplog.set_level(logging.INFO, logger=LOGGER)

    async def start(**settings: Any) -> tuple[Reconciler, SlurmBackend, Events]:
        key = load_or_create_key_file(str(tmp_path / "key"))
        store = Store(f"sqlite:///{tmp_path / 'gateway.sqlite'}", [key])
        backend = make_backend(**settings)
        reconciler = Reconciler(store, backend, _NoRoutes(), log=logging.getLogger(LOGGER))
        await store.setup()
        await reconciler.start()
        made.append((reconciler, store))
        return reconciler, backend, Events(backend)

    yield start
    for reconciler, store in made:
        await reconciler.stop()
        await store.close()


class _NoRoutes:
    def add_route(self, *args: Any, **kwargs: Any) -> None:
        raise AssertionError("no cluster of these tests connects")

    def remove_route(self, cluster_name: str) -> None:
        pass


async def test_pending_reason_is_told_then_the_start_timeout_names_it(gateway, caplog):
    """A scheduler's job Slurm keeps waiting: the cluster's history says why, once per
    reason (Slurm's words); after cluster_start_timeout the cluster fails, the failure's
    details (and the backend's exit reason) name Slurm's reason, and the job is cancelled."""
    reconciler, backend, events = await gateway(cluster_start_timeout=8)
    cluster = await reconciler.create_cluster(
        User(USER),
        {},
        {
            "scheduler_sbatch_options": ["--begin=now+1hour"],
            "scheduler_setup": SLEEP.format(marker="never-runs"),
        },
    )
    await until(lambda: events.of(cluster, "queued"), "the queued event")
    assert events.of(cluster, "queued") == [("queued", "Waiting in Slurm's queue: BeginTime", "")]
    (detail,) = [d for (c, k, _, _, d) in events.seen if c == cluster.name and k == "queued"]
    assert "later time" in detail
    job_id = cluster.state["job_id"]
    assert squeue(f"--jobs={job_id}", "--format=%T|%r") == [["PENDING", "BeginTime"]]
    assert backend.exit_reason(cluster) == "Slurm kept it pending: BeginTime"

    await until(lambda: cluster.status.is_done, "the start timeout", deadline=DEADLINE + 8)
    assert cluster.status == JobStatus.FAILED
    assert cluster.message == "Cluster did not start within 8 s; Slurm kept it pending: BeginTime"
    failed = [
        r.getMessage() for r in caplog.records if f"Cluster {cluster.name} failed" in r.message
    ]
    assert failed and "Slurm kept it pending: BeginTime" in failed[0], failed
    # Many status checks saw the same reason: it was told once.
    assert events.of(cluster, "queued") == [("queued", "Waiting in Slurm's queue: BeginTime", "")]
    assert events.of(cluster, "scheduler-started") == []
    await until(lambda: job_id not in active_jobs(), "the job to end")


async def test_changed_reason_is_told_and_leaving_the_queue_names_the_node(gateway, caplog):
    """The job's reason changes (an admin holds it): a new event; it is released and
    starts: an event with its node; then the pending reason is no longer the story."""
    reconciler, backend, events = await gateway(cluster_start_timeout=600)
    cluster = await reconciler.create_cluster(
        User(USER),
        {},
        {
            "scheduler_sbatch_options": ["--begin=now+1hour"],
            "scheduler_setup": SLEEP.format(marker="scheduler-job-started"),
        },
    )
    await until(lambda: events.of(cluster, "queued"), "the first queued event")
    job_id = cluster.state["job_id"]
    scontrol("hold", job_id)
    await until(lambda: len(events.of(cluster, "queued")) == 2, "the second queued event")
    scontrol("release", job_id)
    scontrol("update", f"JobId={job_id}", "StartTime=now")
    await until(lambda: events.of(cluster, "scheduler-started"), "the job to start")
    node = squeue(f"--jobs={job_id}", "--format=%N")[0][0]
    assert events.of(cluster, "queued") == [
        ("queued", "Waiting in Slurm's queue: BeginTime", ""),
        ("queued", "Waiting in Slurm's queue: JobHeldAdmin", ""),
    ]
    assert events.of(cluster, "scheduler-started") == [
        ("scheduler-started", f"Slurm job {job_id} started on node {node}", "")
    ]
    assert backend.exit_reason(cluster) == ""  # it left the queue, and runs
    await reconciler.stop_cluster(cluster)
    await until(lambda: cluster.status.is_done, "the cluster to stop")
    await until(lambda: job_id not in active_jobs(), "the job to end")


def test_pending_reason_failure_and_logs_through_the_routes(slurm_user, tmp_path):
    """The same, as the user sees it: a gateway process, a held job (the test config's
    "held" environment), the events route while it waits and after it failed; then a job
    that fails (its environment does not activate): its output is the scheduler's log,
    through the logs route after the cluster failed, and the failure's detail."""
    gw = GatewayProcess(
        tmp_path / "gw",
        [
            f"--DaskGateway.address=127.0.0.1:{free_port()}",
            "--SlurmBackend.cluster_start_timeout=10",
            "--SlurmBackend.launcher_python=/usr/bin/python3",
        ],
        config=CONFIGS / "slurm_gateway_config.py",
    )
    gw.start()
    user = basic(USER)

    def events(name: str, query: str = "") -> dict:
        r = call("GET", f"{gw.address}/api/v1/clusters/{name}/events{query}", headers=user)
        assert r.status == 200, r.body
        return r.json()

    def history(name: str) -> list[dict]:
        def ended() -> list[dict] | None:
            answer = events(name, "?wait=5")
            return answer["events"] if answer["done"] else None

        return waiting.wait_for(ended, timeout=DEADLINE, what=f"cluster {name} to end")

    try:
        held = create(gw, user, {"environment": "held"})
        queued = waiting.wait_for(
            lambda: [e for e in events(held)["events"] if e["kind"] == "queued"],
            timeout=DEADLINE,
            what="a queued event",
        )
        assert queued[0]["message"] == "Waiting in Slurm's queue: JobHeldUser"
        assert "held" in queued[0]["detail"]
        done = history(held)
        kinds = [e["kind"] for e in done]
        assert kinds.count("queued") == 1 and kinds[-1] == "failed", kinds
        assert done[-1]["message"] == (
            "Cluster did not start within 10 s; Slurm kept it pending: JobHeldUser"
        )
        assert "Slurm kept it pending: JobHeldUser" in done[-1]["detail"]

        broken = create(gw, user, {"environment": "broken"})
        failed = history(broken)[-1]
        assert failed["kind"] == "failed"
        assert "activating the broken environment" in failed["detail"], failed
        r = call(
            "GET", f"{gw.address}/api/v1/clusters/{broken}/logs?component=scheduler", headers=user
        )
        assert r.status == 200, r.body
        assert "activating the broken environment" in r.json()["logs"]["scheduler"]
        assert r.json()["done"] is True
    finally:
        assert gw.stop() == 0, gw.log()
    waiting.wait_for(lambda: active_jobs() == [], timeout=DEADLINE, what="no job left")


# -- logs -------------------------------------------------------------------------------


def as_user(script: str) -> None:
    subprocess.run(["runuser", "-u", USER, "--", "bash", "-c", script], check=True, cwd="/")


async def test_job_output_is_read_as_logs_and_user_links_are_not_followed(slurm_user, tmp_path):
    """The scheduler's and a worker's job output, through ``read_log`` (tail, offsets,
    components from the gateway's records); then the user, who owns the staging
    directory, swaps the files and the directory for links to root's secrets and a FIFO:
    nothing of them is read, nothing blocks."""
    backend = make_backend()
    cluster = job_cluster(
        "slurmlogs",
        USER,
        {
            "scheduler_setup": SLEEP.format(marker="scheduler-output-line"),
            "worker_setup": SLEEP.format(marker="worker-output-line"),
        },
    )
    assert await backend.log_components(cluster) == []
    try:
        cluster.state = await backend.start_cluster(cluster)
        worker = Worker(name="abc123", cluster_name=cluster.name)
        cluster.workers[worker.name] = worker
        unstarted = Worker(name="notyet", cluster_name=cluster.name)
        cluster.workers[unstarted.name] = unstarted
        worker.state = await backend.start_worker(cluster, worker)
        assert await backend.log_components(cluster) == ["scheduler", "worker:abc123"]

        async def text(component: str) -> str:
            chunk = await backend.read_log(cluster, component, None, 1 << 20)
            return "" if chunk is None else chunk.data.decode()

        async def both_ran() -> bool:
            return "scheduler-output-line" in await text(
                "scheduler"
            ) and "worker-output-line" in await text("worker:abc123")

        end = time.monotonic() + DEADLINE
        while not await both_ran():
            assert time.monotonic() < end, "the jobs' output never appeared"
            await asyncio.sleep(0.2)

        whole = await backend.read_log(cluster, "scheduler", None, 1 << 20)
        assert whole is not None and whole.start == 0 and whole.end == len(whole.data)
        tail = await backend.read_log(cluster, "scheduler", None, 5)
        assert tail is not None and tail.data == whole.data[-5:]
        assert (tail.start, tail.end) == (whole.end - 5, whole.end)
        later = await backend.read_log(cluster, "scheduler", 3, 1 << 20)
        assert later is not None and later.data == whole.data[3:] and later.start == 3
        past = await backend.read_log(cluster, "scheduler", whole.end + 100, 10)
        assert past is not None and past.data == b"" and past.start == whole.end
        # Where the gateway cannot read the user's files (a service account using sudo,
        # root squashed on NFS), the user's own launcher reads them, the same way.
        staging = cluster.state["staging_dir"]
        for at in (None, 3):
            via_user = await backend._read_as_user(cluster, staging, "scheduler.log", at, 1 << 20)
            direct = await backend.read_log(cluster, "scheduler", at, 1 << 20)
            assert via_user == direct, at
        # Only components the gateway knows of: never a name made up to reach other files.
        for bogus in ("worker:notyet", "worker:../../.ssh/id", "worker:nosuch", "x", "worker:"):
            assert await backend.read_log(cluster, bogus, None, 100) is None, bogus

        # The attack: the user owns the staging directory and swaps what is in it.
        as_user(
            f"cd {staging} && ln -sf /etc/shadow scheduler.log && "
            f"rm worker-abc123.log && mkfifo worker-abc123.log"
        )
        assert await backend.read_log(cluster, "scheduler", None, 1 << 20) is None
        assert await backend.read_log(cluster, "worker:abc123", None, 1 << 20) is None
        for file in ("scheduler.log", "worker-abc123.log"):
            assert await backend._read_as_user(cluster, staging, file, None, 100) is None
        # ... and the staging directory itself for a link to a directory of root's holding
        # files named like the logs (root's, or made the user's by an unwitting admin).
        decoy = tmp_path / "decoy"
        decoy.mkdir()
        (decoy / "scheduler.log").write_text("decoy of root's\n")
        (decoy / "worker-abc123.log").write_text("decoy of the user's\n")
        os.chown(decoy / "worker-abc123.log", slurm_user.pw_uid, slurm_user.pw_gid)
        as_user(f"mv {staging} {staging}.moved && ln -s {decoy} {staging}")
        assert await backend.read_log(cluster, "scheduler", None, 1 << 20) is None
        assert await backend.read_log(cluster, "worker:abc123", None, 1 << 20) is None
        # The legitimate read still works once the user puts it back.
        as_user(f"rm {staging} && mv {staging}.moved {staging} && rm {staging}/scheduler.log")
        as_user(f"echo back >{staging}/scheduler.log")
        chunk = await backend.read_log(cluster, "scheduler", None, 100)
        assert chunk is not None and chunk.data == b"back\n"
    finally:
        for w in cluster.workers.values():
            if w.state:
                await backend.stop_worker(cluster, w)
        await backend.stop_cluster(cluster)
    await until(lambda: active_jobs() == [], "the jobs to end")


async def test_worker_pending_reason_is_told_with_the_worker(slurm_user):
    """A worker's job Slurm keeps waiting: worker-queued naming the worker, once; its
    exit reason (a worker start timeout) says Slurm's reason."""
    backend = make_backend()
    events = Events(backend)
    cluster = job_cluster(
        "slurmwq",
        USER,
        {
            "scheduler_setup": SLEEP.format(marker="scheduler"),
            "worker_sbatch_options": ["--begin=now+1hour"],
        },
    )
    worker = Worker(name="w1", cluster_name=cluster.name)
    cluster.workers[worker.name] = worker
    try:
        cluster.state = await backend.start_cluster(cluster)
        worker.state = await backend.start_worker(cluster, worker)
        end = time.monotonic() + DEADLINE
        while not events.of(cluster, "worker-queued"):
            assert time.monotonic() < end, "no worker-queued event"
            assert await backend.check_workers(cluster, [worker]) == [True]
            await asyncio.sleep(0.2)
        for _ in range(3):  # the same reason seen again: not told again
            await asyncio.sleep(0.4)
            assert await backend.check_workers(cluster, [worker]) == [True]
        assert events.of(cluster) == [
            ("worker-queued", "Waiting in Slurm's queue: BeginTime", "w1")
        ]
        assert backend.exit_reason(cluster, worker) == "Slurm kept it pending: BeginTime"
    finally:
        await backend.stop_worker(cluster, worker)
        await backend.stop_cluster(cluster)
    await until(lambda: active_jobs() == [], "the jobs to end")
