"""The notebook widgets, driven at the model level (no browser) against a real gateway.

Widgets are built, their values set and their buttons clicked exactly as the browser
would (``button.click()`` runs the same handlers); assertions are on the ``Options``
values, the cluster's real worker count and the messages the widgets show.
"""

from __future__ import annotations

import functools
import re
import sys
from html import unescape

import ipywidgets
import pytest
from IPython.core.formatters import DisplayFormatter
from support import waiting

from dask_gateway import widgets
from dask_gateway.options import Bool, Float, Integer, Mapping, Options, Select, String
from dask_gateway.widgets import ClusterWidget, GatewayWidget, OptionsWidget

wait_for = functools.partial(waiting.wait_for, timeout=60, interval=0.1)


def text(html_widget) -> str:
    """The visible text of an HTML widget."""
    return unescape(re.sub(r"<[^>]+>", "", html_widget.value))


def n_workers(cluster) -> int:
    return len(cluster.scheduler_info["workers"])


def error_of(fn) -> str:
    try:
        fn()
    except (TypeError, ValueError) as exc:
        return str(exc)
    raise AssertionError("expected an error")


@pytest.fixture
def gw(gateway):
    g = gateway.new_gateway()
    yield g
    for report in g.list_clusters():
        g.stop_cluster(report.name)
    g.close()


def test_options_form_from_the_gateway_is_linked_both_ways(gw):
    options = gw.cluster_options()
    form = OptionsWidget(options)
    cores, memory, env = (form.inputs[k] for k in ("worker_cores", "worker_memory", "environment"))
    assert isinstance(cores, ipywidgets.FloatText) and cores.value == 1
    assert isinstance(memory, ipywidgets.FloatText) and memory.value == 1.0
    assert isinstance(env, ipywidgets.Dropdown) and env.options == ("basic", "tensorflow")
    labels = [text(row.children[0]) for row in form.widget.children[1:]]
    assert labels == ["Worker Cores", "Worker Memory (GiB)", "Environment"]
    # The server's bounds are shown with each numeric field.
    assert text(form.widget.children[1].children[2]) == "1 – 4"
    assert text(form.widget.children[2].children[2]) == "0.25 – 4"

    # Form -> Options.
    cores.value = 2
    memory.value = 0.5
    env.value = "tensorflow"
    assert dict(options) == {"worker_cores": 2, "worker_memory": 0.5, "environment": "tensorflow"}
    assert all(e.value == "" for e in form.errors.values())

    # Invalid values: the ValueError's own message next to the field, no clamping, and the
    # previous valid value stays in the Options.
    expected = error_of(lambda: setattr(gw.cluster_options(), "worker_cores", 10))
    assert expected == "worker_cores must be <= 4, got 10"
    cores.value = 10
    assert text(form.errors["worker_cores"]) == expected
    assert options.worker_cores == 2 and cores.value == 10
    cores.value = 0
    assert text(form.errors["worker_cores"]) == "worker_cores must be >= 1, got 0"
    cores.value = 2.5
    assert text(form.errors["worker_cores"]) == "worker_cores must be an integer, got 2.5"
    memory.value = 100
    assert text(form.errors["worker_memory"]) == "worker_memory must be <= 4, got 100.0"
    assert options.worker_cores == 2 and options.worker_memory == 0.5
    cores.value = 3
    assert form.errors["worker_cores"].value == "" and options.worker_cores == 3

    # Options -> form (and the stale error goes away).
    options.worker_memory = 2
    assert memory.value == 2.0 and form.errors["worker_memory"].value == ""
    options["environment"] = "basic"
    assert env.value == "basic"
    with pytest.raises(ValueError):
        options.worker_cores = 5
    assert cores.value == 3

    # What the form holds is what the gateway gets.
    cores.value = 2
    memory.value = 0.5
    name = gw.submit(options)
    try:
        assert gw.get_cluster(name).options == {
            "worker_cores": 2,
            "worker_memory": 0.5,
            "environment": "basic",
        }
    finally:
        gw.stop_cluster(name)


