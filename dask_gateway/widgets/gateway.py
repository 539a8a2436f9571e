"""The gateway widget: the user's clusters, refreshed periodically, with connect and shut down.

It holds its gateway by weak reference, and refreshes on the gateway's event-loop thread.
"""

from __future__ import annotations

import asyncio
import weakref
from html import escape
from typing import TYPE_CHECKING, Any

from ._common import _ERROR_STYLE, _INFO_STYLE, _error_text, _ipywidgets, _message_html
from .cluster import ClusterWidget

if TYPE_CHECKING:  # pragma: no cover
    from ..client import Gateway


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
        wake = self._wake = asyncio.Event()
        self._task = asyncio.ensure_future(self._run(wake))

    async def _run(self, wake: asyncio.Event) -> None:
        """Refresh until the gateway is closed or collected, or ``close()`` is called."""
        try:
            while True:
                gateway = self.gateway
                if gateway is None or gateway._closed:
                    return
                await self._refresh_once(gateway)
                del gateway
                try:
                    await asyncio.wait_for(wake.wait(), self.refresh_interval)
                except asyncio.TimeoutError:
                    pass
                wake.clear()
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
        for report, count in zip(reports, counts, strict=True):
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
