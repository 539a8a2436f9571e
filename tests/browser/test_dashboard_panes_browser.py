"""Dashboard plots as JupyterLab panes, in a real JupyterLab driven through headless
Chromium, against a real gateway, a real scheduler and a real worker.

The pane's plot comes through the server extension's relay (sandboxed, under a grant); a
computation run from Python on the same cluster shows up in the pane's bokeh document; the
panes come back where they were after a reload; a stopped cluster's pane says so.
Screenshots go to ``test-artifacts/screenshots/``.
"""

from __future__ import annotations

import re
import time

import pytest
from jupyterlab_harness import LabBrowser, slow_heartbeat_gateway, user_lab_fixtures
from support.paths import ROOT

SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
USER = "panes-user"
SIDEBAR = "#dask-gateway-sidebar"
SIDEBAR_TAB = '.jp-SideBar.jp-mod-left li.lm-TabBar-tab[data-id="dask-gateway-sidebar"]'
TASK_STREAM = "individual-task-stream"

#: The number of task rectangles in a task-stream page's bokeh document (-1: no document).
TASK_RECTANGLES = """() => {
    const doc = window.Bokeh && window.Bokeh.documents && window.Bokeh.documents[0];
    if (!doc) return -1;
    let most = 0;
    for (const model of doc.all_models) {
        const data = model.data;
        if (!data || typeof data !== 'object') continue;
        const column = data instanceof Map ? data.get('duration') : data['duration'];
        if (column && column.length > most) most = column.length;
    }
    return most;
}"""


#: Whether a canvas of the page, shadow roots included (bokeh draws in them), has a pixel.
CANVAS_DRAWN = """() => {
    const canvases = [];
    const visit = root => {
        for (const el of root.querySelectorAll('*')) {
            if (el.tagName === 'CANVAS') canvases.push(el);
            if (el.shadowRoot) visit(el.shadowRoot);
        }
    };
    visit(document);
    for (const c of canvases) {
        if (!c.width || !c.height) continue;
        const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        for (let i = 3; i < data.length; i += 4) if (data[i] !== 0) return true;
    }
    return false;
}"""


@pytest.fixture
def gateway(tmp_path):
    with slow_heartbeat_gateway(tmp_path / "gateway") as gw:
        yield gw


#: The user's gateway client in the test (as their notebook would use it), and their lab.
client_gateway, lab = user_lab_fixtures(USER)


def pane(page, name: str, plot: str):
    return page.locator(f"#dask-gateway-pane-{name}-{plot}")


def plot_frame(page, name: str, plot: str, timeout: float = 60):
    """The Playwright frame of a pane's plot, once it is loaded under a grant of the relay."""
    pattern = re.compile(rf"/dask-gateway/dashboard/{name}/~[^/]+/{plot}(\?|$)")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for frame in page.frames:
            if pattern.search(frame.url):
                return frame
        page.wait_for_timeout(250)
    raise AssertionError(f"no frame of {plot}: {[f.url for f in page.frames]}")


def wait_reloaded(browser: LabBrowser) -> None:
    page = browser.page
    page.reload()
    page.wait_for_function("() => !!window.jupyterapp", timeout=60_000)
    page.evaluate("() => window.jupyterapp.started.then(() => window.jupyterapp.restored)")