def test_options_form_every_field_type():
    options = Options(
        Integer("count", 1, min=1, max=8),
        Float("ratio", 0.5),
        Select("queue", options=["short", "long"]),
        Bool("gpu", False, label="Use a GPU"),
        String("image", "debian"),
        Mapping("environment", {"A": "1"}),
    )
    form = OptionsWidget(options)
    inputs = form.inputs
    assert isinstance(inputs["gpu"], ipywidgets.Checkbox)
    assert isinstance(inputs["image"], ipywidgets.Text)
    assert isinstance(inputs["environment"], ipywidgets.Textarea)
    assert inputs["environment"].value == "A: '1'"
    assert text(form.widget.children[2].children[2]) == ""  # no bounds, no hint

    inputs["gpu"].value = True
    inputs["image"].value = "ubuntu"
    inputs["queue"].value = "long"
    inputs["ratio"].value = -3.5  # unbounded: accepted as is, never clamped
    inputs["environment"].value = "A: '2'\nPATH: /opt/bin"
    assert dict(options) == {
        "count": 1,
        "ratio": -3.5,
        "queue": "long",
        "gpu": True,
        "image": "ubuntu",
        "environment": {"A": "2", "PATH": "/opt/bin"},
    }

    inputs["environment"].value = "A: [1"
    assert text(form.errors["environment"]).startswith("environment is not valid YAML:")
    inputs["environment"].value = "- a list"
    assert text(form.errors["environment"]) == error_of(
        lambda: setattr(options, "environment", ["a list"])
    )
    assert options.environment == {"A": "2", "PATH": "/opt/bin"}
    inputs["environment"].value = ""
    assert options.environment == {} and form.errors["environment"].value == ""

    options.gpu = False
    options.image = "alpine"
    options.environment = {"B": "3"}
    assert (inputs["gpu"].value, inputs["image"].value) == (False, "alpine")
    assert inputs["environment"].value == "B: '3'"
    # A second view of the same Options follows too.
    other = OptionsWidget(options)
    form.inputs["count"].value = 4
    assert other.inputs["count"].value == 4


def test_cluster_widget_scales_the_real_cluster(gw):
    cluster = gw.new_cluster(worker_memory=0.5)
    try:
        view = ClusterWidget(cluster, update_interval=0.1)
        assert text(view.name) == f"Name: {cluster.name}"
        assert text(view.status) == "Status: running"
        assert cluster.dashboard_link in view.dashboard.value
        # Adapt defaults are never 0/0.
        assert (view.adapt_minimum.value, view.adapt_maximum.value) == (0, 4)
        assert text(view.adapt_state) == "Adaptive scaling is off"

        view.scale_workers.value = 2
        view.scale_button.click()
        assert text(view.message) == "Scaling to 2 workers"
        wait_for(lambda: n_workers(cluster) == 2, what="2 real workers")
        # The table follows the worker status stream without any call from us.
        wait_for(lambda: "Workers2" in text(view.table), what="table shows 2 workers")
        assert "Memory1.00 GiB" in text(view.table)
        assert len(re.findall("dgw-worker-row", view.table.value)) == 2
        # Untouched adapt inputs follow the worker count.
        wait_for(lambda: (view.adapt_minimum.value, view.adapt_maximum.value) == (2, 4))

        # Over the gateway's limit (10): the GatewayWarning appears in the widget.
        view.adapt_minimum.value = 3
        view.adapt_maximum.value = 20
        with _no_warning_escapes():
            view.adapt_button.click()
        assert text(view.message) == (
            "Adapt with `maximum=20, minimum=3` workers would exceed resource limit of 10 "
            "workers. Using `maximum=10, minimum=3` instead."
        )
        assert text(view.adapt_state) == (
            "Adaptive scaling is on: 3 to 20 workers (limited by the gateway, see below)"
        )
        wait_for(lambda: n_workers(cluster) == 3, what="adaptive minimum of 3 workers")

        view.stop_adapt_button.click()
        assert text(view.message) == "Adaptive scaling off; keeping the current workers"
        assert text(view.adapt_state) == "Adaptive scaling is off"

        # Errors from the gateway are shown, not raised.
        view.scale_workers.value = -1
        view.scale_button.click()
        assert text(view.message) == "Scale expects a non-negative integer, got -1"
        view.adapt_minimum.value, view.adapt_maximum.value = 5, 2
        view.adapt_button.click()
        assert text(view.message) == "minimum (5) must not exceed maximum (2)"

        view.scale_workers.value = 1
        view.scale_button.click()
        wait_for(lambda: n_workers(cluster) == 1, what="scaled down to 1 worker")
        wait_for(lambda: "Workers1" in text(view.table), what="table shows 1 worker")
    finally:
        cluster.shutdown()
    wait_for(lambda: text(view.status) == "Status: closed", what="closed status")
    view.scale_button.click()
    assert text(view.message) == "The cluster is closed"
    view.close()


