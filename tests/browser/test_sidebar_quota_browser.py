"""The sidebar's Usage section in a real JupyterLab, driven through headless Chromium, against
a real gateway whose use comes from real clusters.

The user runs a cluster with workers, which stops; the admin then sets a core-hours quota of
that use / 0.85 and restarts the gateway (the use is in its database): the section shows the
use this month, an amber bar at 85 % with the gateway's message, and an ok bar for the
memory quota. A cluster created from the panel then uses the quota up; the panel's Refresh
turns the bar red. Screenshots go to ``test-artifacts/screenshots/``.
"""

from __future__ import annotations

import math
import re
import warnings

import pytest
from jupyterlab_harness import (
    LabBrowser,
    gateway_lab,
    slow_heartbeat_gateway,
    stop_user_clusters,
    user_client,
)
from support import waiting
from support.gateway_process import GatewayProcess
from support.paths import ROOT

SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
USER = "sidebar-quota-user"
SIDEBAR = "#dask-gateway-sidebar"
SIDEBAR_TAB = '.jp-SideBar.jp-mod-left li.lm-TabBar-tab[data-id="dask-gateway-sidebar"]'
SHARE = 0.85


@pytest.fixture
def gateway(tmp_path):
    with slow_heartbeat_gateway(tmp_path / "gateway", ["--UsageQuotas.period=month"]) as gw:
        yield gw


def run_and_stop_a_cluster(gateway: GatewayProcess) -> dict:
    """Use some core-hours: a cluster with two 2-core workers, until its use shows, then
    stopped; the gateway's quota answer once nothing runs any more (the use is fixed)."""
    from dask_gateway import GatewayWarning

    with user_client(gateway, USER) as gw:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", GatewayWarning)
            cluster = gw.new_cluster(worker_cores=2, worker_memory=0.5)
        name = cluster.name
        try:
            cluster.scale(2)
            client = cluster.get_client(set_as_default=False)
            try:
                client.wait_for_workers(2, timeout=120)
            finally:
                client.close()
            waiting.wait_for(
                lambda: gw.quota()["use"]["core_hours"] >= 0.005, timeout=120, what="some use"
            )
        finally:
            cluster.shutdown()
        waiting.wait_for(
            lambda: gw.get_cluster(name).status.name == "STOPPED", timeout=60, what="stopped"
        )
        return gw.quota()


def open_sidebar(browser: LabBrowser):
    browser.goto("/lab", reset="")
    browser.page.locator(SIDEBAR_TAB).click()
    return browser.page.locator(SIDEBAR)


def colour_of(page, css_value: str) -> str:
    """The computed colour a CSS value (e.g. ``var(--jp-warn-color1)``) gives in the page."""
    return page.evaluate(
        """value => {
            const probe = document.createElement('div');
            probe.style.background = value;
            document.body.append(probe);
            const colour = getComputedStyle(probe).backgroundColor;
            probe.remove();
            return colour;
        }""",
        css_value,
    )


@pytest.mark.timeout(900)
def test_usage_section_warns_then_turns_red(gateway, tmp_path):
    from playwright.sync_api import expect

    # -- the use, then the admin's quota: 85 % of it is used, the memory quota hardly
    before = run_and_stop_a_cluster(gateway)
    assert before["quotas"] == [] and before["state"] == "ok"
    used = before["use"]["core_hours"]
    gateway.stop()
    gateway.extra_args += [
        f"--UsageQuotas.core_hours={used / SHARE!r}",
        "--UsageQuotas.memory_gib_hours=1000",
    ]
    gateway.start()
    with user_client(gateway, USER) as gw:
        quota = gw.quota()
    assert quota["state"] == "warning", quota
    assert quota["use"] == before["use"]
    core = next(q for q in quota["quotas"] if q["kind"] == "core_hours")
    assert core["share"] == pytest.approx(SHARE, abs=0.01)

    lab = gateway_lab(tmp_path, gateway.address, USER)
    try:
        with lab, LabBrowser(lab, SCREENSHOTS, viewport=(1400, 1000)) as browser:
            page = browser.page
            sidebar = open_sidebar(browser)
            usage = sidebar.locator("section.dgj-Usage")
            expect(usage).to_be_visible(timeout=30_000)
            expect(usage).to_have_attribute("data-state", "warning")
            expect(usage.locator(".dgj-Usage-title")).to_have_text("Usage")
            headline = usage.locator(".dgj-Usage-headline").inner_text()
            assert re.fullmatch(r"This month: [\d.]+ core-hours?, [\d.]+ GiB-hours?", headline), (
                headline
            )

            # The core-hours bar: amber, 85 % filled, the gateway's figures; the memory one: ok.
            bar = usage.locator('li.dgj-Quota[data-kind="core_hours"]')
            expect(bar).to_have_attribute("data-level", "warning")
            expect(bar.locator(".dgj-Quota-value")).to_contain_text(
                f"({math.floor(core['share'] * 100)}\u00a0%)"
            )
            fill = bar.locator(".dgj-Quota-fill")
            track = bar.locator(".dgj-Quota-bar")
            ratio = fill.bounding_box()["width"] / track.bounding_box()["width"]
            assert ratio == pytest.approx(core["share"], abs=0.02)
            amber = colour_of(page, "var(--jp-warn-color1)")
            assert fill.evaluate("n => getComputedStyle(n).backgroundColor") == amber
            memory = usage.locator('li.dgj-Quota[data-kind="memory_gib_hours"]')
            expect(memory).to_have_attribute("data-level", "ok")
            assert memory.locator(".dgj-Quota-fill").evaluate(
                "n => getComputedStyle(n).backgroundColor"
            ) == colour_of(page, "var(--jp-brand-color1)")
            # The gateway's sentence, as it wrote it.
            message = usage.locator(".dgj-Usage-message")
            expect(message).to_have_text(quota["message"])
            browser.screenshot("sidebar-usage-warning", sidebar)

            # -- a cluster created from the panel uses the rest up; Refresh turns the bar red
            sidebar.locator("button.dgj-NewButton").click()
            form = sidebar.locator("form.dgj-Form")
            expect(form).to_be_visible(timeout=30_000)
            form.locator('[name="worker_cores"]').fill("1")
            form.locator('button[type="submit"]').click()
            row = sidebar.locator("li.dgj-Cluster:not(.dgj-mod-ended)")
            expect(row.locator(".dgj-Cluster-status")).to_have_text("RUNNING", timeout=120_000)
            with user_client(gateway, USER) as gw:
                used_up = waiting.wait_for(
                    lambda: (q := gw.quota())["state"] == "exhausted" and q,
                    timeout=300,
                    what="the quota used up",
                )
            sidebar.locator("button.dgj-RefreshButton").click()
            expect(usage).to_have_attribute("data-state", "exhausted", timeout=30_000)
            expect(bar).to_have_attribute("data-level", "exhausted")
            assert fill.evaluate("n => getComputedStyle(n).backgroundColor") == colour_of(
                page, "var(--jp-error-color1)"
            )
            assert fill.bounding_box()["width"] == pytest.approx(
                track.bounding_box()["width"], abs=1
            )
            expect(message).to_contain_text("core-hours")
            assert used_up["message"] and "core-hours" in used_up["message"]
            browser.screenshot("sidebar-usage-exhausted", sidebar)

            ours = [e for e in browser.console_errors if "dask-gateway" in e]
            assert ours == [], ours
    finally:
        stop_user_clusters(gateway, USER)
