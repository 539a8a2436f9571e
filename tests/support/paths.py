"""Where things are: the repository, the tests, their config files and these helpers."""

from __future__ import annotations

from pathlib import Path

SUPPORT = Path(__file__).resolve().parent
TESTS = SUPPORT.parent
ROOT = TESTS.parent
CONFIGS = TESTS / "configs"
