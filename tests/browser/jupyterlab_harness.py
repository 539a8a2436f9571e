"""A real JupyterLab and a headless Chromium, for end-to-end tests of notebook features.

Reusable by any test that needs a browser on JupyterLab (widgets, the sidebar, ...)::

    with JupyterLab(root_dir, scratch, env={...}) as lab, LabBrowser(lab, shots) as browser:
        browser.open_notebook("widgets.ipynb")
        browser.run_all_cells()
        browser.page.locator(".my-widget").wait_for()
        browser.screenshot("my-widget")

* ``JupyterLab`` runs ``python -m jupyterlab`` on a free loopback port with a random token,
  scratch Jupyter config/data/runtime/settings/workspace dirs (so nothing from the
  machine's own Jupyter setup leaks in), a ``python3`` kernel spec pointing at the given
  interpreter (by default this venv's), and ``window.jupyterapp`` exposed so tests can run
  JupyterLab commands instead of guessing keyboard shortcuts.
* ``LabBrowser`` drives the Debian ``chromium`` binary through Playwright's
  ``executable_path`` (no ``playwright install``: no download is needed or possible).

Both stop what they started, by process id, in ``stop()``/``close()`` and on ``with`` exit.

The set-up the browser tests share lives here too: ``code_notebook``/``write_code_notebook``
(an .ipynb of code cells), ``slow_heartbeat_gateway`` (a test's own gateway), ``gateway_env``
and ``gateway_lab`` (a JupyterLab whose kernels use it), ``user_client`` and
``user_client_stopping_clusters`` (a user's client, and clean-up), ``user_lab_fixtures``,
``wait_gateway``.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import pytest
from support.chromium import CHROMIUM, CHROMIUM_ARGS
from support.gateway_process import CONFIG, GatewayProcess, _kill_leftovers, free_port

if TYPE_CHECKING:
    from dask_gateway import Gateway

#: JupyterLab user settings every test wants: no news/update toasts covering the page,
#: and every cell kept rendered (windowing would hide off-screen outputs from locators).
DEFAULT_SETTINGS: dict[str, dict[str, Any]] = {
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
}


class JupyterLab:
    """A ``jupyter lab`` server process serving ``root_dir``.

    Parameters
    ----------
    root_dir : folder the server serves (notebooks are opened relative to it).
    scratch_dir : where the server's private Jupyter dirs and its log go.
    env : extra environment for the server and, through it, its kernels.
    python : interpreter for both the server and the ``python3`` kernel.
    settings : JupyterLab user settings, ``{"<plugin id>": {...}}``, merged over
        ``DEFAULT_SETTINGS``.
    extra_args : more ``jupyter lab`` command-line arguments.
    """

    def __init__(
        self,
        root_dir: str | Path,
        scratch_dir: str | Path,
        env: dict[str, str] | None = None,
        python: str = sys.executable,
        settings: dict[str, dict[str, Any]] | None = None,
        extra_args: list[str] | None = None,
    ):
        self.root_dir = Path(root_dir)
        self.scratch = Path(scratch_dir)
        self.python = python
        self.extra_env = dict(env or {})
        self.settings = {**DEFAULT_SETTINGS, **(settings or {})}
        self.extra_args = list(extra_args or [])
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.proc: subprocess.Popen | None = None
        self.log_path = self.scratch / "jupyterlab.log"

    # -- process

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str = "/lab", **query: str) -> str:
        """A browser URL carrying the token."""
        return f"{self.base_url}{path}?{urlencode({**query, 'token': self.token})}"

    def _prepare_dirs(self) -> dict[str, str]:
        dirs = {
            name: self.scratch / name
            for name in ("config", "data", "runtime", "settings", "workspaces", "ipython")
        }
        for d in dirs.values():
            d.mkdir(parents=True, exist_ok=True)
        kernel_dir = dirs["data"] / "kernels" / "python3"
        kernel_dir.mkdir(parents=True, exist_ok=True)
        (kernel_dir / "kernel.json").write_text(
            json.dumps(
                {
                    "argv": [self.python, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                    "display_name": "Python 3 (ipykernel)",
                    "language": "python",
                }
            )
        )
        for plugin, values in self.settings.items():
            package, name = plugin.rsplit("/", 1)
            target = dirs["settings"] / package / f"{name}.jupyterlab-settings"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(json.dumps(values))
        return {
            "JUPYTER_CONFIG_DIR": str(dirs["config"]),
            "JUPYTER_DATA_DIR": str(dirs["data"]),
            "JUPYTER_RUNTIME_DIR": str(dirs["runtime"]),
            "JUPYTERLAB_SETTINGS_DIR": str(dirs["settings"]),
            "JUPYTERLAB_WORKSPACES_DIR": str(dirs["workspaces"]),
            "IPYTHONDIR": str(dirs["ipython"]),
            "JUPYTER_PLATFORM_DIRS": "1",
        }

    def start(self, timeout: float = 90) -> JupyterLab:
        """Start the server and wait until its API answers."""
        env = {**os.environ, **self._prepare_dirs(), **self.extra_env}
        cmd = [
            self.python,
            "-m",
            "jupyterlab",
            "--no-browser",
            "--allow-root",
            f"--port={self.port}",
            "--ServerApp.ip=127.0.0.1",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={self.root_dir}",
            "--LabApp.expose_app_in_browser=True",
            *self.extra_args,
        ]
        log = open(self.log_path, "ab")
        # A session of its own so stop() can end the server and the kernels it started.
        self.proc = subprocess.Popen(
            cmd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyter lab exited at start:\n{self.log()}")
            try:
                self.api("GET", "/api/status")
                return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"jupyter lab did not answer within {timeout}s:\n{self.log()}")

    def api(self, method: str, path: str, body: Any = None, timeout: float = 10) -> Any:
        """Call the Jupyter server's REST API with the token; returns decoded JSON."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.base_url + path,
            data=data,
            method=method,
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None

    def stop(self, timeout: float = 20) -> None:
        """Shut the kernels down through the API, then stop the server's process group."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            for kernel in self.api("GET", "/api/kernels", timeout=5):
                self.api("DELETE", f"/api/kernels/{kernel['id']}", timeout=15)
        except (OSError, ValueError):
            pass
        pgid = self.proc.pid  # its own session: the group id is the server's pid
        try:
            os.killpg(pgid, signal.SIGTERM)
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(pgid, signal.SIGKILL)
            self.proc.wait(10)
        except ProcessLookupError:
            pass
        try:  # kernels left in the group (e.g. if the API call failed)
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-20000:]
        except OSError:
            return ""

    def __enter__(self) -> JupyterLab:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class LabBrowser:
    """Headless Chromium on a ``JupyterLab``, through Playwright's sync API.

    ``page`` is the Playwright page. Console errors are collected in ``console_errors``;
    screenshots go to ``screenshot_dir``.
    """

    def __init__(
        self,
        lab: JupyterLab,
        screenshot_dir: str | Path,
        viewport: tuple[int, int] = (1280, 1000),
        executable: str = CHROMIUM,
    ):
        self.lab = lab
        self.screenshot_dir = Path(screenshot_dir)
        self.viewport = viewport
        self.executable = executable
        self.console_errors: list[str] = []
        self._playwright: Any = None
        self._context: Any = None
        self._profile: str | None = None
        self.page: Any = None

    def start(self) -> LabBrowser:
        if not (os.path.isfile(self.executable) and os.access(self.executable, os.X_OK)):
            raise RuntimeError(
                f"Chromium not found at {self.executable}: install the Debian package "
                "(`apt-get install -y chromium`) or set CHROMIUM_PATH"
            )
        from playwright.sync_api import sync_playwright

        self.screenshot_dir.mkdir(parents=True, exist_ok=True)
        self._profile = tempfile.mkdtemp(prefix="chromium-profile-")
        self._playwright = sync_playwright().start()
        self._context = self._playwright.chromium.launch_persistent_context(
            self._profile,
            executable_path=self.executable,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": self.viewport[0], "height": self.viewport[1]},
        )
        self.page = self._context.pages[0] if self._context.pages else self._context.new_page()
        self.page.on("console", lambda m: m.type == "error" and self.console_errors.append(m.text))
        return self

    def close(self) -> None:
        if self._context is not None:
            self._context.close()
            self._context = None
        if self._playwright is not None:
            self._playwright.stop()
            self._playwright = None
        if self._profile is not None:
            shutil.rmtree(self._profile, ignore_errors=True)
            self._profile = None

    def __enter__(self) -> LabBrowser:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- JupyterLab

    def goto(self, path: str = "/lab", timeout: float = 60, **query: str) -> None:
        """Open a JupyterLab page and wait until the application has started."""
        self.page.goto(self.lab.url(path, **query))
        self.page.wait_for_function("() => !!window.jupyterapp", timeout=timeout * 1000)
        self.page.evaluate("() => window.jupyterapp.started.then(() => true)")
        self.page.locator("#jp-main-dock-panel").wait_for(timeout=timeout * 1000)

    def execute_command(self, command: str, args: dict | None = None) -> Any:
        """Run a JupyterLab command (``notebook:run-all-cells``, ``docmanager:save``...)."""
        return self.page.evaluate(
            "([c, a]) => window.jupyterapp.commands.execute(c, a)", [command, args or {}]
        )

    def open_notebook(self, path: str, timeout: float = 90) -> None:
        """Open a notebook (relative to the root dir) and wait for its kernel to be idle.

        Waiting on the kernel's connection and status, not on the toolbar, avoids running
        cells before the kernel is connected (they would silently never run).
        """
        self.goto(f"/lab/tree/{path}", reset="")
        self.page.wait_for_function(
            """() => {
                const w = window.jupyterapp.shell.currentWidget;
                const k = w && w.sessionContext && w.sessionContext.session
                          && w.sessionContext.session.kernel;
                return !!k && k.connectionStatus === 'connected' && k.status === 'idle';
            }""",
            timeout=timeout * 1000,
        )

    def run_all_cells(self, timeout: float = 180) -> list[dict]:
        """Run every cell of the current notebook and wait until all have finished.

        Returns the code cells' error outputs (``[]`` when all cells succeeded).
        """
        self.execute_command("notebook:run-all-cells")
        self.page.wait_for_function(
            """() => {
                const w = window.jupyterapp.shell.currentWidget;
                const kernel = w.sessionContext.session.kernel;
                const cells = w.content.widgets.filter(c => c.model.type === 'code');
                return kernel.status === 'idle'
                    && cells.every(c => c.model.executionCount !== null
                                        && c.promptNode.textContent.indexOf('*') < 0);
            }""",
            timeout=timeout * 1000,
            polling=250,
        )
        return self.page.evaluate(
            """() => {
                const w = window.jupyterapp.shell.currentWidget;
                const errors = [];
                for (const c of w.content.widgets) {
                    if (c.model.type !== 'code') continue;
                    for (let i = 0; i < c.model.outputs.length; i++) {
                        const o = c.model.outputs.get(i).toJSON();
                        if (o.output_type === 'error') errors.push(o);
                    }
                }
                return errors;
            }"""
        )

    def run_in_kernel(self, code: str, timeout: float = 60) -> str:
        """Run code in the current notebook's kernel (no cell is added); returns its
        stdout/stderr text, with any error as ``Name: value``. Handy to inspect state."""
        return self.page.evaluate(
            """async ([code, timeout]) => {
                const k = window.jupyterapp.shell.currentWidget.sessionContext.session.kernel;
                const out = [];
                const future = k.requestExecute({code, store_history: false});
                future.onIOPub = m => {
                    if (m.header.msg_type === 'stream') out.push(m.content.text);
                    if (m.header.msg_type === 'error')
                        out.push(m.content.ename + ': ' + m.content.evalue);
                };
                const timer = new Promise((_, reject) => setTimeout(
                    () => reject(new Error('kernel did not answer in time')), timeout));
                await Promise.race([future.done, timer]);
                return out.join('');
            }""",
            [code, timeout * 1000],
        )

    def screenshot(self, name: str, locator: Any = None) -> Path:
        """Save a PNG of the page (or of one element) as ``<screenshot_dir>/<name>.png``."""
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", name)
        path = self.screenshot_dir / f"{safe}.png"
        if locator is None:
            self.page.screenshot(path=str(path))
        else:
            locator.scroll_into_view_if_needed()
            locator.screenshot(path=str(path))
        return path


# -- notebooks


def code_notebook(*sources: str) -> dict[str, Any]:
    """An .ipynb document (nbformat 4.5, the ``python3`` kernel) with one code cell per
    source, none run yet: what a test serves to JupyterLab to open and run."""
    return {
        "cells": [
            {
                "cell_type": "code",
                "execution_count": None,
                "id": f"cell{i}",
                "metadata": {},
                "outputs": [],
                "source": source,
            }
            for i, source in enumerate(sources)
        ],
        "metadata": {
            "kernelspec": {
                "display_name": "Python 3 (ipykernel)",
                "language": "python",
                "name": "python3",
            }
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }


def write_code_notebook(path: Path, *sources: str) -> Path:
    """Write ``code_notebook(*sources)`` to ``path``."""
    path.write_text(json.dumps(code_notebook(*sources)))
    return path


# -- a gateway, and JupyterLab on it

#: The shared test config fails a cluster after 4 s without a heartbeat; a scheduler busy
#: rendering its dashboard, on a busy machine, can stay silent longer.
SLOW_HEARTBEAT = "--LocalBackend.cluster_heartbeat_timeout=60"


@contextmanager
def slow_heartbeat_gateway(
    data_dir: Path, extra_args: Sequence[str] = (), config: Path = CONFIG
) -> Iterator[GatewayProcess]:
    """A started gateway of the test's own, patient with heartbeats (``SLOW_HEARTBEAT``);
    on exit it is stopped and any scheduler or worker it left is killed."""
    gw = GatewayProcess(data_dir, [SLOW_HEARTBEAT, *extra_args], config=config)
    try:
        gw.start()
        yield gw
    finally:
        gw.stop()
        _kill_leftovers(gw.data_dir)


def gateway_env(address: str, user: str | None = None) -> dict[str, str]:
    """The dask config, as environment, for a JupyterLab (its server extension and kernels)
    to use the gateway at ``address`` with basic auth, as ``user`` when given."""
    env = {"DASK_GATEWAY__ADDRESS": address, "DASK_GATEWAY__AUTH__TYPE": "basic"}
    if user is not None:
        env["DASK_GATEWAY__AUTH__KWARGS__USERNAME"] = user
    return env


def gateway_lab(tmp_path: Path, address: str, user: str | None = None, **kwargs: Any) -> JupyterLab:
    """A JupyterLab (not started) serving a new ``tmp_path / "notebooks"``, with its scratch
    dirs in ``tmp_path / "lab"`` and ``gateway_env(address, user)``; ``kwargs`` go to
    ``JupyterLab``."""
    root = tmp_path / "notebooks"
    root.mkdir()
    return JupyterLab(root, tmp_path / "lab", env=gateway_env(address, user), **kwargs)


def user_client(gateway: GatewayProcess, user: str) -> Gateway:
    """``user``'s client of the gateway (basic auth), as their notebook would have it."""
    from dask_gateway.auth import BasicAuth

    return gateway.new_gateway(auth=BasicAuth(user))


