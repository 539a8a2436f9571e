"""Many simulated users at once against one gateway: latencies per route, and nothing lost.

    .venv/bin/python bench/load.py [--users 50] [--duration 300]

Starts its own gateway (``compare.Server``: bench/compare_config.py with the default
fork-server launcher, real schedulers and workers), then runs ``--users`` simulated users as
coroutines of this process, each with its own login. Each user loops over the REST API —
create a cluster, wait for RUNNING, list, get, scale to one worker and back, stop, wait for
STOPPED — and starts no new round once ``--duration`` seconds have passed, so every user
stops by itself. A user owns at most one cluster at a time, so at most ``--users``
schedulers (and as many workers) run at once.

Prints, per route (method + route template), the count, p50, p99 and max latency and the
statuses seen; then checks that no request got an error (4xx, 5xx) or no answer, that every
cluster created is listed with status STOPPED (none lost), that none is left PENDING or
STOPPING (none stuck), and that no scheduler or worker process outlives its cluster. Exits 1
if a check fails.
tests/test_load.py runs the same code with fewer users for less time.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import re
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from tornado.httpclient import AsyncHTTPClient, HTTPRequest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import PASSWORD, Server, _children, _read, cpu_seconds

#: How long one step of a user may wait for a cluster or a worker before it counts as stuck.
STEP_TIMEOUT = 120.0


@dataclass
class LoadResult:
    """What the users saw, and what the final checks found wrong (empty: all good)."""

    users: int
    duration: float
    #: (method, route template) -> [(status, seconds), ...]
    samples: dict[tuple[str, str], list[tuple[int, float]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    #: cluster name -> owner, of every cluster a user created
    created: dict[str, str] = field(default_factory=dict)
    rounds: int = 0
    problems: list[str] = field(default_factory=list)
    #: context for reading the figures: the gateway's CPU use, the machine's load
    notes: dict[str, float] = field(default_factory=dict)
    #: the gateway's /metrics at the end of the run
    metrics_text: str = ""

    @property
    def server_errors(self) -> int:
        """Answers with a 5xx status, and requests that got no answer at all (599)."""
        return sum(1 for rows in self.samples.values() for status, _ in rows if status >= 500)

    def table(self) -> str:
        """Markdown table: one row per route."""
        lines = [
            "| route | count | p50 ms | p99 ms | max ms | statuses |",
            "|---|---:|---:|---:|---:|---|",
        ]
        for (method, route), rows in sorted(self.samples.items(), key=lambda kv: kv[0][1]):
            times = sorted(t for _, t in rows)
            statuses = ", ".join(
                f"{s}: {n}" for s, n in sorted(Counter(s for s, _ in rows).items())
            )
            lines.append(
                f"| {method} {route} | {len(rows)} | {1000 * pct(times, 50):.1f} | "
                f"{1000 * pct(times, 99):.1f} | {1000 * times[-1]:.1f} | {statuses} |"
            )
        return "\n".join(lines)


_SAMPLE = re.compile(r"^(\w+)(?:\{(.*)\})? ([0-9.eE+-]+|[+-]Inf|NaN)$")
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def parse_metrics(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Prometheus text exposition: (name, labels, value) of each sample."""
    out = []
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m:
            out.append((m.group(1), dict(_LABEL.findall(m.group(2) or "")), float(m.group(3))))
    return out


def server_side_table(metrics_text: str) -> str:
    """The gateway's own answer times (its request-duration histogram, by handler): p50
    and p99 as the histogram bucket that holds them."""
    buckets: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    for name, labels, value in parse_metrics(metrics_text):
        if name == "dask_gateway_request_duration_seconds_bucket":
            buckets[(labels["method"], labels["route"])].append((float(labels["le"]), value))

    def bound(rows: list[tuple[float, float]], total: float, p: float) -> str:
        le = next(le for le, n in rows if n >= total * p / 100)
        return "inf" if le == float("inf") else f"{1000 * le:g}"

    lines = ["| handler | count | p50 ms ≤ | p99 ms ≤ |", "|---|---:|---:|---:|"]
    for (method, route), rows in sorted(buckets.items(), key=lambda kv: kv[0][::-1]):
        rows.sort()
        total = rows[-1][1]
        if not total:
            continue
        p50, p99 = bound(rows, total, 50), bound(rows, total, 99)
        lines.append(f"| {method} {route} | {total:.0f} | {p50} | {p99} |")
    return "\n".join(lines)


