"""Trait types shared by the configurable classes."""

from __future__ import annotations

import inspect
import math
import re
from importlib.metadata import EntryPoint, entry_points
from typing import Any, TypeVar

from traitlets import List, TraitError, TraitType, Type
from traitlets.utils.importstring import import_item

T = TypeVar("T")


class MemoryLimit(TraitType):
    """Bytes, given as an int or a string like ``"2 G"`` / ``"512M"`` (binary units)."""

    default_value = 0
    info_text = "a number of bytes, or a string like '2 G'"
    _units = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}

    def validate(self, obj: Any, value: Any) -> int:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if value < 0 or not math.isfinite(value):
                self.error(obj, value)
            return int(value)
        if isinstance(value, str):
            m = re.fullmatch(r"\s*([0-9.]+)\s*([KMGT]?)i?B?\s*", value.upper())
            if m:
                return int(float(m.group(1)) * self._units[m.group(2)])
        self.error(obj, value)


class EntryPointType(Type[type[T], type[T]]):
    """A plugin class, given by its short name (an entry point of ``entry_point_group``, as
    JupyterHub's ``jupyterhub.authenticators``), its import path (``"package.module.Class"``)
    or itself. Names are read from the installed packages' metadata, so listing them imports
    nothing; only the chosen class is imported."""

    def __init__(
        self,
        default_value: str | type[T],
        klass: type[T],
        *,
        entry_point_group: str,
        kind: str,
        help: str = "",
        **kwargs: Any,
    ) -> None:
        self.entry_point_group = entry_point_group
        self.kind = kind
        self.base = klass
        # The default as written (a name stays a name in the docs once resolved).
        self._default_written = default_value
        self._help = ""
        # A name is resolved by _resolve_string, as traitlets resolves an import string.
        default: Any = default_value
        super().__init__(default, klass=klass, **kwargs)
        self.help = help  # after: the listing must not be read while the class is built

    @property
    def help(self) -> str:
        """The help as written, then the installed names and what each one is."""
        if not self._help:  # while traitlets builds the trait: no metadata scan at import
            return ""
        names = "; ".join(
            f"{name} ({ep.value.replace(':', '.')})" for name, ep in self.entry_points().items()
        )
        return f"{self._help} Installed names: {names}." if names else self._help

    @help.setter
    def help(self, value: str) -> None:
        self._help = value

    def entry_points(self) -> dict[str, EntryPoint]:
        """Installed names (lower case), sorted, with their entry points."""
        found = {ep.name.lower(): ep for ep in entry_points(group=self.entry_point_group)}
        return dict(sorted(found.items()))

    def load_all(self) -> list[type[T]]:
        """Every installed class of the group that loads and is a ``klass`` (in name order);
        a broken third-party plugin is left out here and reported when it is chosen."""
        out: list[type[T]] = []
        for ep in self.entry_points().values():
            try:
                cls = ep.load()
            except Exception:
                continue
            if inspect.isclass(cls) and issubclass(cls, self.base) and cls not in out:
                out.append(cls)
        return out

    def _resolve_string(self, string: str) -> Any:
        ep = self.entry_points().get(string.strip().lower())
        if ep is not None:
            return ep.load()
        return import_item(string)

    def validate(self, obj: Any, value: Any) -> type[T]:
        if isinstance(value, str):
            try:
                value = self._resolve_string(value)
            except Exception as e:
                raise TraitError(self._not_found(obj, value, e)) from None
        return super().validate(obj, value)

    def _not_found(self, obj: Any, value: str, error: Exception) -> str:
        """One line an admin can act on: what was asked, why it failed, what exists."""
        owner = obj.__name__ if isinstance(obj, type) else type(obj).__name__
        names = ", ".join(self.entry_points()) or "none installed"
        setting = f"{owner}.{self.name} = {value!r}"
        ep = self.entry_points().get(value.strip().lower())
        if ep is not None:
            why = f"the {self.kind} {ep.name!r} ({ep.value}) failed to load: {error}"
        elif "." not in value:
            why = f"no {self.kind} has that name"
        else:
            why = f"cannot import it ({type(error).__name__}: {error})"
        return (
            f"{setting}: {why}. Known {self.kind} names: {names}; or give a class's import "
            "path, 'package.module.Class'"
        )

    def default_value_repr(self) -> str:
        written = self._default_written
        if isinstance(written, str):
            return repr(written)
        return repr(f"{written.__module__}.{written.__name__}")


class Command(List):
    """A command as a list of arguments; a string is split on whitespace."""

    def validate(self, obj: Any, value: Any) -> list:
        if isinstance(value, str):
            value = value.split()
        validated = super().validate(obj, value)
        if validated is None:  # only with allow_none, which commands never have
            self.error(obj, value)
        return validated


def format_bytes(n: int) -> str:
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n > size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"
