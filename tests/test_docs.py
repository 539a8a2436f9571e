"""The documentation is true: runnable examples run, generated pages are fresh, links resolve.

A code block is runnable when its info string is ``python run``:

    ```python run
    from dask_gateway import Gateway
    ```

The runnable blocks of one page run in order, in one Python process (later blocks use what
earlier ones defined, as a reader would type them), against the session's real gateway, with
the address in dask config env as a user would have it. Each page runs as its own user and
must leave no cluster running.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from support.http_helpers import basic, call

from dask_gateway_server import docs as docs_gen

ROOT = Path(__file__).parent.parent
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```\s*$", re.M | re.S)

RUNNER = textwrap.dedent("""
    import sys, traceback
    blocks = {blocks!r}
    namespace = {{"__name__": "__main__"}}
    for line, source in blocks:
        try:
            exec(compile(source, f"{page}:{{line}}", "exec"), namespace)
        except BaseException:
            traceback.print_exc()
            print(f"\\nThe block at {page}:{{line}} failed", file=sys.stderr)
            sys.exit(1)
""")


def blocks(page: Path, info: str) -> list[tuple[int, str]]:
    """(line number, source) of the page's blocks whose info string is ``info``."""
    text = page.read_text()
    out = []
    for m in FENCE.finditer(text):
        if m.group(1).split() == info.split():
            out.append((text.count("\n", 0, m.start()) + 2, m.group(2)))
    return out


def runnable_blocks(page: Path) -> list[tuple[int, str]]:
    return blocks(page, "python run")


# Loads a config file as the server does at start (every class it configures is built, so
# every value is validated), plus a ClusterConfig; then reports what the server logged.
CONFIG_CHECK = textwrap.dedent("""
    import sys
    from dask_gateway_server.app import DaskGateway
    app = DaskGateway()
    app.initialize(["-f", sys.argv[1], "--DaskGateway.data_dir=" + sys.argv[2]])
    app.backend.cluster_config_class(parent=app.backend).to_dict()
    print("loaded", type(app.backend).__name__, type(app.authenticator).__name__)
""")


def rel(page: Path) -> str:
    return str(page.relative_to(ROOT))


def test_runnable_blocks_exist():
    """The marker is in use where readers start, so it cannot silently stop being tested."""
    counted = {rel(p): len(runnable_blocks(p)) for p in PAGES}
    assert counted["README.md"] >= 1
    assert counted["docs/user-guide.md"] >= 5
    assert counted["docs/troubleshooting.md"] >= 1
    assert len(blocks(ROOT / "docs" / "admin-guide.md", "python config")) >= 5


@pytest.mark.parametrize("page", [p for p in PAGES if runnable_blocks(p)], ids=rel)
def test_runnable_blocks_run(page, gateway, tmp_path):
    user = "docs-" + page.stem.lower()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_GATEWAY")}
    env.update(
        DASK_GATEWAY__ADDRESS=gateway.address,
        DASK_GATEWAY__AUTH__TYPE="basic",
        DASK_GATEWAY__AUTH__KWARGS__USERNAME=user,
        MPLBACKEND="agg",
    )
    script = RUNNER.format(blocks=runnable_blocks(page), page=rel(page))
    out = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, f"{out.stdout}\n{out.stderr}"
    left = call("GET", f"{gateway.address}/api/v1/clusters/", headers=basic(user)).json()
    assert left == {}, f"{rel(page)} leaves clusters running: {list(left)}"


CONFIG_BLOCKS = [(page, line, src) for page in PAGES for line, src in blocks(page, "python config")]


@pytest.mark.parametrize(
    "page,line,source", CONFIG_BLOCKS, ids=[f"{rel(p)}:{n}" for p, n, _ in CONFIG_BLOCKS]
)
def test_config_examples_load(page, line, source, tmp_path):
    """Each ``python config`` block is a valid dask_gateway_config.py: the server loads it with
    no error and no warning (every setting it names exists and takes the value shown)."""
    path = tmp_path / "dask_gateway_config.py"
    path.write_text(source)
    out = subprocess.run(
        [sys.executable, "-c", CONFIG_CHECK, str(path), str(tmp_path / "data")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    logged = [
        ln
        for ln in (out.stdout + out.stderr).splitlines()
        if re.match(r"\[[WEC] ", ln) or re.search(r"Traceback|Error|Warning", ln)
    ]
    assert out.returncode == 0 and not logged, f"{rel(page)}:{line}\n{out.stdout}{out.stderr}"
    assert out.stdout.startswith("loaded")


def test_generated_pages_are_fresh(capsys):
    """docs/configuration.md and docs/api.md say what the code says."""
    code = docs_gen.main(["--check", "--out", str(ROOT / "docs")])
    assert code == 0, capsys.readouterr().err


def test_relative_links_resolve():
    """Every relative link (and image) in the pages points at a file that exists, and every
    #anchor into a page names one of its headings."""
    link = re.compile(r"\]\(([^)\s]+)\)")
    for page in PAGES:
        text = FENCE.sub("", page.read_text())
        for target in link.findall(text):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            assert dest.exists(), f"{rel(page)}: broken link {target}"
            if anchor and dest.suffix == ".md":
                assert anchor in anchors(dest), f"{rel(page)}: no heading for {target}"


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lowercased, punctuation dropped, spaces to dashes."""
    out = set()
    for heading in re.findall(r"^#+ (.+)$", FENCE.sub("", page.read_text()), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        out.add(slug)
    return out
