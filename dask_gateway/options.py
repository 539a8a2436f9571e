"""Client-side view of the cluster options a gateway offers.

The server describes its options as a list of fields (``GET /api/v1/options``). We
rebuild them here so users get immediate, readable validation errors while editing
options, instead of a 422 from the server at submit time.

The field classes have the public dask-gateway client's signatures,
``(field, default, label=None, ...)`` with the type's own parameters after ``label``
(``Select(field, default, label=None, options=None)``,
``Integer(field, default, label=None, min=None, max=None)``), and like them each field
holds its current ``value`` (``get()``/``set()``); an ``Options`` is a mapping over its
fields. Each field keeps its parameters (``label``, ``min``/``max``, ``options``) as plain
attributes so that a widget can be built from it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, MutableMapping, Sequence
from typing import Any, ClassVar

__all__ = [
    "Bool",
    "Field",
    "Float",
    "Integer",
    "Mapping",
    "Number",
    "Options",
    "Select",
    "String",
    "register_field_type",
]


def _format_bound(bound: float) -> str:
    """Format a numeric bound without spurious decimals (``4`` rather than ``4.000000``)."""
    if isinstance(bound, float) and bound.is_integer():
        return str(int(bound))
    return str(bound)


class Field:
    """One configurable option: its name, label, current value and validation rule.

    ``default`` is validated like any value, so a field never holds an invalid one.
    """

    #: The ``spec.type`` value used on the wire for this field class.
    type_name: ClassVar[str] = ""

    def __init__(self, field: str, default: Any = None, label: str | None = None):
        self.field = field
        self.label = label or field
        self.default = self.validate(default)
        #: The current value (``Options`` reads and writes it through ``get``/``set``).
        self.value = copy.deepcopy(self.default)

    def validate(self, value: Any) -> Any:
        """Return ``value`` (possibly normalised) or raise ``TypeError``/``ValueError``."""
        raise NotImplementedError

    def get(self) -> Any:
        """The current value."""
        return self.value

    def set(self, value: Any) -> None:
        """Validate and store ``value``; an invalid value leaves the old one in place."""
        self.value = self.validate(value)
        for callback in list(self.__dict__.get("_observers", ())):
            callback(self.field, self.value)

    def get_default(self) -> Any:
        """A fresh copy of the default, so mutable defaults are never shared."""
        return copy.deepcopy(self.default)

    def widget(self) -> tuple[Any, Any, Any]:
        """``(label, input, status)`` ipywidgets editing this field (needs ipywidgets).

        The public client's per-field form row; ``Options`` shows the whole form itself.
        """
        from .widgets import OptionsWidget

        form = OptionsWidget(Options(self))
        return form.labels[self.field], form.inputs[self.field], form.errors[self.field]

    def _observe(self, callback: Callable[[str, Any], None]) -> None:
        """Call ``callback(field, value)`` after each accepted ``set`` (keeps widgets in sync)."""
        self.__dict__.setdefault("_observers", []).append(callback)

    def __getstate__(self) -> dict[str, Any]:
        # Copies and pickles carry the field, not the widgets watching it.
        state = dict(self.__dict__)
        state.pop("_observers", None)
        return state

    def __repr__(self) -> str:
        return f"{type(self).__name__}<{self.field}>"


_FIELD_TYPES: dict[str, type[Field]] = {}


def register_field_type(name: str) -> Callable[[type[Field]], type[Field]]:
    """Class decorator: build fields of wire type ``name`` (``spec.type``) with this class.

    The class is called as ``cls(field, default, label=label, **spec)`` with the spec's
    other keys, so a site can teach the client a field type its gateway offers.
    """

    def register(cls: type[Field]) -> type[Field]:
        cls.type_name = name
        _FIELD_TYPES[name] = cls
        return cls

    return register


@register_field_type("string")
class String(Field):
    """A string option."""

    def __init__(self, field: str, default: str = "", label: str | None = None):
        super().__init__(field, default, label)

    def validate(self, value: Any) -> str:
        if not isinstance(value, str):
            raise TypeError(f"{self.field} must be a string, got {value!r}")
        return value


@register_field_type("bool")
class Bool(Field):
    """A boolean option."""

    def __init__(self, field: str, default: bool = False, label: str | None = None):
        super().__init__(field, default, label)

    def validate(self, value: Any) -> bool:
        if not isinstance(value, bool):
            raise TypeError(f"{self.field} must be a bool, got {value!r}")
        return value


def _check_bound(field: str, name: str, bound: Any) -> Any:
    if bound is not None and (isinstance(bound, bool) or not isinstance(bound, (int, float))):
        raise TypeError(f"{field}: {name} must be a number or None, got {bound!r}")
    return bound


class Number(Field):
    """Shared bounds checking of Integer and Float (bounds are inclusive).

    Without a ``default`` the field starts at ``min`` (or 0 when unbounded below).
    """

    def __init__(
        self,
        field: str,
        default: float | None = None,
        label: str | None = None,
        min: float | None = None,
        max: float | None = None,
    ):
        self.min = _check_bound(field, "min", min)
        self.max = _check_bound(field, "max", max)
        if min is not None and max is not None and min > max:
            raise ValueError(f"{field}: min ({min}) must be <= max ({max})")
        if default is None:
            default = 0 if min is None else min
        super().__init__(field, default, label)

    def _check_bounds(self, value: float) -> None:
        if self.min is not None and value < self.min:
            raise ValueError(f"{self.field} must be >= {_format_bound(self.min)}, got {value}")
        if self.max is not None and value > self.max:
            raise ValueError(f"{self.field} must be <= {_format_bound(self.max)}, got {value}")


@register_field_type("int")
class Integer(Number):
    """An integer option (``True``/``False`` are refused: they are not counts)."""

    def validate(self, value: Any) -> int:
        # bool is an int subclass, but `worker_cores=True` is never what a user means.
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{self.field} must be an integer, got {value!r}")
        self._check_bounds(value)
        return value


@register_field_type("float")
class Float(Number):
    """A float option; integers are accepted and stored as floats."""

    def validate(self, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{self.field} must be a float, got {value!r}")
        value = float(value)
        self._check_bounds(value)
        return value


@register_field_type("select")
class Select(Field):
    """One of a fixed tuple of string ``options``; without a ``default``, the first."""

    def __init__(
        self,
        field: str,
        default: str | None = None,
        label: str | None = None,
        options: Sequence[str] | None = None,
    ):
        if options is None:
            hint = (
                " (the second argument is the default: pass the choices as options=[...])"
                if isinstance(default, (list, tuple))
                else ""
            )
            raise TypeError(
                f"Select option {field!r} needs its choices: "
                f"Select(field, default, label=None, options=[...]){hint}"
            )
        if isinstance(options, str) or not isinstance(options, Sequence):
            raise TypeError(
                f"Select option {field!r}: options must be a sequence of strings, got {options!r}"
            )
        if not options:
            raise ValueError(f"Select option {field!r} needs at least one choice")
        for choice in options:
            if not isinstance(choice, str):
                raise TypeError(f"Select options must be strings, got {choice!r}")
        self.options = tuple(options)
        super().__init__(field, self.options[0] if default is None else default, label)

    def validate(self, value: Any) -> str:
        if not isinstance(value, str):
            raise TypeError(f"{self.field} must be a string, got {value!r}")
        if value not in self.options:
            raise ValueError(f"{value!r} is not a valid option for {self.field}")
        return value


@register_field_type("mapping")
class Mapping(Field):
    """A dict option (e.g. environment variables); without a ``default``, empty."""

    def __init__(self, field: str, default: dict | None = None, label: str | None = None):
        super().__init__(field, {} if default is None else default, label)

    def validate(self, value: Any) -> dict:
        if not isinstance(value, dict):
            raise TypeError(f"{self.field} must be a mapping, got {value!r}")
        return value

    def transform(self, value: dict) -> str:
        """``value`` as the YAML text a form shows ("" when empty)."""
        if not value:
            return ""
        import yaml

        try:
            return yaml.safe_dump(value, default_flow_style=False, sort_keys=False)
        except yaml.YAMLError:
            raise ValueError(f"{self.field} must be JSON serializable") from None


# Keyword arguments each built-in field type accepts from the wire ``spec`` object. Unknown
# spec keys are ignored, so a newer server adding hints does not break this client. Types
# added with ``register_field_type`` get every spec key.
_SPEC_KEYS: dict[type[Field], tuple[str, ...]] = {
    String: (),
    Bool: (),
    Integer: ("min", "max"),
    Float: ("min", "max"),
    Select: ("options",),
    Mapping: (),
}


def field_from_spec(spec: dict[str, Any]) -> Field:
    """Build a field from one entry of the server's ``cluster_options`` list."""
    name = spec["field"]
    type_spec = dict(spec["spec"])
    kind = type_spec.pop("type")
    try:
        cls = _FIELD_TYPES[kind]
    except KeyError:
        raise ValueError(
            f"Option {name!r} has type {kind!r}, which this version of dask-gateway "
            "does not understand; a newer client may be required"
        ) from None
    keys = _SPEC_KEYS.get(cls)
    extra = type_spec if keys is None else {k: type_spec[k] for k in keys if k in type_spec}
    # A null default means the field type's own (e.g. "" for a string).
    if spec.get("default") is None:
        return cls(name, label=spec.get("label"), **extra)
    return cls(name, spec["default"], label=spec.get("label"), **extra)


