"""How fast is the usage report over a busy month, and did accounting slow the rest down?

    .venv/bin/python bench/usage.py [--baseline-python PY] [--runs 20] [--rounds 1]
                                    [--clusters 1000] [--days 30] [--workers 20]
                                    [--skip-overhead] [--quick]

1. **The usage query.** Seeds a gateway's SQLite database (before it starts) with the
   accounting of ``--clusters`` clusters of 50 users in 5 groups, spread over the last
   ``--days`` days: each a scheduler and on average ``--workers`` workers (0 to twice that,
   each for part of the cluster's life, 1 to 24 h; the newest still running), tens of
   thousands of allocations. Then times ``GET /api/v1/usage`` over the whole range through
   HTTP, as an admin (everyone's) for ``by=user``, ``group``, ``cluster`` and ``day``, and as
   one user (``by=day``): the median of ``--runs`` requests each.
2. **Unchanged elsewhere?** Runs bench/overhead.py's measurement (1,000 fake clusters of 50
   users: creation rate, ``list_clusters()`` latency, requests/s) for this install and the
   one of ``--baseline-python`` (the version before usage accounting), ``--rounds`` rounds
   alternating, and prints its table with the ratios (goal: within 10 %).

A benchmark, not a test: slowness never makes it fail. See bench/README.md.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
import urllib.parse
import warnings
from pathlib import Path

import compare  # noqa: F401  (puts tests/ on sys.path: support.*)
import overhead
from support.gateway_process import GatewayProcess, _kill_leftovers
from support.http_helpers import basic, call
from support.paths import CONFIGS

GIB = 2**30
H = 3_600_000
DAY = 24 * H
USERS = 50
GROUPS = ["physics", "bio", "chem", "astro", "geo"]
ADMIN = "bench-admin"
CONFIG = """
exec(open({default!r}).read())
c.Authenticator.admin_users = {{{admin!r}}}
"""


def seed(db: Path, clusters: int, days: int, workers: int, now: int, rng: random.Random) -> int:
    """The accounting of ``clusters`` clusters over the last ``days`` days, written into a
    new SQLite database at ``db`` as the gateway's store would; returns the allocations."""
    import sqlalchemy as sa

    from dask_gateway_server.store import allocations_table, metadata, usage_clusters_table

    engine = sa.create_engine(f"sqlite:///{db}")
    metadata.create_all(engine)
    records, allocations = [], []
    start_of_range = now - days * DAY
    for i in range(clusters):
        user = f"user{i % USERS}"
        k = i % USERS
        groups = sorted({GROUPS[k % 5], GROUPS[(k * 3) % 5]}) if k % 7 else []
        created = rng.randrange(start_of_range, now - 60_000)
        life = rng.randrange(H, 24 * H)
        stop = created + life if created + life < now else None  # the newest still run
        name = f"bench-{i:05d}"
        records.append(
            {
                "cluster": name,
                "username": user,
                "groups": groups,
                "options": {"worker_cores": 2},
                "created": created,
            }
        )
        allocations.append(
            {
                "cluster": name,
                "username": user,
                "worker": None,
                "cores": 1.0,
                "memory": 2 * GIB,
                "start": created + 2000,
                "stop": stop,
            }
        )
        end = now if stop is None else stop
        for w in range(rng.randrange(0, 2 * workers + 1)):
            begin = rng.randrange(created + 2000, end)
            finish = rng.randrange(begin, end + 1)
            allocations.append(
                {
                    "cluster": name,
                    "username": user,
                    "worker": f"{name}-w{w}",
                    "cores": 2.0,
                    "memory": 4 * GIB,
                    "start": begin,
                    "stop": None if stop is None and rng.random() < 0.5 else finish,
                }
            )
    with engine.begin() as conn:
        conn.execute(usage_clusters_table.insert(), records)
        for i in range(0, len(allocations), 5000):
            conn.execute(allocations_table.insert(), allocations[i : i + 5000])
    engine.dispose()
    return len(allocations)


