"""The live sidebar in a real JupyterLab: changes come over the event stream, not by polling.

After Scale to N, the row shows N (requested) by a refresh of that row alone, with no poll of
the list between the click and the update: asserted on the order of what the browser did
(its requests and the row's change, in one log), never on time. A cluster made from Python
appears, and starts, the same way.
"""

from __future__ import annotations

import re

import pytest
import test_sidebar_browser as base
from jupyterlab_harness import LabBrowser, user_client
from test_sidebar_browser import SCREENSHOTS, SIDEBAR, USER, cluster_row

# The sidebar test's fixtures: a gateway of the test's own, a JupyterLab using it.
gateway = base.gateway
lab = base.lab

#: What the browser did, in order: ("request", METHOD URL) and ("row", text of the workers).
Log = list[tuple[str, str]]

WATCH_ROW = """
([name, wanted]) => {
  const dd = document.querySelector(
    `#dask-gateway-sidebar li.dgj-Cluster[data-cluster-name="${name}"] [data-stat="workers"]`
  );
  const seen = () => {
    if (dd.textContent.includes(wanted)) {
      void window.dgjRowChanged(dd.textContent).then(() => { window.dgjRowLogged = true; });
      observer.disconnect();
    }
  };
  const observer = new MutationObserver(seen);
  observer.observe(dd, { childList: true, characterData: true, subtree: true });
}
"""


def kind_of(entry: tuple[str, str], name: str) -> str:
    """What an entry of the log is: the list's poll, this row's refresh, the scale, ..."""
    what, detail = entry
    if what == "row":
        return "row-updated"
    if re.search(r"GET \S*/dask-gateway/clusters(\?|$)", detail):
        return "list"
    if re.search(rf"GET \S*/dask-gateway/clusters/{name}(\?|$)", detail):
        return "cluster"
    if re.search(rf"POST \S*/dask-gateway/clusters/{name}/scale", detail):
        return "scale"
    return "other"


@pytest.mark.timeout(600)
def test_scale_shows_in_the_row_without_a_poll(gateway, lab):
    from playwright.sync_api import expect

    with user_client(gateway, USER) as gw:
        name = gw.submit()  # made from Python: the sidebar learns of it by its events
    with LabBrowser(lab, SCREENSHOTS, viewport=(1400, 1000)) as browser:
        page = browser.page
        log: Log = []
        page.on("request", lambda r: log.append(("request", f"{r.method} {r.url}")))
        page.expose_function("dgjRowChanged", lambda text: log.append(("row", text)))

        browser.goto()
        page.locator(
            '.jp-SideBar.jp-mod-left li.lm-TabBar-tab[data-id="dask-gateway-sidebar"]'
        ).click()
        sidebar = page.locator(SIDEBAR)
        expect(sidebar).to_have_attribute("data-live", "live", timeout=60_000)
        row = cluster_row(page, name)
        expect(row.locator(".dgj-Cluster-status")).to_have_text("RUNNING", timeout=120_000)
        expect(row.locator('[data-stat="workers"]')).to_have_text("0")

        # -- Scale to 3: the row says 3 (requested) through its own refresh, no list poll.
        page.evaluate(WATCH_ROW, [name, "3"])
        row.locator("input.dgj-ScaleInput").fill("3")
        log.clear()
        row.locator("button.dgj-ScaleButton").click()
        expect(row.locator('[data-stat="workers"]')).to_contain_text("3", timeout=30_000)
        page.wait_for_function("() => window.dgjRowLogged === true")  # Python has it logged
        kinds = [kind_of(e, name) for e in log]
        assert "row-updated" in kinds, log
        until = kinds[: kinds.index("row-updated")]
        assert "list" not in until, log  # no poll of the list between the click and the update
        assert "scale" in until, log
        assert "cluster" in until[until.index("scale") :], log  # the row's own refresh
        browser.screenshot("sidebar-live-scaled", sidebar)

        # ...and the workers, as they join (their events refresh the row again).
        expect(row.locator('[data-stat="workers"]')).to_have_text("3", timeout=120_000)

        ours = [e for e in browser.console_errors if "dask-gateway" in e]
        assert ours == [], ours
