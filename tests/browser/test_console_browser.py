"""The gateway's web console in headless Chromium, used the way people use it: log in with the
form, see the clusters and the usage chart, open a cluster's events and logs, stop a cluster.

alice's cluster carries hostile text in an option and in its scheduler's log (printed by code
she runs in her scheduler, as an attacker would); the admin's console must show it as text
and run nothing. Screenshots go to ``test-artifacts/screenshots/``.
"""

from __future__ import annotations

import pytest
from jupyterlab_harness import slow_heartbeat_gateway
from playwright.sync_api import expect
from support.chromium import CHROMIUM, CHROMIUM_ARGS
from support.http_helpers import basic, call
from support.paths import CONFIGS, ROOT

SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
PASSWORD = "console-browser-secret"
ADMIN = "console-root"
ALICE = "console-alice"
BOB = "console-bob"
#: What alice types as her cluster's label, and what her scheduler prints: markup that would
#: change the page's title if it ever ran.
HOSTILE_OPTION = "<img src=x onerror=\"document.title='pwned-by-option'\">"
HOSTILE_LOG = (
    "<img src=x onerror=\"document.title='pwned-by-log'\"><script>document.title='pwned'</script>"
)


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("console-browser")
    with slow_heartbeat_gateway(
        data_dir,
        [
            f"--SimpleAuthenticator.password={PASSWORD}",
            f"--Authenticator.admin_users={{'{ADMIN}'}}",
        ],
        config=CONFIGS / "console_gateway_config.py",
    ) as gw:
        yield gw


@pytest.fixture(scope="module")
def clusters(gw):
    """alice's cluster (hostile label, one worker, a hostile line in its scheduler's log) and
    bob's: their names."""
    from dask_gateway import Gateway
    from dask_gateway.auth import BasicAuth

    alice = Gateway(gw.address, auth=BasicAuth(ALICE, PASSWORD))
    bob = Gateway(gw.address, auth=BasicAuth(BOB, PASSWORD))
    a = alice.new_cluster(label=HOSTILE_OPTION)
    b = bob.new_cluster()
    try:
        a.scale(1)
        # Code alice runs in her own scheduler (``exec``, a builtin: nothing of this module
        # needs to be importable there) prints the line into its log.
        with a.get_client(set_as_default=False) as client:
            client.wait_for_workers(1, timeout=60)
            client.run_on_scheduler(
                exec, f"import sys; print({HOSTILE_LOG!r}, file=sys.stderr, flush=True)"
            )
        yield a.name, b.name
    finally:
        for cluster in (a, b):
            try:
                cluster.shutdown()
            except Exception:
                pass
        alice.close()
        bob.close()


@pytest.fixture(scope="module")
def chromium():
    from playwright.sync_api import sync_playwright

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


class Watched:
    """A browser context whose pages report script errors and CSP violations."""

    def __init__(self, chromium, viewport=(1280, 900)):
        self.context = chromium.new_context(viewport={"width": viewport[0], "height": viewport[1]})
        self.problems: list[str] = []

    def page(self, viewport=None):
        page = self.context.new_page()
        if viewport:
            page.set_viewport_size({"width": viewport[0], "height": viewport[1]})
        page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        page.on(
            "console",
            lambda m: "Content Security Policy" in m.text and self.problems.append(m.text),
        )
        return page

    def close(self):
        self.context.close()


def log_in(page, gw, user: str, password: str = PASSWORD) -> None:
    page.goto(f"{gw.address}/console/")
    page.wait_for_url(f"{gw.address}/console/login")
    page.fill("#dg-username", user)
    page.fill("#dg-password", password)
    page.click("button[type=submit]")
    page.wait_for_url(f"{gw.address}/console/")
    page.locator("#dg-clusters").wait_for()


def row(page, name: str):
    return page.locator(f"tr.dg-cluster[data-cluster='{name}']")


def status_of(gw, name: str, user: str) -> str:
    r = call("GET", f"{gw.address}/api/v1/clusters/{name}", headers=basic(user, PASSWORD))
    assert r.status == 200, r.body
    return r.json()["status"]


def assert_nothing_ran(page, watched: Watched) -> None:
    assert page.locator("img").count() == 0
    assert page.locator("#dg-console script").count() == 0
    assert "pwned" not in page.title()
    assert watched.problems == []


