"""Start the *public* dask-gateway-server (from its own venv) for the interop tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.gateway_process import free_port
from support.paths import CONFIGS, ROOT

UPSTREAM_VENV = Path(os.environ.get("DASK_GATEWAY_UPSTREAM_VENV", ROOT / ".venv-upstream"))
UPSTREAM_CONFIG = CONFIGS / "upstream_config" / "dask_gateway_config.py"


def require_upstream_venv() -> Path:
    """The upstream venv; a missing one fails the test (CI must not lose the check)."""
    if not (UPSTREAM_VENV / "bin" / "dask-gateway-server").exists():
        pytest.fail(
            f"The upstream dask-gateway virtualenv is missing ({UPSTREAM_VENV}). Create it "
            "with `scripts/make-upstream-venv.sh` (or point DASK_GATEWAY_UPSTREAM_VENV at one)."
        )
    return UPSTREAM_VENV


@contextlib.contextmanager
def upstream_server(
    tmp: Path,
    password: str,
    config: Path = UPSTREAM_CONFIG,
    extra_env: dict[str, str] | None = None,
    venv: Path | None = None,
) -> Iterator[str]:
    """Run the public server with ``config`` (see upstream_config/); yield its address.

    ``venv``: the environment to run it from (default the upstream venv). The log is
    ``tmp/server.log``; clusters live in ``tmp/clusters``; SIGINT on exit lets it stop its
    clusters and proxy.
    """
    upstream = require_upstream_venv()
    venv = upstream if venv is None else venv
    tmp.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = dict(
        os.environ,
        UPSTREAM_VENV=str(venv),
        UPSTREAM_PROXY_ADDRESS=f"127.0.0.1:{port}",
        UPSTREAM_PASSWORD=password,
        UPSTREAM_CLUSTERS_DIR=str(tmp / "clusters"),
        **(extra_env or {}),
    )
    env.pop("VIRTUAL_ENV", None)
    address = f"http://127.0.0.1:{port}"
    with server_process(
        [str(venv / "bin" / "dask-gateway-server"), "-f", str(config)],
        tmp,
        env,
        tmp / "server.log",
        address,
    ):
        yield address


@contextlib.contextmanager
def server_process(
    cmd: list[str], cwd: Path, env: dict, log: Path, address: str
) -> Iterator[subprocess.Popen]:
    """Run a gateway server (ours or theirs) until it answers ``{address}/api/health``; on
    exit SIGINT, so that it stops its clusters and proxy cleanly, and fail if it won't."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"{cmd[0]} exited early:\n{log.read_text()}")
            try:
                with urllib.request.urlopen(address + "/api/health", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"{cmd[0]} not healthy:\n{log.read_text()}")
                time.sleep(0.2)
        yield proc
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            pytest.fail(f"{cmd[0]} did not stop on SIGINT:\n{log.read_text()}")
