"""How long from running a notebook cell until the sidebar selects the cell's cluster.

Drives a real JupyterLab (with our extensions) in headless Chromium against a real gateway
(tests/browser/jupyterlab_harness.py, tests/support/gateway_process.py). Each try adds a cell
to the open notebook and runs it; the time is taken in the page (``performance.now()``) from
the run until the cluster's row is selected (a MutationObserver on the sidebar), so no
Python-side polling adds to it. Two kinds of cells:

* ``new``: ``gateway.new_cluster()`` (the kernel announces the cluster once submitted; the
  sidebar lists it at once). The time until the cell has finished (the cluster runs) is
  printed beside it, for scale.
* ``connect``: ``gateway.connect(name)`` to a running cluster (another row selected before).

Prints the median and every try. A benchmark, not a test: it never fails because something
is slow. Run from the repository root::

    .venv/bin/python bench/notebook_selection.py [--tries 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE.parent / "tests" / "browser"))

from jupyterlab_harness import JupyterLab, LabBrowser  # noqa: E402
from support.gateway_process import GatewayProcess, _kill_leftovers  # noqa: E402

USER = "bench-notebook"
SIDEBAR = "#dask-gateway-sidebar"

NOTEBOOK = {
    "cells": [
        {
            "cell_type": "code",
            "execution_count": None,
            "id": "setup",
            "metadata": {},
            "outputs": [],
            "source": "from dask_gateway import Gateway\ngateway = Gateway()",
        }
    ],
    "metadata": {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}
    },
    "nbformat": 4,
    "nbformat_minor": 5,
}

#: Runs ``code`` in a new last cell; resolves with [ms until `target` (or any row not in
#: `exclude`) is the selected row, its name, ms until the cell finished].
TIME_CELL = """async ([code, target, exclude]) => {
    const sidebar = document.querySelector('#dask-gateway-sidebar');
    const panel = window.jupyterapp.shell.currentWidget;
    const nb = panel.content;
    nb.model.sharedModel.insertCell(nb.model.cells.length, {cell_type: 'code', source: code});
    nb.activeCellIndex = nb.widgets.length - 1;
    let observer;
    const selected = new Promise(resolve => {
        const check = () => {
            const row = sidebar.querySelector('li.dgj-Cluster[aria-selected="true"]');
            const name = row && row.dataset.clusterName;
            if (name && (target ? name === target : !exclude.includes(name))) {
                observer.disconnect();
                resolve([performance.now(), name]);
            }
        };
        observer = new MutationObserver(check);
        observer.observe(sidebar, {subtree: true, childList: true, attributes: true});
    });
    const t0 = performance.now();
    const done = window.jupyterapp.commands.execute('notebook:run-cell')
        .then(() => new Promise(resolve => {
            const k = panel.sessionContext.session.kernel;
            const idle = () => {
                if (k.status === 'idle' && nb.activeCell.model.executionCount !== null) {
                    resolve(performance.now());
                } else {
                    setTimeout(idle, 20);
                }
            };
            idle();
        }));
    const [t1, name] = await selected;
    const t2 = await done;
    return [t1 - t0, name, t2 - t0];
}"""


def listed(page) -> list[str]:
    return page.eval_on_selector_all(
        f"{SIDEBAR} li.dgj-Cluster", "rows => rows.map(r => r.dataset.clusterName)"
    )


def stop_all(gateway) -> None:
    from dask_gateway.auth import BasicAuth

    gw = gateway.new_gateway(auth=BasicAuth(USER))
    try:
        for report in gw.list_clusters():
            gw.stop_cluster(report.name)
    finally:
        gw.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tries", type=int, default=5, help="tries of each kind (default 5)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-notebook-"))
    gateway = GatewayProcess(work / "gateway", ["--LocalBackend.cluster_heartbeat_timeout=60"])
    gateway.start()
    root = work / "notebooks"
    root.mkdir()
    (root / "bench.ipynb").write_text(json.dumps(NOTEBOOK))
    env = {
        "DASK_GATEWAY__ADDRESS": gateway.address,
        "DASK_GATEWAY__AUTH__TYPE": "basic",
        "DASK_GATEWAY__AUTH__KWARGS__USERNAME": USER,
    }
    new_ms: list[float] = []
    new_done_ms: list[float] = []
    connect_ms: list[float] = []
    try:
        with (
            JupyterLab(root, work / "lab", env=env) as lab,
            LabBrowser(lab, work / "shots") as browser,
        ):
            page = browser.page
            browser.open_notebook("bench.ipynb")
            browser.run_all_cells()
            page.locator(
                '.jp-SideBar.jp-mod-left li.lm-TabBar-tab[data-id="dask-gateway-sidebar"]'
            ).click()
            page.locator(f"{SIDEBAR} .dgj-Empty").wait_for(state="attached")
            kept: str | None = None
            for i in range(args.tries):
                code = f"c{i} = gateway.new_cluster(shutdown_on_close=False)"
                ms, name, done = page.evaluate(TIME_CELL, [code, None, listed(page)])
                new_ms.append(ms)
                new_done_ms.append(done)
                print(f"new #{i + 1}: selected after {ms:.0f} ms (cell done after {done:.0f} ms)")
                if kept is None:
                    kept = name  # stays running for the connect tries
                else:
                    browser.run_in_kernel(f"c{i}.shutdown()")
            assert kept is not None
            # Another running cluster, to select before each try (as a user might have).
            spare = browser.run_in_kernel(
                "spare = gateway.new_cluster(shutdown_on_close=False)\nprint(spare.name)"
            ).strip()
            for i in range(args.tries):
                page.locator(f'{SIDEBAR} li[data-cluster-name="{spare}"] .dgj-Cluster-name').click()
                page.locator(
                    f'{SIDEBAR} li[data-cluster-name="{spare}"][aria-selected="true"]'
                ).wait_for()
                code = f"again{i} = gateway.connect({kept!r})"
                ms, _, done = page.evaluate(TIME_CELL, [code, kept, []])
                connect_ms.append(ms)
                print(
                    f"connect #{i + 1}: selected after {ms:.0f} ms (cell done after {done:.0f} ms)"
                )
    finally:
        try:
            stop_all(gateway)
        finally:
            gateway.stop()
            _kill_leftovers(gateway.data_dir)

    def median(xs: list[float]) -> str:
        return f"{statistics.median(xs):.0f} ms" if xs else "n/a"

    print()
    print(f"cell -> sidebar selection, new_cluster():  median {median(new_ms)} of {len(new_ms)}")
    print(f"   (cell finished, cluster running:        median {median(new_done_ms)})")
    print(
        f"cell -> sidebar selection, connect(name):  median {median(connect_ms)} of {len(connect_ms)}"
    )


if __name__ == "__main__":
    main()
