"""The `dask-gateway-server` command: defaults, generate-config, clean shutdown."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request

from gateway_process import free_port


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
