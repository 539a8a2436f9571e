"""10,000 tracked clusters on one gateway: list latency, requests/s, idle CPU, memory.

    .venv/bin/python bench/many_clusters.py [--users 500] [--per-user 20] [--rounds 3]

Issue 21: with 10,000 clusters tracked (500 users x 20), one user's ``list_clusters()``
(its 20) must stay under 10 ms, requests/s must be at least 1.5x the public
dask-gateway-server's with 20 clusters, the gateway idle must use under 2 % of a core, and
its memory is reported. One invocation runs both servers at once (each idle while the other
is measured), with bench/compare_config.py and the fake backend of
tests/support/fake_backend.py (as compare.py's 1,000-cluster rows; ours with its default
status-check periods):

* **theirs**, the public server (``--upstream-venv``, default ``.venv-upstream`` here or
  /work/main/.venv-upstream or ``$DASK_GATEWAY_UPSTREAM_VENV``): one user with 20 clusters;
* **ours**: ``--users`` x ``--per-user`` clusters created through the API
  (``POST /api/v1/clusters/``, ``--concurrency`` requests in flight, credentials with each
  request as a script would send them); each becomes RUNNING through its first heartbeat,
  as a real scheduler's.

Then, in two states of ours: **all RUNNING**, and **most ended** (the clusters of all but
``--keep-users`` users stopped through the API: what a gateway holds in a working day, as
``db_cluster_max_age`` keeps stopped clusters 24 h), ``--rounds`` rounds alternating ours and
theirs (each round starting with the other): ``list_clusters()`` latency of one user (our
client, median of ``--calls``), requests/s (4 processes, each logged in as one user listing
its own clusters, for ``--duration`` s; then again with raw keep-alive HTTP clients, the
server's capacity rather than our client library's), the server's CPU per request (gateway + proxy
process) and ours' own answer time (its /metrics). The medians of the rounds are printed, and
each round's requests/s ratio; the target uses the median of those ratios, so that the
machine's load (shared, 2 cores) hits both alike. Then ours' CPU over ``--idle-seconds``
with nothing happening, RSS and peak RSS (theirs' once, at the start).

The fake clusters send no further heartbeats (a long heartbeat timeout keeps them RUNNING):
"idle" means what a gateway does by itself: its timers, status checks, metrics loop. A
benchmark, not a test: it never fails because something is slow. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import http.client
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import warnings
from pathlib import Path

import compare  # puts tests/ on sys.path (support.*)
from compare import PASSWORD, Server, cpu_seconds, fmt, peak_rss_mb, requests_per_second
from load import parse_metrics
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

ROOT = Path(__file__).resolve().parent.parent
LATENCY = "list_clusters() latency, median (ms)"
RPS = "requests/s, 4 clients"
RAW_RPS = "requests/s, 4 raw HTTP clients"
CPU_PER_REQUEST = "server CPU per list request (ms)"
SERVED = "server answer time per list request, mean (ms)"
IDLE = "idle CPU (% of one core)"


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


def _raw_worker(address: str, user: str, duration: float, ready, go, queue) -> None:
    """One raw HTTP client: a keep-alive connection listing ``user``'s clusters as fast as
    the server answers (the session cookie after the first answer, the body read but not
    decoded): the server's capacity, not the client library's."""
    parts = urllib.parse.urlsplit(address)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    headers = _headers(user)
    del headers["Content-Type"]
    conn.request("GET", "/api/v1/clusters/", headers=headers)
    first = conn.getresponse()
    body = first.read()
    if first.status != 200 or not json.loads(body):
        raise RuntimeError(f"{user}: {first.status} {body[:200]!r}")
    cookie = first.getheader("Set-Cookie")
    if cookie:
        headers = {"Cookie": cookie.split(";", 1)[0]}
    ready.put(True)
    go.wait()
    count, end = 0, time.perf_counter() + duration
    while time.perf_counter() < end:
        conn.request("GET", "/api/v1/clusters/", headers=headers)
        response = conn.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"{user}: {response.status}")
        count += 1
    conn.close()
    queue.put(count)


def raw_requests_per_second(address: str, users: list[str], duration: float) -> float:
    """Requests/s of one raw HTTP client process per user in ``users``, all at once."""
    ctx = mp.get_context("spawn")
    ready, queue, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = [
        ctx.Process(target=_raw_worker, args=(address, u, duration, ready, go, queue))
        for u in users
    ]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=120)
    go.set()
    total = sum(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join()
    return total / duration


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


def one_round(server: Server, user_list: list[str], per_user: int, args) -> dict[str, float]:
    """One round of the timed figures on one server: list latency, requests/s, and what
    the server spent per request."""
    r: dict[str, float] = {}
    r[LATENCY] = 1000 * list_latency(server.address, user_list[0], args.calls, per_user)
    clients = user_list[:4] if len(user_list) >= 4 else [user_list[0]] * 4
    pids = server.pids()
    cpu0 = sum(cpu_seconds(p) for p in pids.values())
    served0 = served(server.address)
    r[RPS] = rps = requests_per_second(
        server.address, clients=4, duration=args.duration, users=clients
    )
    # What the server spent per request, whatever the clients and the machine did: its
    # CPU (gateway + proxy process), and (ours) its own answer time from its /metrics.
    cpu = sum(cpu_seconds(p) for p in pids.values()) - cpu0
    r[CPU_PER_REQUEST] = 1000 * cpu / (rps * args.duration)
    served1 = served(server.address)
    if served0 is not None and served1 is not None and served1[1] > served0[1]:
        r[SERVED] = 1000 * (served1[0] - served0[0]) / (served1[1] - served0[1])
    r[RAW_RPS] = raw_requests_per_second(server.address, clients, args.duration)
    return r


def side_by_side(
    ours: Server, ours_users: list[str], theirs: Server, args, label: str
) -> tuple[dict[str, float], dict[str, float], dict[str, list[float]]]:
    """``args.rounds`` rounds, ours and theirs alternating (each round starting with the
    other), so the machine's load hits both alike: the median of each figure for each, and
    each round's requests/s ratio (ours / theirs)."""
    rounds: dict[str, list[dict[str, float]]] = {"ours": [], "theirs": []}
    ratios: list[float] = []
    raw_ratios: list[float] = []
    for i in range(args.rounds):
        order = [("ours", ours, ours_users), ("theirs", theirs, ["bench"])]
        for which, server, user_list in order if i % 2 == 0 else order[::-1]:
            rounds[which].append(one_round(server, user_list, args.per_user, args))
            got = rounds[which][-1]
            print(
                f"  [{label}] round {i + 1}, {which}: {got[LATENCY]:.2f} ms, "
                f"{got[RPS]:.0f} requests/s, {got[CPU_PER_REQUEST]:.2f} ms CPU/request, "
                f"{got[RAW_RPS]:.0f} requests/s (raw HTTP)",
                flush=True,
            )
        ratios.append(rounds["ours"][-1][RPS] / rounds["theirs"][-1][RPS])
        raw_ratios.append(rounds["ours"][-1][RAW_RPS] / rounds["theirs"][-1][RAW_RPS])
    medians = [
        {k: statistics.median(r[k] for r in rs) for k in rs[0] if all(k in r for r in rs)}
        for rs in (rounds["ours"], rounds["theirs"])
    ]
    return medians[0], medians[1], {"our client": ratios, "raw HTTP": raw_ratios}


