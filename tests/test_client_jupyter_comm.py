"""The client tells a listening notebook frontend which cluster its kernel made or connected to.

``dask_gateway.jupyter_comm.announce_cluster`` opens a comm (target ``dask-gateway``) only in
an IPython kernel whose server said its frontend listens (``DASK_GATEWAY_JUPYTERLAB_COMM=1``,
set by our server extension). Everywhere else it sends nothing, and it never fails, prints or
waits: plain Python, a terminal IPython, a kernel run by nbclient/papermill (no flag), a
kernel under a frontend that rejects the target (the public JupyterLab closes the comm).
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest
from jupyter_client.manager import KernelManager

from dask_gateway import jupyter_comm
from dask_gateway.jupyter_comm import COMM_TARGET, ENV_FLAG, announce_cluster

USER = "comm-user"

MODULES = (
    "json.dumps([m for m in ('IPython', 'ipykernel', 'comm', 'ipywidgets') if m in sys.modules])"
)


def client_env(gateway, flag: str | None) -> dict[str, str]:
    env = {
        **os.environ,
        "DASK_GATEWAY__ADDRESS": gateway.address,
        "DASK_GATEWAY__AUTH__TYPE": "basic",
        "DASK_GATEWAY__AUTH__KWARGS__USERNAME": USER,
    }
    env.pop(ENV_FLAG, None)
    if flag is not None:
        env[ENV_FLAG] = flag
    return env


def stop_all(gateway) -> None:
    from dask_gateway.auth import BasicAuth

    gw = gateway.new_gateway(auth=BasicAuth(USER))
    try:
        for report in gw.list_clusters():
            gw.stop_cluster(report.name)
    finally:
        gw.close()


# -- in process: nothing to talk to, or a broken frontend


def test_no_ipython_no_comm(monkeypatch):
    """Plain Python (IPython never imported): nothing is sent, nothing is imported."""
    monkeypatch.setenv(ENV_FLAG, "1")
    monkeypatch.delitem(sys.modules, "IPython", raising=False)
    assert announce_cluster("c", "http://gw") is False
    assert "IPython" not in sys.modules


def fake_ipython(monkeypatch, shell: Any) -> None:
    module = types.ModuleType("IPython")
    module.get_ipython = lambda: shell  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "IPython", module)


def fake_comm(monkeypatch, create) -> None:
    module = types.ModuleType("comm")
    module.create_comm = create  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "comm", module)


def test_terminal_ipython_shell_no_comm(monkeypatch):
    """An IPython shell without a kernel (a terminal, an embedded shell): nothing sent."""
    monkeypatch.setenv(ENV_FLAG, "1")
    opened: list = []
    fake_comm(monkeypatch, lambda **kw: opened.append(kw))
    fake_ipython(monkeypatch, types.SimpleNamespace())  # no .kernel
    assert announce_cluster("c", "http://gw") is False
    fake_ipython(monkeypatch, None)  # IPython imported, no shell running
    assert announce_cluster("c", "http://gw") is False
    assert opened == []


def test_kernel_opens_comm_only_with_the_flag(monkeypatch):
    opened: list = []
    fake_comm(monkeypatch, lambda **kw: opened.append(kw))
    fake_ipython(monkeypatch, types.SimpleNamespace(kernel=object()))
    monkeypatch.delenv(ENV_FLAG, raising=False)
    assert announce_cluster("c", "http://gw") is False
    monkeypatch.setenv(ENV_FLAG, "0")
    assert announce_cluster("c", "http://gw") is False
    assert opened == []
    monkeypatch.setenv(ENV_FLAG, "1")
    assert announce_cluster("c", "http://gw") is True
    assert opened == [
        {"target_name": COMM_TARGET, "data": {"cluster": "c", "address": "http://gw"}}
    ]


def test_a_failing_comm_never_fails_or_prints(monkeypatch, capsys, caplog):
    """Whatever the comm machinery raises stays a debug log line."""
    monkeypatch.setenv(ENV_FLAG, "1")
    fake_ipython(monkeypatch, types.SimpleNamespace(kernel=object()))

    def broken(**kw):
        raise RuntimeError("iopub is gone")

    fake_comm(monkeypatch, broken)
    with caplog.at_level("INFO", logger=jupyter_comm.__name__):
        assert announce_cluster("c", "http://gw") is False
    assert caplog.records == []
    # An IPython whose get_ipython itself breaks.
    module = types.ModuleType("IPython")
    monkeypatch.setitem(sys.modules, "IPython", module)  # no get_ipython at all
    assert announce_cluster("c", "http://gw") is False
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""


# -- real processes against a real gateway


def test_plain_python_cluster_stays_quiet(gateway):
    """A script making and connecting to a cluster (flag set, as under our Jupyter server):
    no output, and nothing of IPython or the comm machinery imported."""
    code = (
        "import json, sys\n"
        "from dask_gateway import Gateway\n"
        "gateway = Gateway()\n"
        "cluster = gateway.new_cluster()\n"
        "again = gateway.connect(cluster.name)\n"
        "again.close()\n"
        "cluster.shutdown()\n"
        "gateway.close()\n"
        f"print({MODULES})\n"
    )
    try:
        out = subprocess.run(
            [sys.executable, "-c", code],
            env=client_env(gateway, "1"),
            capture_output=True,
            text=True,
            timeout=180,
        )
    finally:
        stop_all(gateway)
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    assert json.loads(out.stdout) == []


def test_terminal_ipython_stays_quiet(gateway, tmp_path):
    """A terminal IPython (a shell, no kernel) with the flag set: no comm, no output beyond
    the cell's own."""
    code = (
        "from dask_gateway.jupyter_comm import announce_cluster; "
        "print('sent', announce_cluster('c', 'http://gw'))"
    )
    env = client_env(gateway, "1")
    env["IPYTHONDIR"] = str(tmp_path / "ipython")
    out = subprocess.run(
        [sys.executable, "-m", "IPython", "--quick", "--no-banner", "--colors=nocolor", "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "sent False"
    assert out.stderr == ""


class Kernel:
    """A real ipykernel, driven the way a frontend would (we read every iopub message)."""

    def __init__(self, env: dict[str, str], stderr_path: Path):
        self.km = KernelManager(kernel_name="python3")
        self._stderr = open(stderr_path, "wb")
        self.km.start_kernel(env=env, stderr=self._stderr, stdout=self._stderr)
        self.kc = self.km.blocking_client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)

    def run(self, code: str, timeout: float = 180) -> list[dict]:
        """Execute ``code``; its iopub messages until idle (raises on an error output)."""
        msg_id = self.kc.execute(code)
        msgs = []
        while True:
            try:
                msg = self.kc.get_iopub_msg(timeout=timeout)
            except queue.Empty:
                raise TimeoutError(f"no answer to {code!r}") from None
            msgs.append(msg)
            if msg["header"]["msg_type"] == "error":
                raise AssertionError("\n".join(msg["content"]["traceback"]))
            if (
                msg["header"]["msg_type"] == "status"
                and msg["content"]["execution_state"] == "idle"
                and msg["parent_header"].get("msg_id") == msg_id
            ):
                return msgs

    def close_comm(self, comm_id: str) -> None:
        """What a frontend does with the comm: ours after reading it, the public JupyterLab
        because it has no such target."""
        self.kc.shell_channel.send(
            self.kc.session.msg("comm_close", {"comm_id": comm_id, "data": {}})
        )

    def stop(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)
        self._stderr.close()


def comm_opens(msgs: list[dict]) -> list[dict]:
    return [m["content"] for m in msgs if m["header"]["msg_type"] == "comm_open"]


def stream_text(msgs: list[dict]) -> str:
    return "".join(m["content"]["text"] for m in msgs if m["header"]["msg_type"] == "stream")


@pytest.mark.timeout(300)
def test_kernel_announces_new_and_connected_clusters(gateway, tmp_path):
    """In a kernel under our server (flag set): one comm per new or connected cluster, with
    its name and gateway address; closing it (as our extension and the public JupyterLab do)
    leaves nothing behind in the kernel and logs nothing."""
    kernel = Kernel(client_env(gateway, "1"), tmp_path / "kernel.log")
    try:
        kernel.run("from dask_gateway import Gateway\ngateway = Gateway()")
        made = kernel.run("cluster = gateway.new_cluster()\nprint(cluster.name)")
        name = stream_text(made).strip().splitlines()[-1]
        (opened,) = comm_opens(made)
        assert opened["target_name"] == COMM_TARGET
        assert opened["data"] == {"cluster": name, "address": gateway.address}
        kernel.close_comm(opened["comm_id"])

        again = kernel.run(f"again = gateway.connect({name!r})")
        (reopened,) = comm_opens(again)
        assert reopened["data"] == {"cluster": name, "address": gateway.address}
        assert reopened["comm_id"] != opened["comm_id"]
        kernel.close_comm(reopened["comm_id"])
        assert stream_text(again) == ""

        left = kernel.run(
            "import comm\nprint(len(comm.get_comm_manager().comms))\n"
            "again.close()\ncluster.shutdown()"
        )
        assert stream_text(left).strip() == "0"
        # An async cluster, made in the kernel's own loop, is announced too.
        made_async = kernel.run(
            "agw = Gateway(asynchronous=True)\n"
            "acluster = await agw.new_cluster()\n"
            "await acluster.shutdown()\nawait agw.close()"
        )
        assert [c["target_name"] for c in comm_opens(made_async)] == [COMM_TARGET]
    finally:
        kernel.stop()
        stop_all(gateway)
    log = (tmp_path / "kernel.log").read_text()
    assert "No such comm" not in log and "Traceback" not in log, log


@pytest.mark.timeout(300)
def test_kernel_without_flag_sends_nothing(gateway, tmp_path):
    """A kernel not started by our server (nbclient, papermill, VS Code, the public
    JupyterLab): no comm, so no frontend warns about an unknown target; the cell's output is
    the cell's own."""
    kernel = Kernel(client_env(gateway, None), tmp_path / "kernel.log")
    try:
        msgs = kernel.run(
            "from dask_gateway import Gateway\ngateway = Gateway()\n"
            "cluster = gateway.new_cluster()\nagain = gateway.connect(cluster.name)\n"
            "again.close()\ncluster.shutdown()\nprint('done')"
        )
    finally:
        kernel.stop()
        stop_all(gateway)
    assert comm_opens(msgs) == []
    assert stream_text(msgs) == "done\n"
