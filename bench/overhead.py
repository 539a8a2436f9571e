"""Does a change slow OUR gateway down? Two installs of it, side by side, in one run.

    .venv/bin/python bench/overhead.py [--baseline-python PY] [--python PY] [--rounds 3]
                                       [--quick]

``--baseline-python``: the Python of a venv with the version to compare against (default
``$DASK_GATEWAY_BASELINE_PYTHON``, else ``.venv-baseline/bin/python`` in the repository);
``--python``: the version under test (default: this interpreter's, the current checkout's
install). Each install's gateway runs the fake backend (tests/support/fake_backend.py, as
bench/compare.py's 1,000-cluster rows); the same 1,000 clusters of 50 users are created, then
list_clusters() latency and requests/s are measured. The installs alternate, round after
round, so the machine's noise hits both. Prints one table: the median of each figure for the
baseline and the current install, the ratio current/baseline, and whether it stays within
10 %. A benchmark, not a test: slowness never makes it fail (it exits 1 only when a figure
could not be measured). See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import compare  # puts tests/ on sys.path (support.*)
from compare import PASSWORD, Server, fmt, median_latency, requests_per_second
from support.waiting import wait_for

TOLERANCE = 0.10  # issue 18: "within 10 % of today's figures"
BASELINE_ENV = "DASK_GATEWAY_BASELINE_PYTHON"

# Prints, inside an install's own Python, what it would run: where the server package is,
# its version, a digest of its source, and the commit pip recorded (``pip install git+...``).
IDENTIFY = r"""
import hashlib, importlib.metadata as md, json, pathlib
import dask_gateway_server as m
root = pathlib.Path(m.__file__).resolve().parent
h = hashlib.sha256()
for p in sorted(root.rglob("*.py")):
    h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes())
out = {"path": str(root), "digest": h.hexdigest()[:12], "version": "?", "commit": None}
try:
    d = md.distribution("dask-gateway-ng")
    out["version"] = d.version
    out["commit"] = json.loads(d.read_text("direct_url.json") or "{}").get(
        "vcs_info", {}).get("commit_id")
except Exception:
    pass
