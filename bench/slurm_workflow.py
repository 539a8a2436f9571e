"""Time the user's workflow on the Slurm backend, against the Slurm on this machine.

Prints the median seconds of: new_cluster() until RUNNING, scale(2) until two workers are
connected, and shutdown() until Slurm lists no job of the cluster; over --runs runs.

    sudo python bench/slurm_workflow.py [--runs 5] [--user dgbench]

Runs as root (the gateway submits each job as the user, who is created if missing). Slurm
must be running: bash scripts/services/start-slurm.sh.
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import workflow  # bench/workflow.py: starting a gateway
from support.gateway_process import free_port  # tests/support, on sys.path through workflow
from support.slurm_user import open_for_others

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "tests" / "configs" / "slurm_gateway_config.py"


def start_gateway(data_dir: str) -> tuple[subprocess.Popen, str]:
    # Slurm jobs report to the private API port: give it a fixed one.
    return workflow.start_gateway(
        data_dir,
        str(CONFIG),
        [f"--DaskGateway.address=127.0.0.1:{free_port()}"],
        log=os.path.join(data_dir, "gateway.log"),
    )


def cluster_jobs(user: str, name: str) -> list[str]:
    out = subprocess.run(
        ["squeue", "--noheader", f"--user={user}", "--format=%i|%k"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [line.split("|")[0] for line in out.splitlines() if line.endswith("|" + name)]


def one_run(gateway, user: str) -> dict[str, float]:
    t0 = time.perf_counter()
    cluster = gateway.new_cluster()
    t1 = time.perf_counter()
    client = cluster.get_client()
    t2 = time.perf_counter()
    cluster.scale(2)
    client.wait_for_workers(2, timeout=120)
    t3 = time.perf_counter()
    client.close()
    name = cluster.name
    t4 = time.perf_counter()
    cluster.shutdown()
    while cluster_jobs(user, name):
        time.sleep(0.02)
    t5 = time.perf_counter()
    return {"new_cluster": t1 - t0, "scale(2)": t3 - t2, "shutdown": t5 - t4}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--user", default="dgbench")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: the gateway submits jobs as another user")

    import distributed

    import dask_gateway
    from dask_gateway import BasicAuth, Gateway

    try:
        pwd.getpwnam(args.user)
    except KeyError:
        subprocess.run(["useradd", "--create-home", args.user], check=True)
    restore = open_for_others(
        [sys.executable, sys.prefix, dask_gateway.__file__, distributed.__file__]
    )
    proc = None
    tmp = tempfile.mkdtemp(prefix="slurm-bench-")
    try:
        if True:
            proc, address = start_gateway(tmp)
            results: dict[str, list[float]] = {}
            with Gateway(address, auth=BasicAuth(username=args.user)) as gateway:
                one_run(gateway, args.user)  # warm-up: Slurm's first job, imports, caches
                for _ in range(args.runs):
                    for key, value in one_run(gateway, args.user).items():
                        results.setdefault(key, []).append(value)
            print(f"Slurm backend, {args.runs} runs, median seconds:")
            for key, values in results.items():
                print(
                    f"  {key:12s} {statistics.median(values):7.3f}   "
                    f"(min {min(values):.3f}, max {max(values):.3f})"
                )
    except BaseException:
        print(f"failed; the gateway's log: {tmp}/gateway.log", file=sys.stderr)
        raise
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
        for d, mode in reversed(restore):
            os.chmod(d, mode)


if __name__ == "__main__":
    main()
