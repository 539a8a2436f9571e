"""A real gateway running as root with LocalBackend, and distinct local users to attack it."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from support.gateway_process import GatewayProcess, _kill_leftovers
from users import (
    ADMIN,
    ALICE,
    BOB,
    SHARED_VENV,
    SYSTEM,
    ensure_user,
    kill_processes_of,
    run_as,
    user_gateway,
)

CONFIG = Path(__file__).parent / "gateway_config.py"


@pytest.fixture(scope="session")
def local_users():
    """alice, bob, an admin and a system account, as real accounts. They are kept for the
    next run: removing them would break another test session using them at the same time."""
    assert os.geteuid() == 0, "the security tests run as root, as a multi-user gateway does"
    made = {}
    for name, system in ((ALICE, False), (BOB, False), (ADMIN, False), (SYSTEM, True)):
        made[name], _ = ensure_user(name, system)
    yield made
    for name in made:  # nothing of theirs outlives the tests
        kill_processes_of(name)


@pytest.fixture(scope="session")
def shared_python(local_users) -> str:
    """A Python every user can run (schedulers and workers run as their users)."""
    python = f"{SHARED_VENV}/bin/python"
    assert os.path.exists(python), (
        f"{python} is missing: scripts/test.sh builds it (DASK_GATEWAY_TEST_SHARED_VENV)"
    )
    check = run_as(
        ALICE, "import distributed, bokeh, dask_gateway.scheduler_preload", python=python
    )
    assert check.returncode == 0, f"{ALICE} cannot run {python}: {check.stderr}"
    return python


@pytest.fixture
def public_tmp():
    """A root-owned directory others may enter (pytest's own temp dirs are root-only)."""
    path = Path(tempfile.mkdtemp(prefix="dgwsec-", dir="/var/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def make_root_gateway(shared_python, public_tmp, tmp_path):
    """Start gateways as root with LocalBackend, clusters under ``public_tmp``."""
    started: list[GatewayProcess] = []

    def make(
        extra_args: list[str] | None = None, config: Path = CONFIG, clusters_dir: Path | None = None
    ) -> GatewayProcess:
        gw = GatewayProcess(
            tmp_path / f"gw{len(started)}",
            extra_args,
            config=config,
            python=shared_python,
            clusters_dir=clusters_dir or public_tmp / "clusters",
        )
        started.append(gw)
        gw.start(timeout=60)
        return gw

    yield make
    for gw in started:
        try:
            gw.stop()
        except Exception:
            gw.stop(sig=9)
        _kill_leftovers(gw.data_dir, gw.clusters_dir)


@pytest.fixture
def root_gateway(make_root_gateway) -> GatewayProcess:
    return make_root_gateway()


@pytest.fixture
def as_user(root_gateway):
    """``as_user(name)``: a client of the root gateway logged in as that user."""
    clients = []

    def make(user: str):
        g = user_gateway(root_gateway, user)
        clients.append(g)
        return g

    yield make
    for g in clients:
        try:
            for report in g.list_clusters():
                g.stop_cluster(report.name)
        except Exception:
            pass
        g.close()
