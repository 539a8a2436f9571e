"""A job id the gateway learned from a process of the user is never trusted with root's
rights: the launcher that submits a cluster's jobs runs as the cluster's user, who can ptrace
it (same uid) and change the job id it answers. The gateway (root) then cancels that id as
the user, and Slurm refuses to cancel another user's job; and it never takes the addresses
of another user's job for the cluster's scheduler (its routes would lead to the victim's
dashboard).

Against the real single-node Slurm (start-slurm.sh's default config, never restarted here),
with two users this module creates; the job scripts run shell only.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.slurm_user import SYSTEM_PYTHON, job_cluster, slurm_test_user

from dask_gateway_server.addresses import AddressRefused, parse_address
from dask_gateway_server.backends.slurm import SlurmBackend
from dask_gateway_server.models import Cluster

ATTACKER = "dgslurmforge"
VICTIM = "dgslurmvictim"
DEADLINE = 60.0  # how long a test waits for what it expects (never a measured time)

#: The attacker's doing, as it would be with ptrace on their launcher: the real launcher
#: runs (and submits the real job), and its answer names the victim's job instead.
FORGING_LAUNCHER = """\
#!{python}
import json, subprocess, sys
done = subprocess.run([{python!r}, *sys.argv[1:]], stdin=sys.stdin, capture_output=True)
answer = json.loads(done.stdout)
for result in answer.get("results", []):
    if "job_id" in result:
        result["job_id"] = {victim_job!r}
json.dump(answer, sys.stdout)
"""


@contextlib.contextmanager
def forging_launcher(victim_job: str) -> Iterator[str]:
    """The path of a launcher that answers ``victim_job`` for every job it submitted."""
    wrapper_dir = tempfile.mkdtemp(prefix="dg-forge-")
    try:
        os.chmod(wrapper_dir, 0o755)
        wrapper = Path(wrapper_dir) / "python"
        wrapper.write_text(FORGING_LAUNCHER.format(python=SYSTEM_PYTHON, victim_job=victim_job))
        wrapper.chmod(stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
        yield str(wrapper)
    finally:
        shutil.rmtree(wrapper_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def users() -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        for name in (VICTIM, ATTACKER):
            stack.enter_context(contextlib.contextmanager(slurm_test_user)(name))
        yield


def state_of(job_id: str) -> str:
    out = subprocess.run(
        ["squeue", "--noheader", "--states=all", f"--jobs={job_id}", "--format=%T"],
        capture_output=True,
        text=True,
    ).stdout
    return out.strip()


def cluster_of(user: str) -> Cluster:
    return job_cluster("forge", user, {"scheduler_setup": "echo scheduler; sleep 600"})


def submit_as(user: str) -> str:
    return subprocess.run(
        ["runuser", "-u", user, "--", "sbatch", "--parsable", "--chdir=/tmp"]
        + ["--output=/dev/null", "--wrap", "exec sleep 600"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def scancel(*args: str) -> None:
    subprocess.run(["scancel", *args], capture_output=True)


async def test_forged_job_id_does_not_cancel_another_users_job(users):
    """The attacker's launcher answers the victim's job id for their scheduler's job: the
    gateway's stop of the attacker's cluster fails (scancel refused) and the victim's job
    runs on; a cluster's own job is still cancelled."""
    victim_job = submit_as(VICTIM)
    try:
        with forging_launcher(victim_job) as wrapper:
            backend = SlurmBackend(launcher_python=wrapper, api_url="http://127.0.0.1:9/api")
            cluster = cluster_of(ATTACKER)
            cluster.state = await backend.start_cluster(cluster)
        assert cluster.state["job_id"] == victim_job  # the forgery reached the gateway
        # The gateway stops the attacker's cluster: the forged id's job is not theirs.
        with pytest.raises(RuntimeError, match="scancel failed"):
            await backend.stop_cluster(cluster)
        # scancel changes a job's state before it returns: a cancelled one would show now.
        assert state_of(victim_job) in ("PENDING", "RUNNING"), state_of(victim_job)
    finally:
        scancel(victim_job)
        scancel(f"--user={ATTACKER}")

    # The legitimate use: the user's own cluster's job is cancelled.
    backend = SlurmBackend(launcher_python=SYSTEM_PYTHON, api_url="http://127.0.0.1:9/api")
    cluster = cluster_of(ATTACKER)
    cluster.state = await backend.start_cluster(cluster)
    job = cluster.state["job_id"]
    assert state_of(job) in ("PENDING", "RUNNING", "CONFIGURING")
    await backend.stop_cluster(cluster)
    end = time.monotonic() + DEADLINE
    while state_of(job) not in ("CANCELLED", "COMPLETED", ""):
        assert time.monotonic() < end, state_of(job)
        await asyncio.sleep(0.2)


async def test_forged_job_id_does_not_lend_another_users_addresses(users):
    """The attacker's launcher answers the victim's job id, and their scheduler's first
    heartbeat reports the victim's scheduler's address: the gateway refuses it because
    Slurm says the job is the victim's, before it looks at where the job runs."""
    victim_job = submit_as(VICTIM)
    try:
        end = time.monotonic() + DEADLINE
        while state_of(victim_job) != "RUNNING":
            assert time.monotonic() < end, state_of(victim_job)
            await asyncio.sleep(0.1)
        with forging_launcher(victim_job) as wrapper:
            backend = SlurmBackend(launcher_python=wrapper, api_url="http://127.0.0.1:9/api")
            cluster = cluster_of(ATTACKER)
            cluster.state = await backend.start_cluster(cluster)
        assert cluster.state["job_id"] == victim_job
        # Where the victim's scheduler would listen: on the job's node (this host).
        address = parse_address("scheduler_address", "tls://127.0.0.1:8786")
        assert address is not None
        with pytest.raises(AddressRefused, match=f"Slurm job {victim_job} is not a job of"):
            await backend.validate_addresses(cluster, [address])
    finally:
        scancel(victim_job)
        scancel(f"--user={ATTACKER}")
