"""The sidebar's failure reasons, dimmed ended clusters and Logs tab, in a real JupyterLab
driven through headless Chromium, against a real gateway and real schedulers.

Screenshots go to ``test-artifacts/screenshots/`` (kept by CI as artifacts).
"""

from __future__ import annotations

import logging
import re

import pytest
from jupyterlab_harness import LabBrowser, slow_heartbeat_gateway, user_lab_fixtures
from support.paths import CONFIGS, ROOT

SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
USER = "sidebar-logs-user"
SIDEBAR = "#dask-gateway-sidebar"
NO_DISTRIBUTED = "No module named 'distributed'"
SIDEBAR_TAB = '.jp-SideBar.jp-mod-left li.lm-TabBar-tab[data-id="dask-gateway-sidebar"]'


@pytest.fixture
def gate(tmp_path):
    """Schedulers of the "gated" environment start once this file exists."""
    return tmp_path / "gate"


@pytest.fixture
def gateway(tmp_path, gate, monkeypatch):
    """A gateway whose "no-distributed" environment starts a scheduler that cannot import
    distributed, and whose "gated" one a scheduler that waits for ``gate`` (and a patient
    heartbeat timeout: the machine may be busy)."""
    monkeypatch.setenv("DGJ_SCHEDULER_GATE", str(gate))
    with slow_heartbeat_gateway(
        tmp_path / "gateway", config=CONFIGS / "broken_env_gateway_config.py"
    ) as gw:
        yield gw


#: The user's gateway client in the test (as their notebook would use it), and their lab.
client_gateway, lab = user_lab_fixtures(USER)


def cluster_row(page, name: str):
    return page.locator(f'{SIDEBAR} li.dgj-Cluster[data-cluster-name="{name}"]')


def open_sidebar(browser: LabBrowser):
    browser.goto("/lab", reset="")
    browser.page.locator(SIDEBAR_TAB).click()
    return browser.page.locator(SIDEBAR)


@pytest.mark.timeout(600)
def test_failed_cluster_shows_its_reason_until_dismissed(gateway, gate, client_gateway, lab):
    from playwright.sync_api import expect

    starting = client_gateway.submit(environment="gated")
    name = client_gateway.submit(environment="no-distributed")
    with LabBrowser(lab, SCREENSHOTS, viewport=(1400, 1000)) as browser:
        page = browser.page
        sidebar = open_sidebar(browser)

        # A starting cluster (its scheduler held back) says its phase: its latest event.
        held = cluster_row(page, starting)
        expect(held.locator(".dgj-Cluster-status")).to_have_text("PENDING", timeout=60_000)
        expect(held.locator(".dgj-Cluster-note")).not_to_be_empty(timeout=30_000)
        phase = held.locator(".dgj-Cluster-note").inner_text()
        events = lab.api("GET", f"/dask-gateway/clusters/{starting}/events")["events"]
        assert phase in [e["message"] for e in events], (phase, events)
        browser.screenshot("sidebar-starting-phase", sidebar)
        gate.touch()
        expect(held.locator(".dgj-Cluster-status")).to_have_text("RUNNING", timeout=120_000)
        expect(held.locator(".dgj-Cluster-note")).to_be_empty()
        # Stopped from Python, it stays listed, dimmed, until dismissed (here by the command).
        client_gateway.stop_cluster(starting)
        expect(held.locator(".dgj-Cluster-status")).to_have_text("STOPPED", timeout=60_000)
        expect(held.locator(".dgj-Cluster-note")).to_contain_text("Stopped")
        expect(held).to_have_class(re.compile(r"\bdgj-mod-ended\b"))
        browser.execute_command("dask-gateway:dismiss", {"name": starting})
        expect(held).to_have_count(0)

        row = cluster_row(page, name)
        expect(row.locator(".dgj-Cluster-status")).to_have_text("FAILED", timeout=120_000)
        # The reason, in the row, from the gateway's failure event.
        expect(row.locator(".dgj-Cluster-note")).to_contain_text(NO_DISTRIBUTED, timeout=30_000)
        # Dimmed, with nothing left to do but look at its logs or dismiss it.
        expect(row).to_have_class(re.compile(r"\bdgj-mod-ended\b"))
        assert float(row.evaluate("n => getComputedStyle(n).opacity")) < 1
        for button in ("dgj-DashboardButton", "dgj-ShutdownButton", "dgj-ScaleButton"):
            expect(row.locator(f"button.{button}")).to_be_hidden()
        expect(row.locator("button.dgj-LogsButton")).to_be_visible()
        expect(row.locator("button.dgj-DismissButton")).to_be_visible()
        browser.screenshot("sidebar-failed-reason", sidebar)

        # Its logs, from the row's context menu: the ImportError, and that the log is complete.
        row.locator(".dgj-Cluster-name").click(button="right")
        page.locator(".lm-Menu .lm-Menu-item", has_text="Show Cluster Logs").click()
        logs = page.locator(f"#dask-gateway-logs-{name}")
        expect(logs.locator(".dgj-Logs-text")).to_contain_text(NO_DISTRIBUTED, timeout=30_000)
        expect(logs.locator(".dgj-Logs-status")).to_have_attribute("data-state", "ended")
        expect(logs.locator(".dgj-Logs-status")).to_contain_text("The cluster has ended")
        browser.screenshot("logs-tab-failed")

        # Dismissed, it leaves the list, and stays gone after a reload (localStorage).
        row.locator("button.dgj-DismissButton").click()
        expect(row).to_have_count(0)
        expect(sidebar.locator(".dgj-Empty")).to_be_visible()
        sidebar = open_sidebar(browser)
        expect(sidebar.locator(".dgj-Empty")).to_have_text(
            "No clusters running. Create one with “New cluster”.", timeout=30_000
        )
        expect(cluster_row(page, name)).to_have_count(0)
        # The gateway still has it: only this browser's list forgot it.
        assert name in {c.name for c in client_gateway.list_clusters(status="FAILED")}

        ours = [e for e in browser.console_errors if "dask-gateway" in e]
        assert ours == [], ours