def open_details(page, name: str):
    row(page, name).locator(".dg-toggle").click()
    details = page.locator(f"tr.dg-details[data-cluster='{name}']")
    details.locator(".dg-event").first.wait_for()
    return details


def test_wrong_password_shows_the_form_again(gw, chromium):
    watched = Watched(chromium)
    page = watched.page()
    try:
        page.goto(f"{gw.address}/console/")
        page.fill("#dg-username", ALICE)
        page.fill("#dg-password", "wrong")
        with page.expect_response(f"{gw.address}/console/login") as answer:
            page.click("button[type=submit]")
        assert answer.value.status == 401
        assert page.locator(".dg-error").inner_text() == "Invalid username or password"
        assert page.input_value("#dg-username") == ALICE
        assert watched.problems == []
    finally:
        watched.close()


def test_user_sees_clusters_usage_and_hostile_text_as_text(gw, clusters, chromium):
    mine, bobs = clusters
    watched = Watched(chromium)
    page = watched.page()
    try:
        log_in(page, gw, ALICE)
        row(page, mine).wait_for()
        assert row(page, bobs).count() == 0
        assert page.locator("#dg-everyone").count() == 0  # admins only
        cells = row(page, mine)
        cells.locator(".dg-status-running").wait_for()
        assert f"label: {HOSTILE_OPTION}" in cells.locator(".dg-options").inner_text()
        expect(cells.locator("td[data-label=Workers]")).to_have_text("1", timeout=30000)

        # This period's use, drawn as SVG bars per day with the running total.
        chart = page.locator("#dg-usage-chart")
        chart.wait_for()
        assert chart.locator("rect.dg-bar").count() >= 1
        assert "core-hours" in page.locator("#dg-usage-summary").inner_text()
        # The quota (100 core-hours a month): a bar, and a dashed level on the chart.
        assert "of 100 core-hours (personal" in page.locator("#dg-quotas .dg-quota").inner_text()
        assert chart.locator("line.dg-limit").count() == 1

        # Its dashboard, through the gateway with the console's session.
        href = cells.locator("a.dg-dashboard").get_attribute("href")
        assert href == f"/clusters/{mine}/status"
        assert page.request.get(gw.address + href).status == 200

        # Scale from the row: the gateway gets the request (with the client header the
        # cookie needs for writes) and the event says who asked.
        cells.locator(".dg-scale-input").fill("2")
        cells.locator(".dg-scale").click()
        page.locator("#dg-notice", has_text=f"Scaled {mine} to 2 workers").wait_for()
        r = call("GET", f"{gw.address}/api/v1/overview", headers=basic(ALICE, PASSWORD))
        assert r.json()["clusters"][0]["workers"]["requested"] == 2

        details = open_details(page, mine)
        assert "submitted" in details.locator(".dg-events").inner_text()
        expect(details.locator(".dg-events")).to_contain_text(f"Scaled to 2 workers by {ALICE}")
        # The page's CSP forbids eval, so waits use locators (wait_for_function would eval).
        expect(details.locator("pre.dg-log").last).to_contain_text(HOSTILE_LOG)
        assert_nothing_ran(page, watched)
        page.screenshot(path=str(SCREENSHOTS / "console-user.png"), full_page=True)
        # JupyterLab's dark colours when the system prefers dark.
        light = page.evaluate("getComputedStyle(document.body).backgroundColor")
        page.emulate_media(color_scheme="dark")
        dark = page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert (light, dark) == ("rgb(255, 255, 255)", "rgb(17, 17, 17)")
        page.screenshot(path=str(SCREENSHOTS / "console-dark.png"), full_page=True)

        # A phone: 360 px wide, no horizontal scrolling; rows become stacked lines.
        phone = watched.page(viewport=(360, 740))
        phone.goto(f"{gw.address}/console/")
        row(phone, mine).wait_for()
        phone.locator("#dg-usage-chart").wait_for()
        open_details(phone, mine)
        assert not phone.locator("#dg-clusters thead").is_visible()
        widths = phone.evaluate(
            "[document.documentElement.scrollWidth, document.body.scrollWidth, innerWidth]"
        )
        wide = phone.evaluate(
            "[...document.querySelectorAll('body *')]"
            ".filter(e => e.getBoundingClientRect().right > innerWidth + 0.5)"
            ".map(e => e.tagName + '.' + e.className + ' ' + e.getBoundingClientRect().right)"
        )
        assert max(widths[:2]) <= widths[2] == 360, (widths, wide)
        phone.screenshot(path=str(SCREENSHOTS / "console-phone.png"), full_page=True)
        assert_nothing_ran(phone, watched)
    finally:
        watched.close()


