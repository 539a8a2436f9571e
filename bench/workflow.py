"""Time the user's workflow against a gateway this script starts.

Prints the median seconds of: new_cluster() until RUNNING, scale(2) until two workers are
connected, the first compute, and shutdown(); over --runs runs (default 10).

    python bench/workflow.py [--runs 10] [--address http://127.0.0.1:8000]

With --address it measures an already running gateway (ours or the public one) instead.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from support.gateway_process import free_port  # the test suite's helpers (tests/support)


def start_gateway(
    data_dir: str,
    config: str | None = None,
    extra_args: list[str] = (),
    log: str | None = None,
    timeout: float = 60,
) -> tuple[subprocess.Popen, str]:
    """Start ``dask-gateway-server`` on a free port (the test configuration by default)."""
    port = free_port()
    if config is None:
        config = os.path.join(
            os.path.dirname(__file__), "..", "tests", "configs", "gateway_config.py"
        )
        extra_args = [f"--LocalBackend.clusters_directory={data_dir}/clusters", *extra_args]
    out = open(log, "wb") if log else subprocess.DEVNULL
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dask_gateway_server",
            "-f",
            config,
            f"--DaskGateway.data_dir={data_dir}",
            f"--Proxy.address=127.0.0.1:{port}",
            "--log-level=INFO" if log else "--log-level=WARN",
            *extra_args,
        ],
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    address = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout  # a busy machine starts it slowly
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            urllib.request.urlopen(f"{address}/api/health", timeout=1)
            return proc, address
        except OSError:
            time.sleep(0.05)
    proc.kill()
    proc.wait()
    tail = open(log, errors="replace").read()[-3000:] if log else ""
    raise RuntimeError(f"gateway did not start\n{tail}")


def one_run(gateway) -> dict[str, float]:
    import dask.array as da

    t0 = time.perf_counter()
    cluster = gateway.new_cluster()
    t1 = time.perf_counter()
    client = cluster.get_client()
    t2 = time.perf_counter()
    cluster.scale(2)
    client.wait_for_workers(2, timeout=120)
    t3 = time.perf_counter()
    da.ones((1000, 1000), chunks=(500, 500)).sum().compute()
    t4 = time.perf_counter()
    client.close()
    t5 = time.perf_counter()
    cluster.shutdown()
    t6 = time.perf_counter()
    return {
        "new_cluster": t1 - t0,
        "scale(2)": t3 - t2,
        "first compute": t4 - t3,
        "shutdown": t6 - t5,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--address", help="measure this running gateway instead")
    args = parser.parse_args()

    from dask_gateway import Gateway

    proc = None
    with tempfile.TemporaryDirectory() as tmp:
        address = args.address
        if address is None:
            proc, address = start_gateway(tmp)
        try:
            results: dict[str, list[float]] = {}
            with Gateway(address, auth="basic") as gateway:
                one_run(gateway)  # warm-up: imports, caches
                for _ in range(args.runs):
                    for key, value in one_run(gateway).items():
                        results.setdefault(key, []).append(value)
            print(f"gateway {address}, {args.runs} runs, median seconds:")
            for key, values in results.items():
                print(
                    f"  {key:14s} {statistics.median(values):7.3f}   "
                    f"(min {min(values):.3f}, max {max(values):.3f})"
                )
        finally:
            if proc is not None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(60)


if __name__ == "__main__":
    main()
