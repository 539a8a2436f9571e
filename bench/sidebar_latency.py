"""How fast the JupyterLab sidebar shows a scale: a real gateway, JupyterLab and headless
Chromium, started by this script.

For each mode, prints the median (and min/max) over --runs tries of the time from a scale
until the cluster's row shows the new requested count:

* ``sidebar``: the user types N and clicks Scale in the row (timed in the browser, from the
  click to the row's change);
* ``python``: the cluster is scaled from Python (a notebook, another tab), and the row
  follows (timed from the call to the row's change, on the machine's clock).

Modes: ``live`` (the event stream, ``dask-gateway/stream``) and ``polling`` (the same sidebar
with the stream answering 501, as against the public gateway: it polls the list every 3 s,
as the sidebar did before the stream).

    python bench/sidebar_latency.py [--runs 10] [--modes live,polling]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "browser"))
from jupyterlab_harness import JupyterLab, LabBrowser  # noqa: E402 (tests/browser)
from support.gateway_process import GatewayProcess, _kill_leftovers  # noqa: E402

USER = "bench-sidebar"

#: Resolves with the epoch ms at which the row's workers read `wanted` (its requested count).
WATCH = """
([name, wanted, click]) => new Promise(resolve => {
  const row = document.querySelector(
    `#dask-gateway-sidebar li.dgj-Cluster[data-cluster-name="${name}"]`);
  const dd = row.querySelector('[data-stat="workers"]');
  const shows = () => new RegExp(`(^| of )${wanted}( [(]|$)`).test(dd.textContent.trim());
  const done = () => resolve(performance.timeOrigin + performance.now());
  setTimeout(() => { observer.disconnect(); resolve(null); }, 30000);  // never shown: null
  const observer = new MutationObserver(() => {
    if (shows()) { observer.disconnect(); done(); }
  });
  observer.observe(dd, { childList: true, characterData: true, subtree: true });
  if (click) {
    const input = row.querySelector('input.dgj-ScaleInput');
    input.value = String(wanted);
    input.dispatchEvent(new Event('input', { bubbles: true }));
    window.dgjClickedAt = performance.timeOrigin + performance.now();
    row.querySelector('button.dgj-ScaleButton').click();
  }
})
"""


def measure(browser: LabBrowser, gateway, name: str, how: str, counts: list[int]) -> list[float]:
    page = browser.page
    times = []
    for n in counts:
        if how == "sidebar":
            shown = page.evaluate(WATCH, [name, n, True])
            start = page.evaluate("() => window.dgjClickedAt")
        else:
            # Watch first (not awaited: a promise kept on the page), then scale from Python.
            page.evaluate(f"args => {{ window.dgjShown = ({WATCH})(args); }}", [name, n, False])
            start = time.time() * 1000
            gateway.scale_cluster(name, n)
            shown = page.evaluate("() => window.dgjShown")
        if shown is None:
            text = page.locator(
                f'li.dgj-Cluster[data-cluster-name="{name}"] [data-stat="workers"]'
            ).text_content()
            print(f"  {how}: the row never showed {n} within 30 s (it shows {text!r})", flush=True)
            continue
        times.append((shown - start) / 1000)
        page.wait_for_timeout(500)  # let the row settle before the next try
    return times


def run_mode(mode: str, runs: int, tmp: Path) -> dict[str, list[float]]:
    from dask_gateway.auth import BasicAuth

    gw = GatewayProcess(tmp / f"gateway-{mode}", ["--LocalBackend.cluster_heartbeat_timeout=60"])
    gw.start()
    lab = None
    try:
        lab = JupyterLab(
            tmp / "notebooks",
            tmp / f"lab-{mode}",
            env={
                "DASK_GATEWAY__ADDRESS": gw.address,
                "DASK_GATEWAY__AUTH__TYPE": "basic",
                "DASK_GATEWAY__AUTH__KWARGS__USERNAME": USER,
            },
        ).start()
        with gw.new_gateway(auth=BasicAuth(USER)) as gateway:
            name = gateway.submit()
            with LabBrowser(lab, tmp / "shots", viewport=(1400, 1000)) as browser:
                page = browser.page
                if mode == "polling":
                    page.route(
                        "**/dask-gateway/stream*",
                        lambda route: route.fulfill(
                            status=501,
                            content_type="application/json",
                            body=json.dumps({"error": "no events (bench: polling mode)"}),
                        ),
                    )
                browser.goto()
                page.locator(
                    '.jp-SideBar.jp-mod-left li.lm-TabBar-tab[data-id="dask-gateway-sidebar"]'
                ).click()
                sidebar = page.locator("#dask-gateway-sidebar")
                want = "live" if mode == "live" else "unsupported"
                sidebar.and_(page.locator(f'[data-live="{want}"]')).wait_for(timeout=60_000)
                row = sidebar.locator(f'li.dgj-Cluster[data-cluster-name="{name}"]')
                row.locator('.dgj-Cluster-status:text-is("RUNNING")').wait_for(timeout=120_000)
                counts = [1 + i % 2 for i in range(runs)]  # 1, 2, 1, 2, ...
                result = {
                    "sidebar": measure(browser, gateway, name, "sidebar", counts),
                    "python": measure(browser, gateway, name, "python", [c + 2 for c in counts]),
                }
            gateway.stop_cluster(name)
        return result
    finally:
        if lab is not None:
            lab.stop()
        gw.stop()
        _kill_leftovers(gw.data_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--modes", default="live,polling")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sidebar-latency-") as tmp:
        (Path(tmp) / "notebooks").mkdir()
        for mode in args.modes.split(","):
            result = run_mode(mode, args.runs, Path(tmp))
            for how, times in result.items():
                if not times:
                    continue
                print(
                    f"{mode:8} scale from {how:8}: median {statistics.median(times):.3f} s "
                    f"(min {min(times):.3f}, max {max(times):.3f}, n={len(times)})",
                    flush=True,
                )


if __name__ == "__main__":
    main()
