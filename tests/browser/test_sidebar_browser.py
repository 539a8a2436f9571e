"""The Dask Gateway sidebar in a real JupyterLab, driven through headless Chromium.

JupyterLab (with the installed extension) talks to the test gateway; everything is done the
way a user would: open the sidebar, fill in the form, click the buttons. Screenshots go to
``test-artifacts/screenshots/`` (kept by CI as artifacts).
"""

from __future__ import annotations

import re
import time

import pytest
from jupyterlab_harness import (
    LabBrowser,
    gateway_lab,
    slow_heartbeat_gateway,
    stop_user_clusters,
    user_client_stopping_clusters,
    wait_gateway,
    write_code_notebook,
)
from support.paths import ROOT

SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
USER = "sidebar-user"
SIDEBAR = "#dask-gateway-sidebar"


@pytest.fixture
def gateway(tmp_path):
    """A gateway of this test's own: the shared test config fails a cluster after 4 s
    without a heartbeat, and rendering its dashboard can hold a busy scheduler longer."""
    with slow_heartbeat_gateway(tmp_path / "gateway") as gw:
        yield gw


@pytest.fixture
def lab(gateway, tmp_path):
    server = gateway_lab(tmp_path, gateway.address, USER)
    write_code_notebook(server.root_dir / "analysis.ipynb", "")
    with server:
        yield server
    stop_user_clusters(gateway, USER)


def is_list_request(r) -> bool:
    """The sidebar's poll (JupyterLab adds a cache-busting query)."""
    return re.search(r"/dask-gateway/clusters(\?|$)", r.url) is not None


def cluster_row(page, name: str):
    return page.locator(f'{SIDEBAR} li.dgj-Cluster[data-cluster-name="{name}"]')


