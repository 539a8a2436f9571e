"""10,000 tracked clusters on one gateway: list latency, requests/s, idle CPU, memory.

    .venv/bin/python bench/many_clusters.py [--users 500] [--per-user 20] [--quick]

Issue 21: with 10,000 clusters tracked (500 users x 20), one user's ``list_clusters()``
(its 20) must stay under 10 ms, requests/s must be at least 1.5x the public
dask-gateway-server's with 20 clusters, the gateway idle must use under 2 % of a core, and
its memory is reported. One invocation measures, in order:

1. **Ours, 10,000 RUNNING.** Our gateway (bench/compare_config.py with the fake backend of
   tests/support/fake_backend.py, as compare.py's 1,000-cluster rows, but with our default
   status-check periods) gets ``--users`` x ``--per-user`` clusters created through the API
   (``POST /api/v1/clusters/``, ``--concurrency`` requests in flight); each becomes RUNNING
   through its first heartbeat, as a real scheduler's. Then: ``list_clusters()`` latency of
   one user (median of ``--calls``), requests/s (4 processes logged in as 4 users, each
   listing its own 20, for ``--duration`` s), the gateway's CPU over ``--idle-seconds`` with
   nothing happening, its RSS and peak RSS.
2. **Ours, 10,000 tracked, most ended.** The clusters of all but ``--keep-users`` users are
   stopped through the API (``DELETE``) and the same figures taken again: what a gateway
   holds in a working day (``db_cluster_max_age`` keeps stopped clusters 24 h), a few
   hundred running and thousands ended.
3. **Theirs, 20.** The public server (``--upstream-venv``, default /work/main/.venv-upstream
   or ``$DASK_GATEWAY_UPSTREAM_VENV``), same config and fake backend, one user with 20
   clusters: ``list_clusters()`` latency and requests/s (4 processes as that user).

The fake clusters send no further heartbeats (a long heartbeat timeout keeps them RUNNING):
"idle" means what a gateway does by itself: its timers, status checks, its metrics loop. A
benchmark, not a test: it never fails because something is slow. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request
import warnings
from pathlib import Path

import compare  # puts tests/ on sys.path (support.*)
from compare import PASSWORD, Server, cpu_seconds, fmt, peak_rss_mb, requests_per_second
from load import parse_metrics
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

ROOT = Path(__file__).resolve().parent.parent


def rss_mb(pid: int) -> float:
    """Resident memory of a process now (VmRSS), in MiB."""
    for line in compare._read(f"/proc/{pid}/status").decode().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _headers(user: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{PASSWORD}".encode()).decode()
    return {"Authorization": f"Basic {token}", "Content-Type": "application/json"}


async def _requests(
    address: str, jobs: list[tuple[str, str, str, str | None]], concurrency: int
) -> list[tuple[int, bytes]]:
    """(user, method, path, body) each, ``concurrency`` at a time; (status, body) each."""
    http = AsyncHTTPClient(force_instance=True, max_clients=concurrency)
    sem = asyncio.Semaphore(concurrency)
    headers = {user: _headers(user) for user, *_ in jobs}

    async def one(user: str, method: str, path: str, body: str | None) -> tuple[int, bytes]:
        async with sem:
            for attempt in range(5):
                r = await http.fetch(
                    HTTPRequest(
                        address + path,
                        method=method,
                        headers=headers[user],
                        body=body,
                        request_timeout=120,
                    ),
                    raise_error=False,
                )
                if r.code not in (503, 599):  # a passing fault: try again
                    return r.code, r.body or b""
                await asyncio.sleep(0.5 * (attempt + 1))
            return r.code, r.body or b""

    try:
        return await asyncio.gather(*(one(*job) for job in jobs))
    finally:
        http.close()


def create_clusters(
    address: str, users: list[str], per_user: int, concurrency: int
) -> dict[str, list[str]]:
    """``per_user`` clusters for each of ``users`` through the API; their names by user."""
    body = json.dumps({"cluster_options": {}})
    jobs = [(u, "POST", "/api/v1/clusters/", body) for u in users for _ in range(per_user)]
    out: dict[str, list[str]] = {u: [] for u in users}
    for (user, *_), (code, data) in zip(
        jobs, asyncio.run(_requests(address, jobs, concurrency)), strict=True
    ):
        if code != 201:
            raise RuntimeError(f"creating a cluster for {user}: {code} {data[:200]!r}")
        out[user].append(json.loads(data)["name"])
    return out


def statuses(address: str, users: list[str], concurrency: int) -> dict[str, str]:
    """Every cluster of ``users`` (any status) -> its status."""
    path = "/api/v1/clusters/?status=PENDING,RUNNING,STOPPING,STOPPED,FAILED"
    jobs = [(u, "GET", path, None) for u in users]
    out: dict[str, str] = {}
    for code, data in asyncio.run(_requests(address, jobs, concurrency)):
        if code != 200:
            raise RuntimeError(f"listing: {code} {data[:200]!r}")
        out.update({name: m["status"] for name, m in json.loads(data).items()})
    return out


def wait_statuses(
    address: str, users: list[str], names: list[str], wanted: str, budget: float, concurrency: int
) -> float:
    """Seconds until every one of ``names`` has status ``wanted``; raises past ``budget``."""
    t0 = time.perf_counter()
    while True:
        seen = statuses(address, users, concurrency)
        left = [n for n in names if seen.get(n) != wanted]
        if not left:
            return time.perf_counter() - t0
        if time.perf_counter() - t0 > budget:
            raise RuntimeError(f"{len(left)} clusters not {wanted} after {budget:.0f} s")
        time.sleep(1)


def stop_clusters(address: str, owned: dict[str, list[str]], concurrency: int) -> None:
    jobs = [(u, "DELETE", f"/api/v1/clusters/{n}", None) for u, ns in owned.items() for n in ns]
    for (user, _, path, _), (code, data) in zip(
        jobs, asyncio.run(_requests(address, jobs, concurrency)), strict=True
    ):
        if code != 204:
            raise RuntimeError(f"stopping {path} of {user}: {code} {data[:200]!r}")


def list_latency(address: str, user: str, calls: int, per_user: int) -> float:
    """Median seconds of one user's ``list_clusters()`` (our client), checked to return
    ``per_user`` clusters."""
    from dask_gateway import BasicAuth, Gateway

    with Gateway(address, auth=BasicAuth(user, PASSWORD)) as gateway:
        found = gateway.list_clusters()
        if len(found) != per_user:
            raise RuntimeError(f"{user} lists {len(found)} clusters, not {per_user}")
        for _ in range(5):  # warm up
            gateway.list_clusters()
        times = []
        for _ in range(calls):
            t0 = time.perf_counter()
            gateway.list_clusters()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def served(address: str) -> tuple[float, float] | None:
    """(seconds, count) the gateway spent answering ``GET /api/v1/clusters/`` (ClustersHandler) so far, from
    its own request-duration histogram (ours only: None elsewhere)."""
    try:
        with urllib.request.urlopen(address + "/metrics", timeout=30) as f:
            text = f.read().decode()
    except OSError:
        return None
    total = count = None
    for name, labels, value in parse_metrics(text):
        if labels.get("method") == "GET" and labels.get("route") == "ClustersHandler":
            if name == "dask_gateway_request_duration_seconds_sum":
                total = value
            elif name == "dask_gateway_request_duration_seconds_count":
                count = value
    return None if total is None or count is None else (total, count)


def idle(pid: int, seconds: float) -> float:
    """The process's CPU over ``seconds`` with nothing asked of it, in % of one core."""
    time.sleep(2)  # let the last requests' work settle
    before = cpu_seconds(pid)
    t0 = time.monotonic()
    time.sleep(seconds)
    return 100 * (cpu_seconds(pid) - before) / (time.monotonic() - t0)