@contextmanager
def user_client_stopping_clusters(gateway: GatewayProcess, user: str) -> Iterator[Gateway]:
    """``user_client``; on exit, every cluster of ``user``'s is stopped and it is closed."""
    client = user_client(gateway, user)
    try:
        yield client
    finally:
        try:
            for report in client.list_clusters():
                client.stop_cluster(report.name)
        finally:
            client.close()


def stop_user_clusters(gateway: GatewayProcess, user: str) -> None:
    """Stop every cluster of ``user``'s (a test's clean-up)."""
    with user_client_stopping_clusters(gateway, user):
        pass


def user_lab_fixtures(user: str) -> tuple[Any, Any]:
    """The fixtures ``client_gateway`` (``user``'s client in the test; their clusters stopped
    after it) and ``lab`` (a running ``gateway_lab`` as ``user``), both on the test module's
    ``gateway`` fixture. Bind them in the module: ``client_gateway, lab = user_lab_fixtures(USER)``.
    """

    @pytest.fixture
    def client_gateway(gateway: GatewayProcess) -> Iterator[Gateway]:
        with user_client_stopping_clusters(gateway, user) as client:
            yield client

    @pytest.fixture
    def lab(gateway: GatewayProcess, tmp_path: Path) -> Iterator[JupyterLab]:
        with gateway_lab(tmp_path, gateway.address, user) as server:
            yield server

    return client_gateway, lab


def wait_gateway(predicate: Callable[[], Any], what: str, timeout: float = 60) -> Any:
    """Poll the gateway (not the page) until ``predicate()`` holds; returns its value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"the gateway never showed {what}")