@pytest.mark.timeout(600)
def test_sidebar_manages_clusters(gateway, lab):
    from playwright.sync_api import expect

    with LabBrowser(lab, SCREENSHOTS, viewport=(1400, 1000)) as browser:
        page = browser.page
        sockets: list = []
        page.on("websocket", lambda ws: sockets.append(ws))

        browser.open_notebook("analysis.ipynb")
        page.locator(
            '.jp-SideBar.jp-mod-left li.lm-TabBar-tab[data-id="dask-gateway-sidebar"]'
        ).click()
        sidebar = page.locator(SIDEBAR)
        expect(sidebar).to_be_visible()
        expect(sidebar.locator(".dgj-Address")).to_have_text(gateway.address)
        expect(sidebar.locator(".dgj-Empty")).to_contain_text("No clusters running")
        browser.screenshot("sidebar-empty", sidebar)

        # -- the options form, with the same messages as the notebook widget
        sidebar.locator("button.dgj-NewButton").click()
        form = sidebar.locator("form.dgj-Form")
        expect(form).to_be_visible()
        for label in ("Worker Cores", "Worker Memory (GiB)", "Environment"):
            expect(form).to_contain_text(label)
        cores = form.locator('[name="worker_cores"]')
        memory = form.locator('[name="worker_memory"]')
        expect(cores).to_have_value("1")
        expect(form.locator('select[name="environment"]')).to_have_value("basic")
        cores.fill("10")
        expect(form.locator('[data-field="worker_cores"] .dgj-Field-error')).to_have_text(
            "worker_cores must be <= 4, got 10"
        )
        memory.fill("0")
        expect(form.locator('[data-field="worker_memory"] .dgj-Field-error')).to_have_text(
            "worker_memory must be >= 0.25, got 0.0"
        )
        expect(form.locator('button[type="submit"]')).to_be_disabled()
        browser.screenshot("sidebar-form-invalid", sidebar)
        cores.fill("1")
        memory.fill("0.5")
        expect(form.locator(".dgj-Field-error:not(:empty)")).to_have_count(0)
        browser.screenshot("sidebar-form", sidebar)
        form.locator('button[type="submit"]').click()
        expect(form).to_have_count(0)

        # -- the new cluster appears and starts
        row = sidebar.locator("li.dgj-Cluster")
        expect(row).to_have_count(1, timeout=30_000)
        name = row.get_attribute("data-cluster-name")
        assert name and len(name) == 32
        expect(row.locator(".dgj-Cluster-status")).to_have_text("RUNNING", timeout=120_000)
        expect(row.locator('[data-stat="workers"]')).to_have_text("0")
        # The message about it follows its state: "is starting" no longer, once it runs.
        message = sidebar.locator(".dgj-Message")
        expect(message.locator(".dgj-Message-text")).to_have_text(
            f"Cluster {name[:8]} is running", timeout=30_000
        )
        expect(message).to_have_attribute("data-cluster", name)
        expect(message).to_have_attribute("data-kind", "info")
        browser.screenshot("sidebar-running", sidebar)

        # Refreshes update rows in place (no flicker, typed input survives): same DOM node.
        # (The list is read again on Refresh; while the event stream is live it is polled only
        # as a slow safety net.)
        row.evaluate("n => { n.dataset.marker = 'same-node'; }")
        row.locator("input.dgj-ScaleInput").fill("7")
        for _ in range(2):
            with page.expect_response(is_list_request):
                sidebar.locator("button.dgj-RefreshButton").click()
        expect(row).to_have_attribute("data-marker", "same-node")
        expect(row.locator("input.dgj-ScaleInput")).to_have_value("7")

        # -- scale to 2 and watch the workers arrive
        row.locator("input.dgj-ScaleInput").fill("2")
        row.locator("button.dgj-ScaleButton").click()
        expect(row.locator('[data-stat="workers"]')).to_have_text("2", timeout=120_000)
        expect(row.locator('[data-stat="cores"]')).to_have_text("2")
        expect(row.locator('[data-stat="memory"]')).to_have_text("1.00 GiB")
        expect(sidebar.locator(".dgj-Message")).to_contain_text("Scaling")
        browser.screenshot("sidebar-scaled", sidebar)

        # -- adapt, then stop adapting
        row.locator("input.dgj-AdaptMin").fill("1")
        row.locator("input.dgj-AdaptMax").fill("3")
        row.locator("button.dgj-AdaptButton").click()
        expect(row.locator(".dgj-Cluster-adapt-note")).to_have_text(
            "Adaptive: 1 to 3 workers", timeout=30_000
        )
        row.locator("button.dgj-StopAdaptButton").click()
        expect(row.locator(".dgj-Cluster-adapt-note")).to_have_text("", timeout=30_000)

        # -- the dashboard in a JupyterLab tab, relayed by the server extension
        row.locator("button.dgj-DashboardButton").click()
        tab = page.locator(f'.lm-DockPanel-tabBar li.lm-TabBar-tab:has-text("Dask {name[:8]}")')
        expect(tab).to_be_visible(timeout=30_000)
        frame_el = page.locator(f"#dask-gateway-dashboard-{name} iframe")
        expect(frame_el).to_have_attribute("src", f"/dask-gateway/dashboard/{name}/status")
        frame = page.frame_locator(f"#dask-gateway-dashboard-{name} iframe")
        expect(frame.locator("canvas").first).to_be_attached(timeout=60_000)
        expect(frame.locator("body")).to_contain_text("Status", timeout=60_000)
        # The sandboxed page's requests go under a grant path of the relay.
        ws_url = re.compile(rf"/dask-gateway/dashboard/{name}/~[^/]+/status/ws")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(ws_url.search(s.url) for s in sockets):
            page.wait_for_timeout(250)
        bokeh = [s for s in sockets if ws_url.search(s.url)]
        assert bokeh, [s.url for s in sockets]
        page.wait_for_timeout(2000)  # live updates flow through the relay
        assert not bokeh[0].is_closed()
        browser.screenshot("dashboard-tab")

        # -- insert the connect code into the notebook, and run it
        row.locator("button.dgj-InsertButton").click()
        source = page.evaluate("""() => {
            const nb = window.jupyterapp.shell.widgets('main').find(
                w => w.context && w.context.path === 'analysis.ipynb');
            window.jupyterapp.shell.activateById(nb.id);
            return nb.content.activeCell.model.sharedModel.getSource();
        }""")
        assert f'cluster = gateway.connect("{name}")' in source
        assert "client = cluster.get_client()" in source
        browser.execute_command("notebook:run-cell")
        output = page.locator(".jp-Notebook .jp-Cell").first.locator(".jp-OutputArea-output")
        expect(output).to_contain_text("Client", timeout=120_000)
        browser.screenshot("notebook-connect-code")

        # -- a cluster created from Python in the notebook appears without a reload
        printed = browser.run_in_kernel(
            "other = gateway.submit(worker_cores=1, worker_memory=0.25); print(other)"
        )
        other = printed.strip().splitlines()[-1]
        assert len(other) == 32, printed
        expect(cluster_row(page, other)).to_be_visible(timeout=30_000)
        expect(cluster_row(page, other).locator(".dgj-Cluster-status")).to_have_text(
            "RUNNING", timeout=120_000
        )
        browser.screenshot("sidebar-two-clusters", sidebar)

        # -- shut down, with a confirmation, and the cluster leaves the list
        browser.run_in_kernel("client.close(); cluster.close()")
        row = cluster_row(page, name)
        row.locator("button.dgj-ShutdownButton").click()
        dialog = page.locator(".jp-Dialog")
        expect(dialog).to_contain_text("Shut down cluster?")
        browser.screenshot("shutdown-confirm")
        dialog.locator("button.jp-mod-warn").click()
        expect(row).to_have_count(0, timeout=30_000)
        expect(cluster_row(page, other)).to_have_count(1)
        # ...and the message, "is shutting down" meanwhile, says it is done.
        expect(message.locator(".dgj-Message-text")).to_have_text(
            f"Cluster {name[:8]} has shut down", timeout=30_000
        )

        # -- the same panel in the dark theme
        browser.execute_command("apputils:change-theme", {"theme": "JupyterLab Dark"})
        page.wait_for_function(
            "() => document.body.dataset.jpThemeLight === 'false'", timeout=30_000
        )
        browser.screenshot("sidebar-dark", sidebar)

        cluster_row(page, other).locator("button.dgj-ShutdownButton").click()
        page.locator(".jp-Dialog button.jp-mod-warn").click()
        expect(sidebar.locator("li.dgj-Cluster")).to_have_count(0, timeout=30_000)
        expect(sidebar.locator(".dgj-Empty")).to_be_visible()

        # -- no polling while the panel is hidden; it resumes when shown again
        polls: list[str] = []
        page.on("request", lambda r: is_list_request(r) and polls.append(r.url))
        page.locator('.jp-SideBar.jp-mod-left li.lm-TabBar-tab[data-id="filebrowser"]').click()
        expect(sidebar).to_be_hidden()
        page.wait_for_timeout(1000)
        polls.clear()
        page.wait_for_timeout(8000)  # more than two poll intervals
        assert polls == []
        # (Shown again, it reads the list at once: the click is what triggers it.)
        with page.expect_request(is_list_request, timeout=5000):
            page.locator(
                '.jp-SideBar.jp-mod-left li.lm-TabBar-tab[data-id="dask-gateway-sidebar"]'
            ).click()

        ours = [e for e in browser.console_errors if "dask-gateway" in e]
        assert ours == [], ours