def figures(server: Server, users: list[str], per_user: int, args, label: str) -> dict[str, float]:
    """The figures of one state: list latency, requests/s, idle CPU, memory."""
    say = lambda msg: print(f"  [{label}] {msg}", flush=True)  # noqa: E731
    r: dict[str, float] = {}
    r["list_clusters() latency, median (ms)"] = 1000 * list_latency(
        server.address, users[0], args.calls, per_user
    )
    say(f"list_clusters(): {r['list_clusters() latency, median (ms)']:.2f} ms")
    clients = users[:4] if len(users) >= 4 else [users[0]] * 4
    pids = server.pids()
    cpu0 = sum(cpu_seconds(p) for p in pids.values())
    served0 = served(server.address)
    r["requests/s, 4 clients"] = rps = requests_per_second(
        server.address, clients=4, duration=args.duration, users=clients
    )
    say(f"requests/s: {rps:.0f}")
    # What the server spent per request, whatever the clients and the machine did: its
    # CPU (gateway + proxy process), and (ours) its own answer time from its /metrics.
    cpu = sum(cpu_seconds(p) for p in pids.values()) - cpu0
    r["server CPU per list request (ms)"] = 1000 * cpu / (rps * args.duration)
    served1 = served(server.address)
    if served0 is not None and served1 is not None and served1[1] > served0[1]:
        r["server answer time per list request, mean (ms)"] = (
            1000 * (served1[0] - served0[0]) / (served1[1] - served0[1])
        )
    if args.idle_seconds:
        r["idle CPU (% of one core)"] = sum(idle(p, args.idle_seconds) for p in pids.values())
        say(f"idle CPU: {r['idle CPU (% of one core)']:.2f} %")
    r["gateway RSS (MB)"] = sum(rss_mb(p) for p in pids.values())
    r["gateway peak RSS (MB)"] = sum(peak_rss_mb(p) for p in pids.values())
    return r


