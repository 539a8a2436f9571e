"""The options form: an ``Options`` object as ipywidgets inputs, linked both ways.

Numbers are edited in ``FloatText`` inputs, not ``BoundedIntText``/``IntText``: the
bounded inputs clamp out-of-range values in the browser without telling anyone, and
``IntText`` silently truncates ``2.5`` to ``2``. Instead every value goes through the
same ``Field.validate`` the ``Options`` object uses, so the form shows exactly the
message a ``ValueError``/``TypeError`` would carry, and the bounds are shown as a hint.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from html import escape
from typing import Any

import yaml

from ..options import Bool, Field, Float, Integer, Mapping, Options, Select, String
from ._common import _ERROR_STYLE, _LABEL_WIDTH, _ipywidgets, _message_html

logger = logging.getLogger(__name__)


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
        new: Any
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