@pytest.mark.timeout(300)
def test_sidebar_shows_gateway_errors(tmp_path):
    """With the gateway down the panel says so, in words, instead of failing silently."""
    from playwright.sync_api import expect
    from support.gateway_process import free_port

    port = free_port()
    with (
        gateway_lab(tmp_path, f"http://127.0.0.1:{port}") as lab,
        LabBrowser(lab, SCREENSHOTS) as browser,
    ):
        browser.goto("/lab", reset="")
        browser.page.locator(
            '.jp-SideBar.jp-mod-left li.lm-TabBar-tab[data-id="dask-gateway-sidebar"]'
        ).click()
        sidebar = browser.page.locator(SIDEBAR)
        message = sidebar.locator('.dgj-Message[data-kind="error"]')
        expect(message).to_contain_text(
            f"Cannot reach the Dask Gateway at http://127.0.0.1:{port}", timeout=30_000
        )
        sidebar.locator("button.dgj-NewButton").click()
        expect(message).to_contain_text("Cannot reach the Dask Gateway", timeout=30_000)
        browser.screenshot("sidebar-gateway-down", sidebar)


DASK_GATEWAY_COMMANDS = {
    "dask-gateway:new-cluster",
    "dask-gateway:scale",
    "dask-gateway:adapt",
    "dask-gateway:stop-adapting",
    "dask-gateway:shutdown",
    "dask-gateway:open-dashboard",
    "dask-gateway:insert-code",
    "dask-gateway:refresh",
    "dask-gateway:open-logs",
    "dask-gateway:dismiss",
    "dask-gateway:toggle-sidebar",
    "dask-gateway:toggle-all-users",
    "dask-gateway:toggle-show-stopped",
    "dask-gateway:set-poll-interval",
    "dask-gateway:open-plot",
    "dask-gateway:open-default-layout",
}