def log_on_scheduler(cluster, marker: str) -> None:
    """Make the scheduler write ``marker`` to its log, as the scheduler's own code would."""
    client = cluster.get_client(set_as_default=False)
    try:
        client.run_on_scheduler(lambda: logging.getLogger("distributed.scheduler").warning(marker))
    finally:
        client.close()


@pytest.mark.timeout(600)
def test_logs_tab_follows_new_lines(gateway, client_gateway, lab):
    from playwright.sync_api import expect

    cluster = client_gateway.new_cluster()
    name = cluster.name
    try:
        log_on_scheduler(cluster, "MARKER-1")
        with LabBrowser(lab, SCREENSHOTS, viewport=(1400, 1000)) as browser:
            page = browser.page
            open_sidebar(browser)
            row = cluster_row(page, name)
            expect(row.locator(".dgj-Cluster-status")).to_have_text("RUNNING", timeout=120_000)
            row.locator("button.dgj-LogsButton").click()
            tab = page.locator(".lm-DockPanel-tabBar li.lm-TabBar-tab", has_text=f"Logs {name[:8]}")
            expect(tab).to_be_visible(timeout=30_000)
            logs = page.locator(f"#dask-gateway-logs-{name}")
            text = logs.locator(".dgj-Logs-text")
            expect(text).to_contain_text("MARKER-1", timeout=30_000)
            expect(logs.locator(".dgj-Logs-status")).to_have_attribute(
                "data-state", "following", timeout=30_000
            )
            expect(logs.locator("select.dgj-Logs-component")).to_have_value("scheduler")
            assert "MARKER-2" not in text.inner_text()
            # The same page and the same text node from now on: nothing reloads.
            page.evaluate("() => { window.__dgjNoReload = true; }")
            text.evaluate("n => { n.dataset.marker = 'same-node'; }")

            log_on_scheduler(cluster, "MARKER-2")
            expect(text).to_contain_text("MARKER-2", timeout=60_000)
            expect(text).to_have_attribute("data-marker", "same-node")
            assert page.evaluate("() => window.__dgjNoReload === true")
            assert text.inner_text().index("MARKER-1") < text.inner_text().index("MARKER-2")
            browser.screenshot("logs-tab-following")

            # A worker joins: the picker lists its log when opened, and shows it when picked.
            cluster.scale(1)
            expect(row.locator('[data-stat="workers"]')).to_have_text("1", timeout=120_000)
            picker = logs.locator("select.dgj-Logs-component")
            worker = picker.locator('option[value^="worker:"]')
            text.focus()
            picker.focus()  # the list is read afresh as the picker is about to open
            expect(worker).to_have_count(1, timeout=30_000)
            assert worker.inner_text().startswith("Worker ")
            picker.select_option(worker.get_attribute("value"))
            expect(text).to_contain_text("Start worker", timeout=30_000)
            expect(text).not_to_contain_text("MARKER-1")
            picker.select_option("scheduler")
            expect(text).to_contain_text("MARKER-2", timeout=30_000)

            # The cluster ends: the tab says its log is complete, and stops asking.
            cluster.shutdown()
            expect(logs.locator(".dgj-Logs-status")).to_have_attribute(
                "data-state", "ended", timeout=60_000
            )
            expect(text).to_contain_text("MARKER-2")
            browser.screenshot("logs-tab-ended")

            ours = [e for e in browser.console_errors if "dask-gateway" in e]
            assert ours == [], ours
    finally:
        cluster.close()
