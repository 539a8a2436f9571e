"""Side by side: the same workload against OUR gateway and the PUBLIC dask-gateway-server.

    .venv/bin/python bench/compare.py [--runs 10] [--quick]

Both servers start, one after the other, on free local ports with the same config file
(bench/compare_config.py) and are driven by the same client (ours, from this interpreter).
Prints one table: each figure for ours, for theirs, and the ratio ours/theirs. A benchmark,
not a test: slowness never makes it fail. See bench/README.md for what each row measures.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from support.gateway_process import free_port  # the test suite's helpers (tests/support)
from support.waiting import wait_for

ROOT = Path(__file__).resolve().parent.parent
CONFIG = Path(__file__).resolve().parent / "compare_config.py"
PASSWORD = "bench-password"
MB = 2**20
ROW_LIST_20 = "list_clusters() latency, 20 clusters (ms)"
ROW_RPS_20 = "list_clusters() requests/s, 4 clients, 20 clusters"
ROW_LIST_N = "list_clusters() latency, {n} clusters in the database, {per} the user's (ms)"
ROW_RPS_N = "list_clusters() requests/s, 4 clients, {n} clusters in the database"
ROW_IDLE_CPU = "gateway CPU while idle with {n} clusters (% of one core)"
PAIRED = "{mb} MB {way}: proxy / direct, paired by round, median of {n} (%)"


# ---------------------------------------------------------------------------------------
# Servers
# ---------------------------------------------------------------------------------------


class Server:
    """One gateway started as an admin would: ``dask-gateway-server -f compare_config.py``
    (another bench's subclass: its own ``config``, ``environment`` and ``after_stop``)."""

    config = CONFIG

    def __init__(
        self,
        label: str,
        server_bin: Path,
        home: Path,
        fake: bool = False,
        default_cmds: bool = False,
        command: list[str] | None = None,
    ):
        self.label = label
        self.server_bin = server_bin
        # What starts it (``-f CONFIG`` is appended): by default the environment's
        # dask-gateway-server script; bench/overhead.py runs ``PYTHON -m dask_gateway_server``
        # (a copied venv's scripts still name the original venv's Python).
        self.command = command or [str(server_bin)]
        self.home = home
        self.fake = fake
        self.default_cmds = default_cmds
        self.port = free_port()
        self.address = f"http://127.0.0.1:{self.port}"
        self.log_path = home / "server.log"
        self.proc: subprocess.Popen | None = None

    @contextlib.contextmanager
    def running(self) -> Iterator[Server]:
        from cryptography.fernet import Fernet

        self.home.mkdir(parents=True, exist_ok=True)
        env = dict(
            os.environ,
            BENCH_HOME=str(self.home),
            BENCH_PORT=str(self.port),
            BENCH_PASSWORD=PASSWORD,
            BENCH_DB_KEY=Fernet.generate_key().decode(),
            BENCH_FAKE="1" if self.fake else "0",
            BENCH_DEFAULT_CMDS="1" if self.default_cmds else "0",
            **self.environment(),
        )
        env.pop("VIRTUAL_ENV", None)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [*self.command, "-f", str(self.config)],
                cwd=self.home,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            deadline = time.monotonic() + 60
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.label} server exited:\n{self.log_tail()}")
                try:
                    with urllib.request.urlopen(self.address + "/api/health", timeout=2):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(
                            f"{self.label} server not up:\n{self.log_tail()}"
                        ) from None
                    time.sleep(0.1)
            yield self
        finally:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            self.after_stop()

    def environment(self) -> dict[str, str]:
        """More of the server's environment (its config reads them)."""
        return {}

    def after_stop(self) -> None:
        """Clear what the server left (it has stopped)."""

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def pids(self) -> dict[str, int]:
        """The gateway process and, for the public server, its separate Go proxy."""
        out = {"gateway": self.proc.pid}
        for child in _children(self.proc.pid):
            if b"dask-gateway-proxy" in _read(f"/proc/{child}/cmdline"):
                out["proxy"] = child
        return out

    def gateway(self, **kwargs):
        from dask_gateway import BasicAuth, Gateway

        return Gateway(self.address, auth=BasicAuth("bench", PASSWORD), **kwargs)


