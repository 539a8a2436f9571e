"""What makes the Slurm backend fast (issue 21), checked for correctness, never timed: a
scale-up is one job array whose tasks are still separate jobs with their own logs; a burst of
worker starts is one submission; a job's Python ends without the interpreter's teardown but
with its exit code and atexit handlers; a scheduler's preload does not import the client.

The job-array test runs against the real single-node Slurm (start-slurm.sh's default config,
never restarted here) as a user this module creates; its job scripts run shell only.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.slurm_user import SYSTEM_PYTHON, job_cluster, slurm_test_user

from dask_gateway_server.backends.slurm import JOB_BOOTSTRAP, SlurmBackend, _Batcher
from dask_gateway_server.models import Cluster, Worker

USER = "dgslurmspeed"
DEADLINE = 60.0  # how long a test waits for what it expects (never a measured time)


def squeue(*args: str) -> list[list[str]]:
    out = subprocess.run(
        ["squeue", "--noheader", "--array", f"--user={USER}", *args],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [line.split("|") for line in out.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def slurm_user():
    yield from slurm_test_user(USER)


async def test_workers_started_together_are_one_job_array_each_task_its_own_job(slurm_user):
    """Three workers started at once: one job array (ids ARRAY_0..2); each task runs as the
    user, writes its own log (read through read_log), is alive to check_workers, and is
    cancelled on its own while the others keep running."""
    backend = SlurmBackend(launcher_python=SYSTEM_PYTHON, api_url="http://127.0.0.1:9/api")
    cluster = job_cluster(
        "slurmarray",
        USER,
        {
            "scheduler_setup": "echo scheduler-line; sleep 600",
            "worker_setup": 'echo "worker-line $SLURM_ARRAY_TASK_ID"; sleep 600',
        },
    )
    workers = [Worker(name=f"w{i}", cluster_name=cluster.name) for i in range(3)]
    for w in workers:
        cluster.workers[w.name] = w
    try:
        cluster.state = await backend.start_cluster(cluster)
        states = await asyncio.gather(*(backend.start_worker(cluster, w) for w in workers))
        for w, state in zip(workers, states, strict=True):
            w.state = state
        ids = [s["job_id"] for s in states]
        array = ids[0].split("_")[0]
        assert ids == [f"{array}_{i}" for i in range(3)]
        assert array != cluster.state["job_id"]

        async def log(w: Worker) -> str:
            chunk = await backend.read_log(cluster, f"worker:{w.name}", None, 1 << 20)
            return "" if chunk is None else chunk.data.decode()

        end = time.monotonic() + DEADLINE
        while [await log(w) for w in workers] != [f"worker-line {i}\n" for i in range(3)]:
            assert time.monotonic() < end, [await log(w) for w in workers]
            await asyncio.sleep(0.2)
        rows = squeue(f"--jobs={','.join(ids)}", "--format=%i|%u|%T|%k|%j")
        assert sorted(rows) == [
            [i, USER, "RUNNING", cluster.name, "dask-gateway-worker"] for i in ids
        ]
        assert await backend.check_workers(cluster, workers) == [True, True, True]

        # One task stopped: it alone ends.
        await backend.stop_worker(cluster, workers[1])
        end = time.monotonic() + DEADLINE
        while ids[1] in [r[0] for r in squeue(f"--jobs={','.join(ids)}", "--format=%i")]:
            assert time.monotonic() < end, "the stopped task still queued"
            await asyncio.sleep(0.2)
        others = [workers[0], workers[2]]
        assert await backend.check_workers(cluster, others) == [True, True]
        running = squeue(f"--jobs={ids[0]},{ids[2]}", "--format=%i|%T")
        assert sorted(running) == [[ids[0], "RUNNING"], [ids[2], "RUNNING"]]
    finally:
        for w in cluster.workers.values():
            if w.state:
                await backend.stop_worker(cluster, w)
        await backend.stop_cluster(cluster)
    end = time.monotonic() + DEADLINE
    while squeue("--format=%i"):
        assert time.monotonic() < end, "jobs left"
        await asyncio.sleep(0.2)


# -- units: no Slurm needed -------------------------------------------------------------


def test_array_script_runs_each_tasks_own_command_into_its_own_log(tmp_path: Path):
    """Task i writes to its own log and runs its own command after the shared setup; a task
    index the script does not know fails with a message."""
    backend = SlurmBackend()
    logs = [str(tmp_path / f"worker-{n}.log") for n in ("a b", "c", "d")]
    commands = [["echo", f"command {i}", "$HOME"] for i in range(3)]
    script = backend._array_script({"X": "it's"}, 'echo "setup $X"', commands, logs)
    for i in range(3):
        done = subprocess.run(
            ["bash", "-c", script],
            env={"SLURM_ARRAY_TASK_ID": str(i), "PATH": os.environ["PATH"]},
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0 and done.stdout == "", done
        assert Path(logs[i]).read_text() == f"setup it's\ncommand {i} $HOME\n"
    bad = subprocess.run(
        ["bash", "-c", script],
        env={"SLURM_ARRAY_TASK_ID": "3", "PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 1 and "not a task of this job array" in bad.stderr


def test_array_sbatch_options_send_no_output_file():
    """The array's tasks redirect their own output: sbatch writes none."""
    backend = SlurmBackend()
    cluster = Cluster(
        name="abc", username="u", token="t", options={}, config={}, tls_cert=b"", tls_key=b""
    )
    args = backend._sbatch_args(cluster, backend.cluster_config(cluster), "worker", "/s", None)
    assert "--output=/dev/null" in args