def time_queries(
    python: str, home: Path, clusters: int, days: int, workers: int, runs: int
) -> list[tuple[str, int, float]]:
    """(query, rows answered, median ms) of each usage query, on a seeded gateway."""
    home.mkdir(parents=True, exist_ok=True)
    config = home / "usage_bench_config.py"
    config.write_text(CONFIG.format(default=str(CONFIGS / "gateway_config.py"), admin=ADMIN))
    gw = GatewayProcess(home / "gw", config=config, python=python)
    gw.data_dir.mkdir(parents=True, exist_ok=True)
    now = int(time.time() * 1000)
    n = seed(gw.data_dir / "dask_gateway.sqlite", clusters, days, workers, now, random.Random(19))
    print(f"seeded {clusters} clusters, {n} allocations over {days} days", flush=True)
    since, until = now - days * DAY, now + 60_000
    queries = [
        (ADMIN, {"by": "user"}),
        (ADMIN, {"by": "group"}),
        (ADMIN, {"by": "cluster", "limit": 10000}),
        (ADMIN, {"by": "day"}),
        (ADMIN, {"by": "user", "format": "csv"}),
        ("user7", {"by": "day"}),
    ]
    out = []
    gw.start()
    try:
        for user, query in queries:
            url = f"{gw.address}/api/v1/usage?" + urllib.parse.urlencode(
                {"since": since, "until": until, **query}
            )
            headers = basic(user)
            first = call("GET", url, headers=headers, timeout=120)  # warm-up, not timed
            if first.status != 200:
                raise RuntimeError(f"{url}: {first.status} {first.body[:300]!r}")
            if query.get("format") == "csv":
                rows = first.body.count(b"\n") - 1
            else:
                rows = len(first.json()["rows"])
            times = []
            for _ in range(runs):
                t0 = time.perf_counter()
                r = call("GET", url, headers=headers, timeout=120)
                times.append(time.perf_counter() - t0)
                assert r.status == 200, r.body
            label = ("admin " if user == ADMIN else "one user ") + " ".join(
                f"{k}={v}" for k, v in query.items()
            )
            out.append((label, rows, 1000 * statistics.median(times)))
            print(f"  {label}: {rows} rows, {out[-1][2]:.1f} ms", flush=True)
    finally:
        gw.stop()
        _kill_leftovers(gw.data_dir)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--baseline-python",
        default=overhead.default_baseline(),
        help="Python of a venv with the version before usage accounting, for part 2 "
        f"(default: ${overhead.BASELINE_ENV}, else .venv-baseline/bin/python)",
    )
    parser.add_argument("--python", default=sys.executable, help="Python of the version under test")
    parser.add_argument("--runs", type=int, default=20, help="requests per usage query")
    parser.add_argument("--clusters", type=int, default=1000, help="clusters seeded")
    parser.add_argument("--days", type=int, default=30, help="days they spread over")
    parser.add_argument("--workers", type=int, default=20, help="workers per cluster, mean")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of part 2 per install")
    parser.add_argument(
        "--skip-overhead", action="store_true", help="only part 1 (no baseline needed)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 5 runs, and part 2 with --quick"
    )
    args = parser.parse_args()
    if args.quick:
        args.runs = 5
    if args.clusters < 1 or args.days < 1 or args.workers < 0 or args.runs < 1:
        parser.error("need --clusters >= 1, --days >= 1, --workers >= 0, --runs >= 1")
    if not args.skip_overhead and not Path(args.baseline_python).exists():
        parser.error(
            f"{args.baseline_python} does not exist: give --baseline-python the Python of a "
            "venv with the version before usage accounting, or --skip-overhead"
        )
    warnings.filterwarnings("ignore", message="Mismatched versions found")
    t0, load0 = time.monotonic(), os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="dg-usage-") as tmp:
        figures = time_queries(
            args.python, Path(tmp) / "usage", args.clusters, args.days, args.workers, args.runs
        )
        part2 = None
        if not args.skip_overhead:
            sizes = overhead.Sizes()
            if args.quick:
                sizes = overhead.Sizes(clusters=200, users=10, calls=20, duration=2.0)
            baseline, current = overhead.run(
                args.baseline_python, args.python, sizes, args.rounds, Path(tmp) / "overhead"
            )
            part2 = (baseline, current, sizes)
    print()
    print(f"Usage query, {args.clusters} clusters x {args.days} days, median of {args.runs}:")
    width = max(len(label) for label, _, _ in figures)
    print(f"| {'query':{width}} | {'rows':>6} | {'median ms':>9} |")
    print(f"|{'-' * (width + 2)}|{'-' * 8}|{'-' * 11}|")
    for label, rows, ms in figures:
        print(f"| {label:{width}} | {rows:>6} | {ms:>9.1f} |")
    if part2 is not None:
        print()
        print(overhead.table(*part2))
    print(
        f"\n(total {time.monotonic() - t0:.0f} s; load average {load0:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end)"
    )
    if part2 is not None and not overhead.complete(*part2):
        sys.exit(1)


if __name__ == "__main__":
    main()
