"""A real JupyterHub (with configurable-http-proxy), started and stopped by the tests."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from support.gateway_process import free_port
from support.paths import CONFIGS


class Hub:
    def __init__(self, run_dir: Path, gateway_url: str, oauth_redirect_uri: str = ""):
        """``oauth_redirect_uri``: the gateway service's (default: ``gateway_url`` +
        ``/oauth_callback``, browsers reaching the gateway directly)."""
        self.run_dir = run_dir
        self.port = free_port()
        self.api_port = free_port()
        self.proxy_api_port = free_port()
        self.admin_token = uuid.uuid4().hex
        self.gateway_token = uuid.uuid4().hex
        self.other_token = uuid.uuid4().hex
        self.gateway_url = gateway_url
        self.oauth_redirect_uri = oauth_redirect_uri or gateway_url + "/oauth_callback"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """Where browsers reach the hub (its proxy)."""
        return f"http://127.0.0.1:{self.port}"

    def add_proxy_route(self, path: str, target: str) -> None:
        """Route ``path`` of the hub's proxy to ``target``, as the hub does for a user's
        server (``/user/NAME/``)."""
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.proxy_api_port}/api/routes{path}",
            method="POST",
            data=json.dumps({"target": target}).encode(),
            headers={"Authorization": "token test-proxy-token"},
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 201, r.status

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hub/api"

    def start(self, timeout: float = 60) -> None:
        jupyterhub = shutil.which("jupyterhub", path=os.path.dirname(sys.executable))
        if jupyterhub is None or shutil.which("configurable-http-proxy") is None:
            raise RuntimeError(
                "jupyterhub (pip) and configurable-http-proxy (npm) must be "
                "installed: scripts/test.sh installs both"
            )
        self.run_dir.mkdir(parents=True, exist_ok=True)
        env = dict(
            os.environ,
            HUB_RUN_DIR=str(self.run_dir),
            HUB_PORT=str(self.port),
            HUB_API_PORT=str(self.api_port),
            HUB_PROXY_API_PORT=str(self.proxy_api_port),
            HUB_ADMIN_TOKEN=self.admin_token,
            HUB_GATEWAY_TOKEN=self.gateway_token,
            HUB_OTHER_TOKEN=self.other_token,
            GATEWAY_URL=self.gateway_url,
            GATEWAY_OAUTH_REDIRECT_URI=self.oauth_redirect_uri,
        )
        log = open(self.run_dir / "hub.log", "ab")
        self.proc = subprocess.Popen(
            [jupyterhub, "-f", str(CONFIGS / "jupyterhub_config.py")],
            cwd=self.run_dir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"JupyterHub exited:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.api_url}/", timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise TimeoutError(f"JupyterHub did not start:\n{self.log()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        pid_file = self.run_dir / "proxy.pid"
        if pid_file.exists():
            try:
                os.kill(int(pid_file.read_text()), signal.SIGTERM)
            except (OSError, ValueError):
                pass
            pid_file.unlink(missing_ok=True)

    def log(self) -> str:
        try:
            return (self.run_dir / "hub.log").read_text(errors="replace")[-10000:]
        except OSError:
            return ""

    def api(self, method: str, path: str, body=None, token: str | None = None):
        req = urllib.request.Request(
            f"{self.api_url}{path}",
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"token {token or self.admin_token}"},
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                data = r.read()
                return r.status, json.loads(data) if data else None
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def add_user(self, name: str, admin: bool = False) -> None:
        status, body = self.api("POST", f"/users/{name}", {"admin": admin})
        assert status in (201, 409), body

    def add_group(self, group: str, users: list[str]) -> None:
        status, body = self.api("POST", f"/groups/{group}")
        assert status in (201, 409), body
        status, body = self.api("POST", f"/groups/{group}/users", {"users": users})
        assert status == 200, body

    def token(self, user: str, scopes: list[str] | None = None) -> tuple[str, str]:
        """A new API token for ``user``: (token, token id)."""
        body = {"note": "test"}
        if scopes is not None:
            body["scopes"] = scopes
        status, model = self.api("POST", f"/users/{user}/tokens", body)
        assert status == 201, model
        return model["token"], model["id"]

    def revoke(self, user: str, token_id: str) -> None:
        status, body = self.api("DELETE", f"/users/{user}/tokens/{token_id}")
        assert status == 204, body
