"""Interactive notebook views of ``Options``, ``GatewayCluster`` and ``Gateway``.

ipywidgets is optional: this module imports it only when a widget is built, and the
display hooks (``_repr_mimebundle_`` on the client objects) fall back to the plain
text/HTML reprs when it is missing or when no Jupyter kernel is running.

Design notes (why it looks the way it does):

* Numbers are edited in ``FloatText`` inputs, not ``BoundedIntText``/``IntText``: the
  bounded inputs clamp out-of-range values in the browser without telling anyone, and
  ``IntText`` silently truncates ``2.5`` to ``2``. Instead every value goes through the
  same ``Field.validate`` the ``Options`` object uses, so the form shows exactly the
  message a ``ValueError``/``TypeError`` would carry, and the bounds are shown as a hint.
* Live updates run on the gateway's event-loop thread (where ``scheduler_info`` is
  mutated by the scheduler's worker status stream), so reads never race with writes.
* Widgets hold clusters and gateways by weak reference: showing a cluster must not keep
  it alive after the user drops it (its garbage collection is what shuts it down).
* The gateway's cluster JSON carries no worker count nor the cluster's worker limit.
  Adapt defaults are therefore derived: minimum = current worker count, maximum =
  ``max(2 * current, minimum, 4)`` (see ``default_adapt_range``). The gateway still
  clamps to its own limit, and its warning is shown in the widget.
"""

from __future__ import annotations

import asyncio
import logging
import warnings
import weakref
from collections.abc import Callable
from html import escape
from typing import TYPE_CHECKING, Any

import yaml
from dask.utils import format_bytes

from .errors import GatewayWarning
from .options import Bool, Field, Float, Integer, Mapping, Options, Select, String

if TYPE_CHECKING:  # pragma: no cover
    from .client import Gateway, GatewayCluster

__all__ = [
    "ClusterWidget",
    "GatewayWidget",
    "OptionsWidget",
    "default_adapt_range",
    "widgets_available",
]

logger = logging.getLogger(__name__)

_ERROR_STYLE = "color: #c62828"
_WARNING_STYLE = "color: #b26a00"
_INFO_STYLE = "color: #2e7d32"
_LABEL_WIDTH = "170px"


def _ipywidgets() -> Any:
    """Import ipywidgets, with a clear message when it is not installed."""
    try:
        import ipywidgets
    except ImportError:
        raise ImportError(
            "The dask-gateway notebook widgets need ipywidgets: "
            "`pip install ipywidgets` (or the `jupyter` extra)"
        ) from None
    return ipywidgets


def widgets_available() -> bool:
    """True when widgets can be shown: ipywidgets installed and a Jupyter kernel running.

    Outside a kernel (plain Python, terminal IPython) a widget would only print as
    ``VBox(...)``, so the text/HTML reprs are the better display there.
    """
    try:
        import ipywidgets  # noqa: F401
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def _mimebundle(obj: Any, build: Callable[[Any], Any], **kwargs: Any) -> dict | None:
    """The widget's mime bundle, or None so IPython falls back to the other reprs.

    The widget is built once per object and cached on it, so displaying an object
    twice shows two live views of the same state. Any failure falls back silently:
    a repr must never raise.
    """
    if not widgets_available():
        return None
    try:
        view = obj.__dict__.get("_widget_view")
        if view is None:
            view = build(obj)
            obj.__dict__["_widget_view"] = view
        return view.widget._repr_mimebundle_(**kwargs)
    except Exception:
        logger.debug("Could not build a widget for %r", obj, exc_info=True)
        return None


def _message_html(text: str, style: str) -> str:
    return f'<div style="{style}; white-space: pre-wrap">{escape(text)}</div>' if text else ""


def _error_text(exc: BaseException) -> str:
    """What the user reads: the gateway's own message (its type name only if empty)."""
    return str(exc) or type(exc).__name__