print(json.dumps(out))
"""


@dataclass
class Sizes:
    """What one measurement of one install does."""

    clusters: int = 1000
    users: int = 50
    calls: int = 50  # list_clusters() calls, latency is their median
    clients: int = 4  # processes for requests/s
    duration: float = 5.0  # seconds of requests/s
    budget: float = 300.0  # seconds allowed to create the clusters

    @property
    def per_user(self) -> int:
        return self.clusters // self.users

    def rows(self) -> list[tuple[str, bool]]:
        """(figure, higher is better), in the order of the table."""
        n, per = self.clusters, self.per_user
        return [
            (f"create {n} clusters, {self.users} users x {per} (clusters/s)", True),
            (f"list_clusters() latency, {per} of {n} clusters, median of {self.calls} (ms)", False),
            (
                f"list_clusters() requests/s, {self.clients} clients, {n} clusters",
                True,
            ),
        ]


@dataclass
class Install:
    label: str
    python: str
    info: dict = field(default_factory=dict)
    rounds: list[dict[str, float]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def values(self, row: str) -> list[float]:
        return [r[row] for r in self.rounds if row in r]

    def median(self, row: str) -> float | None:
        values = self.values(row)
        return statistics.median(values) if values else None


def server_env() -> dict[str, str]:
    """The environment the servers (and IDENTIFY) get: compare.Server's, so what IDENTIFY
    reports is what the server imports."""
    env = dict(os.environ)
    env.pop("VIRTUAL_ENV", None)
    return env


def identify(python: str) -> dict:
    """What ``python`` runs as the gateway; exits with a clear message if it cannot."""
    try:
        out = subprocess.run(
            [python, "-c", IDENTIFY],
            env=server_env(),
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError) as e:
        detail = getattr(e, "stderr", "") or e
        sys.exit(f"{python}: cannot import dask_gateway_server: {detail}")
    return json.loads(out.strip().splitlines()[-1])


def measure(label: str, python: str, home: Path, sizes: Sizes) -> dict[str, float]:
    """One round of one install: a fresh gateway (fake backend), its clusters created, then
    the figures of ``sizes.rows()``."""
    from dask_gateway import BasicAuth, Gateway
    from dask_gateway.client import ClusterStatus

    create, latency, rps = (row for row, _ in sizes.rows())
    r: dict[str, float] = {}
    server = Server(
        label, Path(python), home, fake=True, command=[python, "-m", "dask_gateway_server"]
    )
    with server.running():
        names, rate, complete = compare.create_fake_clusters(
            server, sizes.clusters, sizes.users, sizes.budget
        )
        r[create] = rate
        if not complete:
            return r
        # Every user's clusters RUNNING (not timed): the figures are at the full count.
        for user in names:
            with Gateway(server.address, auth=BasicAuth(user, PASSWORD)) as gateway:
                wait_for(
                    lambda gateway=gateway: (
                        len(gateway.list_clusters(status=ClusterStatus.RUNNING)) == sizes.per_user
                    ),
                    timeout=sizes.budget,
                    interval=0.2,
                    what=f"{user}'s {sizes.per_user} clusters RUNNING",
                )
        time.sleep(2)
        with Gateway(server.address, auth=BasicAuth(names[0], PASSWORD)) as gateway:
            r[latency] = 1000 * median_latency(gateway.list_clusters, sizes.calls)
        r[rps] = requests_per_second(
            server.address,
            clients=sizes.clients,
            duration=sizes.duration,
            users=[names[i % len(names)] for i in range(sizes.clients)],
        )
    return r


def run(
    baseline_python: str,
    python: str,
    sizes: Sizes,
    rounds: int,
    tmp: Path,
) -> tuple[Install, Install]:
    """Alternate the two installs for ``rounds`` rounds; each round starts with the other
    install (A B, B A, A B, ...), so neither always runs first or on a machine that has
    just warmed up."""
    import dask_gateway.client  # noqa: F401  (imported once, before any round is timed)

    baseline, current = Install("baseline", baseline_python), Install("current", python)
    for install in (baseline, current):
        install.info = identify(install.python)
    for i in range(rounds):
        order = (baseline, current) if i % 2 == 0 else (current, baseline)
        for install in order:
            print(f"round {i + 1}/{rounds}: {install.label}", flush=True)
            try:
                result = measure(install.label, install.python, tmp / f"{install.label}-{i}", sizes)
            except Exception as e:  # a benchmark reports what it could measure
                install.errors.append(f"round {i + 1}: {e!r}")
                print(f"  [{install.label}] stopped early: {e!r}", flush=True)
                result = {}
            install.rounds.append(result)
            for key, value in result.items():
                print(f"  [{install.label}] {key}: {fmt(value)}", flush=True)
    return baseline, current


def within(ratio: float | None, higher_is_better: bool) -> bool | None:
    if ratio is None:
        return None
    return ratio >= 1 - TOLERANCE if higher_is_better else ratio <= 1 + TOLERANCE


def table(baseline: Install, current: Install, sizes: Sizes) -> str:
    """The medians, their ratio and the verdict; then every round's figures."""
    lines = []
    for install in (baseline, current):
        info = install.info
        commit = f", commit {info['commit'][:10]}" if info.get("commit") else ""
        lines.append(
            f"{install.label:8}: {install.python} -> {info.get('path')} "
            f"(version {info.get('version')}{commit}, source digest {info.get('digest')})"
        )
    if baseline.info.get("digest") == current.info.get("digest"):
        lines.append("NOTE: both installs run the same server code (same source digest).")
    rows = sizes.rows()
    width = max(len(row) for row, _ in rows)
    goal_lo, goal_hi = f">= {1 - TOLERANCE:.2f}", f"<= {1 + TOLERANCE:.2f}"
    lines += [
        "",
        f"| {'figure (median of rounds)':{width}} | {'baseline':>9} | {'current':>9} "
        f"| {'current/baseline':>16} | {'within 10 %':13} |",
        f"|{'-' * (width + 2)}|{'-' * 11}|{'-' * 11}|{'-' * 18}|{'-' * 15}|",
    ]
    for row, higher in rows:
        a, b = baseline.median(row), current.median(row)
        ratio = b / a if a and b is not None else None
        ok = within(ratio, higher)
        verdict = "n/a" if ok is None else ("yes" if ok else "NO")
        verdict += f" ({goal_lo if higher else goal_hi})"
        lines.append(
            f"| {row:{width}} | {fmt(a):>9} | {fmt(b):>9} | {fmt(ratio):>16} | {verdict:13} |"
        )
    lines += ["", "Each round (baseline | current):"]
    for row, _ in rows:
        each = [" ".join(fmt(r.get(row)) for r in i.rounds) for i in (baseline, current)]
        lines.append(f"  {row}: {each[0]} | {each[1]}")
    for install in (baseline, current):
        lines += [f"  {install.label}: {e}" for e in install.errors]
    return "\n".join(lines)


