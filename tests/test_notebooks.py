"""The example notebooks run top to bottom against a real gateway, and say the right things.

Each notebook is executed by nbclient in a kernel of this venv, with the gateway's address in
dask config env (``DASK_GATEWAY__ADDRESS``), as in the product started by scripts/start.sh.
Each runs as its own user, so its cluster listings don't see other tests' clusters.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from support.http_helpers import basic, call

ROOT = Path(__file__).parent.parent
NOTEBOOKS = ROOT / "notebooks"
ARTIFACTS = ROOT / "test-artifacts" / "notebooks"


def execute(name: str, gateway, monkeypatch, tmp_path: Path, user: str) -> nbformat.NotebookNode:
    """Run ``notebooks/<name>`` top to bottom; nbclient raises on the first failing cell."""
    monkeypatch.setenv("DASK_GATEWAY__ADDRESS", gateway.address)
    monkeypatch.setenv("DASK_GATEWAY__AUTH__TYPE", "basic")
    monkeypatch.setenv("DASK_GATEWAY__AUTH__KWARGS__USERNAME", user)
    # A plain, non-interactive matplotlib backend for the kernel.
    monkeypatch.setenv("MPLBACKEND", "agg")
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = NotebookClient(
        nb, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    try:
        client.execute()
    finally:
        # The executed notebook, outputs and all, for a person to look at.
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, ARTIFACTS / name)
    return nb


def running_clusters(gateway, user: str) -> dict:
    resp = call("GET", f"{gateway.address}/api/v1/clusters/", headers=basic(user))
    assert resp.status == 200, resp.body
    return resp.json()


def committed_clean(name: str) -> None:
    """Notebooks are committed with outputs cleared."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source


def text(nb: nbformat.NotebookNode, tag: str) -> str:
    """The printed output of the cell tagged ``tag``."""
    cells = [c for c in nb.cells if tag in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"one cell tagged {tag!r}"
    out = []
    for o in cells[0].outputs:
        if o.output_type == "stream" and o.name == "stdout":
            out.append(o.text)
        elif o.output_type in ("execute_result", "display_data"):
            out.append(o.data.get("text/plain", ""))
    return "".join(out)


def value(nb: nbformat.NotebookNode, tag: str, label: str) -> str:
    """The value printed after ``label:`` in the cell tagged ``tag``."""
    m = re.search(rf"^{re.escape(label)}: (.*)$", text(nb, tag), re.M)
    assert m, f"{label!r} not in the output of {tag!r}:\n{text(nb, tag)}"
    return m.group(1).strip()


def test_quickstart(gateway, monkeypatch, tmp_path):
    committed_clean("quickstart.ipynb")
    nb = execute("quickstart.ipynb", gateway, monkeypatch, tmp_path, "nb-quickstart")
    assert running_clusters(gateway, "nb-quickstart") == {}, "the notebook left a cluster running"
    assert value(nb, "connect", "address") == gateway.address
    assert value(nb, "connect", "auth") == "BasicAuth"
    assert value(nb, "list-before", "running clusters") == "0"
    assert value(nb, "options", "fields") == "['environment', 'worker_cores', 'worker_memory']"
    assert "worker_memory=0.5" in text(nb, "options")
    name = value(nb, "new-cluster", "name")
    assert re.fullmatch(r"[0-9a-f]{32}", name)
    assert value(nb, "new-cluster", "dashboard") == f"{gateway.address}/clusters/{name}/status"
    assert value(nb, "scaled", "workers") == "2"
    assert value(nb, "compute", "sum") == "16000000"
    assert value(nb, "compute", "mean") == "10.0"
    assert value(nb, "shutdown", "status") == "closed"
    assert value(nb, "shutdown", "running clusters") == "0"
    assert value(nb, "context-manager", "squares") == "285"
    assert value(nb, "context-manager", "running clusters") == "0"
    assert value(nb, "detached", "still running") == "True"
    assert value(nb, "reconnect", "reconnected, workers") == "1"
    assert value(nb, "reconnect", "answer") == "42"
    assert value(nb, "cleanup", "running clusters") == "0"


def test_adaptive(gateway, monkeypatch, tmp_path):
    committed_clean("adaptive.ipynb")
    nb = execute("adaptive.ipynb", gateway, monkeypatch, tmp_path, "nb-adaptive")
    assert running_clusters(gateway, "nb-adaptive") == {}, "the notebook left a cluster running"
    assert value(nb, "workload", "sum of squares") == str(sum(i * i for i in range(60)))
    # Grew to the maximum while the tasks waited, then shrank back to the minimum.
    assert value(nb, "workload", "peak workers") == "4"
    seconds = float(value(nb, "workload", "workload took").split()[0])
    assert seconds < 45, "four workers should beat one worker's 60 s"
    assert value(nb, "shrink", "workers after idling") == "1"
    plot = [c for c in nb.cells if "plot" in c.metadata.get("tags", [])][0]
    assert any("image/png" in o.get("data", {}) for o in plot.outputs), "no plot"


def test_dataframe(gateway, monkeypatch, tmp_path):
    committed_clean("dataframe.ipynb")
    nb = execute("dataframe.ipynb", gateway, monkeypatch, tmp_path, "nb-dataframe")
    assert running_clusters(gateway, "nb-dataframe") == {}, "the notebook left a cluster running"
    assert value(nb, "setup", "sensors") == "26"
    assert value(nb, "gateway", "rows") == str(6 * 86400)
    assert value(nb, "gateway", "names") == "26"
    regions = value(nb, "gateway", "by region")
    assert "'north'" in regions and "'south'" in regions
    assert value(nb, "local", "same results") == "True"
    gateway_s = float(value(nb, "gateway", "gateway cluster").split()[0])
    local_s = float(value(nb, "local", "local cluster").split()[0])
    assert 0 < gateway_s < 120 and 0 < local_s < 120
    assert "ratio gateway/local" in text(nb, "timing")


def test_widgets_notebook_runs(gateway, monkeypatch, tmp_path):
    """The widgets notebook (tested in a browser elsewhere) also runs headless. It leaves its
    cluster to the reader; the kernel's exit stops it (shutdown_on_close)."""
    committed_clean("widgets.ipynb")
    user = "nb-widgets"
    nb = execute("widgets.ipynb", gateway, monkeypatch, tmp_path, user)
    kinds = [set(o.get("data", {})) for c in nb.cells for o in c.get("outputs", [])]
    assert sum("application/vnd.jupyter.widget-view+json" in k for k in kinds) == 3, kinds
    assert running_clusters(gateway, user) == {}