def test_cluster_widget_events_and_logs_sections(gw):
    """The Events and Logs sections read the real cluster's history and logs when opened (not
    before), again on Refresh, and still once the cluster has stopped."""

    def _log_on_scheduler(marker: str) -> None:  # nested: pickled by value to the scheduler
        import logging

        logging.getLogger("distributed.scheduler").warning(marker)

    cluster = gw.new_cluster(worker_memory=0.5)
    name = cluster.name
    try:
        view = ClusterWidget(cluster, update_interval=0.1)
        assert view.events_section.selected_index is None and view.events_view.value == ""
        assert view.logs_section.selected_index is None and view.logs_view.value == ""
        # Follow the history (long-polls, no sleeping) until the gateway recorded "running".
        events = cluster.events()
        while "running" not in [e.kind for e in events]:
            events += cluster.events(after=events[-1].id, wait=30)

        view.events_section.selected_index = 0  # the user opens the section
        kinds = re.findall(r"data-kind='([^']+)'", view.events_view.value)
        assert kinds[:2] == ["submitted", "starting"] and "running" in kinds, kinds
        assert [e.message for e in events][0] in text(view.events_view)

        with cluster.get_client(set_as_default=False) as client:
            client.run_on_scheduler(_log_on_scheduler, f"first marker of {name}")
            view.logs_section.selected_index = 0
            assert view.logs_component.options == ("scheduler",)
            assert view.logs_component.value == "scheduler"
            assert f"first marker of {name}" in text(view.logs_view)
            client.run_on_scheduler(_log_on_scheduler, f"second marker of {name}")
            assert f"second marker of {name}" not in text(view.logs_view)
            view.logs_refresh.click()
            assert f"second marker of {name}" in text(view.logs_view)

            cluster.scale(1)
            client.wait_for_workers(1)
        view.logs_refresh.click()
        workers = [c for c in view.logs_component.options if c.startswith("worker:")]
        assert len(workers) == 1 and view.logs_component.value == "scheduler"
        view.logs_component.value = workers[0]  # the picker shows the worker's log
        assert "dgw-log-text" in view.logs_view.value
        assert f"first marker of {name}" not in text(view.logs_view)
    finally:
        cluster.shutdown()

    # Closed: the widget reads through a connection of its own; the history goes on.
    wait_for(
        lambda: view.events_refresh.click() or "stopped" in view.events_view.value,
        what="the stopped event in the widget",
    )
    view.logs_refresh.click()
    view.logs_component.value = "scheduler"
    assert f"second marker of {name}" in text(view.logs_view)
    view.close()


class _no_warning_escapes:
    """Fail if a GatewayWarning reaches the warnings machinery instead of the widget."""

    def __enter__(self):
        import warnings

        self._cm = warnings.catch_warnings(record=True)
        self.caught = self._cm.__enter__()
        warnings.simplefilter("always")

    def __exit__(self, *exc):
        self._cm.__exit__(*exc)
        from dask_gateway import GatewayWarning

        assert not [w for w in self.caught if issubclass(w.category, GatewayWarning)]


