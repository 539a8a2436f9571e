"""The client's imports run one way, and ipywidgets stays optional.

``client`` and ``options`` reach ``dask_gateway.widgets`` only inside their display hooks, so
``import dask_gateway`` loads no widget code, and a notebook without ipywidgets shows the
text/HTML reprs instead of failing.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys

import grimp
import nbformat
from nbclient import NotebookClient

# The display hooks: imports inside functions, the only ones allowed to point back at a
# module that imports the importer (the widgets import ``options`` to build the form).
LAZY_IMPORTS = [
    ("dask_gateway.client", "dask_gateway.widgets"),
    ("dask_gateway.options", "dask_gateway.widgets"),
]

# Installed before anything else in the kernel: ipywidgets cannot be imported, as if it were
# not installed (``import ipywidgets`` raises ModuleNotFoundError).
BLOCK_IPYWIDGETS = """\
import importlib.abc
import sys

assert "ipywidgets" not in sys.modules


class NoIpywidgets(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "ipywidgets":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, NoIpywidgets())
"""


def test_no_import_cycles():
    graph = grimp.build_graph("dask_gateway", exclude_type_checking_imports=True)
    for importer, imported in LAZY_IMPORTS:
        assert graph.direct_import_exists(importer=importer, imported=imported)
        graph.remove_import(importer=importer, imported=imported)
    cycles = [
        (a, b)
        for a, b in itertools.combinations(sorted(graph.modules), 2)
        if graph.chain_exists(importer=a, imported=b) and graph.chain_exists(importer=b, imported=a)
    ]
    assert cycles == []
    # Nothing else reaches the widgets from outside their package.
    outside = {
        m
        for m in graph.find_downstream_modules("dask_gateway.widgets", as_package=True)
        if not m.startswith("dask_gateway.widgets")
    }
    assert outside == set()


def test_import_dask_gateway_loads_no_widgets():
    """The lazy imports above are lazy: importing the package and its client (``Gateway``,
    imported on first use) loads neither our widgets nor ipywidgets."""
    code = (
        "import sys, json, dask_gateway; dask_gateway.Gateway; "
        "print(json.dumps(sorted(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = json.loads(out.stdout)
    assert "dask_gateway.client" in loaded and "dask_gateway.options" in loaded
    assert [m for m in loaded if m.split(".")[0] == "ipywidgets"] == []
    assert [m for m in loaded if m.startswith("dask_gateway.widgets")] == []


def test_notebook_without_ipywidgets_shows_the_plain_reprs(gateway, monkeypatch, tmp_path):
    """In a real Jupyter kernel where ipywidgets cannot be imported: options, a gateway and a
    running cluster display as text/HTML without error, and asking for a form says why not.
    A new cluster's start-up progress (``gateway.progress: auto``, on in a kernel) needs no
    ipywidgets either."""
    monkeypatch.setenv("DASK_GATEWAY__ADDRESS", gateway.address)
    monkeypatch.setenv("DASK_GATEWAY__AUTH__TYPE", "basic")
    monkeypatch.setenv("DASK_GATEWAY__AUTH__KWARGS__USERNAME", "no-ipywidgets")
    cells = [
        BLOCK_IPYWIDGETS,
        "from dask_gateway import Gateway\n\ngateway = Gateway()\ngateway",
        "options = gateway.cluster_options()\noptions",
        "cluster = gateway.new_cluster(options)\ncluster",
        "try:\n"
        "    options._fields['worker_cores'].widget()\n"
        "except ImportError as exc:\n"
        "    print(exc)",
        "cluster.shutdown()\n"
        "assert [m for m in sys.modules if m.startswith('ipywidgets')] == []\n"
        "print(sorted(m for m in sys.modules if m.startswith('dask_gateway.widgets')))",
    ]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    # Raises on the first failing cell.
    NotebookClient(
        nb, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()

    def outputs(i: int) -> list:
        return nb.cells[i].outputs

    (gw_out,) = outputs(1)
    assert set(gw_out.data) == {"text/plain", "text/html"}
    assert gateway.address in gw_out.data["text/html"]
    (options_out,) = outputs(2)
    assert set(options_out.data) == {"text/plain"}
    assert options_out.data["text/plain"].startswith("Options<")
    assert "worker_cores=" in options_out.data["text/plain"]
    # The start-up progress: one display, updated in place as the phases came (from the
    # client's loop thread, yet in the cell that started the cluster), then the cluster.
    progress_out, cluster_out = outputs(3)
    assert progress_out.output_type == "display_data"
    assert set(progress_out.data) == {"text/plain", "text/html"}
    assert "dgw-start-progress" in progress_out.data["text/html"]
    phases = progress_out.data["text/plain"].splitlines()
    assert phases[0].endswith(": Cluster created by no-ipywidgets"), phases
    assert phases[-1].endswith(": running") or ": Scheduler running on " in phases[-1], phases
    assert cluster_out.output_type == "execute_result"
    assert set(cluster_out.data) == {"text/plain", "text/html"}
    assert "running" in cluster_out.data["text/html"]
    assert "Dashboard" in cluster_out.data["text/html"]
    (error_out,) = outputs(4)
    assert "need ipywidgets" in error_out.text
    # The hooks did import our widget code, which loaded no ipywidgets.
    (modules_out,) = outputs(5)
    assert "dask_gateway.widgets" in modules_out.text
