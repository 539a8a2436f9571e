"""An environment with the *public* dask-gateway-server and *our* client installed together.

A site may keep running the public server after installing this project's client in the
same environment (for its users, or because the two share a conda env). Then the public
server imports our ``dask_gateway``: its in-process backend builds our
``scheduler_preload.GatewaySchedulerService``, and its schedulers load our preload.

The environment is a fresh venv whose site-packages holds our installed ``dask_gateway``
package (the one these tests run against) and a ``.pth`` line adding the upstream venv's
site-packages *after* it: every other package (the public server, dask, distributed, ...)
is the upstream venv's, and our client shadows the public one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import dask_gateway
from support.upstream_server import require_upstream_venv

SHIMS = {
    "dask": "from dask.__main__ import main",
    "dask-gateway-server": "from dask_gateway_server.app import main",
}


def upstream_base_python() -> str:
    """The interpreter the upstream venv was made from (its compiled packages fit it)."""
    cfg = (require_upstream_venv() / "pyvenv.cfg").read_text()
    for line in cfg.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "executable":
            return value.strip()
    raise AssertionError(f"no executable in {cfg!r}")


def _site_packages(python: Path) -> Path:
    out = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True,
        capture_output=True,
        text=True,
    )
    return Path(out.stdout.strip())


def make_public_server_env(dest: Path, base_python: str | None = None) -> Path:
    """Build the environment in ``dest`` (from ``base_python``, default the upstream venv's
    interpreter) and return it; checks that it imports our client and the public server."""
    upstream = require_upstream_venv()
    subprocess.run(
        [base_python or upstream_base_python(), "-m", "venv", "--without-pip", str(dest)],
        check=True,
        capture_output=True,
    )
    python = dest / "bin" / "python"
    site = _site_packages(python)
    upstream_site = _site_packages(upstream / "bin" / "python")
    shutil.copytree(
        Path(dask_gateway.__file__).parent,
        site / "dask_gateway",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    (site / "zz-upstream.pth").write_text(f"{upstream_site}\n")
    for name, line in SHIMS.items():
        script = dest / "bin" / name
        # (the guard: the worker's nanny spawns processes that re-import __main__)
        script.write_text(
            f"#!{python}\nimport sys\n{line}\nif __name__ == '__main__':\n    sys.exit(main())\n"
        )
        script.chmod(0o755)
    check = subprocess.run(
        [
            str(python),
            "-c",
            (
                "import dask_gateway, dask_gateway_server, importlib.metadata as m;"
                "print(dask_gateway.__file__); print(dask_gateway_server.__file__);"
                "print(m.version('dask-gateway-server'))"
            ),
        ],
        check=True,
        capture_output=True,
        text=True,
        cwd=dest,
        env={**os.environ, "PYTHONNOUSERSITE": "1"},
    )
    ours, theirs, version = check.stdout.split()
    assert Path(ours).is_relative_to(site), ours  # our client, not the public one
    assert Path(theirs).is_relative_to(upstream_site), theirs
    assert version == "2026.3.0", version
    return dest
