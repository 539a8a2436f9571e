"""A real `jupyter server` (or `jupyter lab`) process, and the dask config for its extension."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from support.gateway_process import free_port

TOKEN = "dgj-test-token"
USER = "jupyter-ext-user"


class JupyterServerProcess:
    """`jupyter server` (or `jupyter lab`) in a subprocess with scratch Jupyter dirs."""

    def __init__(
        self,
        root: Path,
        env: dict[str, str],
        app: str = "jupyter_server",
        token: str = TOKEN,
        notebook_dir: Path | None = None,
    ):
        self.root = root
        self.port = free_port()
        self.token = token
        self.app = app
        self.notebook_dir = notebook_dir or root / "notebooks"
        self.log_path = root / f"{app}.log"
        self.env = {**os.environ, **env}
        for var, sub in (
            ("JUPYTER_CONFIG_DIR", "config"),
            ("JUPYTER_DATA_DIR", "data"),
            ("JUPYTER_RUNTIME_DIR", "runtime"),
            ("JUPYTERLAB_SETTINGS_DIR", "lab-settings"),
            ("JUPYTERLAB_WORKSPACES_DIR", "lab-workspaces"),
        ):
            path = root / sub
            path.mkdir(parents=True, exist_ok=True)
            self.env[var] = str(path)
        if app == "jupyter_server":
            # Only our extension: the REST tests need no Lab (and the machine is shared).
            others = (
                "jupyterlab",
                "jupyter_lsp",
                "jupyter_server_terminals",
                "notebook_shim",
                "notebook",
            )
            config = {
                "ServerApp": {
                    "jpserver_extensions": {
                        **{name: False for name in others},
                        "dask_gateway_jupyter": True,
                    }
                }
            }
            (root / "config" / "jupyter_server_config.json").write_text(json.dumps(config))
        self.env.pop("JUPYTERHUB_API_TOKEN", None)
        self.env["PYDEVD_DISABLE_FILE_VALIDATION"] = "1"
        self.notebook_dir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 180) -> None:
        cmd = [
            sys.executable,
            "-m",
            self.app,
            "--no-browser",
            "--allow-root",
            f"--port={self.port}",
            "--ip=127.0.0.1",
            f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={self.notebook_dir}",
            "--ServerApp.port_retries=0",
        ]
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.app} exited at start:\n{self.log()}")
            try:
                r = httpx.get(f"{self.url}/api/status", params={"token": self.token}, timeout=2)
                if r.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"{self.app} did not start:\n{self.log()}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-20000:]
        except OSError:
            return ""

    def client(self) -> httpx.Client:
        """An API client that authenticates with the token header (no XSRF needed)."""
        return httpx.Client(
            base_url=f"{self.url}/dask-gateway/",
            headers={"Authorization": f"token {self.token}"},
            timeout=60,
        )


def gateway_env(address: str, user: str = USER) -> dict[str, str]:
    """Dask config for the extension, the way a user or an admin would set it."""
    return {
        "DASK_GATEWAY__ADDRESS": address,
        "DASK_GATEWAY__AUTH__TYPE": "basic",
        "DASK_GATEWAY__AUTH__KWARGS__USERNAME": user,
    }
