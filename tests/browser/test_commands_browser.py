"""The sidebar's commands, settings and the admin's all-users view in a real JupyterLab,
driven through headless Chromium, against one real gateway with two users and an admin.

* A user: the command palette lists every Dask Gateway command (not the admin's toggle);
  running "Scale Cluster…" from it (keyboard only) scales the cluster on the gateway; the
  keyboard shortcut hides and shows the sidebar; "Show Stopped Clusters" (a setting, stored
  in JupyterLab's settings) hides and shows a stopped cluster without a reload; the polling
  interval, set to an hour, brings nothing new until it is set to a second.
* The admin: the palette offers "Show Every User's Clusters"; the list then shows Alice's
  and Bob's clusters with their owners, and the admin scales Alice's and stops Bob's from
  the rows.

Screenshots go to ``test-artifacts/screenshots/``.
"""

from __future__ import annotations

import functools
import json
import re
import urllib.request

import pytest
from jupyterlab_harness import (
    JupyterLab,
    LabBrowser,
    gateway_lab,
    slow_heartbeat_gateway,
    stop_user_clusters,
    user_client,
)
from jupyterlab_harness import wait_gateway as patient_wait_gateway
from support.gateway_process import GatewayProcess
from support.paths import CONFIGS, ROOT

SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
ALICE, BOB, ADMIN = "dgjc-alice", "dgjc-bob", "dgjc-admin"
SIDEBAR = "#dask-gateway-sidebar"
SIDEBAR_TAB = '.jp-SideBar.jp-mod-left li.lm-TabBar-tab[data-id="dask-gateway-sidebar"]'
PLUGIN = "dask-gateway-jupyterlab:plugin"
#: JupyterLab's settings file of the plugin, as the harness names it.
SETTINGS_KEY = "dask-gateway-jupyterlab/plugin"

PALETTE_LABELS = [
    "New Cluster…",
    "Open Cluster Dashboard",
    "Show Cluster Logs",
    "Insert Cluster Connect Code",
    "Scale Cluster…",
    "Adapt Cluster…",
    "Stop Adaptive Scaling",
    "Shut Down Cluster…",
    "Dismiss Cluster",
    "Refresh Cluster List",
    "Show/Hide Dask Gateway Sidebar",
    "Show Stopped Clusters",
    "Set Cluster List Polling Interval…",
]
ALL_USERS_LABEL = "Show Every User’s Clusters"

CONFIG = """
load_subconfig(GATEWAY_CONFIG)
c.Authenticator.admin_users = {ADMIN}
"""


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    root = tmp_path_factory.mktemp("commands-gateway")
    config = root / "gateway_config.py"
    config.write_text(
        f"GATEWAY_CONFIG = {str(CONFIGS / 'gateway_config.py')!r}\n"
        f"ADMIN, ALICE, BOB = {ADMIN!r}, {ALICE!r}, {BOB!r}\n{CONFIG}"
    )
    with slow_heartbeat_gateway(root / "gateway", config=config) as gw:
        yield gw


def stop_all(gateway: GatewayProcess) -> None:
    for user in (ALICE, BOB):
        stop_user_clusters(gateway, user)


def lab_for(gateway: GatewayProcess, user: str, tmp_path, settings: dict | None = None):
    return gateway_lab(
        tmp_path, gateway.address, user, settings={SETTINGS_KEY: settings} if settings else None
    )


#: The harness's ``wait_gateway`` with this module's longer default timeout.
wait_gateway = functools.partial(patient_wait_gateway, timeout=120)


def cluster_row(page, name: str):
    return page.locator(f'{SIDEBAR} li.dgj-Cluster[data-cluster-name="{name}"]')


def is_list_request(url: str) -> bool:
    """The sidebar's poll of the user's own list (JupyterLab adds a cache-busting query)."""
    return re.search(r"/dask-gateway/clusters(\?|$)", url) is not None


def open_lab(browser: LabBrowser):
    """JupyterLab, once its Launcher has the focus (a palette opened before would lose it),
    with the sidebar shown."""
    page = browser.page
    browser.goto("/lab", reset="")
    page.wait_for_function(
        "() => document.activeElement && document.activeElement.closest('.jp-Launcher')",
        timeout=60_000,
    )
    page.locator(SIDEBAR_TAB).click()
    return page.locator(SIDEBAR)


def palette_labels(browser: LabBrowser, query: str) -> list[str]:
    """The palette's items under its "Dask Gateway" header for ``query`` (left open)."""
    from playwright.sync_api import expect

    page = browser.page
    browser.execute_command("apputils:activate-command-palette")
    palette = page.locator(".lm-CommandPalette")
    palette.locator(".lm-CommandPalette-input").fill(query)
    header = palette.locator(".lm-CommandPalette-header", has_text="Dask Gateway")
    expect(header).to_have_count(1)
    return palette.evaluate(
        """palette => {
            const labels = [];
            let inside = false;
            for (const node of palette.querySelectorAll(
                    '.lm-CommandPalette-header, .lm-CommandPalette-item')) {
                if (node.classList.contains('lm-CommandPalette-header')) {
                    inside = node.textContent.trim() === 'Dask Gateway';
                } else if (inside) {
                    labels.push(
                        node.querySelector('.lm-CommandPalette-itemLabel').textContent);
                }
            }
            return labels;
        }"""
    )