def _link_html(url: str | None) -> str:
    if not url:
        return "Not Available"
    url = escape(url)
    return f'<a href="{url}" target="_blank">{url}</a>'


# ---------------------------------------------------------------------- options


def _bounds_hint(field: Field) -> str:
    lo, hi = getattr(field, "min", None), getattr(field, "max", None)
    if lo is None and hi is None:
        return ""
    if lo is None:
        return f"≤ {hi:g}"
    if hi is None:
        return f"≥ {lo:g}"
    return f"{lo:g} – {hi:g}"


class OptionsWidget:
    """A form for an ``Options`` object, linked both ways.

    Editing a field validates the value with the field's own rule and stores it in the
    ``Options``; an invalid value keeps the previous valid one in ``Options`` and shows
    the validation message next to the field. Assigning ``options.x = ...`` in code
    updates the form.
    """

    def __init__(self, options: Options):
        w = _ipywidgets()
        self.options = options
        #: field name -> input widget
        self.inputs: dict[str, Any] = {}
        #: field name -> HTML widget showing that field's error (empty when valid)
        self.errors: dict[str, Any] = {}
        #: field name -> HTML widget showing its label
        self.labels: dict[str, Any] = {}
        self._updating = False
        rows = []
        for name, field in options._fields.items():
            widget = self._make_input(w, field, options[name])
            widget.add_class(f"dgw-option-{name}")
            error = w.HTML(value="", layout=w.Layout(margin="0 0 0 8px"))
            error.add_class("dgw-option-error")
            hint = w.HTML(
                value=f'<span style="color: #757575">{escape(_bounds_hint(field))}</span>',
                layout=w.Layout(margin="0 0 0 8px"),
            )
            label = w.HTML(
                value=f"<b>{escape(field.label)}</b>", layout=w.Layout(width=_LABEL_WIDTH)
            )
            widget.observe(self._on_widget_change(field), names="value")
            self.inputs[name] = widget
            self.errors[name] = error
            self.labels[name] = label
            rows.append(w.HBox([label, widget, hint, error]))
        title = w.HTML(value="<h3 style='margin: 0 0 6px 0'>Cluster options</h3>")
        self.widget = w.VBox([title, *rows])
        self.widget.add_class("dgw-options")
        options._observe(self._on_options_change)

    @staticmethod
    def _make_input(w: Any, field: Field, value: Any) -> Any:
        layout = w.Layout(width="220px")
        if isinstance(field, Bool):
            return w.Checkbox(value=value, indent=False, layout=layout)
        if isinstance(field, Select):
            return w.Dropdown(options=list(field.options), value=value, layout=layout)
        if isinstance(field, Integer):
            return w.FloatText(value=value, step=1, layout=layout)
        if isinstance(field, Float):
            return w.FloatText(value=value, step=0.25, layout=layout)
        if isinstance(field, Mapping):
            return w.Textarea(
                value=_dump_mapping(value),
                placeholder="KEY: value (YAML)",
                continuous_update=False,
                layout=w.Layout(width="320px", height="80px"),
            )
        if isinstance(field, String):
            return w.Text(value=value, layout=layout)
        # An unknown field type (a subclass this widget does not know): edit as YAML.
        return w.Text(value=yaml.safe_dump(value).strip(), continuous_update=False, layout=layout)

    def _parse(self, field: Field, raw: Any) -> Any:
        if isinstance(field, Integer) and isinstance(raw, float) and raw.is_integer():
            return int(raw)
        if isinstance(field, Mapping):
            try:
                parsed = yaml.safe_load(raw)
            except yaml.YAMLError as exc:
                raise ValueError(f"{field.field} is not valid YAML: {exc}") from None
            return {} if parsed is None else parsed
        if not isinstance(field, (Bool, Select, Integer, Float, String)):
            try:
                return yaml.safe_load(raw)
            except yaml.YAMLError as exc:
                raise ValueError(f"{field.field} is not valid YAML: {exc}") from None
        return raw

    def _on_widget_change(self, field: Field) -> Callable[[dict], None]:
        def handler(change: dict) -> None:
            if self._updating:
                return
            try:
                value = self._parse(field, change["new"])
                # Through the Options object, so its observers (other views) follow.
                self.options[field.field] = value
            except (TypeError, ValueError) as exc:
                self.errors[field.field].value = _message_html(str(exc), _ERROR_STYLE)
            else:
                self.errors[field.field].value = ""

        return handler

    def _on_options_change(self, key: str, value: Any) -> None:
        # Called from ``options[key] = value`` in user code: a display problem must
        # never turn a valid assignment into an error.
        try:
            self._show_value(key, value)
        except Exception:
            logger.debug("Could not show %s=%r in the options form", key, value, exc_info=True)

    def _show_value(self, key: str, value: Any) -> None:
        widget = self.inputs.get(key)
        if widget is None:
            return
        field = self.options._fields[key]
        if isinstance(field, Mapping):
            try:
                if self._parse(field, widget.value) == value:
                    self.errors[key].value = ""
                    return
            except ValueError:
                pass
            new = _dump_mapping(value)
        elif isinstance(field, (Integer, Float)):
            new = float(value)
        else:
            new = value
        self._updating = True
        try:
            widget.value = new
        finally:
            self._updating = False
        self.errors[key].value = ""