# ---------------------------------------------------------------------------------------
# /proc helpers
# ---------------------------------------------------------------------------------------


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def _children(pid: int) -> list[int]:
    out = []
    for task in os.listdir(f"/proc/{pid}/task") if os.path.isdir(f"/proc/{pid}/task") else []:
        out += [int(x) for x in _read(f"/proc/{pid}/task/{task}/children").split()]
    return out


def peak_rss_mb(pid: int) -> float:
    for line in _read(f"/proc/{pid}/status").decode().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pss_mb(pid: int) -> float:
    for line in _read(f"/proc/{pid}/smaps_rollup").decode().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cluster_pids(names: set[str]) -> dict[str, list[int]]:
    """Processes of the given clusters: both servers start them in the cluster's working
    directory, named after it (command lines and environments may be rewritten by
    setproctitle, so they are no guide)."""
    out: dict[str, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cwd = os.readlink(f"/proc/{entry}/cwd")
        except OSError:
            continue
        name = os.path.basename(cwd.removesuffix(" (deleted)"))
        if name in names:
            out.setdefault(name, []).append(int(entry))
    return out


# ---------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def median_latency(fn: Callable[[], object], n: int) -> float:
    return statistics.median(timed(fn) for _ in range(n))


def _rps_worker(address: str, duration: float, ready, go, queue, user: str = "bench") -> None:
    from dask_gateway import BasicAuth, Gateway

    with Gateway(address, auth=BasicAuth(user, PASSWORD)) as gateway:
        gateway.list_clusters()  # log in (session cookie), warm up
        ready.put(True)
        go.wait()
        count, end = 0, time.perf_counter() + duration
        while time.perf_counter() < end:
            gateway.list_clusters()
            count += 1
    queue.put(count)


def requests_per_second(
    address: str, clients: int = 4, duration: float = 5.0, users: list[str] | None = None
) -> float:
    """list_clusters() calls per second from ``clients`` processes at once (client ``i`` logs
    in as ``users[i]``, by default all as the bench user)."""
    ctx = mp.get_context("spawn")
    ready, queue, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    users = users or ["bench"] * clients
    procs = [
        ctx.Process(target=_rps_worker, args=(address, duration, ready, go, queue, users[i]))
        for i in range(clients)
    ]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=120)  # all imported and logged in
    go.set()
    total = sum(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join()
    return total / duration


def many_at_once(gateway, n: int) -> tuple[float, list[str]]:
    """Request ``n`` clusters at once; seconds until all are RUNNING."""
    from dask_gateway.client import ClusterStatus

    t0 = time.perf_counter()
    names = [gateway.submit() for _ in range(n)]
    wait_for(
        lambda: sum(r.status is ClusterStatus.RUNNING for r in gateway.list_clusters()) == n,
        timeout=300,
        interval=0.05,
        what=f"{n} clusters RUNNING",
    )
    return time.perf_counter() - t0, names


def stop_all(gateway, names: list[str]) -> None:
    from dask_gateway.client import ClusterStatus

    for name in names:
        gateway.stop_cluster(name)
    wait_for(
        lambda: all(gateway.get_cluster(n).status is ClusterStatus.STOPPED for n in names),
        timeout=300,
        interval=0.1,
        what="all clusters STOPPED",
    )


def one_transfer(client, data) -> tuple[float, float]:
    """MB/s of one scatter and then one gather of ``data`` through the scheduler."""
    t0 = time.perf_counter()
    future = client.scatter(data, direct=False)
    t1 = time.perf_counter()
    back = client.gather(future, direct=False)
    t2 = time.perf_counter()
    assert len(back) == len(data)
    del back
    future.release()
    time.sleep(0.5)  # let the worker free it before the next one
    return len(data) / MB / (t1 - t0), len(data) / MB / (t2 - t1)


def transfer_samples(
    clients: dict[str, object], nbytes: int, runs: int
) -> dict[str, tuple[list[float], list[float]]]:
    """``runs`` scatters and gathers of ``nbytes`` on each client (label -> client), after
    one untimed warm-up each; the clients take turns, each round starting with the other
    one, so a busy machine's noise and the scheduler's and worker's warm-up hit all alike.
    Returns label -> (scatter MB/s samples, gather MB/s samples)."""
    import numpy as np

    data = np.frombuffer(os.urandom(nbytes), dtype=np.uint8)
    for client in clients.values():
        one_transfer(client, data)
    out: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in clients}
    labels = list(clients)
    for i in range(runs):
        for label in labels if i % 2 == 0 else labels[::-1]:
            up, down = one_transfer(clients[label], data)
            out[label][0].append(up)
            out[label][1].append(down)
    return out