class Options(MutableMapping):
    """Cluster options offered by a gateway, validated as they are set.

    Supports both ``options["worker_cores"] = 2`` and ``options.worker_cores = 2``.
    Options can be changed but not removed: the server needs a value for each. The
    values live in the fields (``Field.value``).
    """

    def __init__(self, *fields: Field, **values: Any):
        object.__setattr__(self, "_fields", {f.field: f for f in fields})
        self.update(values)

    @classmethod
    def _from_spec(cls, spec: dict[str, Any] | list[dict[str, Any]]) -> Options:
        """Build from the JSON of ``GET /api/v1/options`` (``{"cluster_options": [...]}``)
        or from its list alone, as the public client does."""
        fields = spec["cluster_options"] if isinstance(spec, dict) else spec
        return cls(*(field_from_spec(s) for s in fields))

    def _field(self, key: str) -> Field:
        try:
            return self._fields[key]
        except KeyError:
            raise KeyError(f"No option {key!r} available") from None

    def __getitem__(self, key: str) -> Any:
        return self._field(key).get()

    def __setitem__(self, key: str, value: Any) -> None:
        self._field(key).set(value)

    def _observe(self, callback: Callable[[str, Any], None]) -> None:
        """Call ``callback(key, value)`` after each accepted change (keeps widgets in sync)."""
        for field in self._fields.values():
            field._observe(callback)

    def __getstate__(self) -> dict[str, Any]:
        # Copies and pickles carry the options, not the widgets watching this object.
        return {"_fields": self._fields}

    def _repr_mimebundle_(self, **kwargs: Any) -> dict | None:
        """An editable form in Jupyter (with ipywidgets); None falls back to the text repr."""
        from .widgets import options_mimebundle

        return options_mimebundle(self, **kwargs)

    def __delitem__(self, key: str) -> None:
        raise TypeError("Cannot delete an option; set it to another value instead")

    def __iter__(self) -> Iterator[str]:
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)

    def __getattr__(self, key: str) -> Any:
        if key.startswith("_"):
            raise AttributeError(key)
        try:
            return self[key]
        except KeyError as exc:
            raise AttributeError(exc.args[0]) from None

    def __setattr__(self, key: str, value: Any) -> None:
        try:
            self[key] = value
        except KeyError as exc:
            raise AttributeError(exc.args[0]) from None

    def __delattr__(self, key: str) -> None:
        del self[key]

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(self._fields))

    def get_specification(self) -> list[dict[str, Any]]:
        """The fields in the wire format of ``GET /api/v1/options``, current values as defaults.

        Lets a form elsewhere (a browser) offer exactly these fields and bounds.
        """
        out = []
        for name, f in self._fields.items():
            spec: dict[str, Any] = {"type": f.type_name}
            for key in _SPEC_KEYS.get(type(f), ()):
                value = getattr(f, key)
                spec[key] = list(value) if isinstance(value, tuple) else copy.deepcopy(value)
            out.append(
                {"field": name, "label": f.label, "default": copy.deepcopy(f.value), "spec": spec}
            )
        return out

    def __repr__(self) -> str:
        items = ", ".join(f"{k}={f.value!r}" for k, f in self._fields.items())
        return f"Options<{items}>"