def complete(baseline: Install, current: Install, sizes: Sizes) -> bool:
    """Every figure measured in every round of both installs."""
    return all(
        row in r
        for install in (baseline, current)
        for r in install.rounds
        for row, _ in sizes.rows()
    )


def default_baseline() -> str:
    return os.environ.get(BASELINE_ENV) or str(compare.ROOT / ".venv-baseline" / "bin" / "python")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--baseline-python",
        default=default_baseline(),
        help="Python of a venv with the version to compare against "
        f"(default: ${BASELINE_ENV}, else .venv-baseline/bin/python; see bench/README.md)",
    )
    parser.add_argument(
        "--python",
        default=sys.executable,
        help="Python of the version under test (default: this interpreter)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="measurements of each install")
    parser.add_argument("--clusters", type=int, default=1000, help="clusters in the database")
    parser.add_argument("--users", type=int, default=50, help="users owning them (equal shares)")
    parser.add_argument("--calls", type=int, default=50, help="list_clusters() calls for latency")
    parser.add_argument("--clients", type=int, default=4, help="processes for requests/s")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of requests/s")
    parser.add_argument(
        "--budget", type=float, default=300, help="seconds allowed to create the clusters"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 1 round, 200 clusters of 10 users, 20 calls, 2 s of requests/s",
    )
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.clusters, args.users = 1, min(args.clusters, 200), 10
        args.calls, args.duration = 20, 2.0
    if args.users < 1 or args.clusters < args.users or args.rounds < 1:
        parser.error("need --rounds >= 1 and --clusters >= --users >= 1")
    for python in (args.baseline_python, args.python):
        if not Path(python).exists():
            parser.error(
                f"{python} does not exist: give --baseline-python (or ${BASELINE_ENV}) the "
                "Python of a venv with the version to compare against (bench/README.md)"
            )
    sizes = Sizes(
        clusters=args.clusters,
        users=args.users,
        calls=args.calls,
        clients=args.clients,
        duration=args.duration,
        budget=args.budget,
    )
    # Our client has pandas, some server environments not: not worth a warning here.
    warnings.filterwarnings("ignore", message="Mismatched versions found")
    t0, load0 = time.monotonic(), os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="dg-overhead-") as tmp:
        baseline, current = run(args.baseline_python, args.python, sizes, args.rounds, Path(tmp))
    print()
    print(table(baseline, current, sizes))
    print(
        f"\n(total {time.monotonic() - t0:.0f} s; load average {load0:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end; lower is better for latency, higher for "
        "clusters/s and requests/s; a shared machine is noisy: rerun before believing a NO)"
    )
    if not complete(baseline, current, sizes):
        sys.exit(1)


if __name__ == "__main__":
    main()