def _dump_mapping(value: dict) -> str:
    return yaml.safe_dump(value, default_flow_style=False, sort_keys=False).strip() if value else ""


# ---------------------------------------------------------------------- cluster


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
            ]
        )
        self.widget.add_class("dgw-cluster")
        self._render_adapt_state()
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

    def _act(self, fn: Callable[[], Any], done: str) -> bool:
        """Run a gateway request; show its outcome, warnings and errors in the widget."""
        self._warned = False
        cluster = self.cluster
        if cluster is None or cluster.status == "closed":
            self._show("The cluster is closed", _ERROR_STYLE)
            return False
        try:
            _, warned = _run_reporting_warnings(fn)
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
        cluster = self.cluster
        ok = self._act(lambda: cluster.scale(n), f"Scaling to {n} workers")
        if ok:
            self.adaptive = None
            self._render_adapt_state()
        return ok

    def adapt(self, minimum: int, maximum: int) -> bool:
        """Scale adaptively between ``minimum`` and ``maximum`` workers."""
        cluster = self.cluster
        ok = self._act(
            lambda: cluster.adapt(minimum=minimum, maximum=maximum),
            f"Adapting between {minimum} and {maximum} workers",
        )
        if ok:
            self.adaptive = (minimum, maximum)
            self._render_adapt_state()
        return ok

    def stop_adapting(self) -> bool:
        """Turn adaptive scaling off; the current workers are kept."""
        cluster = self.cluster
        ok = self._act(
            lambda: cluster.adapt(active=False), "Adaptive scaling off; keeping the current workers"
        )
        if ok:
            self.adaptive = None
            self._render_adapt_state()
        return ok

    def _render_adapt_state(self) -> None:
        if self.adaptive is None:
            self.adapt_state.value = "Adaptive scaling is <b>off</b>"
        else:
            lo, hi = self.adaptive
            note = " (limited by the gateway, see below)" if self._warned else ""
            self.adapt_state.value = f"Adaptive scaling is <b>on</b>: {lo} to {hi} workers{note}"


# ---------------------------------------------------------------------- gateway