@pytest.mark.timeout(600)
def test_task_stream_pane_draws_restores_and_says_stopped(client_gateway, lab):
    from playwright.sync_api import expect

    cluster = client_gateway.new_cluster(worker_cores=1, worker_memory=0.5)
    name = cluster.name
    cluster.scale(1)
    client = cluster.get_client()
    try:
        client.wait_for_workers(1, timeout=120)
        with LabBrowser(lab, SCREENSHOTS, viewport=(1400, 1000)) as browser:
            page = browser.page
            browser.goto("/lab", reset="")
            page.locator(SIDEBAR_TAB).click()
            sidebar = page.locator(SIDEBAR)
            row = sidebar.locator(f'li.dgj-Cluster[data-cluster-name="{name}"]')
            expect(row.locator(".dgj-Cluster-status")).to_have_text("RUNNING", timeout=60_000)

            # -- selecting the row lists its scheduler's plots (individual-plots.json, relayed)
            row.click()
            plots = sidebar.locator(".dgj-Plots")
            expect(plots).to_be_visible()
            expect(plots).to_have_attribute("data-cluster", name)
            button = plots.locator(f'button.dgj-PlotButton[data-plot="{TASK_STREAM}"]')
            expect(button).to_have_text("Task Stream", timeout=60_000)
            expect(plots.locator('button[data-plot="individual-progress"]')).to_be_visible()
            browser.screenshot("panes-plot-list", sidebar)

            # -- the task-stream pane: the relay's sandboxed page, under a grant
            button.click()
            task_pane = pane(page, name, TASK_STREAM)
            expect(task_pane).to_be_visible(timeout=30_000)
            iframe = task_pane.locator("iframe")
            expect(iframe).to_have_attribute(
                "src", re.compile(rf"/dask-gateway/dashboard/{name}/{TASK_STREAM}$")
            )
            sandbox = iframe.get_attribute("sandbox") or ""
            assert "allow-scripts" in sandbox and "allow-same-origin" not in sandbox
            frame = plot_frame(page, name, TASK_STREAM)
            frame.wait_for_function(f"() => ({TASK_RECTANGLES})() >= 0", timeout=60_000)
            assert frame.evaluate("() => window.origin") == "null"  # sandboxed by the relay
            before = frame.evaluate(TASK_RECTANGLES)

            # -- a computation on the cluster, from Python: the pane draws its tasks
            # (functions the worker can import: this module is not on its path)
            futures = client.map(time.sleep, [0.05] * 40, pure=False)
            assert client.gather(futures) == [None] * 40
            frame.wait_for_function(f"() => ({TASK_RECTANGLES})() > {before}", timeout=60_000)
            # ...and its canvas (bokeh's, inside shadow roots) has pixels drawn.
            frame.wait_for_function(CANVAS_DRAWN, timeout=30_000)
            browser.screenshot("panes-task-stream")

            # -- the default layout: task stream, progress and worker memory, arranged
            browser.execute_command("dask-gateway:open-default-layout", {"name": name})
            progress = pane(page, name, "individual-progress")
            memory = pane(page, name, "individual-workers-memory")
            expect(progress).to_be_visible(timeout=30_000)
            expect(memory).to_be_visible(timeout=30_000)
            expect(page.locator(f'[id="dask-gateway-pane-{name}-{TASK_STREAM}"]')).to_have_count(
                1
            )  # already open: shown, not opened twice
            task_box = task_pane.bounding_box()
            progress_box = progress.bounding_box()
            memory_box = memory.bounding_box()
            assert task_box and progress_box and memory_box
            assert progress_box["y"] >= task_box["y"] + task_box["height"] - 1  # below
            assert memory_box["x"] >= progress_box["x"] + progress_box["width"] - 1  # beside
            plot_frame(page, name, "individual-progress")
            browser.screenshot("panes-default-layout")

            # -- reload: the panes come back, where they were
            wait_reloaded(browser)
            for plot in (TASK_STREAM, "individual-progress", "individual-workers-memory"):
                expect(pane(page, name, plot)).to_be_visible(timeout=60_000)
            restored = pane(page, name, TASK_STREAM).bounding_box()
            restored_progress = pane(page, name, "individual-progress").bounding_box()
            assert restored and restored_progress
            assert restored_progress["y"] >= restored["y"] + restored["height"] - 1
            frame = plot_frame(page, name, TASK_STREAM)
            frame.wait_for_function(f"() => ({TASK_RECTANGLES})() >= 0", timeout=60_000)
            browser.screenshot("panes-restored")

            # -- the cluster stops: each pane says so, in place of the plot
            client.close()
            cluster.shutdown()
            for plot in (TASK_STREAM, "individual-progress", "individual-workers-memory"):
                message = pane(page, name, plot).locator(".dgj-PlotPane-message")
                expect(message).to_have_text(f"Cluster {name} stopped.", timeout=60_000)
                expect(pane(page, name, plot).locator("iframe")).to_have_count(0)
            browser.screenshot("panes-cluster-stopped")

            # -- reloaded after the end: the restored panes say it at once, no error page
            wait_reloaded(browser)
            message = pane(page, name, TASK_STREAM).locator(".dgj-PlotPane-message")
            expect(message).to_have_text(f"Cluster {name} stopped.", timeout=60_000)
            expect(pane(page, name, TASK_STREAM).locator("iframe")).to_have_count(0)
    finally:
        client.close()
        cluster.close()
