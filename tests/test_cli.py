"""The `dask-gateway-server` command: defaults, generate-config, clean shutdown, plugins
by name."""

from __future__ import annotations

import importlib
import inspect
import os
import pkgutil
import signal
import subprocess
import sys
import time
import urllib.request
from importlib.metadata import entry_points

import pytest
from support.gateway_process import free_port
from traitlets.config import Config

import dask_gateway_server.auth
import dask_gateway_server.backends
from dask_gateway_server.app import DaskGateway
from dask_gateway_server.auth import (
    Authenticator,
    JupyterHubAuthenticator,
    KerberosAuthenticator,
    SimpleAuthenticator,
)
from dask_gateway_server.backends.base import Backend, DBBackendBase
from dask_gateway_server.backends.local import LocalBackend, UnsafeLocalBackend
from dask_gateway_server.backends.slurm import SlurmBackend

AUTHENTICATORS = "dask_gateway_server.authenticators"
BACKENDS = "dask_gateway_server.backends"


def run(*args, cwd=None, timeout=60):
    return subprocess.run(
        [sys.executable, "-m", "dask_gateway_server", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_generate_config(tmp_path):
    out = run("generate-config", "--output", str(tmp_path / "c.py"))
    assert out.returncode == 0, out.stderr
    text = (tmp_path / "c.py").read_text()
    for line in [
        "# c.Proxy.address = '127.0.0.1:8000'",
        "# c.ClusterConfig.worker_cores = 1",
        "# c.LocalBackend.stop_clusters_on_shutdown = True",
        "# c.SimpleAuthenticator.password = None",
    ]:
        assert line in text
    again = run("generate-config", "--output", str(tmp_path / "c.py"))
    assert again.returncode == 1 and "--force" in again.stderr
    assert run("generate-config", "--output", str(tmp_path / "c.py"), "--force").returncode == 0


def test_defaults_and_sigint(tmp_path):
    """No arguments: a working gateway, its database and 0600 key in a data directory."""
    port = free_port()
    # The config file in the working directory is picked up without -f.
    (tmp_path / "dask_gateway_config.py").write_text(f"c.Proxy.address = '127.0.0.1:{port}'\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "dask_gateway_server"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=1)
                break
            except OSError:
                time.sleep(0.05)
        data = tmp_path / ".dask-gateway"
        assert (data / "dask_gateway.sqlite").exists()
        assert oct(os.stat(data / "dask_gateway.key").st_mode & 0o777) == "0o600"
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "Traceback" not in out
    assert f"started at http://127.0.0.1:{port}" in out


def test_bad_config_is_a_clear_error(tmp_path):
    (tmp_path / "bad.py").write_text("c.Proxy.prefix = 'no-slash'\n")
    out = run("-f", str(tmp_path / "bad.py"))
    assert out.returncode != 0
    assert "prefix" in out.stdout + out.stderr


def test_config_file_that_raises_stops_the_gateway(tmp_path):
    (tmp_path / "broken.py").write_text("import os\nc.Proxy.address = os.environ['NOPE_NOT_SET']\n")
    out = run("-f", str(tmp_path / "broken.py"), timeout=60)
    assert out.returncode != 0
    assert "NOPE_NOT_SET" in out.stdout + out.stderr
    assert "started at" not in out.stdout + out.stderr


SHORT_NAMES = [
    ("authenticator_class", "simple", SimpleAuthenticator),
    ("authenticator_class", "jupyterhub", JupyterHubAuthenticator),
    ("authenticator_class", "kerberos", KerberosAuthenticator),
    ("backend_class", "local", LocalBackend),
    ("backend_class", "unsafe-local", UnsafeLocalBackend),
    ("backend_class", "slurm", SlurmBackend),
]


@pytest.mark.parametrize("setting,name,cls", SHORT_NAMES, ids=[n for _, n, _ in SHORT_NAMES])
def test_a_config_file_with_a_short_name_gets_the_class(setting, name, cls, tmp_path):
    """``c.DaskGateway.backend_class = "slurm"`` in a config file is the Slurm backend."""
    path = tmp_path / "dask_gateway_config.py"
    path.write_text(f"c.DaskGateway.{setting} = {name!r}\n")
    app = DaskGateway()
    app.load_config_file(str(path))
    assert getattr(app, setting) is cls


@pytest.mark.parametrize(
    "setting,value,cls",
    [
        ("backend_class", "SLURM", SlurmBackend),  # names ignore case, as JupyterHub's
        ("backend_class", "dask_gateway_server.backends.local.LocalBackend", LocalBackend),
        # The public dask-gateway's class paths, as its config files write them.
        (
            "backend_class",
            "dask_gateway_server.backends.jobqueue.slurm.SlurmBackend",
            SlurmBackend,
        ),
        (
            "authenticator_class",
            "dask_gateway_server.auth.KerberosAuthenticator",
            KerberosAuthenticator,
        ),
        ("backend_class", UnsafeLocalBackend, UnsafeLocalBackend),
        ("authenticator_class", JupyterHubAuthenticator, JupyterHubAuthenticator),
    ],
)
def test_import_paths_and_classes_still_work(setting, value, cls):
    app = DaskGateway(config=Config({"DaskGateway": {setting: value}}))
    assert getattr(app, setting) is cls


def test_defaults_are_the_simple_authenticator_and_the_unsafe_local_backend():
    app = DaskGateway()
    assert app.authenticator_class is SimpleAuthenticator
    assert app.backend_class is UnsafeLocalBackend


def _defined_in(package, root: type, abstract: tuple[type, ...]) -> set[type]:
    """The concrete subclasses of ``root`` defined in ``package`` (module or package)."""
    modules = [package]
    if hasattr(package, "__path__"):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            modules.append(importlib.import_module(info.name))
    return {
        cls
        for module in modules
        for _, cls in inspect.getmembers(module, inspect.isclass)
        if issubclass(cls, root) and cls not in abstract and cls.__module__ == module.__name__
    }


def test_every_authenticator_and_backend_has_a_short_name():
    """A new authenticator or backend of this package cannot be left without its name."""
    for group, package, root, abstract in [
        (AUTHENTICATORS, dask_gateway_server.auth, Authenticator, (Authenticator,)),
        (BACKENDS, dask_gateway_server.backends, Backend, (Backend, DBBackendBase)),
    ]:
        named = {ep.load() for ep in entry_points(group=group)}
        assert named >= _defined_in(package, root, abstract), group
    names = {ep.name for ep in entry_points(group=BACKENDS)}
    assert names >= {"local", "unsafe-local", "slurm"}


def test_an_unknown_name_stops_the_gateway_with_the_known_names(tmp_path):
    (tmp_path / "typo.py").write_text('c.DaskGateway.backend_class = "slurmm"\n')
    out = run("-f", str(tmp_path / "typo.py"))
    text = out.stdout + out.stderr
    assert out.returncode != 0, text
    assert (
        "DaskGateway.backend_class = 'slurmm': no backend has that name. "
        "Known backend names: local, slurm, unsafe-local" in text
    ), text
    assert "Traceback" not in text and "started at" not in text

    out = run("--DaskGateway.authenticator_class=dask_gateway_server.auth.NoSuchAuthenticator")
    text = out.stdout + out.stderr
    assert out.returncode != 0, text
    assert "cannot import it" in text and "Known authenticator names: jupyterhub, kerberos" in text
    assert "Traceback" not in text and "started at" not in text


def test_help_lists_the_installed_names_and_app_imports_no_backend():
    out = run("--help-all")
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())
    assert "slurm (dask_gateway_server.backends.slurm.SlurmBackend)" in text
    assert "jupyterhub (dask_gateway_server.auth.JupyterHubAuthenticator)" in text
    # The app lists plugins from their entry points; importing it loads no backend.
    probe = (
        "import sys, dask_gateway_server.app; "
        "print(sorted(m for m in sys.modules if m.startswith('dask_gateway_server.backends.')))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert loaded.stdout.strip() == "['dask_gateway_server.backends.base']", loaded.stdout