def resting(server: Server, args, label: str) -> dict[str, float]:
    """Idle CPU and memory of a server."""
    pids = server.pids()
    r: dict[str, float] = {}
    if args.idle_seconds:
        r[IDLE] = sum(idle(p, args.idle_seconds) for p in pids.values())
        print(f"  [{label}] idle CPU: {r[IDLE]:.2f} %", flush=True)
    r["RSS (MB)"] = sum(rss_mb(p) for p in pids.values())
    r["peak RSS (MB)"] = sum(peak_rss_mb(p) for p in pids.values())
    return r


def upstream_bin(args) -> Path:
    venv = Path(
        args.upstream_venv
        or os.environ.get("DASK_GATEWAY_UPSTREAM_VENV")
        or (ROOT / ".venv-upstream" if (ROOT / ".venv-upstream").exists() else "")
        or "/work/main/.venv-upstream"
    )
    return venv / "bin" / "dask-gateway-server"


def run(args, tmp: Path) -> tuple[dict[str, float], list[tuple[str, dict, dict, dict]]]:
    """Both servers up at once (theirs idle while ours works, and the reverse); returns
    ours' set-up rates and, per state, (label, ours, theirs, requests/s ratios)."""
    users = [f"user{i}" for i in range(args.users)]
    n = args.users * args.per_user
    setup: dict[str, float] = {}
    states = []
    theirs = Server("theirs", upstream_bin(args), tmp / "theirs", fake=True)
    ours = Server(
        "ours", Path(sys.executable).parent / "dask-gateway-server", tmp / "ours", fake=True
    )
    with theirs.running():
        print(f"theirs: creating {args.per_user} clusters", flush=True)
        owned = create_clusters(theirs.address, ["bench"], args.per_user, 4)
        wait_statuses(theirs.address, ["bench"], owned["bench"], "RUNNING", args.budget, 4)
        theirs_rest = resting(theirs, args, f"theirs, {args.per_user}")
        os.environ["BENCH_FAKE_DEFAULT_PERIODS"] = "1"  # read by compare_config.py at start
        with ours.running():
            del os.environ["BENCH_FAKE_DEFAULT_PERIODS"]
            print(f"ours: creating {n} clusters ({args.users} users x {args.per_user})", flush=True)
            t0 = time.perf_counter()
            owned = create_clusters(ours.address, users, args.per_user, args.concurrency)
            names = [name for ns in owned.values() for name in ns]
            wait_statuses(ours.address, users, names, "RUNNING", args.budget, args.concurrency)
            setup["clusters created and RUNNING per second"] = n / (time.perf_counter() - t0)
            print(
                f"  {setup['clusters created and RUNNING per second']:.0f} clusters/s", flush=True
            )
            label = f"ours, {n} running"
            o, t, ratios = side_by_side(ours, users, theirs, args, label)
            states.append(
                (label, {**o, **resting(ours, args, label)}, {**t, **theirs_rest}, ratios)
            )

            keep = users[: args.keep_users]
            stop = {u: owned[u] for u in users[args.keep_users :]}
            stopping = [name for ns in stop.values() for name in ns]
            print(f"ours: stopping {len(stopping)} clusters", flush=True)
            t0 = time.perf_counter()
            stop_clusters(ours.address, stop, args.concurrency)
            wait_statuses(ours.address, users, stopping, "STOPPED", args.budget, args.concurrency)
            setup["clusters stopped per second"] = len(stopping) / (time.perf_counter() - t0)
            label = f"ours, {n - len(stopping)} running + {len(stopping)} stopped"
            o, t, ratios = side_by_side(ours, keep, theirs, args, label)
            states.append(
                (label, {**o, **resting(ours, args, label)}, {**t, **theirs_rest}, ratios)
            )
    return setup, states


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
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds, ours/theirs")
    parser.add_argument("--concurrency", type=int, default=8, help="API requests in flight")
    parser.add_argument("--budget", type=float, default=1800, help="seconds to create/stop")
    parser.add_argument("--upstream-venv", help="venv with the public dask-gateway-server")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 20 users, short measurements"
    )
    args = parser.parse_args()
    if args.quick:
        args.users, args.keep_users, args.calls, args.rounds = 20, 5, 20, 1
        args.duration, args.idle_seconds = 2, 5
    warnings.filterwarnings("ignore", message="Mismatched versions found")
    t0 = time.monotonic()
    n = args.users * args.per_user
    with tempfile.TemporaryDirectory(prefix="dg-many-") as tmp:
        setup, states = run(args, Path(tmp))
    print()
    for key, value in setup.items():
        print(f"ours: {key}: {value:.1f}")
    theirs_label = f"theirs, {args.per_user}"
    for label, ours, theirs, ratios in states:
        keys = list(dict.fromkeys([*ours, *theirs]))
        width = max(len(k) for k in keys)
        cols = [label, theirs_label, "ratio"]
        print(f"\n| {'figure':{width}} | " + " | ".join(cols) + " |")
        print(f"|{'-' * (width + 2)}|" + "|".join("-" * (len(c) + 2) for c in cols) + "|")
        for key in keys:
            a, b = ours.get(key), theirs.get(key)
            ratio = a / b if a is not None and b else None
            row = [a, b, ratio]
            print(
                f"| {key:{width}} | "
                + " | ".join(f"{fmt(v):>{len(c)}}" for v, c in zip(row, cols, strict=True))
                + " |"
            )
        for kind, values in ratios.items():
            print(
                f"requests/s ratio of each round (ours / theirs), {kind}: "
                + ", ".join(f"{r:.2f}" for r in values)
            )
    print("\nTargets (issue 21):")
    label, ours, theirs, ratios = states[0]
    lat = ours[LATENCY]
    checks = [
        (f"list_clusters() of a user with {args.per_user}, {n} tracked < 10 ms", lat, lat < 10)
    ]
    for kind, values in ratios.items():
        ratio = statistics.median(values)
        checks.append(
            (
                f"requests/s at {n} >= 1.5x theirs at {args.per_user}, {kind} "
                "(median of the rounds' ratios)",
                ratio,
                ratio >= 1.5,
            )
        )
    for label, ours, _, _ in states:
        if IDLE in ours:
            checks.append((f"idle CPU < 2 % of a core ({label})", ours[IDLE], ours[IDLE] < 2))
    for label, value, met in checks:
        print(f"  {label}: {fmt(value)} -> {'yes' if met else 'NO'}")
    print(
        f"\n(total {time.monotonic() - t0:.0f} s, load average {os.getloadavg()[0]:.1f} "
        f"on {os.cpu_count()} cores: a shared machine is noisy)"
    )


if __name__ == "__main__":
    main()