def test_admin_stops_another_users_cluster_and_a_user_cannot(gw, clusters, chromium):
    alices, bobs = clusters
    watched = Watched(chromium)
    page = watched.page()
    try:
        log_in(page, gw, ADMIN)
        page.check("#dg-everyone")
        page.fill("#dg-filter-user", ALICE)
        page.press("#dg-filter-user", "Enter")
        row(page, alices).wait_for()
        assert row(page, bobs).count() == 0
        assert row(page, alices).locator("td[data-label=User]").inner_text() == ALICE
        assert f"label: {HOSTILE_OPTION}" in row(page, alices).inner_text()
        page.locator("#dg-usage-section h2", has_text=f"Usage of {ALICE}").wait_for()
        page.locator("#dg-usage-chart").wait_for()
        details = open_details(page, alices)
        expect(details.locator("pre.dg-log").last).to_contain_text(HOSTILE_LOG)
        assert_nothing_ran(page, watched)

        # By group: alice is in physics (bob in chemistry and physics-students).
        page.fill("#dg-filter-user", "")
        page.fill("#dg-filter-group", "physics")
        page.press("#dg-filter-group", "Enter")
        page.locator("#dg-usage-section h2", has_text="Usage of group physics").wait_for()
        row(page, alices).wait_for()
        assert row(page, bobs).count() == 0
        assert "physics" in row(page, alices).locator(".dg-groups").inner_text()

        # Everyone's clusters, and the usage table by user with its CSV download.
        page.fill("#dg-filter-group", "")
        page.press("#dg-filter-group", "Enter")
        row(page, bobs).wait_for()
        row(page, alices).wait_for()
        table = page.locator("#dg-usage-table table")
        table.wait_for()
        assert ALICE in table.inner_text() and BOB in table.inner_text()
        href = page.get_attribute("#dg-usage-csv", "href")
        assert href == "/api/v1/usage?by=user&format=csv"
        csv = page.request.get(gw.address + href)
        assert csv.status == 200 and csv.headers["content-type"].startswith("text/csv")
        assert ALICE in csv.text()
        page.select_option("#dg-usage-by", "group")
        page.locator("#dg-usage-table th", has_text="Group").wait_for()
        page.screenshot(path=str(SCREENSHOTS / "console-admin.png"), full_page=True)

        # The admin stops bob's cluster.
        row(page, bobs).locator(".dg-stop").click()
        row(page, bobs).locator(".dg-stop-yes").click()
        page.locator("#dg-notice", has_text=f"Stopping {bobs}").wait_for()
        assert status_of(gw, bobs, BOB) in ("STOPPING", "STOPPED")
        row(page, bobs).wait_for(state="detached")

        # The same browser, another tab: the admin logs out and bob logs in. The first tab
        # still lists alice's cluster; bob's Stop there is refused and the page says why.
        other = watched.page()
        other.goto(f"{gw.address}/console/")
        other.click(".dg-logout button")
        other.wait_for_url(f"{gw.address}/console/login?out=1")
        assert "You have logged out." in other.inner_text("body")
        log_in(other, gw, BOB)
        assert row(other, alices).count() == 0
        row(page, alices).locator(".dg-stop").click()
        row(page, alices).locator(".dg-stop-yes").click()
        alert = page.locator("#dg-alert")
        alert.filter(has_text="lacks permissions to stop cluster").wait_for()
        assert f"User {BOB} lacks permissions to stop cluster {alices}" in alert.inner_text()
        page.screenshot(path=str(SCREENSHOTS / "console-refused.png"), full_page=True)
        # The API agrees: bob cannot stop it, and it runs on.
        refused = call(
            "DELETE", f"{gw.address}/api/v1/clusters/{alices}", headers=basic(BOB, PASSWORD)
        )
        assert refused.status == 403
        assert status_of(gw, alices, ALICE) == "RUNNING"
        assert_nothing_ran(page, watched)
    finally:
        watched.close()