def run_ours(args, home: Path) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
    ours_bin = Path(sys.executable).parent / "dask-gateway-server"
    server = Server("ours", ours_bin, home, fake=True)
    users = [f"user{i}" for i in range(args.users)]
    n = args.users * args.per_user
    setup: dict[str, float] = {}
    os.environ["BENCH_FAKE_DEFAULT_PERIODS"] = "1"  # read by compare_config.py at start
    with server.running():
        del os.environ["BENCH_FAKE_DEFAULT_PERIODS"]
        print(f"ours: creating {n} clusters ({args.users} users x {args.per_user})", flush=True)
        t0 = time.perf_counter()
        owned = create_clusters(server.address, users, args.per_user, args.concurrency)
        names = [name for ns in owned.values() for name in ns]
        wait_statuses(server.address, users, names, "RUNNING", args.budget, args.concurrency)
        setup["clusters created and RUNNING per second"] = n / (time.perf_counter() - t0)
        print(f"  {setup['clusters created and RUNNING per second']:.0f} clusters/s", flush=True)
        running = figures(server, users, args.per_user, args, f"ours, {n} running")
        keep = users[: args.keep_users]
        stop = {u: owned[u] for u in users[args.keep_users :]}
        stopping = [name for ns in stop.values() for name in ns]
        print(f"ours: stopping {len(stopping)} clusters", flush=True)
        t0 = time.perf_counter()
        stop_clusters(server.address, stop, args.concurrency)
        wait_statuses(server.address, users, stopping, "STOPPED", args.budget, args.concurrency)
        setup["clusters stopped per second"] = len(stopping) / (time.perf_counter() - t0)
        mixed = figures(
            server, keep, args.per_user, args, f"ours, {n - len(stopping)} running of {n}"
        )
    return setup, running, mixed


