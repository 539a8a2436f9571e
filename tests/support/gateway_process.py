"""A real `dask-gateway-server` in a subprocess, and cleaning up after one."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from support.paths import CONFIGS

CONFIG = CONFIGS / "gateway_config.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class GatewayProcess:
    """A `dask-gateway-server` running in a subprocess, restartable on the same database."""

    def __init__(
        self,
        data_dir: Path,
        extra_args: list[str] | None = None,
        config: Path = CONFIG,
        python: str = sys.executable,
        clusters_dir: Path | None = None,
        ssl_context=None,
        host: str = "127.0.0.1",
    ):
        """``ssl_context``: the gateway serves HTTPS (its extra args set the certificate);
        this context trusts it. ``host``: the address its public port listens on (one that
        schedulers on other hosts reach, e.g. a bridge's)."""
        self.data_dir = data_dir
        self.ssl_context = ssl_context
        self.host = host
        self.python = python
        # Under the data directory by default; a gateway whose clusters run as other users
        # needs one those users can reach (the data directory is the gateway's own).
        self.clusters_dir = clusters_dir or data_dir / "clusters"
        self.port = free_port()
        self.extra_args = extra_args or []
        self.config = config
        self.proc: subprocess.Popen | None = None
        self.log_path = data_dir / "gateway.log"

    @property
    def address(self) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def proxy_address(self) -> str:
        return f"gateway://{self.host}:{self.port}"

    def start(self, timeout: float = 30, health_path: str = "/api/health") -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            self.python,
            "-m",
            "dask_gateway_server",
            "-f",
            str(self.config),
            f"--DaskGateway.data_dir={self.data_dir}",
            f"--Proxy.address={self.host}:{self.port}",
            f"--LocalBackend.clusters_directory={self.clusters_dir}",
            "--log-level=DEBUG",
            *self.extra_args,
        ]
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited at start:\n{self.log()}")
            try:
                with urllib.request.urlopen(
                    f"{self.address}{health_path}", timeout=1, context=self.ssl_context
                ) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.05)
        self.proc.kill()  # a fixture that fails here never stops it
        self.proc.wait()
        raise TimeoutError(f"gateway did not start:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-20000:]
        except OSError:
            return ""

    def new_gateway(self, **kwargs):
        from dask_gateway import Gateway

        kwargs.setdefault("auth", "basic")
        return Gateway(self.address, **kwargs)


def proxy_processes(data_dir: Path) -> list[int]:
    """Pids of the separate proxy processes (``Proxy.separate_process``) of a gateway."""
    marker = f'"state_dir": "{data_dir}"'.encode()
    pids = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            state = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if b"-m\0dask_gateway_server.proxy\0" in cmdline and marker in cmdline and state != b"Z":
            pids.append(int(pid))
    return pids


def _kill_leftovers(data_dir: Path, clusters_dir: Path | None = None) -> None:
    """Kill any scheduler, worker or proxy process a test left behind (they run in their own
    sessions, in working directories under the gateway's clusters directory)."""
    for pid in proxy_processes(data_dir):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    marker = str(clusters_dir or data_dir / "clusters")
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if cwd.startswith(marker) and b"distributed.cli" in cmdline:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except OSError:
                pass
