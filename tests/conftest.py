"""Fixtures that start real gateways (as `dask-gateway-server` processes) for the tests."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from support.gateway_process import CONFIG, GatewayProcess, _kill_leftovers


@pytest.fixture(scope="session")
def gateway(tmp_path_factory):
    """One gateway shared by the tests that don't restart it."""
    data_dir = tmp_path_factory.mktemp("gateway")
    gw = GatewayProcess(data_dir)
    gw.start()
    yield gw
    code = gw.stop()
    _kill_leftovers(data_dir)
    assert code == 0, gw.log()


@pytest.fixture
def fresh_gateway(tmp_path):
    """A gateway of the test's own, for tests that stop or restart it."""
    gws: list[GatewayProcess] = []

    def make(extra_args=None, config: Path = CONFIG) -> GatewayProcess:
        gw = GatewayProcess(tmp_path / f"gw{len(gws)}", extra_args, config=config)
        gws.append(gw)
        return gw

    yield make
    for gw in gws:
        try:
            gw.stop(signal.SIGKILL)
        except Exception:
            pass
        _kill_leftovers(gw.data_dir)


@pytest.fixture
def basic_env(gateway, monkeypatch):
    """Dask config pointing at the shared gateway, as a user would set it."""
    monkeypatch.setenv("DASK_GATEWAY__ADDRESS", gateway.address)
    monkeypatch.setenv("DASK_GATEWAY__AUTH__TYPE", "basic")
    import dask

    dask.config.refresh()
    yield
    monkeypatch.undo()
    dask.config.refresh()