def run_theirs(args, home: Path) -> dict[str, float]:
    venv = Path(
        args.upstream_venv
        or os.environ.get("DASK_GATEWAY_UPSTREAM_VENV")
        or (ROOT / ".venv-upstream" if (ROOT / ".venv-upstream").exists() else "")
        or "/work/main/.venv-upstream"
    )
    server = Server("theirs", venv / "bin" / "dask-gateway-server", home, fake=True)
    with server.running():
        print(f"theirs: creating {args.per_user} clusters", flush=True)
        owned = create_clusters(server.address, ["bench"], args.per_user, 4)
        wait_statuses(server.address, ["bench"], owned["bench"], "RUNNING", args.budget, 4)
        return figures(server, ["bench"], args.per_user, args, f"theirs, {args.per_user}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--per-user", type=int, default=20)
    parser.add_argument(
        "--keep-users", type=int, default=25, help="users whose clusters stay RUNNING in part 2"
    )
    parser.add_argument("--calls", type=int, default=200, help="list_clusters() calls timed")
    parser.add_argument("--duration", type=float, default=10, help="seconds of requests/s")
    parser.add_argument("--idle-seconds", type=float, default=60)
    parser.add_argument("--concurrency", type=int, default=8, help="API requests in flight")
    parser.add_argument("--budget", type=float, default=1800, help="seconds to create/stop")
    parser.add_argument("--upstream-venv", help="venv with the public dask-gateway-server")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 20 users, short measurements"
    )
    args = parser.parse_args()
    if args.quick:
        args.users, args.keep_users, args.calls = 20, 5, 20
        args.duration, args.idle_seconds = 2, 5
    warnings.filterwarnings("ignore", message="Mismatched versions found")
    t0 = time.monotonic()
    n = args.users * args.per_user
    with tempfile.TemporaryDirectory(prefix="dg-many-") as tmp:
        setup, running, mixed = run_ours(args, Path(tmp) / "ours")
        theirs = run_theirs(args, Path(tmp) / "theirs")
    kept = args.keep_users * args.per_user
    cols = [
        f"ours, {n} running",
        f"ours, {kept} running + {n - kept} stopped",
        f"theirs, {args.per_user}",
    ]
    print()
    for key, value in setup.items():
        print(f"ours: {key}: {value:.1f}")
    width = max(len(k) for k in running)
    print(f"\n| {'figure':{width}} | " + " | ".join(cols) + " |")
    print(f"|{'-' * (width + 2)}|" + "|".join("-" * (len(c) + 2) for c in cols) + "|")
    for key in running:
        row = [running.get(key), mixed.get(key), theirs.get(key)]
        print(
            f"| {key:{width}} | "
            + " | ".join(f"{fmt(v):>{len(c)}}" for v, c in zip(row, cols, strict=True))
            + " |"
        )
    rps_t = theirs.get("requests/s, 4 clients") or float("nan")
    lat = running["list_clusters() latency, median (ms)"]
    print("\nTargets (issue 21):")
    checks = [
        (f"list_clusters() of a user with {args.per_user}, {n} tracked < 10 ms", lat, lat < 10),
        (
            f"requests/s at {n} >= 1.5x theirs at {args.per_user}",
            running["requests/s, 4 clients"] / rps_t,
            running["requests/s, 4 clients"] >= 1.5 * rps_t,
        ),
    ]
    for label, state in ((cols[0], running), (cols[1], mixed)):
        if "idle CPU (% of one core)" in state:
            cpu = state["idle CPU (% of one core)"]
            checks.append((f"idle CPU < 2 % of a core ({label})", cpu, cpu < 2))
    for label, value, met in checks:
        print(f"  {label}: {fmt(value)} -> {'yes' if met else 'NO'}")
    print(
        f"\n(total {time.monotonic() - t0:.0f} s, load average {os.getloadavg()[0]:.1f} "
        f"on {os.cpu_count()} cores: a shared machine is noisy)"
    )


if __name__ == "__main__":
    main()
