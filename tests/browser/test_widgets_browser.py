"""The widgets in a real JupyterLab, seen and clicked through headless Chromium.

JupyterLab runs with a kernel in this venv and the dask config env pointing at the test
gateway; ``notebooks/widgets.ipynb`` is executed in the page. Screenshots are written to
``test-artifacts/screenshots/`` (kept by CI as artifacts).
"""

from __future__ import annotations

import functools
import shutil

import pytest
from jupyterlab_harness import LabBrowser, gateway_lab
from support import waiting
from support.paths import ROOT

NOTEBOOK = ROOT / "notebooks" / "widgets.ipynb"
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"


wait_for = functools.partial(waiting.wait_for, timeout=90, interval=0.2)


@pytest.fixture
def lab(gateway, tmp_path):
    server = gateway_lab(tmp_path, gateway.address)
    shutil.copy(NOTEBOOK, server.root_dir / NOTEBOOK.name)  # autosave must not touch the repo copy
    server.start()
    yield server
    server.stop()


@pytest.mark.timeout(420)
def test_widgets_render_and_scale_in_jupyterlab(gateway, lab):
    from playwright.sync_api import expect

    gw = gateway.new_gateway()
    before = {c.name for c in gw.list_clusters()}
    watcher = None
    try:
        with LabBrowser(lab, SCREENSHOTS) as browser:
            page = browser.page
            browser.open_notebook(NOTEBOOK.name)
            errors = browser.run_all_cells()
            assert errors == [], f"notebook cells failed: {errors}\n{lab.log()}"

            (new,) = {c.name for c in gw.list_clusters()} - before
            watcher = gw.connect(new)  # sees the real workers through the scheduler

            # The options form: one row per field, with the server's labels and bounds.
            form = page.locator(".dgw-options")
            expect(form).to_be_visible()
            for label in ("Worker Cores", "Worker Memory (GiB)", "Environment"):
                expect(form).to_contain_text(label)
            expect(form).to_contain_text("1 – 4")
            expect(form.locator(".dgw-option-environment select")).to_have_value("basic")

            # The cluster widget: scaling panels, live worker table, name and dashboard.
            cluster = page.locator(".dgw-cluster")
            expect(cluster.locator(".dgw-manual-scaling")).to_contain_text("Manual scaling")
            expect(cluster.locator(".dgw-adaptive-scaling")).to_contain_text("Adaptive scaling")
            expect(cluster.locator(".dgw-cluster-name")).to_have_text(new)
            expect(cluster.locator(".dgw-worker-count")).to_have_text("0")
            expect(cluster.locator(".dgw-adapt-maximum input")).to_have_value("4")
            expect(cluster).to_contain_text("Dashboard:")

            # The gateway widget lists the new cluster.
            gateway_view = page.locator(".dgw-gateway")
            expect(gateway_view.locator(".dgw-cluster-row", has_text=new)).to_contain_text(
                "RUNNING", timeout=30_000
            )
            browser.screenshot("notebook-after-run")
            browser.screenshot("options-form", form)

            # An invalid value in the form: the ValueError's message, next to the field.
            cores = form.locator(".dgw-option-worker_cores input")
            cores.fill("10")
            cores.press("Enter")
            expect(form.locator(".dgw-option-error").first).to_have_text(
                "worker_cores must be <= 4, got 10"
            )
            browser.screenshot("options-form-invalid", form)

            # Scale in the page; the real cluster follows, and so does the live table.
            workers = cluster.locator(".dgw-scale-workers input")
            workers.fill("2")
            workers.press("Enter")
            cluster.locator(".dgw-scale-button").click()
            expect(cluster.locator(".dgw-message")).to_have_text("Scaling to 2 workers")
            wait_for(lambda: len(watcher.scheduler_info["workers"]) == 2, what="2 real workers")
            expect(cluster.locator(".dgw-worker-count")).to_have_text("2", timeout=30_000)
            expect(cluster.locator(".dgw-worker-row")).to_have_count(2)
            expect(gateway_view.locator(".dgw-cluster-row", has_text=new)).to_contain_text(
                "2", timeout=30_000
            )
            browser.screenshot("cluster-scaled-to-2", cluster)

            # Adaptive scaling over the gateway's limit: its warning is shown in the page.
            cluster.locator(".dgw-adapt-minimum input").fill("1")
            cluster.locator(".dgw-adapt-maximum input").fill("50")
            cluster.locator(".dgw-adapt-maximum input").press("Enter")
            cluster.locator(".dgw-adapt-button").click()
            expect(cluster.locator(".dgw-message")).to_contain_text(
                "would exceed resource limit of 10 workers"
            )
            expect(cluster.locator(".dgw-adapt-state")).to_contain_text(
                "on: 1 to 50 workers (limited by the gateway"
            )
            browser.screenshot("cluster-adaptive-warning", cluster)

            # The start-up progress stayed in the cell that started the cluster, ending with
            # the running phase.
            expect(page.locator(".dgw-start-progress li").last).to_contain_text("running")
            # The Events and Logs sections: closed at first, read from the gateway when opened.
            expect(cluster.locator(".dgw-event-row")).to_have_count(0)
            cluster.locator(".dgw-events-section").get_by_text("Events", exact=True).click()
            expect(cluster.locator(".dgw-event-row[data-kind='submitted']")).to_have_count(1)
            expect(cluster.locator(".dgw-event-row[data-kind='running']")).to_have_count(1)
            expect(cluster.locator(".dgw-event-row[data-kind='scaled']").first).to_contain_text(
                "Scaled to 2 workers"
            )
            browser.screenshot("cluster-events", cluster)
            cluster.locator(".dgw-logs-section").get_by_text("Logs", exact=True).click()
            expect(cluster.locator(".dgw-logs-component select")).to_have_value("scheduler")
            expect(cluster.locator(".dgw-log-text")).to_contain_text("distributed.scheduler")
            browser.screenshot("cluster-logs", cluster)
            browser.screenshot("gateway-widget", gateway_view)
            assert not [e for e in browser.console_errors if "dgw" in e or "widget" in e], (
                browser.console_errors
            )
    finally:
        for name in {c.name for c in gw.list_clusters()} - before:
            gw.stop_cluster(name)
        if watcher is not None:
            watcher.close()
        gw.close()
