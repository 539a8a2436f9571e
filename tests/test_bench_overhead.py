"""bench/overhead.py still runs: the same code (imported, not copied) at smoke size, with this
install as both the baseline and the current one. It measures; it asserts no speed."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import overhead


@pytest.mark.timeout(600)
def test_overhead_measures_both_installs(tmp_path):
    sizes = overhead.Sizes(clusters=8, users=4, calls=3, clients=2, duration=1, budget=240)
    baseline, current = overhead.run(sys.executable, sys.executable, sizes, 1, tmp_path)
    table = overhead.table(baseline, current, sizes)
    print(table)
    assert baseline.errors == [] and current.errors == [], table
    assert overhead.complete(baseline, current, sizes), table
    # Both ran this install, identified by the source of the package they imported.
    assert baseline.info["digest"] == current.info["digest"], table
    assert "same server code" in table
    for row, _ in sizes.rows():
        assert row in table
        assert baseline.median(row) and current.median(row), (row, table)