class _ClusterRow:
    """The widgets of one cluster in the gateway widget."""

    def __init__(self, w: Any, owner: GatewayWidget, name: str):
        self.name = w.HTML(
            value=f"<span class='dgw-row-name'>{escape(name)}</span>",
            layout=w.Layout(width="280px"),
        )
        self.status = w.HTML(layout=w.Layout(width="90px"))
        self.workers = w.HTML(layout=w.Layout(width="70px"))
        self.dashboard = w.HTML(layout=w.Layout(width="100px"))
        self.connect = w.Button(description="Connect", layout=w.Layout(width="90px"))
        self.connect.add_class("dgw-connect-button")
        self.shutdown = w.Button(
            description="Shut down", button_style="danger", layout=w.Layout(width="100px")
        )
        self.shutdown.add_class("dgw-shutdown-button")
        self.connect.on_click(lambda _: owner.connect(name))
        self.shutdown.on_click(lambda _: owner.shutdown(name))
        self.box = w.HBox(
            [self.name, self.status, self.workers, self.dashboard, self.connect, self.shutdown]
        )
        self.box.add_class("dgw-cluster-row")


async def _worker_count(report: Any, rpcs: dict[str, Any], timeout: float) -> int | None:
    """Ask a running cluster's scheduler how many workers it has (None if unreachable)."""
    from distributed.core import rpc

    if report.security is None or report.scheduler_address is None:
        return None
    r = rpcs.get(report.name)
    if r is None:
        r = rpcs[report.name] = rpc(
            report.scheduler_address,
            connection_args=report.security.get_connection_args("client"),
        )
    try:
        ident = await asyncio.wait_for(r.identity(n_workers=0), timeout)
    except Exception:
        return None
    n = ident.get("n_workers")
    return len(ident.get("workers", {})) if n is None else int(n)


