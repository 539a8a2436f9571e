"""The user's workflow with the Slurm backend, against the real Slurm that scripts/test.sh
starts (scripts/services/start-slurm.sh), as a user this module creates.

The tests run as root, like the gateway: it submits each job as the requesting user. They
fail, not skip, when Slurm is not running. They run once per way Slurm can track a job's
processes (ProctrackType): pgid, linuxproc (what many sites run), and cgroup where this machine
has a cgroup v1 freezer; the module restarts Slurm for each (start-slurm.sh TYPE) and leaves it
as start-slurm.sh starts it by default (pgid).
"""

from __future__ import annotations

import functools
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import waiting
from support.gateway_process import GatewayProcess, free_port
from support.paths import CONFIGS, ROOT
from support.slurm_user import open_for_others

CONFIG = CONFIGS / "slurm_gateway_config.py"
START_SLURM = ROOT / "scripts" / "services" / "start-slurm.sh"
DEFAULT_PROCTRACK = "pgid"  # start-slurm.sh's
USER = "dgslurmtest"
ACTIVE = "PENDING,RUNNING,CONFIGURING,COMPLETING,SUSPENDED"


wait_for = functools.partial(waiting.wait_for, timeout=60, interval=0.1)


def slurm_jobs(cluster_name: str, states: str = ACTIVE) -> list[dict]:
    """The cluster's jobs as squeue shows them (comment = cluster name)."""
    out = subprocess.run(
        [
            "squeue",
            "--noheader",
            "--array",  # a pending job array's tasks one by one
            f"--states={states}",
            f"--user={USER}",
            "--format=%i|%j|%k|%u|%T|%C|%m|%r",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    jobs = []
    for line in out.splitlines():
        job_id, name, comment, user, state, cpus, mem, reason = line.split("|")
        if comment == cluster_name:
            jobs.append(
                {
                    "id": job_id,
                    "role": name.rsplit("-", 1)[-1],
                    "user": user,
                    "state": state,
                    "cpus": cpus,
                    "mem": mem,
                    "reason": reason,
                }
            )
    return jobs


def roles(cluster_name: str) -> list[str]:
    return sorted(j["role"] for j in slurm_jobs(cluster_name))


def user_processes(cluster_name: str) -> list[int]:
    """Pids of the test user's scheduler and worker processes of ``cluster_name``: those
    working in its staging directory (each job's --chdir; "... (deleted)" once removed).
    Not by environment: setproctitle overwrites /proc/PID/environ with the title."""
    entry = pwd.getpwnam(USER)
    staging = os.path.join(entry.pw_dir, ".dask-gateway", cluster_name)
    pids = []
    for p in Path("/proc").iterdir():
        try:
            if not p.name.isdigit() or p.stat().st_uid != entry.pw_uid:
                continue
            state = (p / "stat").read_bytes().rsplit(b")", 1)[1].split()[0]
            cwd = os.readlink(p / "cwd")
        except OSError:
            continue
        if state != b"Z" and (cwd == staging or cwd.startswith(staging + " ")):
            pids.append(int(p.name))
    return pids


def proctrack_types() -> list[str]:
    """pgid and linuxproc everywhere; cgroup where this machine has a cgroup v1 freezer
    hierarchy to make job cgroups in (Slurm 22.05's cgroup v2 support needs systemd)."""
    types = [DEFAULT_PROCTRACK, "linuxproc"]
    freezer = Path("/sys/fs/cgroup/freezer")
    if (freezer / "cgroup.procs").exists() and os.access(freezer, os.W_OK):
        types.append("cgroup")
    return types


def current_proctrack() -> str:
    out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True).stdout
    m = re.search(r"^ProctrackType\s*=\s*proctrack/(\w+)", out, re.M)
    return m.group(1) if m else ""


def restart_slurm(proctrack: str) -> None:
    out = subprocess.run(
        ["bash", str(START_SLURM), proctrack], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, f"start-slurm.sh {proctrack} failed:\n{out.stdout}{out.stderr}"
    assert current_proctrack() == proctrack


@pytest.fixture(scope="module", params=proctrack_types())
def slurm(request):
    """Slurm must be up (a missing Slurm is a failure of the test setup, not a skip), with
    the proctrack of this round of the module's tests."""
    assert shutil.which("sbatch"), (
        "Slurm is not installed; run scripts/services/start-slurm.sh (scripts/test.sh does)"
    )
    ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True)
    assert "is UP" in ping.stdout, (
        f"Slurm is not running ({ping.stdout.strip() or ping.stderr.strip()}); "
        "run scripts/services/start-slurm.sh (scripts/test.sh does)"
    )
    if current_proctrack() != request.param:
        restart_slurm(request.param)
    yield request.param
    if current_proctrack() != DEFAULT_PROCTRACK:
        restart_slurm(DEFAULT_PROCTRACK)


@pytest.fixture(scope="module")
def slurm_user(slurm):
    """A non-root user who can run the project's Python; removed afterwards."""
    assert os.geteuid() == 0, "the Slurm tests run as root, as the gateway does"
    created = False
    try:
        pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", USER], check=True)
        created = True
    import distributed

    import dask_gateway

    restore = open_for_others(
        [sys.executable, sys.prefix, dask_gateway.__file__, distributed.__file__]
    )
    try:
        check = subprocess.run(
            [
                "runuser",
                "-u",
                USER,
                "--",
                sys.executable,
                "-c",
                "import dask_gateway.scheduler_preload, distributed",
            ],
            capture_output=True,
            text=True,
        )
        assert check.returncode == 0, f"{USER} cannot run {sys.executable}: {check.stderr}"
        yield USER
    finally:
        subprocess.run(["scancel", f"--user={USER}"], capture_output=True)
        for d, mode in reversed(restore):
            os.chmod(d, mode)
        if created:
            wait_for(lambda: not slurm_jobs_of_user(), timeout=30, what="jobs to end")
            subprocess.run(["userdel", "--remove", USER], capture_output=True)


def slurm_jobs_of_user() -> list[str]:
    return subprocess.run(
        ["squeue", "--noheader", f"--user={USER}", "--format=%i"], capture_output=True, text=True
    ).stdout.split()


def _gateway(data_dir: Path, extra_args: list[str] | None = None) -> GatewayProcess:
    # A fixed private API port: schedulers keep heartbeating to it across gateway restarts.
    args = [f"--DaskGateway.address=127.0.0.1:{free_port()}", *(extra_args or [])]
    return GatewayProcess(data_dir, args, config=CONFIG)


@pytest.fixture(scope="module")
def slurm_gateway(slurm_user, tmp_path_factory):
    gw = _gateway(tmp_path_factory.mktemp("slurm-gateway"))
    gw.start()
    yield gw
    code = gw.stop()
    assert code == 0, gw.log()


def connect(gw: GatewayProcess):
    from dask_gateway import BasicAuth, Gateway

    return Gateway(gw.address, auth=BasicAuth(username=USER, password="any"))


def test_workflow_on_slurm(slurm_gateway):
    """Options, the user's identity, private files, scale up and down, compute, shutdown."""
    import dask.array as da

    with connect(slurm_gateway) as gw:
        cluster = gw.new_cluster(worker_cores=2, worker_memory=0.75)
        name = cluster.name
        jobs = slurm_jobs(name)
        assert [(j["role"], j["user"], j["state"]) for j in jobs] == [
            ("scheduler", USER, "RUNNING")
        ]

        # Secrets sit in files only the user can read; nothing secret in Slurm's records.
        staging = Path(pwd.getpwnam(USER).pw_dir) / ".dask-gateway" / name
        uid = pwd.getpwnam(USER).pw_uid
        assert staging.stat().st_uid == uid and stat.S_IMODE(staging.stat().st_mode) == 0o700
        for secret in ("dask.pem", "api-token"):
            st = (staging / secret).stat()
            assert st.st_uid == uid and stat.S_IMODE(st.st_mode) == 0o600
        token = (staging / "api-token").read_text().strip()
        key = (staging / "dask.pem").read_text().strip().splitlines()[1]
        record = subprocess.run(
            ["scontrol", "-dd", "show", "job", jobs[0]["id"]],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        squeue_all = subprocess.run(
            ["squeue", "--states=all", "--format=%all"], capture_output=True, text=True, check=True
        ).stdout
        script = subprocess.run(
            ["scontrol", "write", "batch_script", jobs[0]["id"], "-"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for text in (record, squeue_all, script):
            assert token not in text and key not in text
        # ...nor in the command line or environment of any process of the user.
        procs = [p for p in Path("/proc").iterdir() if p.name.isdigit()]
        seen = 0
        for p in procs:
            try:
                if p.stat().st_uid != uid:
                    continue
                text = (p / "cmdline").read_bytes() + (p / "environ").read_bytes()
            except OSError:
                continue
            seen += 1
            assert token.encode() not in text and key.encode() not in text
        assert seen >= 1
        assert "exec " in script and "dask_scheduler" in script

        cluster.scale(3)
        client = cluster.get_client()
        client.wait_for_workers(3, timeout=120)
        wait_for(
            lambda: roles(name) == ["scheduler", "worker", "worker", "worker"], what="3 worker jobs"
        )
        workers = [j for j in slurm_jobs(name) if j["role"] == "worker"]
        # worker_cores -> --cpus-per-task, worker_memory -> --mem (0.75 GiB = 768 MiB)
        assert {(j["cpus"], j["mem"]) for j in workers} == {("2", "768M")}
        assert all(j["user"] == USER for j in workers)
        assert da.ones((1000, 1000), chunks=(250, 250)).sum().compute() == 1_000_000
        info = client.scheduler_info()["workers"]
        assert {w["nthreads"] for w in info.values()} == {2}

        cluster.scale(1)
        wait_for(lambda: roles(name) == ["scheduler", "worker"], what="back to 1 worker job")
        wait_for(lambda: len(client.scheduler_info()["workers"]) == 1, what="1 worker")

        # Slurm kills a worker's job: the gateway starts a new one.
        (lost,) = [j["id"] for j in slurm_jobs(name) if j["role"] == "worker"]
        subprocess.run(["scancel", lost], check=True)
        wait_for(
            lambda: (
                [j["id"] for j in slurm_jobs(name) if j["role"] == "worker" and j["id"] != lost]
                and lost not in [j["id"] for j in slurm_jobs(name)]
            ),
            what="a replacement worker job",
        )
        client.wait_for_workers(1, timeout=60)
        assert client.submit(lambda x: x + 1, 41).result(timeout=60) == 42
        assert roles(name) == ["scheduler", "worker"]
        # The scheduler saw the worker leave, maybe before Slurm finished cancelling it.
        assert re.search(
            rf"Worker \w+ of cluster {name} ended: Slurm job {lost} "
            r"(CANCELLED|COMPLETING)",
            slurm_gateway.log(),
        )

        # Adaptive scaling, decided by the scheduler, also becomes Slurm jobs.
        cluster.adapt(minimum=2, maximum=4)
        wait_for(lambda: roles(name).count("worker") == 2, what="adapt minimum of 2")
        cluster.adapt(active=False)

        client.close()
        cluster.shutdown()
        assert gw.get_cluster(name).status.name in ("STOPPING", "STOPPED")
        wait_for(lambda: gw.get_cluster(name).status.name == "STOPPED", what="STOPPED")
        wait_for(lambda: slurm_jobs(name) == [], timeout=30, what="no jobs left")
        assert not staging.exists()
        # Slurm ended the processes too (a proctrack that loses them would leave them here).
        wait_for(lambda: user_processes(name) == [], timeout=30, what="no processes left")


#: Seconds a job may take to end after scancel: Slurm's KillWait (5 s in start-slurm.sh)
#: between SIGTERM and SIGKILL, and a margin. A job whose processes Slurm cannot see stays
#: COMPLETING for minutes instead.
ENDS_WITHIN = 20


def process_names(pids: list[int]) -> list[str]:
    """The kernel's name of each process (/proc/PID/stat's second field, "comm"): what
    proctrack/linuxproc parses, and skips the process when it holds a space."""
    names = []
    for pid in pids:
        try:
            data = Path(f"/proc/{pid}/stat").read_bytes()
        except OSError:
            continue
        names.append(data[data.index(b"(") + 1 : data.rindex(b")")].decode(errors="replace"))
    return names


def job_of(pid: int) -> str:
    """The job ``pid`` is the batch script of (it was exec'd): its parent is "slurmstepd:
    [JOB.batch]", JOB being Slurm's unique id; as squeue names it (``ARRAY_TASK`` for a task
    of a job array: scancel ignores a task's unique id unless it is the array's own)."""
    stat = Path(f"/proc/{pid}/stat").read_bytes()
    parent = int(stat[stat.rindex(b")") + 2 :].split()[1])
    title = Path(f"/proc/{parent}/cmdline").read_bytes().decode(errors="replace")
    m = re.search(r"slurmstepd: \[(\d+)\.batch\]", title)
    assert m, title
    out = subprocess.run(
        ["squeue", "--noheader", "--array", f"--user={USER}", "--format=%A|%i"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    names = dict(line.split("|") for line in out.split())
    return names[m.group(1)]


def test_jobs_end_at_once_after_scancel_and_shutdown(slurm, slurm_gateway):
    """Under every proctrack, Slurm finds every process of a job: a cancelled job ends within
    seconds, never lingering COMPLETING (which holds the node's CPUs, so that the next
    cluster's scheduler job waits PENDING and that cluster fails to start)."""
    with connect(slurm_gateway) as gw:
        cluster = gw.new_cluster(shutdown_on_close=False)
        name = cluster.name
        cluster.scale(2)
        client = cluster.get_client()
        client.wait_for_workers(2, timeout=120)
        wait_for(lambda: roles(name) == ["scheduler", "worker", "worker"], what="2 worker jobs")
        # distributed has retitled them ("dask scheduler [tls://...]", "dask worker [...]"),
        # and the names the kernel keeps for Slurm have no space.
        pids = user_processes(name)
        names = process_names(pids)
        assert len(names) == 3, (pids, names)
        assert all(n and not any(c.isspace() for c in n) for n in names), names
        titles = {Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")[0] for p in pids}
        assert any(t.startswith(b"dask scheduler [tls://") for t in titles), titles

        # A worker's job cancelled by hand ends, and its process with it.
        victim = next(p for p in pids if b"worker" in Path(f"/proc/{p}/cmdline").read_bytes())
        job = job_of(victim)
        subprocess.run(["scancel", job], check=True)
        wait_for(
            lambda: job not in [j["id"] for j in slurm_jobs(name)],
            timeout=ENDS_WITHIN,
            what=f"job {job} to end (not to linger COMPLETING)",
        )
        wait_for(
            lambda: victim not in user_processes(name),
            timeout=ENDS_WITHIN,
            what=f"the cancelled job's process {victim} to end",
        )

        # Shutting the cluster down ends every job at once; the next cluster starts.
        client.close()
        cluster.shutdown()
        wait_for(
            lambda: slurm_jobs(name) == [],
            timeout=ENDS_WITHIN,
            what="every job to end (none lingering COMPLETING)",
        )
        wait_for(
            lambda: user_processes(name) == [], timeout=ENDS_WITHIN, what="every process to end"
        )
        again = gw.new_cluster()
        assert gw.get_cluster(again.name).status.name == "RUNNING"
        again.shutdown()
        wait_for(lambda: slurm_jobs(again.name) == [], timeout=ENDS_WITHIN, what="no jobs left")


def test_scheduler_job_cancelled_fails_cluster(slurm_gateway):
    with connect(slurm_gateway) as gw:
        cluster = gw.new_cluster(shutdown_on_close=False)
        cluster.scale(1)
        name = cluster.name
        wait_for(lambda: roles(name) == ["scheduler", "worker"], what="worker job")
        (scheduler,) = [j["id"] for j in slurm_jobs(name) if j["role"] == "scheduler"]
        subprocess.run(["scancel", scheduler], check=True)
        wait_for(lambda: gw.get_cluster(name).status.name == "FAILED", what="FAILED")
        wait_for(lambda: slurm_jobs(name) == [], timeout=30, what="worker job cancelled too")
        log = slurm_gateway.log()
        assert re.search(
            rf"Cluster {name} failed \(The scheduler exited unexpectedly: "
            rf"Slurm job {scheduler} CANCELLED\)",
            log,
        ), log[-3000:]
        cluster.close()


def test_bad_partition_is_a_clear_error(slurm_gateway):
    from dask_gateway.client import GatewayRequestError

    with connect(slurm_gateway) as gw:
        with pytest.raises(GatewayRequestError) as info:
            gw.new_cluster(partition="no-such-partition")
        assert str(info.value) == (
            "Slurm partition 'no-such-partition' does not exist; available: debug"
        )
        assert gw.list_clusters() == []


def test_job_that_fails_and_job_slurm_refuses(slurm_gateway):
    from dask_gateway.client import GatewayClusterError

    with connect(slurm_gateway) as gw:
        # The scheduler's job fails (its environment won't activate): FAILED, with why.
        with pytest.raises(GatewayClusterError, match="failed to start"):
            gw.new_cluster(environment="broken")
        (report,) = [
            c for c in gw.list_clusters(status="FAILED") if c.options["environment"] == "broken"
        ][-1:]
        log = slurm_gateway.log()
        assert re.search(
            rf"Cluster {report.name} failed \(The scheduler exited unexpectedly: "
            r"Slurm job \d+ FAILED \(NonZeroExitCode\)\)",
            log,
        ), log[-3000:]
        assert "activating the broken environment" in log

        # Workers asking for more memory than any node has: sbatch refuses each, the
        # cluster fails after worker_start_failure_limit tries, sbatch's words in the log.
        cluster = gw.new_cluster(worker_memory=60, shutdown_on_close=False)
        name = cluster.name
        cluster.scale(1)
        wait_for(lambda: gw.get_cluster(name).status.name == "FAILED", what="FAILED")
        log = slurm_gateway.log()
        assert "Memory specification can not be satisfied" in log
        assert re.search(rf"Cluster {name} failed \(3 workers failed to start in a row\)", log), (
            log[-3000:]
        )
        wait_for(lambda: slurm_jobs(name) == [], timeout=30, what="no jobs left")
        cluster.close()


def test_idle_timeout(slurm_gateway):
    with connect(slurm_gateway) as gw:
        cluster = gw.new_cluster(idle_timeout=3, shutdown_on_close=False)
        name = cluster.name
        wait_for(
            lambda: gw.get_cluster(name).status.name == "STOPPED",
            timeout=60,
            what="idle cluster stopped",
        )
        wait_for(lambda: slurm_jobs(name) == [], timeout=30, what="its job ended")
        cluster.close()


def test_gateway_restart_finds_running_jobs(slurm_user, tmp_path):
    gw_proc = _gateway(tmp_path / "gw", ["--SlurmBackend.stop_clusters_on_shutdown=False"])
    gw_proc.start()
    try:
        with connect(gw_proc) as gw:
            cluster = gw.new_cluster(shutdown_on_close=False)
            name = cluster.name
            cluster.scale(1)
            client = cluster.get_client()
            client.wait_for_workers(1, timeout=120)
            client.close()
            cluster.close()
        before = slurm_jobs(name)
        assert sorted(j["role"] for j in before) == ["scheduler", "worker"]

        assert gw_proc.stop(signal.SIGTERM) == 0, gw_proc.log()
        time.sleep(1)
        assert slurm_jobs(name) == before  # the jobs kept running without the gateway

        gw_proc.start()
        with connect(gw_proc) as gw:
            assert gw.get_cluster(name).status.name == "RUNNING"
            cluster = gw.connect(name)
            client = cluster.get_client()
            assert client.submit(lambda: 6 * 7).result(timeout=60) == 42
            assert [j["id"] for j in slurm_jobs(name)] == [j["id"] for j in before]
            cluster.scale(2)
            client.wait_for_workers(2, timeout=120)
            assert roles(name) == ["scheduler", "worker", "worker"]
            client.close()
            cluster.shutdown()
            wait_for(lambda: gw.get_cluster(name).status.name == "STOPPED", what="STOPPED")
            wait_for(lambda: slurm_jobs(name) == [], timeout=30, what="no jobs left")
            wait_for(lambda: user_processes(name) == [], timeout=30, what="no processes left")
    finally:
        gw_proc.stop(signal.SIGKILL)


#: Run as the cluster's user: read the cluster's token from its staging directory (as the
#: job will) and send a first heartbeat pointing the gateway at the gateway's own private
#: port. Prints the gateway's answer.
FORGE_FIRST_HEARTBEAT = """
import json, sys, urllib.error, urllib.request
token_file, api_url, name, target = sys.argv[1:]
token = open(token_file).read().strip()
msg = {"scheduler_address": "tls://" + target, "dashboard_address": "http://" + target,
       "api_address": "http://" + target, "count": 0, "active_workers": [],
       "closing_workers": [], "closed_workers": []}
req = urllib.request.Request(f"{api_url}/v1/clusters/{name}/heartbeat", method="POST",
                             data=json.dumps(msg).encode(),
                             headers={"Authorization": "token " + token})
try:
    with urllib.request.urlopen(req, timeout=30) as r:
        print(json.dumps([r.status, ""]))
except urllib.error.HTTPError as e:
    print(json.dumps([e.code, json.loads(e.read())["error"]]))
"""


def test_forged_first_heartbeat_is_refused(slurm_gateway):
    """Issue 14, finding 4: the user reads the cluster's token while its job is pending (or
    running before its scheduler is up) and sends the first heartbeat, pointing the gateway
    at its own private API port. Refused while pending, refused once running (not the job's
    socket); the real scheduler's heartbeat is then accepted, and addresses never move."""
    import base64
    import json
    import urllib.request

    (private,) = [
        a.split("=", 1)[1]
        for a in slurm_gateway.extra_args
        if a.startswith("--DaskGateway.address=")
    ]
    api_url = f"{slurm_gateway.address}/api"

    def forge(name: str, target: str) -> tuple[int, str]:
        token_file = Path(pwd.getpwnam(USER).pw_dir) / ".dask-gateway" / name / "api-token"
        out = subprocess.run(
            [
                "runuser",
                "-u",
                USER,
                "--",
                sys.executable,
                "-c",
                FORGE_FIRST_HEARTBEAT,
                str(token_file),
                api_url,
                name,
                target,
            ],
            capture_output=True,
            text=True,
            check=True,
            cwd="/",
        ).stdout
        return tuple(json.loads(out))

    with connect(slurm_gateway) as gw:
        name = gw.submit(environment="held")
        staging = Path(pwd.getpwnam(USER).pw_dir) / ".dask-gateway" / name
        wait_for(
            lambda: (staging / "api-token").exists() and slurm_jobs(name),
            what="the scheduler's job submitted",
        )
        (job,) = slurm_jobs(name)
        assert (job["state"], job["reason"]) == ("PENDING", "JobHeldUser")

        status, error = forge(name, private)
        assert status == 409 and f"job {job['id']} is not running (PENDING)" in error, error

        subprocess.run(["scontrol", "release", job["id"]], check=True)
        wait_for(lambda: slurm_jobs(name)[0]["state"] == "RUNNING", what="job running")
        status, error = forge(name, private)
        assert status == 403, (status, error)
        assert f"is not an address of the scheduler's Slurm job {job['id']}" in error, error
        assert gw.get_cluster(name).status.name == "PENDING"
        log = slurm_gateway.log()
        assert (
            f"Refused a heartbeat of cluster {name}: scheduler_address 'tls://{private}'" in log
        ), log[-3000:]

        # The real scheduler starts: its heartbeat is accepted, the cluster works.
        (staging / "release-scheduler").touch()
        cluster = gw.connect(name, shutdown_on_close=True)
        wait_for(lambda: gw.get_cluster(name).status.name == "RUNNING", what="RUNNING")
        with cluster.get_client(set_as_default=False) as client:
            cluster.scale(1)
            client.wait_for_workers(1, timeout=120)
            assert client.submit(lambda: 6 * 7).result(timeout=60) == 42
        req = urllib.request.Request(
            f"{slurm_gateway.address}/clusters/{name}/status",
            headers={
                "Authorization": "Basic " + base64.b64encode(f"{USER}:any".encode()).decode(),
                "Accept": "text/html",
            },
        )
        with urllib.request.urlopen(req, timeout=60) as r:
            assert r.status == 200 and b"bokeh" in r.read().lower()
        # Once set, no heartbeat moves them.
        status, error = forge(name, private)
        assert status == 409 and "cannot change once set" in error, error
        cluster.shutdown()
        wait_for(lambda: slurm_jobs(name) == [], timeout=30, what="no jobs left")


# -- units: no Slurm needed -------------------------------------------------------------


def test_public_server_module_path_and_sbatch_options():
    """Config files written for the public server name the same classes; settings map to
    sbatch options."""
    from dask_gateway_server.backends import slurm
    from dask_gateway_server.backends.jobqueue import slurm as alias
    from dask_gateway_server.models import Cluster

    assert alias.SlurmBackend is slurm.SlurmBackend
    assert alias.SlurmClusterConfig is slurm.SlurmClusterConfig
    backend = slurm.SlurmBackend()
    config = slurm.SlurmClusterConfig(
        worker_cores=2,
        worker_memory="768M",
        scheduler_memory="1 G",
        partition="gpu",
        qos="high",
        account="proj",
        worker_time_limit="1:00:00",
        sbatch_options=["--constraint=fast"],
        worker_sbatch_options=["--exclusive"],
    )
    cluster = Cluster(
        name="abc", username="u", token="t", options={}, config={}, tls_cert=b"", tls_key=b""
    )
    args = backend._sbatch_args(cluster, config, "worker", "/s/abc", "worker-w.log")
    assert args == [
        "--job-name=dask-gateway-worker",
        "--comment=abc",
        "--chdir=/s/abc",
        "--output=/s/abc/worker-w.log",
        "--nodes=1",
        "--ntasks=1",
        "--cpus-per-task=2",
        "--mem=768M",
        "--no-requeue",
        "--partition=gpu",
        "--qos=high",
        "--account=proj",
        "--time=1:00:00",
        "--constraint=fast",
        "--exclusive",
    ]
    args = backend._sbatch_args(cluster, config, "scheduler", "/s/abc", "scheduler.log")
    assert "--mem=1024M" in args and "--cpus-per-task=1" in args
    assert "--exclusive" not in args and "--time=1:00:00" not in args
    script = backend._script({"A": "it's"}, "module load x", ["python", "-m", "x y"])
    assert script.splitlines()[2:] == [
        "export A='it'\"'\"'s'",
        "module load x",
        "exec python -m 'x y'",
    ]


async def test_burst_of_requests_is_one_call_per_round():
    """Twenty worker starts while one submission runs become one more submission."""
    import asyncio

    from dask_gateway_server.backends.slurm import _Batcher

    calls = []

    async def submit(items):
        calls.append(list(items))
        await asyncio.sleep(0.05)
        return [RuntimeError("no") if i == 3 else f"job-{i}" for i in items]

    batcher = _Batcher(submit)
    first = asyncio.ensure_future(batcher.submit(0))
    await asyncio.sleep(0.01)  # the first submission is running
    rest = asyncio.gather(*(batcher.submit(i) for i in range(1, 21)), return_exceptions=True)
    results = [await first, *await rest]
    assert calls == [[0], list(range(1, 21))]
    assert results[0] == "job-0" and results[20] == "job-20"
    assert isinstance(results[3], RuntimeError)
