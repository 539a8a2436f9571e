"""Client-side view of the cluster options a gateway offers.

The server describes its options as a list of fields (``GET /api/v1/options``). We
rebuild them here so users get immediate, readable validation errors while editing
options, instead of a 422 from the server at submit time. Each field class keeps its
parameters (``label``, ``min``/``max``, ``options``) as plain attributes so that a
widget can be built from it later.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, MutableMapping
from typing import Any, ClassVar

__all__ = ["Options", "Field", "String", "Bool", "Integer", "Float", "Select", "Mapping"]


def _format_bound(bound: float) -> str:
    """Format a numeric bound without spurious decimals (``4`` rather than ``4.000000``)."""
    if isinstance(bound, float) and bound.is_integer():
        return str(int(bound))
    return str(bound)


class Field:
    """One configurable option: its name, label, default and validation rule."""

    #: The ``spec.type`` value used on the wire for this field class.
    type_name: ClassVar[str] = ""

    def __init__(self, field: str, default: Any = None, label: str | None = None):
        self.field = field
        self.label = label or field
        self.default = default

    def validate(self, value: Any) -> Any:
        """Return ``value`` (possibly normalised) or raise ``TypeError``/``ValueError``."""
        raise NotImplementedError

    def get_default(self) -> Any:
        """A fresh copy of the default, so mutable defaults are never shared."""
        return copy.deepcopy(self.default)

    def __repr__(self) -> str:
        return f"{type(self).__name__}<{self.field}>"


class String(Field):
    type_name = "string"

    def __init__(self, field: str, default: str = "", label: str | None = None):
        super().__init__(field, default, label)

    def validate(self, value: Any) -> str:
        if not isinstance(value, str):
            raise TypeError(f"{self.field} must be a string, got {value!r}")
        return value


class Bool(Field):
    type_name = "bool"

    def __init__(self, field: str, default: bool = False, label: str | None = None):
        super().__init__(field, default, label)

    def validate(self, value: Any) -> bool:
        if not isinstance(value, bool):
            raise TypeError(f"{self.field} must be a bool, got {value!r}")
        return value


class _Number(Field):
    """Shared bounds checking of Integer and Float (bounds are inclusive)."""

    def __init__(
        self,
        field: str,
        default: float = 0,
        min: float | None = None,
        max: float | None = None,
        label: str | None = None,
    ):
        super().__init__(field, default, label)
        self.min = min
        self.max = max

    def _check_bounds(self, value: float) -> None:
        if self.min is not None and value < self.min:
            raise ValueError(f"{self.field} must be >= {_format_bound(self.min)}, got {value}")
        if self.max is not None and value > self.max:
            raise ValueError(f"{self.field} must be <= {_format_bound(self.max)}, got {value}")


class Integer(_Number):
    type_name = "int"

    def validate(self, value: Any) -> int:
        # bool is an int subclass, but `worker_cores=True` is never what a user means.
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{self.field} must be an integer, got {value!r}")
        self._check_bounds(value)
        return value


class Float(_Number):
    type_name = "float"

    def __init__(
        self,
        field: str,
        default: float = 0,
        min: float | None = None,
        max: float | None = None,
        label: str | None = None,
    ):
        # The server sends an integral default as-is (e.g. ``1``); show it as a float.
        if isinstance(default, int) and not isinstance(default, bool):
            default = float(default)
        super().__init__(field, default, min, max, label)

    def validate(self, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{self.field} must be a float, got {value!r}")
        value = float(value)
        self._check_bounds(value)
        return value


class Select(Field):
    type_name = "select"

    def __init__(
        self,
        field: str,
        options: list[str],
        default: str | None = None,
        label: str | None = None,
    ):
        if not options:
            raise ValueError(f"Select option {field!r} needs at least one choice")
        self.options = list(options)
        super().__init__(field, self.options[0] if default is None else default, label)

    def validate(self, value: Any) -> str:
        if value not in self.options:
            raise ValueError(f"{value!r} is not a valid option for {self.field}")
        return value


class Mapping(Field):
    type_name = "mapping"

    def __init__(self, field: str, default: dict | None = None, label: str | None = None):
        super().__init__(field, {} if default is None else default, label)

    def validate(self, value: Any) -> dict:
        if not isinstance(value, dict):
            raise TypeError(f"{self.field} must be a mapping, got {value!r}")
        return value


_FIELD_TYPES: dict[str, type[Field]] = {
    cls.type_name: cls for cls in (String, Bool, Integer, Float, Select, Mapping)
}
# Keyword arguments each field type accepts from the wire ``spec`` object. Unknown spec
# keys are ignored, so a newer server adding hints does not break this client.
_SPEC_KEYS: dict[type[Field], tuple[str, ...]] = {
    Integer: ("min", "max"),
    Float: ("min", "max"),
    Select: ("options",),
}


def field_from_spec(spec: dict[str, Any]) -> Field:
    """Build a field from one entry of the server's ``cluster_options`` list."""
    name = spec["field"]
    kind = spec["spec"]["type"]
    try:
        cls = _FIELD_TYPES[kind]
    except KeyError:
        raise ValueError(
            f"Option {name!r} has type {kind!r}, which this version of dask-gateway "
            "does not understand; a newer client may be required"
        ) from None
    extra = {k: spec["spec"][k] for k in _SPEC_KEYS.get(cls, ()) if k in spec["spec"]}
    return cls(name, default=spec.get("default"), label=spec.get("label"), **extra)


class Options(MutableMapping):
    """Cluster options offered by a gateway, validated as they are set.

    Supports both ``options["worker_cores"] = 2`` and ``options.worker_cores = 2``.
    Options can be changed but not removed: the server needs a value for each.
    """

    def __init__(self, *fields: Field, **values: Any):
        object.__setattr__(self, "_fields", {f.field: f for f in fields})
        object.__setattr__(self, "_values", {f.field: f.get_default() for f in fields})
        self.update(values)

    @classmethod
    def _from_spec(cls, spec: dict[str, Any]) -> Options:
        """Build from the JSON of ``GET /api/v1/options``: ``{"cluster_options": [...]}``."""
        return cls(*(field_from_spec(s) for s in spec["cluster_options"]))

    def _field(self, key: str) -> Field:
        try:
            return self._fields[key]
        except KeyError:
            raise KeyError(f"No option {key!r} available") from None

    def __getitem__(self, key: str) -> Any:
        self._field(key)
        return self._values[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self._values[key] = value = self._field(key).validate(value)
        for callback in self.__dict__.get("_observers", ()):
            callback(key, value)

    def _observe(self, callback: Any) -> None:
        """Call ``callback(key, value)`` after each accepted change (keeps widgets in sync)."""
        self.__dict__.setdefault("_observers", []).append(callback)

    def __getstate__(self) -> dict[str, Any]:
        # Copies and pickles carry the options, not the widgets watching this object.
        return {"_fields": self._fields, "_values": self._values}

    def _repr_mimebundle_(self, **kwargs: Any) -> dict | None:
        """An editable form in Jupyter (with ipywidgets); None falls back to the text repr."""
        from .widgets import options_mimebundle

        return options_mimebundle(self, **kwargs)

    def __delitem__(self, key: str) -> None:
        raise TypeError("Cannot delete an option; set it to another value instead")

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

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
                spec[key] = copy.deepcopy(getattr(f, key))
            out.append({"field": name, "label": f.label,
                        "default": copy.deepcopy(self._values[name]), "spec": spec})
        return out

    def __repr__(self) -> str:
        items = ", ".join(f"{k}={v!r}" for k, v in self._values.items())
        return f"Options<{items}>"
