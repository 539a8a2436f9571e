"""The sidebar's settings schema ships with the installed package (``pip install .``): the
labextension JupyterLab loads holds ``schemas/dask-gateway-jupyterlab/plugin.json``, the same
as ``jupyter_ext/schema/plugin.json`` (a stale build would ship an old one)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from support.paths import ROOT

INSTALLED = Path(sys.prefix) / "share/jupyter/labextensions/dask-gateway-jupyterlab"


def test_installed_labextension_has_the_settings_schema():
    source = json.loads((ROOT / "jupyter_ext/schema/plugin.json").read_text())
    shipped = json.loads((INSTALLED / "schemas/dask-gateway-jupyterlab/plugin.json").read_text())
    assert shipped == source
    assert set(shipped["properties"]) == {"pollInterval", "defaultLayout", "showStopped"}
    package = json.loads((INSTALLED / "package.json").read_text())
    assert package["jupyterlab"]["schemaDir"] == "schema"
    shortcuts = shipped["jupyter.lab.shortcuts"]
    assert [s["command"] for s in shortcuts] == ["dask-gateway:toggle-sidebar"]
