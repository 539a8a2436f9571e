"""Clusters whose owner died are stopped; clusters meant to outlive their process are not;
a maximum lifetime is enforced."""

from __future__ import annotations

import getpass
import signal
import subprocess
import sys
import textwrap
import time

from support.http_helpers import basic, call


def wait_status(gw, name, status, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        current = gw.get_cluster(name).status.name
        if current == status:
            return
        time.sleep(0.1)
    raise AssertionError(f"{name} is {current}, not {status}")


def stop_requests(gw_proc, name) -> list[str]:
    """The cluster's stop-requested events once it ended (its history says why it stopped)."""
    url = f"{gw_proc.address}/api/v1/clusters/{name}/events?wait=5"
    deadline = time.monotonic() + 30
    while not (answer := call("GET", url, headers=basic(getpass.getuser())).json())["done"]:
        assert time.monotonic() < deadline, answer
    return [e["message"] for e in answer["events"] if e["kind"] == "stop-requested"]


def start_and_crash(address: str, shutdown_on_close: bool) -> str:
    """A process that makes a cluster and a client, then dies like a crashed kernel."""
    script = textwrap.dedent(f"""
        import os, signal, sys
        from dask_gateway import Gateway
        gw = Gateway("{address}", auth="basic")
        cluster = gw.new_cluster(shutdown_on_close={shutdown_on_close})
        client = cluster.get_client()
        print(cluster.name, flush=True)
        if {shutdown_on_close}:
            os.kill(os.getpid(), signal.SIGKILL)  # no atexit, no goodbye
    """)
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == (-signal.SIGKILL if shutdown_on_close else 0), out.stderr
    return out.stdout.split()[0]


def test_orphans_are_stopped_after_the_grace_period(fresh_gateway):
    from dask_gateway import Gateway

    gw_proc = fresh_gateway(["--ClusterConfig.orphan_timeout=2"])
    gw_proc.start()
    orphan = start_and_crash(gw_proc.address, shutdown_on_close=True)
    kept = start_and_crash(gw_proc.address, shutdown_on_close=False)
    with Gateway(gw_proc.address, auth="basic") as gw:
        wait_status(gw, orphan, "STOPPED", timeout=30)
        assert stop_requests(gw_proc, orphan) == [
            "Its scheduler asked to stop: its client is gone (orphan timeout)"
        ]
        # Well past the grace period, the cluster made to outlive its process still runs.
        time.sleep(4)
        assert gw.get_cluster(kept).status.name == "RUNNING"
        # Reconnecting and closing without shutdown does not make it an orphan either.
        cluster = gw.connect(kept)
        cluster.close()
        time.sleep(4)
        assert gw.get_cluster(kept).status.name == "RUNNING"
        gw.stop_cluster(kept)


def test_maximum_lifetime(fresh_gateway):
    from dask_gateway import Gateway

    gw_proc = fresh_gateway(["--ClusterConfig.max_lifetime=3"])
    gw_proc.start()
    with Gateway(gw_proc.address, auth="basic") as gw:
        # submit(), not new_cluster(): on a loaded machine starting may take most of 3 s.
        start = time.monotonic()
        name = gw.submit()
        wait_status(gw, name, "STOPPED", timeout=30)
        assert time.monotonic() - start >= 3
        assert stop_requests(gw_proc, name) == ["Stopped at its maximum lifetime of 3 s"]
    assert (
        "Stopped at its maximum lifetime of 3 s" in gw_proc.log()
        or "reached its maximum lifetime" in gw_proc.log()
    )
