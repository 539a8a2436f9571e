"""The notebook's cluster: the sidebar selects the cluster the active notebook's kernel made or
connected to, and follows the active notebook (real JupyterLab, headless Chromium, real
gateway, real kernels).

The kernel's client announces the cluster on the ``dask-gateway`` comm; the lab extension
(src/kernelwatch.ts) selects it. Assertions wait for the selection; none measures time
(bench/notebook_selection.py does).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from jupyterlab_harness import (
    JupyterLab,
    LabBrowser,
    gateway_env,
    slow_heartbeat_gateway,
    stop_user_clusters,
    user_client,
    write_code_notebook,
)
from support.paths import ROOT

SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
USER = "notebook-user"
SIDEBAR = "#dask-gateway-sidebar"

#: A cell that makes a cluster the way users do (kept running: shut down by the fixture).
MAKE_CLUSTER = (
    "from dask_gateway import Gateway\n"
    "gateway = Gateway()\n"
    "cluster = gateway.new_cluster(shutdown_on_close=False)\n"
    "cluster"
)


@pytest.fixture
def gateway(tmp_path):
    with slow_heartbeat_gateway(tmp_path / "gateway") as gw:
        yield gw


@pytest.fixture
def root(tmp_path) -> Path:
    root = tmp_path / "notebooks"
    root.mkdir()
    for name in ("first.ipynb", "second.ipynb"):
        write_code_notebook(root / name, MAKE_CLUSTER)
    return root


@pytest.fixture
def lab(gateway, root, tmp_path):
    with JupyterLab(root, tmp_path / "lab", env=gateway_env(gateway.address, USER)) as server:
        yield server
    stop_user_clusters(gateway, USER)


# -- driving JupyterLab

WAIT_KERNEL = """(path) => {
    const w = window.jupyterapp.shell.currentWidget;
    const k = w && w.context && w.context.path === path && w.sessionContext.session
              && w.sessionContext.session.kernel;
    return !!k && k.connectionStatus === 'connected' && k.status === 'idle';
}"""

ACTIVATE = """(path) => {
    for (const w of window.jupyterapp.shell.widgets('main')) {
        if (w.context && w.context.path === path) {
            window.jupyterapp.shell.activateById(w.id);
            return true;
        }
    }
    return false;
}"""

RUN_NEW_CELL = """async (code) => {
    const panel = window.jupyterapp.shell.currentWidget;
    const nb = panel.content;
    nb.model.sharedModel.insertCell(nb.model.cells.length, {cell_type: 'code', source: code});
    nb.activeCellIndex = nb.widgets.length - 1;
    await window.jupyterapp.commands.execute('notebook:run-cell');
}"""

CELLS_DONE = """() => {
    const w = window.jupyterapp.shell.currentWidget;
    const cells = w.content.widgets.filter(c => c.model.type === 'code');
    return w.sessionContext.session.kernel.status === 'idle'
        && cells.every(c => c.model.executionCount !== null);
}"""


def open_second(browser: LabBrowser, path: str) -> None:
    """Open another notebook in the same page and wait for its kernel."""
    browser.page.evaluate(
        "(p) => window.jupyterapp.commands.execute('docmanager:open', {path: p}).then(() => true)",
        path,
    )
    browser.page.wait_for_function(WAIT_KERNEL, arg=path, timeout=90_000)


def activate(browser: LabBrowser, path: str) -> None:
    assert browser.page.evaluate(ACTIVATE, path)
    browser.page.wait_for_function(
        "(p) => window.jupyterapp.shell.currentWidget.context.path === p", arg=path
    )


def run_cells(browser: LabBrowser) -> None:
    """Run the current notebook's cells; the kernel's answers must hold no error."""
    errors = browser.run_all_cells()
    assert errors == [], errors


def kernel_cluster(browser: LabBrowser) -> str:
    return browser.run_in_kernel("print(cluster.name)").strip()


def selected_rows(page):
    return page.locator(f'{SIDEBAR} li.dgj-Cluster[aria-selected="true"]')


def expect_selected(page, name: str) -> None:
    from playwright.sync_api import expect

    rows = selected_rows(page)
    expect(rows).to_have_count(1, timeout=60_000)
    expect(rows).to_have_attribute("data-cluster-name", name, timeout=60_000)


def toggle_sidebar(page) -> None:
    page.locator('.jp-SideBar.jp-mod-left li.lm-TabBar-tab[data-id="dask-gateway-sidebar"]').click()


def open_sidebar(page) -> None:
    from playwright.sync_api import expect

    toggle_sidebar(page)
    expect(page.locator(SIDEBAR)).to_be_visible()


@pytest.mark.timeout(600)
def test_sidebar_follows_the_notebooks_cluster(gateway, lab, root):
    from playwright.sync_api import expect

    # A cluster made elsewhere (another process), for a cell to connect to.
    gw = user_client(gateway, USER)
    try:
        elsewhere = gw.new_cluster(shutdown_on_close=False)
        other = elsewhere.name
        elsewhere.close()
    finally:
        gw.close()

    with LabBrowser(lab, SCREENSHOTS, viewport=(1400, 1000)) as browser:
        page = browser.page
        browser.open_notebook("first.ipynb")
        open_sidebar(page)
        # Listed, but nothing selected yet: the selection below is the notebook's doing.
        expect(page.locator(f"{SIDEBAR} li.dgj-Cluster")).to_have_count(1, timeout=30_000)
        expect(selected_rows(page)).to_have_count(0)

        # -- a cell makes a cluster (the panel closed meanwhile): the sidebar selects it
        toggle_sidebar(page)
        expect(page.locator(SIDEBAR)).to_be_hidden()
        run_cells(browser)
        first = kernel_cluster(browser)
        assert first and first != other
        toggle_sidebar(page)
        expect(page.locator(SIDEBAR)).to_be_visible()
        expect_selected(page, first)
        browser.screenshot("notebook-cluster-first", page.locator(SIDEBAR))

        # -- a second notebook, another cluster: selected while that notebook is active
        open_second(browser, "second.ipynb")
        run_cells(browser)
        second = kernel_cluster(browser)
        assert second not in (first, other)
        expect_selected(page, second)

        # -- switching notebooks switches the selection, back and forth
        activate(browser, "first.ipynb")
        expect_selected(page, first)
        activate(browser, "second.ipynb")
        expect_selected(page, second)
        activate(browser, "first.ipynb")
        expect_selected(page, first)

        # -- a click elsewhere is the user's choice until the notebook says more
        page.locator(
            f'{SIDEBAR} li.dgj-Cluster[data-cluster-name="{other}"] .dgj-Cluster-name'
        ).click()
        expect_selected(page, other)

        # -- a cell connecting to an existing cluster selects it too
        activate(browser, "second.ipynb")
        expect_selected(page, second)
        page.evaluate(RUN_NEW_CELL, f"again = gateway.connect({other!r})\nagain")
        page.wait_for_function(CELLS_DONE, timeout=120_000)
        expect_selected(page, other)
        activate(browser, "first.ipynb")
        expect_selected(page, first)
        activate(browser, "second.ipynb")
        expect_selected(page, other)  # the second notebook's latest cluster now
        browser.screenshot("notebook-cluster-connected", page.locator(SIDEBAR))
        assert [e for e in browser.console_errors if "comm" in e.lower()] == []


@pytest.mark.timeout(300)
@pytest.mark.parametrize("server_extension", [False, True], ids=["public-lab", "no-lab-plugin"])
def test_cell_stays_clean_without_our_lab_extension(gateway, root, tmp_path, server_extension):
    """Without our lab extension nobody listens: the cell making a cluster still shows just
    its own output and no error. In the public JupyterLab (neither of our extensions) the
    kernel has no flag and sends nothing; with only our server extension (the lab plugin
    disabled), JupyterLab rejects the comm by closing it and the kernel keeps nothing."""
    scratch = tmp_path / "lab"
    labconfig = scratch / "config" / "labconfig"
    labconfig.mkdir(parents=True)
    (labconfig / "page_config.json").write_text(
        json.dumps({"disabledExtensions": {"dask-gateway-jupyterlab": True}})
    )
    extra = (
        []
        if server_extension
        else ['--ServerApp.jpserver_extensions={"dask_gateway_jupyter": False}']
    )
    server = JupyterLab(root, scratch, env=gateway_env(gateway.address, USER), extra_args=extra)
    server.start()
    try:
        with LabBrowser(server, SCREENSHOTS) as browser:
            browser.open_notebook("first.ipynb")
            run_cells(browser)
            assert browser.page.locator(SIDEBAR).count() == 0
            outputs = browser.page.evaluate(
                """() => window.jupyterapp.shell.currentWidget.content.widgets[0]
                        .model.outputs.toJSON().map(o => o.output_type)"""
            )
            # The start-up progress, then the cluster: nothing printed, nothing failed.
            assert outputs == ["display_data", "execute_result"], outputs
            state = browser.run_in_kernel(
                "import os, comm\n"
                "print(os.environ.get('DASK_GATEWAY_JUPYTERLAB_COMM'),"
                " len([c for c in comm.get_comm_manager().comms.values()"
                "      if c.target_name == 'dask-gateway']))"
            )
            assert state.split() == (["1", "0"] if server_extension else ["None", "0"])
    finally:
        server.stop()
        stop_user_clusters(gateway, USER)
