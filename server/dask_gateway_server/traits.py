"""Trait types shared by the configurable classes."""

from __future__ import annotations

import math
import re
from typing import Any

from traitlets import List, TraitType


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


class Command(List):
    """A command as a list of arguments; a string is split on whitespace."""

    def validate(self, obj: Any, value: Any) -> list:
        if isinstance(value, str):
            value = value.split()
        return super().validate(obj, value)


def format_bytes(n: int) -> str:
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n > size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"
