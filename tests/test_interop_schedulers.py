"""Scheduler side across implementations: the public preload under our server, ours under theirs.

A gateway and the schedulers it starts speak a small wire protocol of their own (heartbeats
up, scale/adapt down). These tests mix the two implementations of each end and drive the
cluster with our client: it must start (first heartbeat), scale, adapt, compute and stop.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import pytest
from support import waiting
from support.gateway_process import GatewayProcess
from support.paths import CONFIGS
from support.upstream_server import require_upstream_venv, upstream_server

from dask_gateway import BasicAuth, Gateway
from dask_gateway.client import ClusterStatus

pytestmark = [pytest.mark.interop, pytest.mark.timeout(600)]

PASSWORD = "interop-scheduler-password"
OURS_DASK = Path(sys.executable).parent / "dask"


_wait_for = functools.partial(waiting.wait_for, timeout=90, interval=0.2)


def _processes(cluster_name: str) -> list[int]:
    """Live processes (scheduler, nanny, workers) of a cluster.

    Both servers start them in (or below) the cluster's working directory, named after it;
    command lines and environments are no guide (setproctitle may rewrite both).
    """
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = os.readlink(entry / "cwd").removesuffix(" (deleted)")
            state = (entry / "stat").read_bytes().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        # Ours runs each worker in a directory of its own below the cluster's.
        if state != b"Z" and cluster_name in Path(cwd).parts:
            found.append(int(entry.name))
    return found


def _drive_cluster(
    gateway: Gateway, venv: Path, preload_root: Path, clusters_dir: Path, ours: bool
) -> None:
    """The workflow every scheduler side must support, whichever server runs it.

    ``venv``: the environment the scheduler and workers must run in (its ``sys.prefix``);
    ``preload_root``: where the scheduler's ``dask_gateway.scheduler_preload`` must come from;
    ``clusters_dir``: where the server keeps ``NAME/logs/scheduler.log``; ``ours``: whether
    that preload is this project's (then our client holds its orphan lease; the public one
    has no such op and must never be sent it).
    """
    import dask.array as da

    cluster = gateway.new_cluster()  # returns once the first heartbeat made it RUNNING
    try:
        name = cluster.name
        assert _processes(name), "no scheduler process found"
        client = cluster.get_client(set_as_default=False)
        # Lambdas travel by value: the scheduler cannot import this test module.
        assert Path(client.run_on_scheduler(lambda: sys.prefix)).resolve() == venv.resolve()
        preload = client.run_on_scheduler(
            lambda: sys.modules["dask_gateway.scheduler_preload"].__file__
        )
        assert Path(preload).resolve().is_relative_to(preload_root.resolve()), preload

        cluster.scale(2)
        client.wait_for_workers(2, timeout=120)
        prefixes = client.run(lambda: sys.prefix).values()
        assert {Path(p).resolve() for p in prefixes} == {venv.resolve()}, prefixes
        x = da.random.random((2000, 2000), chunks=(500, 500))
        assert abs(float(x.mean().compute(scheduler=client)) - 0.5) < 0.01
        assert (cluster._lease_comm is not None) == ours
        log = (clusters_dir / name / "logs" / "scheduler.log").read_text()
        for noise in ("Traceback", "No handler"):
            assert noise not in log, log

        # Adaptive scaling runs on the scheduler and reaches the gateway through heartbeats:
        # down to the minimum...
        cluster.adapt(minimum=1, maximum=1)
        _wait_for(lambda: len(client.scheduler_info()["workers"]) == 1, what="adapt down to 1")
        # ...and up to it again.
        cluster.adapt(minimum=2, maximum=3)
        _wait_for(lambda: len(client.scheduler_info()["workers"]) == 2, what="adapt up to 2")
        assert client.submit(sum, [1, 2, 3]).result(timeout=60) == 6
        cluster.adapt(active=False)
        cluster.scale(1)
        _wait_for(lambda: len(client.scheduler_info()["workers"]) == 1, what="scale to 1")
        assert gateway.get_cluster(name).status is ClusterStatus.RUNNING
        client.close()
    finally:
        cluster.shutdown()
    _wait_for(
        lambda: gateway.get_cluster(name).status is ClusterStatus.STOPPED, what="cluster STOPPED"
    )
    _wait_for(lambda: not _processes(name), timeout=60, what="scheduler and workers to exit")


def test_public_scheduler_side_under_our_server(tmp_path):
    """Our server; schedulers and workers from the public venv (its preload)."""
    venv = require_upstream_venv()
    dask_cmd = venv / "bin" / "dask"
    config = tmp_path / "config.py"
    config.write_text(
        f"exec(open({str(CONFIGS / 'gateway_config.py')!r}).read())\n"
        f"c.ClusterConfig.scheduler_cmd = [{str(dask_cmd)!r}, 'scheduler']\n"
        f"c.ClusterConfig.worker_cmd = [{str(dask_cmd)!r}, 'worker']\n"
        f"c.SimpleAuthenticator.password = {PASSWORD!r}\n"
        "c.ClusterConfig.adaptive_period = 0.5\n"
    )
    gw = GatewayProcess(tmp_path / "gw", config=config)
    gw.start()
    try:
        with Gateway(gw.address, auth=BasicAuth("alice", PASSWORD)) as gateway:
            _drive_cluster(gateway, venv, venv, gw.clusters_dir, ours=False)
        log = gw.log()
        # Heartbeats arrived and were accepted (DEBUG log of each request).
        assert "200 POST /api/v1/clusters/" in log and "/heartbeat" in log, log
    finally:
        gw.stop()
    assert "Traceback" not in gw.log(), gw.log()


def test_our_scheduler_side_under_public_server(tmp_path):
    """The public server; schedulers and workers from our venv (our preload)."""
    import dask_gateway

    assert OURS_DASK.exists(), OURS_DASK
    with upstream_server(
        tmp_path,
        PASSWORD,
        CONFIGS / "upstream_config" / "our_scheduler_config.py",
        {"OURS_DASK": str(OURS_DASK)},
    ) as address:
        with Gateway(address, auth=BasicAuth("alice", PASSWORD)) as gateway:
            _drive_cluster(
                gateway,
                Path(sys.prefix),
                Path(dask_gateway.__file__).parent,
                tmp_path / "clusters",
                ours=True,
            )
