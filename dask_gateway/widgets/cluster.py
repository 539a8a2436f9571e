"""The cluster widget: status, live worker table, manual and adaptive scaling, and the
cluster's events and logs.

* Live updates run on the gateway's event-loop thread (where ``scheduler_info`` is
  mutated by the scheduler's worker status stream), so reads never race with writes.
* The widget holds its cluster by weak reference: showing a cluster must not keep it
  alive after the user drops it (its garbage collection is what shuts it down).
* The gateway's cluster JSON carries no worker count nor the cluster's worker limit.
  Adapt defaults are therefore derived: minimum = current worker count, maximum =
  ``max(2 * current, minimum, 4)`` (see ``default_adapt_range``). The gateway still
  clamps to its own limit, and its warning is shown in the widget.
* Warnings of the gateway (a limit that lowered a request, a quota over time nearly or
  fully used, including the one the cluster's creation got) are shown in its message line.
* Events and logs are read from the gateway only when their section is opened (or its
  Refresh button clicked): a closed section costs nothing. They stay readable after the
  cluster stopped: a closed cluster's own gateway connection is gone, so a short-lived one
  with the same address and auth is used.
"""

from __future__ import annotations

import logging
import warnings
import weakref
from collections.abc import Callable
from html import escape
from typing import TYPE_CHECKING, Any

from dask.utils import format_bytes

from ..errors import GatewayWarning
from ._common import (
    _ERROR_STYLE,
    _INFO_STYLE,
    _WARNING_STYLE,
    _error_text,
    _ipywidgets,
    _link_html,
    _message_html,
)

if TYPE_CHECKING:  # pragma: no cover
    from ..client import Gateway, GatewayCluster
    from ..events import ClusterEvent

logger = logging.getLogger(__name__)


def default_adapt_range(current_workers: int) -> tuple[int, int]:
    """Adapt defaults shown by the cluster widget: never ``0/0``.

    The gateway does not publish a cluster's worker limit, so: minimum = the current
    worker count (adapting never removes workers the user already has) and maximum =
    ``max(2 * current, minimum, 4)``. The gateway clamps a maximum above its limit and
    says so; that warning is shown in the widget.
    """
    minimum = max(int(current_workers), 0)
    return minimum, max(2 * minimum, minimum, 4)


def _worker_table_html(info: dict[str, Any], max_rows: int = 30) -> str:
    workers = info.get("workers") or {}
    threads = sum(w.get("nthreads", 0) for w in workers.values())
    memory = sum(w.get("memory_limit", 0) or 0 for w in workers.values())
    cell = "padding: 2px 8px; text-align: left"
    rows = [
        f"<tr><th style='{cell}'>Worker</th><th style='{cell}'>Threads</th>"
        f"<th style='{cell}'>Memory</th></tr>"
    ]
    for addr, w in sorted(workers.items(), key=lambda kv: str(kv[1].get("name", kv[0]))):
        if len(rows) > max_rows:
            rows.append(
                f"<tr><td style='{cell}' colspan=3>… and {len(workers) - max_rows} more</td></tr>"
            )
            break
        name = escape(str(w.get("name", addr)))
        mem = format_bytes(w.get("memory_limit") or 0) if w.get("memory_limit") else "–"
        rows.append(
            f"<tr class='dgw-worker-row'><td style='{cell}'>{name}</td>"
            f"<td style='{cell}'>{w.get('nthreads', 0)}</td><td style='{cell}'>{mem}</td></tr>"
        )
    summary = (
        f"<table class='dgw-worker-summary'><tr><th style='{cell}'>Workers</th>"
        f"<td style='{cell}' class='dgw-worker-count'>{len(workers)}</td></tr>"
        f"<tr><th style='{cell}'>Threads</th><td style='{cell}'>{threads}</td></tr>"
        f"<tr><th style='{cell}'>Memory</th><td style='{cell}'>{format_bytes(memory)}</td></tr>"
        "</table>"
    )
    return summary + "<table class='dgw-worker-list'>" + "".join(rows) + "</table>"