def spread(samples: list[float]) -> float:
    """(max - min) / median, in %: how far one transfer may be from the figure."""
    return 100 * (max(samples) - min(samples)) / statistics.median(samples)


def relay_counts(server: Server) -> dict[str, float]:
    """Our gateway's relay counters from /metrics (handoffs, tunnels, tunnelled bytes);
    empty for the public server, which has none."""
    out: dict[str, float] = {}
    try:
        with urllib.request.urlopen(server.address + "/metrics", timeout=10) as r:
            text = r.read().decode()
    except OSError:
        return out
    for line in text.splitlines():
        if line.startswith("dask_gateway_proxy_"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def measure_transfers(server: Server, args, cluster, client, r: dict[str, float]) -> None:
    """The transfer rows: medians of ``--transfer-runs`` through the ``gateway://`` proxy and
    over a direct TLS connection to the same scheduler, with their spread, and (ours) which
    path the proxied connections took: handed off to the scheduler or tunnelled."""
    from distributed import Client

    direct_address = client.scheduler_info()["address"]
    before = relay_counts(server)
    with Client(direct_address, security=cluster.security, set_as_default=False) as direct:
        samples = transfer_samples(
            {"proxy": client, "direct": direct}, args.mb * MB, args.transfer_runs
        )
    after = relay_counts(server)
    n = args.transfer_runs
    for label, name in (("proxy", "via gateway:// proxy"), ("direct", "direct TLS to scheduler")):
        for way, values in zip(("scatter", "gather"), samples[label], strict=True):
            sep = " " if label == "proxy" else ", "
            r[f"{args.mb} MB {way}{sep}{name} (MB/s)"] = statistics.median(values)
            r[f"{args.mb} MB {way}{sep}{name}: spread, (max-min)/median of {n} (%)"] = spread(
                values
            )
            print(
                f"  [{server.label}] {way:7s} {label:6s} MB/s: "
                + " ".join(f"{v:.0f}" for v in values),
                flush=True,
            )
    for i, way in enumerate(("scatter", "gather")):
        # Each round's two transfers ran back to back: their ratio is less at the mercy of
        # what else the machine did than a ratio of two medians.
        pairs = zip(samples["proxy"][i], samples["direct"][i], strict=True)
        r[PAIRED.format(mb=args.mb, way=way, n=n)] = 100 * statistics.median(
            p / d for p, d in pairs
        )
    if after:  # ours: which path did the proxied connections take?
        key = "dask_gateway_proxy_tunnel_bytes_total"
        tunnelled = sum(v - before.get(k, 0) for k, v in after.items() if k.startswith(key))
        handed = after.get('dask_gateway_proxy_connections_total{path="handoff"}', 0)
        r["connections handed to the scheduler (whole run so far)"] = handed
        r["MB relayed by the gateway's tunnels during the transfers"] = tunnelled / MB
        print(
            f"  [{server.label}] proxied connections handed off so far: {handed:.0f}; "
            f"tunnelled during the transfers: {tunnelled / MB:.1f} MB",
            flush=True,
        )


def measure(server: Server, args) -> dict[str, float]:
    """Everything but the 1,000-cluster row, on one running server."""
    import dask.array as da

    from dask_gateway.client import ClusterStatus

    r: dict[str, float] = {}
    say = lambda msg: print(f"  [{server.label}] {msg}", flush=True)  # noqa: E731
    if args.transfers_only:
        with server.gateway() as gateway, gateway.new_cluster() as cluster:
            cluster.scale(2)
            with cluster.get_client(set_as_default=False) as client:
                client.wait_for_workers(2, timeout=300)
                say(f"{args.mb} MB scatter/gather, proxy vs direct TLS, {args.transfer_runs} each")
                measure_transfers(server, args, cluster, client, r)
        return r
    with server.gateway() as gateway:
        say("warm-up cluster")
        with gateway.new_cluster() as cluster:
            cluster.scale(1)
            cluster.get_client(set_as_default=False).wait_for_workers(1, timeout=120)

        r["list_clusters() latency, 0 clusters (ms)"] = 1000 * median_latency(
            gateway.list_clusters, 50
        )

        say(f"{args.runs} x new_cluster/shutdown")
        starts, stops = [], []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            cluster = gateway.new_cluster()
            starts.append(time.perf_counter() - t0)
            name = cluster.name
            t0 = time.perf_counter()
            cluster.shutdown()
            wait_for(
                lambda name=name: gateway.get_cluster(name).status is ClusterStatus.STOPPED,
                timeout=300,
                interval=0.01,
                what="STOPPED",
            )
            stops.append(time.perf_counter() - t0)
        r[f"new_cluster() until RUNNING, median of {args.runs} (s)"] = statistics.median(starts)
        r[f"shutdown() until STOPPED, median of {args.runs} (s)"] = statistics.median(stops)

        say(f"{args.scale_runs} x scale(2) + first compute")
        connects, scales, computes = [], [], []
        for i in range(args.scale_runs):
            cluster = gateway.new_cluster()
            t0 = time.perf_counter()
            client = cluster.get_client(set_as_default=False)
            connects.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            cluster.scale(2)
            client.wait_for_workers(2, timeout=300)
            scales.append(time.perf_counter() - t0)
            x = da.ones((2000, 2000), chunks=(500, 500))
            computes.append(timed(lambda x=x, client=client: x.sum().compute(scheduler=client)))
            if i == args.scale_runs - 1:
                say(
                    f"{args.mb} MB scatter/gather, proxy vs direct TLS, "
                    f"{args.transfer_runs} each, interleaved"
                )
                measure_transfers(server, args, cluster, client, r)
            client.close()
            cluster.shutdown()
        r["get_client() connect through proxy (s)"] = statistics.median(connects)
        r[f"scale(2) until 2 workers connected, median of {args.scale_runs} (s)"] = (
            statistics.median(scales)
        )
        r[f"first compute, median of {args.scale_runs} (s)"] = statistics.median(computes)

        for n in (10, 20):
            say(f"{n} clusters at once")
            seconds, names = many_at_once(gateway, n)
            r[f"{n} clusters requested at once until all RUNNING (s)"] = seconds
            if n == 10:
                time.sleep(3)  # let the idle schedulers settle
                # No workers: each idle cluster is its scheduler process alone.
                pids = cluster_pids(set(names))
                r["memory per idle cluster: scheduler PSS, median (MB)"] = statistics.median(
                    sum(pss_mb(p) for p in procs) for procs in pids.values()
                )
            else:
                r[ROW_LIST_20] = 1000 * median_latency(gateway.list_clusters, 50)
                say("requests/s")
                r[ROW_RPS_20] = requests_per_second(server.address)
            stop_all(gateway, names)

    pids = server.pids()
    gateway_rss = peak_rss_mb(pids["gateway"])
    proxy_rss = peak_rss_mb(pids["proxy"]) if "proxy" in pids else 0.0  # ours has none
    r["peak RSS of the gateway process (MB)"] = gateway_rss
    r["peak RSS of the separate proxy process (MB)"] = proxy_rss
    r["peak RSS, gateway + proxy (MB)"] = gateway_rss + proxy_rss
    return r


def cpu_seconds(pid: int, children: bool = False) -> float:
    """User + system CPU seconds of a process so far (with ``children``: of the children
    it has reaped instead); 0 when it cannot be read."""
    try:
        fields = _read(f"/proc/{pid}/stat").rsplit(b")", 1)[1].split()
    except IndexError:
        return 0.0
    ticks = sum(int(x) for x in (fields[13:15] if children else fields[11:13]))
    return ticks / os.sysconf("SC_CLK_TCK")


def create_fake_clusters(
    server: Server, n: int, users: int, budget: float
) -> tuple[list[str], float, bool]:
    """Create ``n`` (fake, cheap) clusters owned by ``users`` users (``user0``, ...,
    ``n / users`` each) through the API, until the last user's are RUNNING.

    Returns the user names, the creation rate (clusters/s) and whether all were created
    within ``budget`` seconds (if not, the rate is that of the ones created so far).
    """
    from dask_gateway import BasicAuth, Gateway
    from dask_gateway.client import ClusterStatus

    per_user = n // users
    names = [f"user{i}" for i in range(users)]
    print(f"  [{server.label}] {n} fake clusters, {users} users x {per_user}", flush=True)
    t0 = time.perf_counter()
    created = 0
    for user in names:
        with Gateway(server.address, auth=BasicAuth(user, PASSWORD)) as gateway:
            for _ in range(per_user):
                gateway.submit()
                created += 1
                if time.perf_counter() - t0 > budget:
                    rate = created / (time.perf_counter() - t0)
                    print(
                        f"  [{server.label}] only {created} of {n} clusters created in "
                        f"{budget:.0f} s ({rate:.1f}/s): {n} would take ~{n / rate:.0f} s;"
                        " skipped",
                        flush=True,
                    )
                    return names, rate, False
    with Gateway(server.address, auth=BasicAuth(names[-1], PASSWORD)) as gateway:
        wait_for(
            lambda: len(gateway.list_clusters(status=ClusterStatus.RUNNING)) == per_user,
            timeout=budget,
            interval=0.5,
            what=f"{per_user} clusters RUNNING",
        )
    return names, n / (time.perf_counter() - t0), True


def measure_fake(
    server: Server, n: int, users: int, budget: float, idle_seconds: float
) -> dict[str, float]:
    """The gateway's own bookkeeping with ``n`` (fake, cheap) clusters RUNNING, owned by
    ``users`` users (``n / users`` each, like a team sharing one gateway).

    Gives up (figures n/a) if the server cannot create them within ``budget`` seconds.
    """
    from dask_gateway import BasicAuth, Gateway

    r: dict[str, float] = {}
    per_user = n // users
    names, rate, complete = create_fake_clusters(server, n, users, budget)
    r[f"{n} fake clusters: creation rate (clusters/s)"] = rate
    if not complete:
        return r
    time.sleep(2)
    with Gateway(server.address, auth=BasicAuth(names[0], PASSWORD)) as gateway:
        r[ROW_LIST_N.format(n=n, per=per_user)] = 1000 * median_latency(gateway.list_clusters, 50)
    r[ROW_RPS_N.format(n=n)] = requests_per_second(server.address, users=names[:4])
    pids = server.pids()
    time.sleep(2)
    before = {k: cpu_seconds(p) for k, p in pids.items()}
    time.sleep(idle_seconds)
    idle = {k: 100 * (cpu_seconds(p) - before[k]) / idle_seconds for k, p in pids.items()}
    r[ROW_IDLE_CPU.format(n=n)] = sum(idle.values())
    r[f"peak RSS of the gateway with {n} clusters (MB)"] = peak_rss_mb(pids["gateway"])
    return r


# ---------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------


def upstream_venv(path: str | None) -> Path:
    venv = Path(path or os.environ.get("DASK_GATEWAY_UPSTREAM_VENV", ROOT / ".venv-upstream"))
    if not (venv / "bin" / "dask-gateway-server").exists():
        print(f"Creating the public dask-gateway venv at {venv} ...", flush=True)
        subprocess.run(
            ["bash", str(ROOT / "scripts" / "make-upstream-venv.sh"), str(venv)], check=True
        )
    return venv


def run_one(
    label: str, server_bin: Path, tmp: Path, args, default_cmds: bool = False
) -> dict[str, float]:
    results: dict[str, float] = {}
    try:
        with Server(label, server_bin, tmp / label, default_cmds=default_cmds).running() as server:
            results.update(measure(server, args))
    except Exception as e:  # a benchmark reports what it could measure
        print(f"  [{label}] stopped early: {e!r}", flush=True)
    if args.fake_clusters:
        try:
            with Server(label, server_bin, tmp / f"{label}-fake", fake=True).running() as srv:
                results.update(
                    measure_fake(
                        srv,
                        args.fake_clusters,
                        args.fake_users,
                        args.fake_budget,
                        args.idle_seconds,
                    )
                )
        except Exception as e:
            print(f"  [{label}] fake clusters: {e!r}", flush=True)
    return results


def fmt(x: float | None) -> str:
    if x is None or x != x:
        return "n/a"
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def print_table(ours: dict[str, float], theirs: dict[str, float]) -> None:
    rows = list(ours) + [k for k in theirs if k not in ours]
    width = max(len(k) for k in rows)
    print()
    print(f"| {'measurement':{width}} | {'ours':>9} | {'theirs':>9} | {'ours/theirs':>11} |")
    print(f"|{'-' * (width + 2)}|{'-' * 11}|{'-' * 11}|{'-' * 13}|")
    for key in rows:
        a, b = ours.get(key), theirs.get(key)
        ratio = a / b if a and b else None
        print(f"| {key:{width}} | {fmt(a):>9} | {fmt(b):>9} | {fmt(ratio):>11} |")


def print_targets(ours: dict[str, float], theirs: dict[str, float], args) -> None:
    """Issue 10's targets: each ours beside theirs, the ratio and whether it is met."""
    n, per = args.fake_clusters, args.fake_clusters // args.fake_users
    new = f"new_cluster() until RUNNING, median of {args.runs} (s)"
    scale = f"scale(2) until 2 workers connected, median of {args.scale_runs} (s)"
    at_once = "20 clusters requested at once until all RUNNING (s)"
    mem = "memory per idle cluster: scheduler PSS, median (MB)"
    list_n, rps_n = ROW_LIST_N.format(n=n, per=per), ROW_RPS_N.format(n=n)
    idle = ROW_IDLE_CPU.format(n=n)

    def get(d: dict[str, float], key: str) -> float | None:
        return d.get(key)

    def div(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    rows = []  # (target, ours, theirs, value compared, goal text, met)
    for label, key, goal in (
        ("new_cluster() until RUNNING (s)", new, 0.2),
        ("scale(2) until 2 workers (s)", scale, 0.3),
        ("20 clusters at once until RUNNING (s)", at_once, 0.3),
        ("memory per idle cluster, PSS (MB)", mem, 0.5),
    ):
        a, b = get(ours, key), get(theirs, key)
        ratio = div(a, b)
        rows.append((label, a, b, ratio, f"ratio <= {goal}", ratio is not None and ratio <= goal))
    a, b = get(ours, list_n), get(theirs, list_n)
    rows.append(
        (
            f"list_clusters(), {n} in the database (ms)",
            a,
            b,
            div(a, b),
            "ours < 10 ms",
            a is not None and a < 10,
        )
    )
    a, b = get(ours, rps_n), get(theirs, ROW_RPS_20)
    rows.append(
        (
            f"requests/s: ours at {n} vs theirs at 20",
            a,
            b,
            div(a, b),
            "ratio >= 1.5",
            div(a, b) is not None and div(a, b) >= 1.5,
        )
    )
    for way in ("scatter", "gather"):
        proxied = f"{args.mb} MB {way} via gateway:// proxy (MB/s)"
        direct = f"{args.mb} MB {way}, direct TLS to scheduler (MB/s)"
        paired = PAIRED.format(mb=args.mb, way=way, n=args.transfer_runs)
        a, b = (
            div(get(ours, proxied), get(ours, direct)),
            div(get(theirs, proxied), get(theirs, direct)),
        )
        a, b = (None if a is None else 100 * a), (None if b is None else 100 * b)
        a, b = get(ours, paired) or a, get(theirs, paired) or b
        rows.append(
            (
                f"{way} via proxy, % of direct TLS",
                a,
                b,
                div(a, b),
                "ours >= 95 %",
                a is not None and a >= 95,
            )
        )
    a, b = get(ours, idle), get(theirs, idle)
    rows.append(
        (
            f"gateway CPU idle, {n} clusters (% of a core)",
            a,
            b,
            div(a, b),
            "ours < 2 %",
            a is not None and a < 2,
        )
    )
    width = max(len(r[0]) for r in rows)
    print("\nTargets (issue 10):")
    print(
        f"| {'target':{width}} | {'ours':>9} | {'theirs':>9} | {'ratio':>7} | {'goal':14} | met |"
    )
    print(f"|{'-' * (width + 2)}|{'-' * 11}|{'-' * 11}|{'-' * 9}|{'-' * 16}|-----|")
    for label, a, b, ratio, goal, met in rows:
        print(
            f"| {label:{width}} | {fmt(a):>9} | {fmt(b):>9} | {fmt(ratio):>7} | {goal:14} | "
            f"{'yes' if met else 'NO':3} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="new_cluster/shutdown cycles")
    parser.add_argument("--scale-runs", type=int, default=3, help="scale(2)/compute cycles")
    parser.add_argument("--mb", type=int, default=200, help="MB to scatter and gather")
    parser.add_argument(
        "--transfer-runs",
        type=int,
        default=5,
        help="scatter/gather pairs per path (medians and spread of these)",
    )
    parser.add_argument(
        "--fake-clusters",
        type=int,
        default=1000,
        help="clusters for the large list_clusters() row (0: skip)",
    )
    parser.add_argument("--fake-users", type=int, default=50, help="users owning the fake clusters")
    parser.add_argument(
        "--fake-budget", type=float, default=120, help="seconds allowed to create the fake clusters"
    )
    parser.add_argument(
        "--idle-seconds", type=float, default=30, help="seconds over which idle CPU is measured"
    )
    parser.add_argument("--upstream-venv", help="venv with the public dask-gateway-server")
    parser.add_argument(
        "--ours-defaults",
        action="store_true",
        help="ours with its default scheduler/worker commands (fork server, "
        "no nanny) instead of the shared `dask scheduler`/`dask worker`",
    )
    parser.add_argument("--quick", action="store_true", help="fewer runs, smaller sizes")
    parser.add_argument(
        "--transfers-only",
        action="store_true",
        help="only the scatter/gather rows (one cluster with 2 workers per server)",
    )
    args = parser.parse_args()
    if args.transfers_only:
        args.fake_clusters = 0
    if args.quick:
        args.runs, args.scale_runs, args.mb, args.transfer_runs = 3, 1, 50, 3
        args.fake_clusters, args.idle_seconds = min(args.fake_clusters, 100), 10

    # Our client has pandas, some scheduler environments not: not worth a warning here.
    warnings.filterwarnings("ignore", message="Mismatched versions found")
    ours_bin = Path(sys.executable).parent / "dask-gateway-server"
    theirs_bin = upstream_venv(args.upstream_venv) / "bin" / "dask-gateway-server"
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="dg-compare-") as tmp:
        print("ours:", flush=True)
        ours = run_one("ours", ours_bin, Path(tmp), args, default_cmds=args.ours_defaults)
        print("theirs (public dask-gateway-server):", flush=True)
        theirs = run_one("theirs", theirs_bin, Path(tmp), args)
    if args.ours_defaults:
        print("\nNOTE: --ours-defaults: ours ran its default scheduler/worker commands.")
    print_table(ours, theirs)
    print_targets(ours, theirs, args)
    print(
        f"\n(total {time.monotonic() - t0:.0f} s; lower is better except MB/s and "
        "requests/s; 2-core machines shared with other work are noisy)"
    )


if __name__ == "__main__":
    main()
