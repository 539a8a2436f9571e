"""``new_cluster()``'s start-up progress on Slurm: the queue and Slurm's reason as they happen,
then the failure in the gateway's words, against the real single-node Slurm (start-slurm.sh's
default config; never restarted here).

The test config's "held" environment submits the scheduler's job held (reason JobHeldUser)
and the gateway gives it 10 s: the user sees the job wait in the queue, then the start fail
naming Slurm's reason. The client runs in a subprocess with ``gateway.progress: true``, as a
script whose stderr is a file would.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import pytest
from support import waiting
from support.gateway_process import GatewayProcess, free_port
from support.paths import CONFIGS
from support.slurm_user import slurm_test_user
from support.slurm_user import user_jobs as jobs_of

USER = "dgslurmprog"
DEADLINE = 120.0  # how long the test waits for what it expects (never a measured time)

SCRIPT = """\
    from dask_gateway import BasicAuth, Gateway, GatewayClusterError

    with Gateway({address!r}, auth=BasicAuth({user!r}, "any")) as gateway:
        try:
            gateway.new_cluster(environment="held")
        except GatewayClusterError as exc:
            print("FAILED", exc)
"""


def user_jobs() -> list[str]:
    return jobs_of(USER)


@pytest.fixture(scope="module")
def slurm_user():
    """Slurm up and a user whose jobs these are (its name)."""
    for _ in slurm_test_user(USER):
        yield USER


def test_progress_shows_the_queue_and_slurms_reason(slurm_user, tmp_path):
    gw = GatewayProcess(
        tmp_path / "gw",
        [
            f"--DaskGateway.address=127.0.0.1:{free_port()}",
            "--SlurmBackend.cluster_start_timeout=10",
            # The job never runs our Python: any Python 3 will do for the user's launcher.
            "--SlurmBackend.launcher_python=/usr/bin/python3",
        ],
        config=CONFIGS / "slurm_gateway_config.py",
    )
    gw.start()
    try:
        out = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(SCRIPT.format(address=gw.address, user=USER))],
            capture_output=True,
            text=True,
            timeout=DEADLINE,
            env={**os.environ, "DASK_GATEWAY__PROGRESS": "true"},
        )
    finally:
        assert gw.stop() == 0, gw.log()
    waiting.wait_for(lambda: user_jobs() == [], timeout=60, what="no job left")

    assert out.returncode == 0, out.stderr
    failed = out.stdout.splitlines()[0]
    match = re.match(r"FAILED Cluster '([0-9a-f]+)' failed to start: (.*)$", failed)
    assert match, out.stdout
    name, reason = match.groups()
    assert reason == "Cluster did not start within 10 s; Slurm kept it pending: JobHeldUser"

    prefix = f"dask-gateway: cluster {name}: "
    lines = [line for line in out.stderr.splitlines() if "dask-gateway" in line]
    assert all(line.startswith(prefix) for line in lines), out.stderr
    phases = [line.removeprefix(prefix) for line in lines]
    assert phases[0] == f"Cluster created by {USER}", phases
    assert phases[1].startswith("Starting the scheduler (+"), phases
    (queued,) = [p for p in phases if p.startswith("Waiting in Slurm's queue")]
    assert re.fullmatch(r"Waiting in Slurm's queue: JobHeldUser \(\+\d+ s\)", queued), phases
    # The failure, with how long the job waited in the queue.
    assert re.fullmatch(
        re.escape(reason) + r" \(\+\d+ s, after \d+ s in the queue\)", phases[-1]
    ), phases