#: Lines of each log fetched for the Logs section (the newest).
LOG_TAIL = 1000


def _events_html(events: list[ClusterEvent]) -> str:
    if not events:
        return "<i>No events</i>"
    cell = "padding: 2px 8px; text-align: left; vertical-align: top"
    rows = [
        f"<tr><th style='{cell}'>Time</th><th style='{cell}'>Event</th>"
        f"<th style='{cell}'>Message</th></tr>"
    ]
    for event in events:
        when = event.time.astimezone().strftime("%Y-%m-%d %H:%M:%S")
        message = escape(event.message)
        if event.detail:
            message += (
                f"<details><summary>Details</summary><pre style='margin: 0'>"
                f"{escape(event.detail)}</pre></details>"
            )
        style = f"{cell}; {_ERROR_STYLE}" if event.kind.endswith("failed") else cell
        rows.append(
            f"<tr class='dgw-event-row' data-kind='{escape(event.kind)}'>"
            f"<td style='{cell}; white-space: nowrap'>{when}</td>"
            f"<td style='{style}' class='dgw-event-kind'>{escape(event.kind)}</td>"
            f"<td style='{cell}' class='dgw-event-message'>{message}</td></tr>"
        )
    return (
        "<div style='max-height: 320px; overflow: auto'><table class='dgw-event-list'>"
        + "".join(rows)
        + "</table></div>"
    )


def _log_html(text: str) -> str:
    if not text:
        return "<i>This log is empty</i>"
    return (
        "<pre class='dgw-log-text' style='max-height: 400px; overflow: auto; margin: 0; "
        f"font-size: 12px'>{escape(text)}</pre>"
    )


def _section(w: Any, title: str, body: Any, css: str) -> Any:
    """A collapsible section, closed at first (one Accordion each: both may be open)."""
    section = w.Accordion(children=[body], selected_index=None)
    section.set_title(0, title)
    section.add_class(css)
    return section