def sidebar_property(page, name: str):
    return page.evaluate(
        """name => {
            const w = [...window.jupyterapp.shell.widgets('left')]
                .find(w => w.id === 'dask-gateway-sidebar');
            return w[name];
        }""",
        name,
    )


def stored_settings(lab: JupyterLab) -> dict:
    """The plugin's user settings as the Jupyter server stored them (JSON5 in `raw`)."""
    req = urllib.request.Request(
        f"{lab.base_url}/lab/api/settings/{PLUGIN}",
        headers={"Authorization": f"token {lab.token}"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())["settings"]


@pytest.mark.timeout(900)
def test_palette_shortcut_and_live_settings(gateway, tmp_path):
    from playwright.sync_api import expect

    lab = lab_for(gateway, ALICE, tmp_path, settings={"pollInterval": 3600})
    alice = user_client(gateway, ALICE)
    try:
        name = alice.submit(worker_cores=1, worker_memory=0.25)
        wait_gateway(lambda: alice.get_cluster(name).status.name == "RUNNING", "running")
        with lab, LabBrowser(lab, SCREENSHOTS, viewport=(1400, 1000)) as browser:
            page = browser.page
            lists: list[str] = []
            page.on("request", lambda r: is_list_request(r.url) and lists.append(r.url))
            # The event stream cut on its way (as by a proxy that drops it): the sidebar
            # falls back to polling the list, at the interval of the setting tested here.
            page.route("**/dask-gateway/stream*", lambda route: route.abort())
            sidebar = open_lab(browser)
            row = cluster_row(page, name)
            expect(row.locator(".dgj-Cluster-status")).to_have_text("RUNNING", timeout=60_000)
            expect(sidebar).to_have_attribute("data-live", "down")
            assert sidebar_property(page, "pollInterval") == 3600

            # -- the palette lists every command under "Dask Gateway"; no admin toggle here
            labels = palette_labels(browser, "")
            for label in PALETTE_LABELS:
                assert label in labels, (label, labels)
            assert ALL_USERS_LABEL not in labels
            browser.screenshot("commands-palette")

            # -- "Scale Cluster…" from the palette, keyboard only: the only cluster is asked
            page.locator(".lm-CommandPalette-input").fill("Scale Cluster")
            page.keyboard.press("Enter")
            dialog = page.locator(".jp-Dialog")
            expect(dialog).to_contain_text("Scale Cluster")
            dialog.locator("input").fill("2")
            page.keyboard.press("Enter")
            wait_gateway(
                lambda: alice.get_cluster_resources(name).get("requested") == 2, "2 workers asked"
            )
            expect(row.locator('[data-stat="workers"]')).to_have_text(
                re.compile(r"^(\d of 2( \(\d starting\))?|2)$"), timeout=60_000
            )

            # -- the keyboard shortcut hides the sidebar, and shows it again
            sidebar.locator(".dgj-Title").click()
            page.keyboard.press("Control+Shift+Y")
            expect(sidebar).to_be_hidden()
            with page.expect_request(lambda r: is_list_request(r.url)):
                page.keyboard.press("Control+Shift+Y")  # shown again: it refreshes once
            expect(sidebar).to_be_visible()

            # -- the poll every hour: a cluster created now does not show up...
            before = len(lists)
            other = alice.submit(worker_cores=1, worker_memory=0.25)
            wait_gateway(lambda: alice.get_cluster(other).status.name == "RUNNING", "running")
            assert len(lists) == before, lists[before:]
            expect(cluster_row(page, other)).to_have_count(0)
            # ...until the interval is set to a second (stored in JupyterLab's settings)
            browser.execute_command("dask-gateway:set-poll-interval", {"seconds": 1})
            page.wait_for_function(
                """() => [...window.jupyterapp.shell.widgets('left')]
                    .find(w => w.id === 'dask-gateway-sidebar').pollInterval === 1"""
            )
            assert stored_settings(lab)["pollInterval"] == 1
            expect(cluster_row(page, other)).to_have_count(1, timeout=30_000)
            # A third cluster shows with no click, refresh nor setting change: by the poll.
            third = alice.submit(worker_cores=1, worker_memory=0.25)
            expect(cluster_row(page, third)).to_have_count(1, timeout=60_000)

            # -- "Show Stopped Clusters" off hides a stopped cluster at once, on shows it
            alice.stop_cluster(other)
            expect(cluster_row(page, other).locator(".dgj-Cluster-status")).to_have_text(
                "STOPPED", timeout=60_000
            )
            browser.screenshot("commands-stopped-shown", sidebar)
            browser.execute_command("dask-gateway:toggle-show-stopped")
            expect(cluster_row(page, other)).to_have_count(0)
            expect(row).to_have_count(1)
            assert stored_settings(lab)["showStopped"] is False
            browser.screenshot("commands-stopped-hidden", sidebar)
            browser.execute_command("dask-gateway:toggle-show-stopped")
            expect(cluster_row(page, other)).to_have_count(1)
            assert stored_settings(lab)["showStopped"] is True

            # -- a user running the admin's toggle is told no, in the panel
            browser.execute_command("dask-gateway:toggle-all-users")
            expect(sidebar.locator(".dgj-Message-text")).to_have_text(
                "Only admins of the Dask Gateway can list every user’s clusters."
            )
            expect(sidebar.locator(".dgj-AllUsersBanner")).to_be_hidden()

            ours = [e for e in browser.console_errors if "dask-gateway" in e]
            assert ours == [], ours
    finally:
        stop_all(gateway)
        alice.close()


@pytest.mark.timeout(900)
def test_admin_switches_to_every_users_clusters(gateway, tmp_path):
    from playwright.sync_api import expect

    lab = lab_for(gateway, ADMIN, tmp_path)
    alice, bob = user_client(gateway, ALICE), user_client(gateway, BOB)
    try:
        alices = alice.submit(worker_cores=1, worker_memory=0.25)
        bobs = bob.submit(worker_cores=1, worker_memory=0.25)
        with lab, LabBrowser(lab, SCREENSHOTS, viewport=(1400, 1000)) as browser:
            page = browser.page
            streams: list[str] = []
            page.on("request", lambda r: "/dask-gateway/stream" in r.url and streams.append(r.url))
            sidebar = open_lab(browser)
            expect(sidebar.locator(".dgj-Empty")).to_contain_text("No clusters running")
            expect(cluster_row(page, alices)).to_have_count(0)

            # -- the palette offers the admin's toggle (once the server said admin); running
            # it lists every user's
            page.wait_for_function(
                "() => window.jupyterapp.commands.isVisible('dask-gateway:toggle-all-users')"
            )
            assert ALL_USERS_LABEL in palette_labels(browser, "Every User")
            page.keyboard.press("Enter")
            banner = sidebar.locator(".dgj-AllUsersBanner")
            expect(banner).to_be_visible()
            for name, owner in ((alices, ALICE), (bobs, BOB)):
                row = cluster_row(page, name)
                expect(row.locator(".dgj-Cluster-status")).to_have_text("RUNNING", timeout=120_000)
                expect(row.locator(".dgj-Cluster-owner")).to_have_text(owner)
            browser.screenshot("commands-all-users", sidebar)

            # -- the admin scales Alice's cluster from its row
            row = cluster_row(page, alices)
            row.locator("input.dgj-ScaleInput").fill("1")
            row.locator("button.dgj-ScaleButton").click()
            wait_gateway(
                lambda: alice.get_cluster_resources(alices).get("requested") == 1, "alice's 1"
            )
            expect(row.locator('[data-stat="workers"]')).to_have_text(
                re.compile(r"^(0 of 1( \(1 starting\))?|1)$"), timeout=60_000
            )

            # -- Alice scales from Python: the admin's stream carries every user's events
            # (?all=1), so her row is read again by itself (a GET of that cluster, which
            # neither the list's poll nor the admin's actions make) and shows the new count
            assert any("/dask-gateway/stream?all=1" in url for url in streams), streams
            page.wait_for_function(  # the reads that followed the admin's own scale are done
                """() => [...window.jupyterapp.shell.widgets('left')]
                    .find(w => w.id === 'dask-gateway-sidebar').refresher.inFlight === 0"""
            )
            reads: list[str] = []
            page.on(
                "request", lambda r: r.url.split("?")[0].endswith(alices) and reads.append(r.url)
            )
            alice.scale_cluster(alices, 2)
            expect(row.locator('[data-stat="workers"]')).to_have_text(
                re.compile(r"^(\d of 2( \(\d starting\))?|2)$"), timeout=60_000
            )
            assert reads, "the row was not read after Alice's scale"
            expect(row.locator(".dgj-Cluster-owner")).to_have_text(ALICE)

            # -- and stops Bob's, through the command (as the row's context menu runs it)
            browser.execute_command("dask-gateway:shutdown", {"name": bobs, "confirm": False})
            wait_gateway(lambda: bobs not in {c.name for c in bob.list_clusters()}, "bob's stopped")
            assert alice.get_cluster(alices).status.name == "RUNNING"

            # -- back to the admin's own list
            browser.execute_command("dask-gateway:toggle-all-users", {"all": False})
            expect(banner).to_be_hidden()
            expect(cluster_row(page, alices)).to_have_count(0, timeout=30_000)
            expect(sidebar.locator(".dgj-Empty")).to_contain_text("No clusters running")

            ours = [e for e in browser.console_errors if "dask-gateway" in e]
            assert ours == [], ours
    finally:
        stop_all(gateway)
        alice.close()
        bob.close()