@pytest.mark.timeout(600)
def test_sidebar_actions_are_commands(gateway, lab):
    """The palette and a row's context menu run the sidebar's actions on the gateway."""
    from playwright.sync_api import expect

    with user_client_stopping_clusters(gateway, USER) as gw:
        name = gw.submit(worker_cores=1, worker_memory=0.25)
        other = gw.submit(worker_cores=1, worker_memory=0.25)
        with LabBrowser(lab, SCREENSHOTS, viewport=(1400, 1000)) as browser:
            page = browser.page
            browser.goto("/lab", reset="")
            # JupyterLab focuses the Launcher it opens after restoring: a palette opened
            # before that would lose the focus to it, and close.
            page.wait_for_function(
                "() => document.activeElement && document.activeElement.closest('.jp-Launcher')",
                timeout=60_000,
            )
            page.locator(
                '.jp-SideBar.jp-mod-left li.lm-TabBar-tab[data-id="dask-gateway-sidebar"]'
            ).click()
            sidebar = page.locator(SIDEBAR)
            row = cluster_row(page, name)
            expect(row.locator(".dgj-Cluster-status")).to_have_text("RUNNING", timeout=120_000)
            expect(cluster_row(page, other)).to_be_visible()

            ids = page.evaluate(
                "() => window.jupyterapp.commands.listCommands()"
                ".filter(id => id.startsWith('dask-gateway:'))"
            )
            assert set(ids) == DASK_GATEWAY_COMMANDS

            # -- scale through the command palette: the selected row is the one it acts on
            row.locator(".dgj-Cluster-name").click()
            expect(row).to_have_class(re.compile(r"\bjp-mod-selected\b"))
            browser.execute_command("apputils:activate-command-palette")
            palette = page.locator(".lm-CommandPalette")
            palette.locator(".lm-CommandPalette-input").fill("Scale Cluster")
            item = palette.locator(".lm-CommandPalette-item", has_text="Scale Cluster…")
            expect(item).to_have_count(1)
            expect(palette.locator(".lm-CommandPalette-header")).to_contain_text("Dask Gateway")
            browser.screenshot("command-palette")
            item.click()
            dialog = page.locator(".jp-Dialog")
            expect(dialog).to_contain_text(f"Scale Cluster {name[:8]}")
            dialog.locator("input").fill("2")
            dialog.locator("button.jp-mod-accept").click()
            wait_gateway(
                lambda: gw.get_cluster_resources(name).get("requested") == 2, "2 workers asked"
            )
            assert gw.get_cluster_resources(other).get("requested") == 0
            expect(sidebar.locator(".dgj-Message-text")).to_have_text(
                f"Scaling Cluster {name[:8]} to 2 workers"
            )

            # -- shut down through the row's context menu (the other row is still selected)
            cluster_row(page, other).locator(".dgj-Cluster-name").click(button="right")
            menu = page.locator(".lm-Menu")
            for label in (
                "Open Cluster Dashboard",
                "Insert Cluster Connect Code",
                "Scale Cluster…",
                "Adapt Cluster…",
                "Shut Down Cluster…",
            ):
                expect(menu.locator(".lm-Menu-item", has_text=label)).to_have_count(1)
            browser.screenshot("row-context-menu")
            menu.locator(".lm-Menu-item", has_text="Shut Down Cluster…").click()
            dialog = page.locator(".jp-Dialog")
            expect(dialog).to_contain_text(f"Shut down cluster {other}?")
            dialog.locator("button.jp-mod-warn").click()
            wait_gateway(
                lambda: other not in {c.name for c in gw.list_clusters()}, f"{other} stopped"
            )
            expect(cluster_row(page, other)).to_have_count(0, timeout=30_000)
            # The first cluster was not touched.
            assert name in {c.name for c in gw.list_clusters()}
            expect(row).to_have_count(1)

            ours = [e for e in browser.console_errors if "dask-gateway" in e]
            assert ours == [], ours