class GatewayWidget:
    """The user's clusters with status, workers and dashboard links, refreshed periodically.

    Each row has "Connect" (shows that cluster's widget below the list; the
    ``GatewayCluster`` is kept in ``connected``) and "Shut down". Worker counts are not
    part of the gateway's cluster JSON, so they are asked of each running scheduler.
    """

    def __init__(
        self, gateway: Gateway, refresh_interval: float = 5.0, request_timeout: float = 5.0
    ):
        w = _ipywidgets()
        self._w = w
        self._gateway_ref = weakref.ref(gateway)
        self._loop = gateway.loop
        self.refresh_interval = refresh_interval
        self.request_timeout = request_timeout
        #: cluster name -> GatewayCluster attached with "Connect"
        self.connected: dict[str, Any] = {}
        self.rows: dict[str, _ClusterRow] = {}
        self._rpcs: dict[str, Any] = {}
        self._task: asyncio.Task | None = None
        self._wake: asyncio.Event | None = None
        self.refreshed = 0  # completed refreshes, for tests and diagnostics

        self.title = w.HTML(
            value=f"<h2 style='margin: 0'>Gateway</h2><div>{escape(gateway.address)}</div>"
        )
        header = w.HBox(
            [
                w.HTML(f"<b>{t}</b>", layout=w.Layout(width=width))
                for t, width in (
                    ("Cluster", "280px"),
                    ("Status", "90px"),
                    ("Workers", "70px"),
                    ("Dashboard", "100px"),
                )
            ]
        )
        self.list = w.VBox([])
        self.list.add_class("dgw-cluster-list")
        self.empty = w.HTML("<i>No clusters</i>")
        self.message = w.HTML()
        self.message.add_class("dgw-message")
        self.refresh_button = w.Button(description="Refresh")
        self.refresh_button.on_click(lambda _: self.refresh())
        self.connected_box = w.VBox([])
        self.widget = w.VBox(
            [
                self.title,
                header,
                self.list,
                self.empty,
                w.HBox([self.refresh_button]),
                self.message,
                self.connected_box,
            ]
        )
        self.widget.add_class("dgw-gateway")
        self._loop.add_callback(self._start)

    @property
    def gateway(self) -> Gateway | None:
        return self._gateway_ref()

    def _start(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        """Refresh until the gateway is closed or collected, or ``close()`` is called."""
        try:
            while True:
                gateway = self.gateway
                if gateway is None or gateway._closed:
                    return
                await self._refresh_once(gateway)
                del gateway
                try:
                    await asyncio.wait_for(self._wake.wait(), self.refresh_interval)
                except asyncio.TimeoutError:
                    pass
                self._wake.clear()
        finally:
            rpcs, self._rpcs = self._rpcs, {}
            for r in rpcs.values():
                await r.close_rpc()

    async def _refresh_once(self, gateway: Gateway) -> None:
        try:
            reports = await asyncio.wait_for(gateway._list_clusters(), self.request_timeout)
        except Exception as exc:
            self.message.value = _message_html(f"Could not list clusters: {exc}", _ERROR_STYLE)
            return
        counts = await asyncio.gather(
            *(_worker_count(r, self._rpcs, self.request_timeout) for r in reports)
        )
        for name in set(self._rpcs) - {r.name for r in reports}:
            await self._rpcs.pop(name).close_rpc()
        self._render(reports, counts)
        self.refreshed += 1

    def _render(self, reports: list[Any], counts: list[int | None]) -> None:
        w = self._w
        for name in set(self.rows) - {r.name for r in reports}:
            self.rows.pop(name).box.close()
        for report, count in zip(reports, counts):
            row = self.rows.get(report.name)
            if row is None:
                row = self.rows[report.name] = _ClusterRow(w, self, report.name)
            row.status.value = escape(report.status.name)
            row.workers.value = "–" if count is None else str(count)
            row.dashboard.value = (
                f'<a href="{escape(report.dashboard_link)}" target="_blank">Dashboard</a>'
                if report.dashboard_link
                else "–"
            )
        self.list.children = [self.rows[r.name].box for r in reports]
        self.empty.layout.display = "none" if reports else None

    def refresh(self) -> None:
        """Refresh now instead of at the next period."""
        if self._wake is not None:
            self._loop.add_callback(self._wake.set)

    def close(self) -> None:
        """Stop refreshing and close the widgets (connected clusters stay open)."""
        if self._task is not None:
            self._loop.add_callback(self._task.cancel)
        self.widget.close()

    def connect(self, name: str) -> Any:
        """Attach to cluster ``name`` and show its widget below the list."""
        gateway = self.gateway
        if gateway is None:
            return None
        self.message.value = _message_html(f"Connecting to {name} …", _INFO_STYLE)
        try:
            cluster = self.connected.get(name)
            if cluster is None or cluster.status == "closed":
                cluster = gateway.connect(name)
                self.connected[name] = cluster
            view = ClusterWidget(cluster)
            cluster.__dict__["_widget_view"] = view
        except Exception as exc:
            self.message.value = _message_html(_error_text(exc), _ERROR_STYLE)
            return None
        self.connected_box.children = [view.widget]
        self.message.value = _message_html(
            f"Connected to {name}: it is in `widget.connected[{name!r}]`, or run "
            f"`cluster = gateway.connect({name!r})`",
            _INFO_STYLE,
        )
        return cluster

    def shutdown(self, name: str) -> bool:
        """Stop cluster ``name``."""
        gateway = self.gateway
        if gateway is None:
            return False
        try:
            cluster = self.connected.pop(name, None)
            if cluster is not None:
                cluster.shutdown()
            else:
                gateway.stop_cluster(name)
        except Exception as exc:
            self.message.value = _message_html(_error_text(exc), _ERROR_STYLE)
            return False
        self.message.value = _message_html(f"Shut down {name}", _INFO_STYLE)
        self.refresh()
        return True


# ---------------------------------------------------------------------- hooks


def options_mimebundle(options: Options, **kwargs: Any) -> dict | None:
    return _mimebundle(options, OptionsWidget, **kwargs)


def cluster_mimebundle(cluster: GatewayCluster, **kwargs: Any) -> dict | None:
    if cluster._asynchronous:  # buttons would block the loop they need; use the HTML repr
        return None
    return _mimebundle(cluster, ClusterWidget, **kwargs)


def gateway_mimebundle(gateway: Gateway, **kwargs: Any) -> dict | None:
    if gateway._asynchronous:
        return None
    return _mimebundle(gateway, GatewayWidget, **kwargs)