async def sample_loop_lag(
    address: str,
    http: AsyncHTTPClient,
    result: LoadResult,
    stop: asyncio.Event,
    period: float = 2.0,
) -> None:
    """How late the gateway's event loop runs (its /metrics gauge), every ``period``."""
    lags = []
    while not stop.is_set():
        response = await http.fetch(address + "/metrics", raise_error=False, request_timeout=60)
        if response.code == 200:
            lags += [
                v
                for n, _, v in parse_metrics(response.body.decode())
                if n == "dask_gateway_event_loop_lag_seconds"
            ]
            result.metrics_text = response.body.decode()
        try:
            await asyncio.wait_for(stop.wait(), period)
        except asyncio.TimeoutError:
            pass
    if lags:
        lags.sort()
        result.notes["gateway event-loop lag, median of samples (s)"] = lags[len(lags) // 2]
        result.notes["gateway event-loop lag, max of samples (s)"] = lags[-1]


def pct(sorted_values: list[float], p: float) -> float:
    """The ``p``-th percentile (nearest rank) of already sorted values."""
    if not sorted_values:
        return float("nan")
    rank = max(1, -(-len(sorted_values) * p // 100))
    return sorted_values[int(rank) - 1]


class StepFailed(Exception):
    """A user's round cannot go on (an unexpected answer, or a cluster that never moved)."""


class User:
    """One simulated user: its own login, session cookie and at most one cluster."""

    def __init__(
        self, name: str, address: str, password: str, http: AsyncHTTPClient, result: LoadResult
    ):
        self.name = name
        self.address = address
        self.http = http
        self.result = result
        token = base64.b64encode(f"{name}:{password}".encode()).decode()
        self.headers = {"Authorization": f"Basic {token}"}

    async def call(
        self, method: str, route: str, path: str, body: object = None, timeout: float = 60
    ) -> tuple[int, object]:
        """One request, timed and recorded under ``route``; returns (status, JSON or None)."""
        request = HTTPRequest(
            self.address + path,
            method=method,
            headers=self.headers,
            body=None if body is None else json.dumps(body),
            request_timeout=timeout,
            allow_nonstandard_methods=True,
        )
        t0 = time.perf_counter()
        response = await self.http.fetch(request, raise_error=False)
        self.result.samples[(method, route)].append((response.code, time.perf_counter() - t0))
        cookie = response.headers.get("Set-Cookie") if response.code < 599 else None
        if cookie:  # keep the session, as the real client does
            self.headers["Cookie"] = cookie.split(";", 1)[0]
        if response.code >= 400:  # no step of a round may be refused, let alone fail
            detail = response.body[:200] if response.body else response.error
            raise StepFailed(f"{method} {path}: {response.code} {detail!r}")
        data = json.loads(response.body) if response.body else None
        return response.code, data

    async def wait_status(self, name: str, wanted: set[str]) -> str:
        """Long-poll ``?wait`` (then plain gets) until the cluster reaches a wanted status."""
        deadline = time.monotonic() + STEP_TIMEOUT
        while True:
            _, model = await self.call(
                "GET", "/api/v1/clusters/{name}?wait", f"/api/v1/clusters/{name}?wait=1"
            )
            if model["status"] in wanted:
                return model["status"]
            if time.monotonic() > deadline:
                raise StepFailed(
                    f"cluster {name} still {model['status']} after {STEP_TIMEOUT:.0f} s"
                )
            await asyncio.sleep(0.2)

    async def wait_workers(self, name: str, n: int) -> None:
        deadline = time.monotonic() + STEP_TIMEOUT
        while True:
            _, info = await self.call(
                "GET", "/api/v1/clusters/{name}/workers", f"/api/v1/clusters/{name}/workers"
            )
            if info["workers"] == n:
                return
            if time.monotonic() > deadline:
                raise StepFailed(
                    f"cluster {name} has {info['workers']} workers, not {n}, "
                    f"after {STEP_TIMEOUT:.0f} s"
                )
            await asyncio.sleep(0.5)

    async def one_round(self, rng: random.Random) -> None:
        """Create, use and stop one cluster. Whatever happens, the cluster is stopped."""
        await self.call("GET", "/api/v1/options", "/api/v1/options")
        _, data = await self.call(
            "POST", "/api/v1/clusters/", "/api/v1/clusters/", {"cluster_options": {}}
        )
        name = data["name"]
        self.result.created[name] = self.name
        try:
            if await self.wait_status(name, {"RUNNING", "FAILED"}) != "RUNNING":
                raise StepFailed(f"cluster {name} failed to start")
            _, listing = await self.call("GET", "/api/v1/clusters/", "/api/v1/clusters/")
            if name not in listing:
                raise StepFailed(f"running cluster {name} missing from the listing")
            await self.call("GET", "/api/v1/clusters/{name}", f"/api/v1/clusters/{name}")
            if rng.random() < 0.5:  # half the rounds run a worker: 2 cores must cope
                await self.call(
                    "POST",
                    "/api/v1/clusters/{name}/scale",
                    f"/api/v1/clusters/{name}/scale",
                    {"count": 1},
                )
                await self.wait_workers(name, 1)
                await self.call(
                    "POST",
                    "/api/v1/clusters/{name}/scale",
                    f"/api/v1/clusters/{name}/scale",
                    {"count": 0},
                )
                await self.wait_workers(name, 0)
            await asyncio.sleep(rng.uniform(0, 1))  # the user "computes"
        finally:
            await self.call("DELETE", "/api/v1/clusters/{name}", f"/api/v1/clusters/{name}")
        if await self.wait_status(name, {"STOPPED", "FAILED"}) != "STOPPED":
            raise StepFailed(f"cluster {name} ended FAILED")
        await self.call(
            "GET", "/api/v1/clusters/?status=STOPPED", "/api/v1/clusters/?status=STOPPED"
        )

    async def run(self, until: float, seed: int) -> None:
        rng = random.Random(seed)
        await asyncio.sleep(rng.uniform(0, 2))  # do not all log in at the same instant
        while time.monotonic() < until:
            try:
                await self.one_round(rng)
                self.result.rounds += 1
            except Exception as e:
                self.result.problems.append(f"user {self.name}: {e!r}")
            await asyncio.sleep(rng.uniform(0, 1))


def processes_under(directory: Path) -> list[int]:
    """Pids of live processes working in ``directory`` (each scheduler and worker runs in
    a directory of its own under the clusters directory, even after it is removed)."""
    prefix = str(directory).rstrip("/") + "/"
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cwd = os.readlink(f"/proc/{entry}/cwd")
            with open(f"/proc/{entry}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if cwd.startswith(prefix) and state != b"Z":
            pids.append(int(entry))
    return pids


async def final_checks(
    address: str, password: str, result: LoadResult, clusters_dir: Path | None, settle: float = 60
) -> None:
    """Every created cluster listed as STOPPED (none lost, none stuck); no process left."""
    http = AsyncHTTPClient(force_instance=True, max_clients=10)
    owners = sorted(set(result.created.values()))
    deadline = time.monotonic() + settle
    while True:
        seen: dict[str, str] = {}
        for owner in owners:
            checker = User(owner, address, password, http, LoadResult(0, 0))
            _, listing = await checker.call(
                "GET", "", "/api/v1/clusters/?status=PENDING,RUNNING,STOPPING,STOPPED,FAILED"
            )
            seen.update({name: model["status"] for name, model in listing.items()})
        unsettled = [n for n in result.created if seen.get(n) in ("PENDING", "STOPPING")]
        if not unsettled or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    lost = [n for n in result.created if n not in seen]
    wrong = [
        f"{n}: {seen[n]}"
        for n in result.created
        if n in seen and seen[n] not in ("STOPPED", "PENDING", "STOPPING")
    ]
    if lost:
        result.problems.append(f"{len(lost)} clusters lost (not listed): {lost[:5]}")
    if wrong:
        result.problems.append(f"{len(wrong)} clusters not STOPPED: {wrong[:5]}")
    if unsettled:
        result.problems.append(
            f"{len(unsettled)} clusters stuck PENDING/STOPPING after "
            f"{settle:.0f} s: {unsettled[:5]}"
        )
    if clusters_dir is not None:
        deadline = time.monotonic() + 30
        left = processes_under(clusters_dir)
        while left and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            left = processes_under(clusters_dir)
        if left:
            result.problems.append(f"{len(left)} scheduler/worker processes left: {left}")
    http.close()


async def run_load(
    address: str,
    users: int,
    duration: float,
    password: str = PASSWORD,
    clusters_dir: Path | None = None,
    seed: int = 0,
) -> LoadResult:
    """Run ``users`` users for ``duration`` seconds against a running gateway, then check it."""
    result = LoadResult(users, duration)
    # One connection per user at most: no request waits in the client's own queue.
    http = AsyncHTTPClient(force_instance=True, max_clients=users + 5)
    until = time.monotonic() + duration
    t0 = time.monotonic()
    stop = asyncio.Event()
    sampler = asyncio.create_task(sample_loop_lag(address, http, result, stop))
    await asyncio.gather(
        *(
            User(f"load-user-{i}", address, password, http, result).run(until, seed + i)
            for i in range(users)
        )
    )
    result.duration = time.monotonic() - t0
    stop.set()
    await sampler
    http.close()
    await final_checks(address, password, result, clusters_dir)
    return result


def cpu_wait_seconds(pid: int) -> float:
    """Seconds the process's main thread (the gateway's event loop) has spent ready to run
    but waiting for a CPU (the kernel's run-queue delay, /proc/PID/schedstat)."""
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def fork_server_pid(gateway_pid: int) -> int | None:
    """The fork server the gateway started: the parent (and reaper) of every scheduler and
    worker, so its children's CPU time is theirs."""
    for child in _children(gateway_pid):
        if b"zygote" in _read(f"/proc/{child}/cmdline"):
            return child
    return None


def run_with_server(users: int, duration: float, home: Path) -> tuple[LoadResult, Server]:
    """Start a gateway (as compare.py does, default launcher), load it, stop it, check that
    nothing is left."""
    server_bin = Path(sys.executable).parent / "dask-gateway-server"
    server = Server("load", server_bin, home, default_cmds=True)
    clusters_dir = home / "clusters"
    bench_cpu0 = cpu_seconds(os.getpid())
    with server.running():
        cpu0 = cpu_seconds(server.proc.pid)
        wait0 = cpu_wait_seconds(server.proc.pid)
        t0 = time.monotonic()
        result = asyncio.run(run_load(server.address, users, duration, clusters_dir=clusters_dir))
        elapsed = time.monotonic() - t0
        result.notes["gateway CPU, cores busy on average"] = (
            cpu_seconds(server.proc.pid) - cpu0
        ) / elapsed
        result.notes["gateway event loop: seconds waiting for a CPU per second"] = (
            cpu_wait_seconds(server.proc.pid) - wait0
        ) / elapsed
        # The fork server (started with the gateway, maybe in the background) ran nothing
        # but this run's clusters: its reaped children's CPU is theirs.
        zygote = fork_server_pid(server.proc.pid)
        if zygote:
            result.notes["schedulers + workers CPU, cores busy on average"] = (
                cpu_seconds(zygote, children=True) / elapsed
            )
        result.notes["load bench (the users) CPU, cores busy on average"] = (
            cpu_seconds(os.getpid()) - bench_cpu0
        ) / elapsed
        result.notes["machine load average (1 min) at the end"] = os.getloadavg()[0]
    if server.proc.returncode != 0:
        result.problems.append(f"gateway exited with {server.proc.returncode}")
    left = processes_under(clusters_dir)
    if left:
        result.problems.append(f"{len(left)} processes left after the gateway stopped: {left}")
    return result, server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--duration", type=float, default=300, help="seconds")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dg-load-") as tmp:
        result, server = run_with_server(args.users, args.duration, Path(tmp))
        log_tail = server.log_tail()
    print(
        f"{result.users} users, {result.duration:.0f} s, {result.rounds} rounds, "
        f"{len(result.created)} clusters, "
        f"{sum(len(r) for r in result.samples.values())} requests\n"
    )
    print(result.table())
    print(f"\n5xx or no answer: {result.server_errors}")
    for key, value in result.notes.items():
        print(
            f"{key}: {value:.2f}"
            + (f" (of {os.cpu_count()} cores)" if "cores" in key or "load" in key else "")
        )
    if result.metrics_text:
        print("\nThe gateway's own answer times (its /metrics histogram, whole run):\n")
        print(server_side_table(result.metrics_text))
    if result.problems:
        print(f"\nPROBLEMS ({len(result.problems)}):")
        for p in result.problems[:50]:
            print(" ", p)
        print("\nEnd of the gateway log:\n" + log_tail)
        sys.exit(1)
    print("no lost or stuck clusters, no process left")


if __name__ == "__main__":
    main()