async def test_burst_arriving_over_several_turns_is_one_call():
    """Starts that arrive a few loop turns apart (each after a store write) are gathered
    into one call; a lone start still gets its own."""
    calls: list[list[int]] = []

    async def submit(items: list[int]) -> list[str]:
        calls.append(list(items))
        return [f"job-{i}" for i in items]

    batcher = _Batcher(submit, gather=0.05)

    async def later(i: int) -> str:
        for _ in range(i):  # a few turns of the loop apart, as the reconciler's writes are
            await asyncio.sleep(0)
        return await batcher.submit(i)

    results = await asyncio.gather(*(later(i) for i in range(10)))
    assert results == [f"job-{i}" for i in range(10)]
    assert calls == [list(range(10))]
    assert await batcher.submit(99) == "job-99"
    assert calls[-1] == [99]


@pytest.mark.parametrize(
    ("body", "code", "stderr"),
    [
        ("pass", 0, ""),
        ("sys.exit(3)", 3, ""),
        ("sys.exit('it went wrong')", 1, "it went wrong"),
        ("raise ValueError('boom')", 1, "ValueError: boom"),
    ],
)
def test_job_bootstrap_keeps_exit_code_and_atexit(
    tmp_path: Path, body: str, code: int, stderr: str
) -> None:
    """A job's module ends through os._exit: its exit code, message or traceback, atexit
    handlers (logging's flush among them) and buffered output are all kept."""
    (tmp_path / "jobmod.py").write_text(
        "import atexit, logging, sys\n"
        f"atexit.register(lambda: open({str(tmp_path / 'atexit')!r}, 'w').write('ran'))\n"
        "logging.basicConfig(stream=sys.stderr)\n"
        "logging.getLogger('j').warning('logged line')\n"
        "sys.stdout.write('buffered output')\n"
        f"{body}\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", JOB_BOOTSTRAP, "jobmod", "arg"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
    )
    assert done.returncode == code, done
    assert done.stdout == "buffered output"
    assert "logged line" in done.stderr and stderr in done.stderr
    assert (tmp_path / "atexit").read_text() == "ran"


def test_scheduler_preload_does_not_import_the_client():
    """A scheduler imports dask_gateway for its preload: not the client (aiohttp), which
    users still get from the package as before."""
    code = (
        "import sys, dask_gateway.scheduler_preload\n"
        "assert 'aiohttp' not in sys.modules and 'dask_gateway.client' not in sys.modules\n"
        "import dask_gateway\n"
        "from dask_gateway import Gateway, GatewayCluster\n"
        "from dask_gateway.client import Gateway as G\n"
        "assert Gateway is G and dask_gateway.GatewayCluster is GatewayCluster\n"
        "assert set(dask_gateway.__all__) <= set(dir(dask_gateway)) | {'Gateway', 'GatewayCluster'}\n"
        "try:\n"
        "    dask_gateway.nothing\n"
        "except AttributeError as e:\n"
        "    assert 'nothing' in str(e)\n"
        "else:\n"
        "    raise AssertionError('no AttributeError')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