def test_gateway_widget_lists_connects_and_shuts_down(gw):
    cluster = gw.new_cluster()
    cluster.scale(1)
    view = GatewayWidget(gw, refresh_interval=0.3)
    try:

        def row_text():
            row = view.rows.get(cluster.name)
            return row and [text(c) for c in row.box.children[:4]]

        wait_for(
            lambda: row_text() == [cluster.name, "RUNNING", "1", "Dashboard"],
            what="cluster row with 1 worker",
        )
        assert cluster.dashboard_link in view.rows[cluster.name].dashboard.value

        view.rows[cluster.name].connect.click()
        attached = view.connected[cluster.name]
        assert attached is not cluster and attached.name == cluster.name
        panel = view.connected_box.children[0]
        assert "dgw-cluster" in panel._dom_classes
        assert "Connected to" in text(view.message)

        # Both the notebook's cluster and the attached one keep their live tables: a second
        # subscriber to the scheduler's worker status stream must not replace the first.
        mine = ClusterWidget(cluster, update_interval=0.1)
        theirs = attached.__dict__["_widget_view"]
        theirs.scale_workers.value = 2
        theirs.scale_button.click()
        assert text(theirs.message) == "Scaling to 2 workers"
        wait_for(
            lambda: n_workers(cluster) == 2 and n_workers(attached) == 2,
            what="both cluster objects see 2 workers",
        )
        wait_for(
            lambda: "Workers2" in text(mine.table) and "Workers2" in text(theirs.table),
            what="both tables show 2 workers",
        )
        wait_for(lambda: row_text()[2] == "2", what="gateway row shows 2 workers")
        mine.close()

        view.rows[cluster.name].shutdown.click()
        assert text(view.message) == f"Shut down {cluster.name}"
        wait_for(lambda: cluster.name not in view.rows, what="row removed")
        wait_for(
            lambda: gw.get_cluster(cluster.name).status.name == "STOPPED",
            what="cluster stopped on the gateway",
        )
        wait_for(
            lambda: text(view.empty) == "No clusters" and view.empty.layout.display is None,
            what="empty list",
        )
    finally:
        view.close()
        cluster.close()


def test_reprs_without_widgets_or_kernel(gw, monkeypatch):
    options = gw.cluster_options()
    cluster = gw.new_cluster()
    try:
        # No kernel (plain pytest): the display hooks fall back to the text/HTML reprs.
        fmt = DisplayFormatter()
        data, _ = fmt.format(cluster)
        assert "application/vnd.jupyter.widget-view+json" not in data
        html = data["text/html"]
        assert cluster.name in html and "running" in html and cluster.dashboard_link in html
        assert fmt.format(options)[0] == {"text/plain": repr(options)}
        assert "text/html" in fmt.format(gw)[0]

        # ipywidgets not installed: still no error, and a clear one when asked directly.
        monkeypatch.setitem(sys.modules, "ipywidgets", None)
        assert not widgets.widgets_available()
        assert fmt.format(cluster)[0]["text/html"] == html
        with pytest.raises(ImportError, match="need ipywidgets"):
            OptionsWidget(options)
        monkeypatch.undo()

        # In a kernel the hooks return the widget, built once per object.
        monkeypatch.setattr(widgets, "widgets_available", lambda: True)
        bundle = cluster._repr_mimebundle_()
        model_id = bundle["application/vnd.jupyter.widget-view+json"]["model_id"]
        assert (
            cluster._repr_mimebundle_()["application/vnd.jupyter.widget-view+json"]["model_id"]
            == model_id
        )
        assert "application/vnd.jupyter.widget-view+json" in options._repr_mimebundle_()
        assert "application/vnd.jupyter.widget-view+json" in gw._repr_mimebundle_()
        gw.__dict__["_widget_view"].close()
        cluster.__dict__["_widget_view"].close()
    finally:
        cluster.shutdown()
