"""Cluster options an admin offers to users (``c.Backend.cluster_options``).

A field validates what a user sends, describes itself to clients (the spec JSON), and maps the
user's choice to a ``ClusterConfig`` trait (``target``, ``transform``).
"""

from __future__ import annotations

import copy
import inspect
import math
import numbers
from collections.abc import Callable
from collections.abc import Mapping as MappingABC
from typing import Any

__all__ = ["Options", "String", "Bool", "Integer", "Float", "Select", "Mapping"]


def _fmt(x: float) -> str:
    """Show ``4`` rather than ``4.000000`` in messages."""
    if isinstance(x, float) and x.is_integer():
        return str(int(x))
    return str(x)


class Field:
    type_name = ""

    def __init__(
        self, field: str, default: Any = None, label: str | None = None, target: str | None = None
    ):
        self.field = field
        self.label = label or field
        self.target = target or field
        self.default = self.validate(default)

    def json_spec(self) -> dict:
        return {"type": self.type_name}

    def json(self) -> dict:
        return {
            "field": self.field,
            "label": self.label,
            "default": self.default,
            "spec": self.json_spec(),
        }

    def validate(self, x: Any) -> Any:
        raise NotImplementedError

    def transform(self, x: Any) -> Any:
        return x


class String(Field):
    type_name = "string"

    def __init__(
        self, field: str, default: str = "", label: str | None = None, target: str | None = None
    ):
        super().__init__(field, default, label, target)

    def validate(self, x: Any) -> str:
        if not isinstance(x, str):
            raise TypeError(f"{self.field} must be a string, got {x!r}")
        return x


class Bool(Field):
    type_name = "bool"

    def __init__(
        self, field: str, default: bool = False, label: str | None = None, target: str | None = None
    ):
        super().__init__(field, default, label, target)

    def validate(self, x: Any) -> bool:
        if not isinstance(x, bool):
            raise TypeError(f"{self.field} must be a bool, got {x!r}")
        return x


class _Number(Field):
    def __init__(
        self,
        field: str,
        default: Any = 0,
        min: Any = None,
        max: Any = None,
        label: str | None = None,
        target: str | None = None,
    ):
        self.min = min
        self.max = max
        super().__init__(field, default, label, target)

    def _check_bounds(self, x: float) -> None:
        if self.min is not None and x < self.min:
            raise ValueError(f"{self.field} must be >= {_fmt(self.min)}, got {_fmt(x)}")
        if self.max is not None and x > self.max:
            raise ValueError(f"{self.field} must be <= {_fmt(self.max)}, got {_fmt(x)}")

    def json_spec(self) -> dict:
        return {"type": self.type_name, "min": self.min, "max": self.max}


class Integer(_Number):
    type_name = "int"

    def validate(self, x: Any) -> int:
        # bool is an int subclass; refusing it catches `true` sent for a number.
        if not isinstance(x, int) or isinstance(x, bool):
            raise TypeError(f"{self.field} must be an integer, got {x!r}")
        self._check_bounds(x)
        return x


class Float(_Number):
    type_name = "float"

    def __init__(
        self,
        field: str,
        default: Any = 0,
        min: Any = None,
        max: Any = None,
        label: str | None = None,
        target: str | None = None,
    ):
        min = None if min is None else float(min)
        max = None if max is None else float(max)
        super().__init__(field, default, min, max, label, target)

    def validate(self, x: Any) -> float:
        if not isinstance(x, numbers.Real) or isinstance(x, bool):
            raise TypeError(f"{self.field} must be a number, got {x!r}")
        x = float(x)
        if not math.isfinite(x):
            raise ValueError(f"{self.field} must be a finite number, got {x!r}")
        self._check_bounds(x)
        return x


class Select(Field):
    """A choice among keys; values (``(key, value)`` pairs) never leave the server."""

    type_name = "select"

    def __init__(
        self,
        field: str,
        options: list,
        default: Any = None,
        label: str | None = None,
        target: str | None = None,
    ):
        if not options:
            raise ValueError("Select requires at least one option")
        self.choices: dict[str, Any] = {}
        for opt in options:
            key, value = opt if isinstance(opt, tuple) else (opt, opt)
            if not isinstance(key, str):
                raise TypeError(f"Select option keys must be strings, got {key!r}")
            self.choices[key] = value
        if default is None:
            default = next(iter(self.choices))
        super().__init__(field, default, label, target)

    def json_spec(self) -> dict:
        return {"type": "select", "options": list(self.choices)}

    def validate(self, x: Any) -> str:
        if not isinstance(x, str) or x not in self.choices:
            raise ValueError(f"{x!r} is not a valid option for {self.field}")
        return x

    def transform(self, x: str) -> Any:
        return self.choices[x]


class Mapping(Field):
    type_name = "mapping"

    def __init__(
        self,
        field: str,
        default: dict | None = None,
        label: str | None = None,
        target: str | None = None,
    ):
        super().__init__(field, {} if default is None else default, label, target)

    def validate(self, x: Any) -> dict:
        if not isinstance(x, dict):
            raise TypeError(f"{self.field} must be a mapping, got {x!r}")
        return x


class FrozenAttrDict(MappingABC):
    """Read-only view handed to ``handler`` (``options.x`` and ``options["x"]``)."""

    def __init__(self, data: dict):
        object.__setattr__(self, "_data", dict(data))

    def __getattr__(self, key: str) -> Any:
        try:
            return self._data[key]
        except KeyError:
            raise AttributeError(key) from None

    def __setattr__(self, key: str, value: Any) -> None:
        raise TypeError("Options are read-only")

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self):
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"FrozenAttrDict({self._data!r})"


class Options:
    """The fields offered to users, and an optional ``handler(options[, user])`` that turns the
    chosen values into ``ClusterConfig`` overrides."""

    def __init__(self, *fields: Field, handler: Callable | None = None):
        for f in fields:
            if not isinstance(f, Field):
                raise TypeError(f"Options expects fields, got {f!r}")
        self.fields = list(fields)
        self.handler = handler

    def get_specification(self) -> list[dict]:
        return [f.json() for f in self.fields]

    def parse_options(self, request: Any) -> dict:
        """Validate a user's request and fill in defaults (what the cluster JSON shows)."""
        if request is None:
            request = {}
        if not isinstance(request, dict):
            raise TypeError(f"options must be a dict, got {type(request).__name__!r}")
        known = {f.field for f in self.fields}
        unknown = sorted(set(request) - known)
        if unknown:
            raise ValueError(f"Unknown fields {unknown}")
        return {
            f.field: f.validate(request[f.field])
            if f.field in request
            else copy.deepcopy(f.default)
            for f in self.fields
        }

    def transform_options(self, options: dict) -> dict:
        return {f.target: f.transform(options[f.field]) for f in self.fields}

    async def get_configuration(self, options: dict, user: Any) -> dict:
        """The ``ClusterConfig`` overrides for parsed ``options``."""
        transformed = self.transform_options(options)
        if self.handler is None:
            return transformed
        params = [
            p
            for p in inspect.signature(self.handler).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
        ]
        args: tuple[Any, ...] = (FrozenAttrDict(transformed),)
        if not (len(params) == 1 and params[0].kind != params[0].VAR_POSITIONAL):
            args += (user,)
        result = self.handler(*args)
        if inspect.isawaitable(result):
            result = await result
        if not isinstance(result, dict):
            raise TypeError(f"options handler must return a dict, got {type(result).__name__}")
        return result