def _run_reporting_warnings(fn: Callable[[], Any]) -> tuple[Any, list[str]]:
    """Call ``fn``; return its result and the ``GatewayWarning`` messages it raised.

    The warning is raised on the gateway's loop thread, which ``catch_warnings`` sees
    because the warnings state is process-wide. Other warnings are passed on unchanged.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fn()
    messages = []
    for w in caught:
        if issubclass(w.category, GatewayWarning):
            messages.append(str(w.message))
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return result, messages


class ClusterWidget:
    """Status, live worker table, and manual/adaptive scaling for one cluster.

    The table follows ``cluster.scheduler_info``, which the cluster keeps current from
    the scheduler's worker status stream; it is re-rendered on the cluster's event loop
    every ``update_interval`` seconds when it changed, so no cell needs re-running.
    """

    def __init__(self, cluster: GatewayCluster, update_interval: float = 0.5):
        w = _ipywidgets()
        self._cluster_ref = weakref.ref(cluster)
        self._loop = cluster.loop
        self.update_interval = update_interval
        #: ``None`` when adaptive scaling is off, else ``(minimum, maximum)`` last sent.
        self.adaptive: tuple[int, int] | None = None
        self._touched: set[str] = set()
        self._setting = False
        self._warned = False  # the last request was applied only partly (GatewayWarning)

        self.title = w.HTML(value="<h2 style='margin: 0'>GatewayCluster</h2>")
        self.name = w.HTML()
        self.status = w.HTML()
        self.status.add_class("dgw-cluster-status")
        self.dashboard = w.HTML()
        self.table = w.HTML()
        self.table.add_class("dgw-worker-table")
        self.message = w.HTML()
        self.message.add_class("dgw-message")

        n = len(cluster.scheduler_info.get("workers", {}))
        lo, hi = default_adapt_range(n)
        self.scale_workers = w.IntText(
            value=n, description="Workers", layout=w.Layout(width="180px")
        )
        self.scale_workers.add_class("dgw-scale-workers")
        self.scale_button = w.Button(description="Scale", button_style="primary")
        self.scale_button.add_class("dgw-scale-button")
        self.adapt_minimum = w.IntText(
            value=lo, description="Minimum", layout=w.Layout(width="180px")
        )
        self.adapt_minimum.add_class("dgw-adapt-minimum")
        self.adapt_maximum = w.IntText(
            value=hi, description="Maximum", layout=w.Layout(width="180px")
        )
        self.adapt_maximum.add_class("dgw-adapt-maximum")
        self.adapt_button = w.Button(description="Adapt", button_style="primary")
        self.adapt_button.add_class("dgw-adapt-button")
        self.stop_adapt_button = w.Button(description="Stop adapting")
        self.stop_adapt_button.add_class("dgw-stop-adapt-button")
        self.adapt_state = w.HTML()
        self.adapt_state.add_class("dgw-adapt-state")

        # Events and logs: fetched when their section opens.
        self._cluster_name = cluster.name
        gateway = cluster.gateway
        self._gateway_kwargs: dict[str, Any] = {
            "address": gateway.address,
            "proxy_address": gateway.proxy_address,
            "public_address": gateway._public_address,
            "auth": gateway.auth,
        }
        self._logs: dict[str, str] = {}
        self.events_view = w.HTML()
        self.events_view.add_class("dgw-events")
        self.events_refresh = w.Button(description="Refresh", icon="refresh")
        self.events_refresh.add_class("dgw-events-refresh")
        self.events_refresh.on_click(lambda _: self.show_events())
        self.logs_component = w.Dropdown(
            options=[], description="Component", layout=w.Layout(width="320px")
        )
        self.logs_component.add_class("dgw-logs-component")
        self.logs_component.observe(lambda _: self._render_log(), names="value")
        self.logs_refresh = w.Button(description="Refresh", icon="refresh")
        self.logs_refresh.add_class("dgw-logs-refresh")
        self.logs_refresh.on_click(lambda _: self.show_logs())
        self.logs_view = w.HTML()
        self.logs_view.add_class("dgw-logs")
        self.events_section = _section(
            w, "Events", w.VBox([self.events_refresh, self.events_view]), "dgw-events-section"
        )
        self.logs_section = _section(
            w,
            "Logs",
            w.VBox([w.HBox([self.logs_component, self.logs_refresh]), self.logs_view]),
            "dgw-logs-section",
        )
        self.events_section.observe(self._opened(self.show_events), names="selected_index")
        self.logs_section.observe(self._opened(self.show_logs), names="selected_index")

        for widget, key in (
            (self.scale_workers, "scale"),
            (self.adapt_minimum, "adapt"),
            (self.adapt_maximum, "adapt"),
        ):
            widget.observe(self._mark_touched(key), names="value")
        self.scale_button.on_click(lambda _: self.scale(self.scale_workers.value))
        self.adapt_button.on_click(
            lambda _: self.adapt(self.adapt_minimum.value, self.adapt_maximum.value)
        )
        self.stop_adapt_button.on_click(lambda _: self.stop_adapting())

        box = {"border": "1px solid #ddd", "padding": "4px 8px", "margin": "0 0 6px 0"}
        manual = w.VBox(
            [w.HTML("<b>Manual scaling</b>"), w.HBox([self.scale_workers, self.scale_button])],
            layout=w.Layout(**box),
        )
        manual.add_class("dgw-manual-scaling")
        adaptive = w.VBox(
            [
                w.HTML("<b>Adaptive scaling</b>"),
                w.HBox([self.adapt_minimum, self.adapt_maximum]),
                w.HBox([self.adapt_button, self.stop_adapt_button]),
                self.adapt_state,
            ],
            layout=w.Layout(**box),
        )
        adaptive.add_class("dgw-adaptive-scaling")
        self.widget = w.VBox(
            [
                self.title,
                w.HBox(
                    [
                        w.VBox(
                            [self.table], layout=w.Layout(min_width="300px", margin="0 16px 0 0")
                        ),
                        w.VBox([manual, adaptive]),
                    ]
                ),
                self.name,
                self.status,
                self.dashboard,
                self.message,
                self.events_section,
                self.logs_section,
            ]
        )
        self.widget.add_class("dgw-cluster")
        self._render_adapt_state()
        # A quota over time nearly (or fully) used when the cluster was created: the
        # gateway's warning stays shown until the next action's outcome replaces it.
        if getattr(cluster, "quota_warning", None):
            self._show(str(cluster.quota_warning), _WARNING_STYLE)
        self._last: tuple = ()
        self.refresh()
        self._periodic: Any = None
        if cluster.status not in ("closed",):
            self._loop.add_callback(self._start_updates)

    @property
    def cluster(self) -> GatewayCluster | None:
        return self._cluster_ref()

    def _mark_touched(self, key: str) -> Callable[[dict], None]:
        def handler(change: dict) -> None:
            if not self._setting:
                self._touched.add(key)

        return handler

    # -- live updates (run on the cluster's loop thread)

    def _start_updates(self) -> None:
        from tornado.ioloop import PeriodicCallback

        self._periodic = PeriodicCallback(self._tick, self.update_interval * 1000)
        self._periodic.start()

    def _tick(self) -> None:
        try:
            if not self.refresh() and self._periodic is not None:
                self._periodic.stop()
        except Exception:  # never let a display glitch kill the loop
            logger.debug("cluster widget update failed", exc_info=True)

    def refresh(self) -> bool:
        """Re-render from the cluster's current state; False once it is gone or closed."""
        cluster = self.cluster
        if cluster is None:
            self.status.value = "<b>Status:</b> closed"
            return False
        watching = cluster._watch_task is not None and not cluster._watch_task.done()
        status = cluster.status
        if status == "running" and cluster._watch_task is not None and not watching:
            status = "running (lost the scheduler's worker updates)"
        workers = cluster.scheduler_info.get("workers", {})
        state = (
            cluster.name,
            status,
            cluster.dashboard_link,
            tuple(
                sorted((a, w.get("nthreads"), w.get("memory_limit")) for a, w in workers.items())
            ),
        )
        if state != self._last:
            self._last = state
            self.name.value = (
                f"<b>Name:</b> <span class='dgw-cluster-name'>{escape(str(cluster.name))}</span>"
            )
            self.status.value = f"<b>Status:</b> {escape(status)}"
            self.dashboard.value = f"<b>Dashboard:</b> {_link_html(cluster.dashboard_link)}"
            self.table.value = _worker_table_html(cluster.scheduler_info)
            self._follow_defaults(len(workers))
        return cluster.status != "closed"

    def _follow_defaults(self, n: int) -> None:
        """Keep untouched inputs in step with the worker count."""
        self._setting = True
        try:
            if "scale" not in self._touched:
                self.scale_workers.value = n
            if "adapt" not in self._touched and self.adaptive is None:
                self.adapt_minimum.value, self.adapt_maximum.value = default_adapt_range(n)
        finally:
            self._setting = False

    def close(self) -> None:
        """Stop live updates and close the widgets."""
        if self._periodic is not None:
            self._loop.add_callback(self._periodic.stop)
        self.widget.close()

    # -- actions (run on the kernel's thread, from button clicks or directly)

    def _show(self, text: str, style: str) -> None:
        self.message.value = _message_html(text, style)

    def _act(self, fn: Callable[[GatewayCluster], Any], done: str) -> bool:
        """Run a gateway request on the cluster; show its outcome, warnings and errors."""
        self._warned = False
        cluster = self.cluster
        if cluster is None or cluster.status == "closed":
            self._show("The cluster is closed", _ERROR_STYLE)
            return False
        try:
            _, warned = _run_reporting_warnings(lambda: fn(cluster))
        except Exception as exc:
            self._show(_error_text(exc), _ERROR_STYLE)
            return False
        if warned:
            self._warned = True
            self._show("\n".join(warned), _WARNING_STYLE)
        else:
            self._show(done, _INFO_STYLE)
        return True

    def scale(self, n: int) -> bool:
        """Ask for ``n`` workers (turns adaptive scaling off)."""
        ok = self._act(lambda cluster: cluster.scale(n), f"Scaling to {n} workers")
        if ok:
            self.adaptive = None
            self._render_adapt_state()
        return ok

    def adapt(self, minimum: int, maximum: int) -> bool:
        """Scale adaptively between ``minimum`` and ``maximum`` workers."""
        ok = self._act(
            lambda cluster: cluster.adapt(minimum=minimum, maximum=maximum),
            f"Adapting between {minimum} and {maximum} workers",
        )
        if ok:
            self.adaptive = (minimum, maximum)
            self._render_adapt_state()
        return ok

    def stop_adapting(self) -> bool:
        """Turn adaptive scaling off; the current workers are kept."""
        ok = self._act(
            lambda cluster: cluster.adapt(active=False),
            "Adaptive scaling off; keeping the current workers",
        )
        if ok:
            self.adaptive = None
            self._render_adapt_state()
        return ok

    # -- events and logs (run on the kernel's thread, when a section opens or on Refresh)

    @staticmethod
    def _opened(show: Callable[[], Any]) -> Callable[[dict], None]:
        def handler(change: dict) -> None:
            if change.get("new") is not None:
                show()

        return handler

    def _read(self, fn: Callable[[Gateway, str], Any]) -> Any:
        """Ask the gateway about this cluster: through the cluster's own connection while it
        is open, else through a short-lived one (a stopped cluster's history stays)."""
        cluster = self.cluster
        name = self._cluster_name if cluster is None else cluster.name
        if name is None:
            raise RuntimeError("The cluster has not been submitted yet")
        if cluster is not None and cluster.status != "closed" and not cluster.gateway._closed:
            return fn(cluster.gateway, name)
        from ..client import Gateway

        with Gateway(**self._gateway_kwargs) as gateway:
            return fn(gateway, name)

    def show_events(self) -> bool:
        """Fetch and show the cluster's events; False (with the reason shown) on error."""
        try:
            events = self._read(lambda gateway, name: gateway.events(name))
        except Exception as exc:
            self.events_view.value = _message_html(_error_text(exc), _ERROR_STYLE)
            return False
        self.events_view.value = _events_html(events)
        return True

    def show_logs(self) -> bool:
        """Fetch the newest ``LOG_TAIL`` lines of every log and show the picked component;
        False (with the reason shown) on error."""
        try:
            logs = self._read(lambda gateway, name: gateway.get_logs(name, tail=LOG_TAIL))
        except Exception as exc:
            self.logs_view.value = _message_html(_error_text(exc), _ERROR_STYLE)
            return False
        self._logs = logs
        picked = self.logs_component.value
        self.logs_component.options = list(logs)
        if logs:
            self.logs_component.value = picked if picked in logs else next(iter(logs))
        self._render_log()
        return True

    def _render_log(self) -> None:
        if not self._logs:
            self.logs_view.value = "<i>The gateway keeps no logs of this cluster yet</i>"
            return
        component = self.logs_component.value
        self.logs_view.value = _log_html(self._logs.get(component, ""))

    def _render_adapt_state(self) -> None:
        if self.adaptive is None:
            self.adapt_state.value = "Adaptive scaling is <b>off</b>"
        else:
            lo, hi = self.adaptive
            note = " (limited by the gateway, see below)" if self._warned else ""
            self.adapt_state.value = f"Adaptive scaling is <b>on</b>: {lo} to {hi} workers{note}"
