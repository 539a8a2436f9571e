"""Side by side on the same Slurm: OUR SlurmBackend and the PUBLIC dask-gateway's.

    sudo .venv/bin/python bench/slurm_compare.py [--runs 5] [--ours-defaults]

Both servers run at once (each on its own free ports, in its own temporary directory, with
the same config file, bench/slurm_compare_config.py) against the Slurm on this machine
(scripts/services/start-slurm.sh); each has its own local users, so that "its jobs" is "its
users' jobs". The runs alternate between the servers (ours first in even rounds, theirs in
odd ones), so drift on a shared machine hits both. One warm-up run each, then --runs runs of:

* ``new_cluster()`` until RUNNING;
* ``scale(N)`` until N workers are connected (``client.wait_for_workers``);
* ``shutdown()`` (with the N workers) until Slurm lists no job of the user in its queue;

and --runs rounds of --users users each creating a cluster at once (threads, one Gateway
each) until all are RUNNING. It prints the medians, ours / theirs, and for each figure how
much of it was Slurm's own time, from Slurm's own logs (millisecond timestamps of
slurmctld.log and slurmd.log): for a start, from the submission of the job(s) to slurmd
launching the (last) batch script; for the shutdown, from the first kill request of the
cluster's jobs to slurmd's "done with job" of the last one (this part includes the jobs'
own processes exiting). Plain-Slurm baselines (``sbatch --wrap``, a 10-task array, 10 single
jobs, scancel) are measured in the same invocation. A benchmark, not a test: slowness never
makes it fail. Run Slurm things under ``flock /work/helpers/slurm.lock`` on a shared machine.

Runs as root, as a Slurm gateway does (it submits as each user); the public backend needs
``sudo`` (it runs ``sudo -nHu USER dask-gateway-jobqueue-launcher``; root needs no rule).
"""

from __future__ import annotations

import argparse
import os
import pwd
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import compare  # bench/compare.py: its Server
from support.gateway_process import free_port  # the test suite's helpers (tests/support)
from support.slurm_user import open_for_others

ROOT = Path(__file__).resolve().parent.parent
CONFIG = Path(__file__).resolve().parent / "slurm_compare_config.py"
PASSWORD = "bench-password"
CTLD_LOG = Path("/var/log/slurm/slurmctld.log")
SLURMD_LOG = Path("/var/log/slurm/slurmd.log")
ACTIVE = "PENDING,RUNNING,CONFIGURING,COMPLETING,SUSPENDED,REQUEUED,RESIZING"


# ---------------------------------------------------------------------------------------
# Slurm: the queue and its logs
# ---------------------------------------------------------------------------------------


def queue(user: str, states: str = ACTIVE) -> list[str]:
    """The unique job ids (%A: one per array task) of ``user``'s jobs in ``states``."""
    out = subprocess.run(
        ["squeue", "--noheader", "--array", f"--states={states}", f"--user={user}", "-o", "%A"],
        capture_output=True,
        text=True,
    ).stdout
    return out.split()


def all_jobs(user: str) -> set[str]:
    """Every job of ``user`` Slurm still lists (finished ones for MinJobAge, 300 s here)."""
    return set(queue(user, "all"))


def until_queue_empty(users: list[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while any(queue(u) for u in users):
        if time.monotonic() > deadline:
            raise RuntimeError(f"jobs of {users} still queued after {timeout:g} s")
        time.sleep(0.02)


def _stamp(line: str) -> float | None:
    if not line.startswith("["):
        return None
    try:
        return datetime.fromisoformat(line[1 : line.index("]")]).timestamp()
    except ValueError:
        return None


@dataclass
class SlurmLog:
    """Per job id (unique, %A): when Slurm took it (submit), started its batch script
    (slurmd's "Launching batch job"), was asked to kill it, and ended it ("done with job")."""

    submit: dict[str, float] = field(default_factory=dict)
    launch: dict[str, float] = field(default_factory=dict)
    kill: dict[str, float] = field(default_factory=dict)
    done: dict[str, float] = field(default_factory=dict)
    array_of: dict[str, str] = field(default_factory=dict)  # task id -> array job id

    @classmethod
    def read(cls, ctld_offset: int, slurmd_offset: int) -> SlurmLog:
        log = cls()
        submit = re.compile(r"_slurm_rpc_submit_batch_job: JobId=(\d+)")
        alloc = re.compile(r"(?:Allocate|Started) JobId=(\d+)_\d+\((\d+)\)")
        kill = re.compile(r"REQUEST_KILL_JOB JobId=(\d+)(?:_\d+)?")
        for line in _read_from(CTLD_LOG, ctld_offset):
            t = _stamp(line)
            if t is None:
                continue
            if m := submit.search(line):
                log.submit.setdefault(m.group(1), t)
            elif m := alloc.search(line):
                log.array_of[m.group(2)] = m.group(1)
            elif m := kill.search(line):
                log.kill.setdefault(m.group(1), t)
        launch = re.compile(r"Launching batch job (\d+) ")
        done = re.compile(r"\[(\d+)\.batch\] done with job")
        for line in _read_from(SLURMD_LOG, slurmd_offset):
            t = _stamp(line)
            if t is None:
                continue
            if m := launch.search(line):
                log.launch.setdefault(m.group(1), t)
            elif m := done.search(line):
                log.done.setdefault(m.group(1), t)
        return log

    def submitted(self, job: str) -> float | None:
        return self.submit.get(job) or self.submit.get(self.array_of.get(job, ""))

    def killed(self, job: str) -> float | None:
        return self.kill.get(job) or self.kill.get(self.array_of.get(job, ""))

    def start_phases(self, t0: float, t1: float, jobs: list[str]) -> list[float] | None:
        """Seconds of a start from ``t0`` to ``t1`` (wall clock): until Slurm took the first
        job, until slurmd launched the last one's script (Slurm's own), and the rest."""
        subs = [self.submitted(j) for j in jobs]
        launches = [self.launch.get(j) for j in jobs]
        if not jobs or None in subs or None in launches:
            return None
        first, last = min(subs), max(launches)  # type: ignore[type-var]
        return [first - t0, last - first, t1 - last]  # type: ignore[operator]

    def end_phases(self, t0: float, t1: float, jobs: list[str]) -> list[float] | None:
        """Seconds of a shutdown from ``t0`` to ``t1``: until the first kill request, until
        slurmd ended the last job (Slurm's own, with the jobs' processes exiting), the rest
        (squeue catching up, and the bench's 20 ms polls)."""
        ends = [self.done.get(j) for j in jobs]
        kills = [k for j in jobs if (k := self.killed(j)) is not None]
        if not jobs or None in ends or not kills:
            return None
        first, last = min(kills), max(ends)  # type: ignore[type-var]
        return [first - t0, last - first, t1 - last]  # type: ignore[operator]


def _read_from(path: Path, offset: int) -> list[str]:
    with open(path, errors="replace") as f:
        f.seek(offset)
        return f.read().splitlines()


def log_offsets() -> tuple[int, int]:
    return CTLD_LOG.stat().st_size, SLURMD_LOG.stat().st_size


# ---------------------------------------------------------------------------------------
# Users and servers
# ---------------------------------------------------------------------------------------


def ensure_users(names: list[str]) -> list[str]:
    """Create the users that are missing; returns those created (removed at the end)."""
    created = []
    for name in names:
        try:
            pwd.getpwnam(name)
        except KeyError:
            subprocess.run(
                ["useradd", "--create-home", "--shell", "/bin/bash", name],
                check=True,
                capture_output=True,
            )
            created.append(name)
    return created


class Server(compare.Server):
    """One gateway started as an admin would: ``dask-gateway-server -f slurm_compare_config.py``."""

    config = CONFIG

    def __init__(self, label: str, server_bin: Path, home: Path, users: list[str], default_cmds):
        super().__init__(label, server_bin, home, default_cmds=default_cmds)
        self.users = users
        self.api_port = free_port()  # Slurm jobs report to the private API port

    def environment(self) -> dict[str, str]:
        return {"BENCH_API_PORT": str(self.api_port)}

    def after_stop(self) -> None:
        for user in self.users:
            subprocess.run(["scancel", f"--user={user}"], capture_output=True)

    def gateway(self, user: str):  # type: ignore[override]  # every user here has a name
        from dask_gateway import BasicAuth, Gateway

        return Gateway(self.address, auth=BasicAuth(user, PASSWORD))


# ---------------------------------------------------------------------------------------
# What is measured
# ---------------------------------------------------------------------------------------

NEW = "new_cluster() until RUNNING"
SCALE = "scale(N) until N workers connected"
STOP = "shutdown() (N workers) until queue empty"
MANY = "U users, a cluster each at once, until all RUNNING"


PHASES = {
    NEW: ("gateway until sbatch", "Slurm: submit to script launch", "scheduler start + gateway"),
    SCALE: (
        "gateway until sbatch",
        "Slurm: first submit to last launch",
        "workers start + connect",
    ),
    STOP: ("gateway until scancel", "Slurm: kill to last job done", "until squeue shows it"),
    MANY: ("gateways until sbatch", "Slurm: first submit to last launch", "schedulers + gateway"),
}


@dataclass
class Figures:
    """Seconds per row: the totals, and each run's phases (PHASES; phases[1] is Slurm's)."""

    total: dict[str, list[float]] = field(default_factory=dict)
    phases: dict[str, list[list[float]]] = field(default_factory=dict)
    #: ours only: the scheduler's start split at its first heartbeat (from the gateway log)
    scheduler: list[tuple[float, float, float]] = field(default_factory=list)

    def add(self, row: str, total: float, phases: list[float] | None) -> None:
        self.total.setdefault(row, []).append(total)
        if phases is not None:
            self.phases.setdefault(row, []).append(phases)


GATEWAY_STAMP = re.compile(r"^\[\w (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+) ")
CONFIRMED = re.compile(r"Confirmed the scheduler's addresses: .* \((\d+) ms\)")


def confirmed_at(server: Server, cluster: str) -> tuple[float, float] | None:
    """Ours only: (when the scheduler's first heartbeat came, when its addresses were
    confirmed), from the gateway's log line "Confirmed the scheduler's addresses"."""
    for line in server.log_path.read_text(errors="replace").splitlines():
        if f"[cluster {cluster}]" in line and (m := CONFIRMED.search(line)):
            stamp = GATEWAY_STAMP.match(line)
            if stamp:
                t = datetime.fromisoformat(stamp.group(1)).timestamp()
                return t - int(m.group(1)) / 1000, t
    return None


def one_run(server: Server, workers: int, figures: Figures | None) -> None:
    """new_cluster, scale(workers), shutdown: as the server's first user."""
    user = server.users[0]
    offsets = log_offsets()
    before = all_jobs(user)
    with server.gateway(user) as gateway:
        w0, t0 = time.time(), time.perf_counter()
        cluster = gateway.new_cluster()
        w1, t1 = time.time(), time.perf_counter()
        scheduler_jobs = sorted(all_jobs(user) - before)
        client = cluster.get_client(set_as_default=False)
        w2, t2 = time.time(), time.perf_counter()
        cluster.scale(workers)
        client.wait_for_workers(workers, timeout=300)
        w3, t3 = time.time(), time.perf_counter()
        worker_jobs = sorted(all_jobs(user) - before - set(scheduler_jobs))
        client.close()
        w4, t4 = time.time(), time.perf_counter()
        cluster.shutdown()
        until_queue_empty([user])
        w5, t5 = time.time(), time.perf_counter()
    time.sleep(0.3)  # slurmd's last lines
    log = SlurmLog.read(*offsets)
    if figures is None:
        return
    new = log.start_phases(w0, w1, scheduler_jobs[:1])
    figures.add(NEW, t1 - t0, new)
    figures.add(SCALE, t3 - t2, log.start_phases(w2, w3, worker_jobs))
    jobs = scheduler_jobs + worker_jobs
    figures.add(STOP, t5 - t4, log.end_phases(w4, w5, jobs))
    seen = confirmed_at(server, cluster.name)
    launched = log.launch.get(scheduler_jobs[0]) if scheduler_jobs else None
    if seen and launched:
        figures.scheduler.append((seen[0] - launched, seen[1] - seen[0], w1 - seen[1]))


def many_users(server: Server, figures: Figures | None) -> None:
    """Every user of the server creates a cluster at once; until all are RUNNING."""
    offsets = log_offsets()
    before = {u: all_jobs(u) for u in server.users}
    barrier = threading.Barrier(len(server.users) + 1)
    clusters: dict[str, object] = {}
    errors: list[BaseException] = []
    gateways = [server.gateway(u) for u in server.users]

    def create(user: str, gateway) -> None:
        try:
            barrier.wait()
            clusters[user] = gateway.new_cluster()
        except BaseException as e:
            errors.append(e)

    threads = [
        threading.Thread(target=create, args=(u, g))
        for u, g in zip(server.users, gateways, strict=True)
    ]
    for t in threads:
        t.start()
    barrier.wait()
    w0, t0 = time.time(), time.perf_counter()
    for t in threads:
        t.join()
    w1, t1 = time.time(), time.perf_counter()
    jobs = [j for u in server.users for j in sorted(all_jobs(u) - before[u])]
    for cluster in clusters.values():
        cluster.shutdown()  # type: ignore[attr-defined]
    for gateway in gateways:
        gateway.close()
    until_queue_empty(server.users)
    if errors:
        raise errors[0]
    time.sleep(0.3)
    log = SlurmLog.read(*offsets)
    if figures is not None:
        figures.add(MANY, t1 - t0, log.start_phases(w0, w1, jobs))


def plain_slurm(user: str, runs: int) -> dict[str, float]:
    """Slurm alone, as the user: what no backend can beat."""

    def sbatch(*args: str) -> str:
        out = subprocess.run(
            [
                "runuser",
                "-u",
                user,
                "--",
                "sbatch",
                "--parsable",
                "--chdir=/tmp",
                "--output=/dev/null",
                *args,
                "--wrap",
                "exec sleep 300",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip().split(";")[0]

    rows: dict[str, list[float]] = {}

    def running(n: int) -> bool:
        return len(queue(user, "RUNNING")) == n

    for _ in range(runs):
        t0 = time.perf_counter()
        job = sbatch()
        while not running(1):
            time.sleep(0.01)
        t1 = time.perf_counter()
        subprocess.run(["runuser", "-u", user, "--", "scancel", job], check=True)
        until_queue_empty([user])
        t2 = time.perf_counter()
        rows.setdefault("sbatch --wrap until RUNNING in squeue", []).append(t1 - t0)
        rows.setdefault("scancel of it until the queue is empty", []).append(t2 - t1)
        t0 = time.perf_counter()
        job = sbatch("--array=0-9")
        while not running(10):
            time.sleep(0.01)
        t1 = time.perf_counter()
        subprocess.run(["runuser", "-u", user, "--", "scancel", job], check=True)
        until_queue_empty([user])
        rows.setdefault("sbatch --array=0-9 until 10 RUNNING", []).append(t1 - t0)
        t0 = time.perf_counter()
        jobs = [sbatch() for _ in range(10)]
        while not running(10):
            time.sleep(0.01)
        t1 = time.perf_counter()
        subprocess.run(["runuser", "-u", user, "--", "scancel", *jobs], check=True)
        until_queue_empty([user])
        rows.setdefault("10 x sbatch --wrap until 10 RUNNING", []).append(t1 - t0)
    return {k: statistics.median(v) for k, v in rows.items()}


def python_start(python: str, user: str, runs: int) -> dict[str, float]:
    """Seconds the jobs' interpreter takes to import the scheduler, as the user."""
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(
            [
                "runuser",
                "-u",
                user,
                "--",
                python,
                "-c",
                "import distributed.cli.dask_scheduler, dask_gateway.scheduler_preload",
            ],
            check=True,
            cwd="/",
            capture_output=True,
        )
        out.append(time.perf_counter() - t0)
    return {
        f"import distributed + preload ({Path(python).parents[1].name})": statistics.median(out)
    }


# ---------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------


def fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def median(values: list[float] | None) -> float | None:
    return statistics.median(values) if values else None


def print_table(rows: list[str], ours: Figures, theirs: Figures, args) -> None:
    names = {"N": str(args.workers), "U": str(args.users)}

    def label(row: str) -> str:
        return re.sub(r"\b[NU]\b", lambda m: names[m.group(0)], row)

    w = max(len(label(r)) for r in rows)
    print(f"\nMedians of {args.runs} runs (seconds); Slurm = Slurm's own part (median over runs).")
    print(
        f"| {'measurement':{w}} | {'ours':>6} | {'theirs':>6} | {'ours/theirs':>11} | "
        f"{'ours: Slurm':>11} | {'ours: rest':>10} | {'theirs: Slurm':>13} |"
    )
    print(f"|{'-' * (w + 2)}|{'-' * 8}|{'-' * 8}|{'-' * 13}|{'-' * 13}|{'-' * 12}|{'-' * 15}|")
    for row in rows:
        a, b = median(ours.total.get(row)), median(theirs.total.get(row))
        sa = median([p[1] for p in ours.phases.get(row, [])])
        sb = median([p[1] for p in theirs.phases.get(row, [])])
        ratio = f"{a / b:.2f}" if a is not None and b else "n/a"
        rest = None if a is None or sa is None else a - sa
        print(
            f"| {label(row):{w}} | {fmt(a):>6} | {fmt(b):>6} | {ratio:>11} | {fmt(sa):>11} | "
            f"{fmt(rest):>10} | {fmt(sb):>13} |"
        )
    print(
        "\nWhere the time goes (median of each phase over the runs, seconds; from the bench's "
        "clock and Slurm's logs):"
    )
    for row in rows:
        print(f"  {label(row)}:")
        for name, fig in (("ours", ours), ("theirs", theirs)):
            runs = fig.phases.get(row, [])
            if not runs:
                print(f"    {name:6} n/a")
                continue
            parts = ", ".join(
                f"{phase} {statistics.median(r[i] for r in runs):.2f}"
                for i, phase in enumerate(PHASES[row])
            )
            print(f"    {name:6} {parts}")
            if name == "ours" and row == NEW and fig.scheduler:
                start, confirm, answer = (
                    statistics.median(x[i] for x in fig.scheduler) for i in range(3)
                )
                print(
                    f"           of which: scheduler process start until its first heartbeat "
                    f"{start:.2f}, confirming its addresses {confirm:.2f}, then RUNNING to "
                    f"the client {answer:.2f}"
                )
    print("\nEvery run (seconds):")
    for name, fig in (("ours", ours), ("theirs", theirs)):
        for row in rows:
            vals = ", ".join(f"{v:.2f}" for v in fig.total.get(row, []))
            print(f"  {name:6} {label(row)}: {vals}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="measured runs of each")
    parser.add_argument("--workers", type=int, default=10, help="scale(N)")
    parser.add_argument("--users", type=int, default=10, help="users creating clusters at once")
    parser.add_argument("--upstream-venv", help="venv with the public dask-gateway-server")
    parser.add_argument(
        "--ours-defaults",
        action="store_true",
        help="ours with its default scheduler/worker commands (no nanny) instead of the "
        "shared `dask scheduler`/`dask worker`",
    )
    parser.add_argument("--skip-plain", action="store_true", help="no plain-Slurm baselines")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: the gateways submit jobs as other users")
    ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True)
    if "is UP" not in ping.stdout:
        sys.exit("Slurm is not running: bash scripts/services/start-slurm.sh")
    if not shutil.which("sudo"):
        sys.exit("the public SlurmBackend runs `sudo -nHu USER ...`: install sudo")
    conf = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True).stdout
    proctrack = re.search(r"ProctrackType\s*=\s*(\S+)", conf)
    warnings.filterwarnings("ignore", message="Mismatched versions found")

    import distributed

    import dask_gateway

    venv = Path(
        args.upstream_venv
        or os.environ.get("DASK_GATEWAY_UPSTREAM_VENV", "")
        or ROOT / ".venv-upstream"
    )
    theirs_bin = venv / "bin" / "dask-gateway-server"
    if not theirs_bin.exists():
        sys.exit(f"no public server at {theirs_bin}: bash scripts/make-upstream-venv.sh {venv}")
    ours_bin = Path(sys.executable).parent / "dask-gateway-server"
    n = args.users
    ours_users = [f"dgsb-o{i}" for i in range(n)]
    theirs_users = [f"dgsb-p{i}" for i in range(n)]
    created = ensure_users(ours_users + theirs_users)
    restore = open_for_others(
        [sys.executable, sys.prefix, dask_gateway.__file__, distributed.__file__, str(venv)]
    )
    t_start = time.monotonic()
    ours, theirs = Figures(), Figures()
    extra: dict[str, float] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="dg-slurm-compare-") as tmp:
            os.chmod(tmp, 0o755)
            servers = [
                Server("ours", ours_bin, Path(tmp) / "ours", ours_users, args.ours_defaults),
                Server("theirs", theirs_bin, Path(tmp) / "theirs", theirs_users, False),
            ]
            figures = {"ours": ours, "theirs": theirs}
            with servers[0].running(), servers[1].running():
                print(
                    f"Slurm {proctrack.group(1) if proctrack else '?'}; "
                    f"ours {servers[0].address}, theirs {servers[1].address}",
                    flush=True,
                )
                for r in range(args.runs + 1):  # round 0: warm-up
                    order = servers if r % 2 == 0 else servers[::-1]
                    for s in order:
                        try:
                            one_run(s, args.workers, figures[s.label] if r else None)
                        except Exception as e:
                            print(
                                f"  [{s.label}] run {r} failed: {e!r}; log {s.log_path}", flush=True
                            )
                            print(s.log_tail())
                            raise
                    print(f"  round {r} done ({time.monotonic() - t_start:.0f} s)", flush=True)
                for r in range(args.runs + 1):
                    order = servers if r % 2 == 0 else servers[::-1]
                    for s in order:
                        many_users(s, figures[s.label] if r else None)
                    print(
                        f"  at-once round {r} done ({time.monotonic() - t_start:.0f} s)", flush=True
                    )
            if not args.skip_plain:
                extra.update(plain_slurm(ours_users[0], args.runs))
                extra.update(python_start(sys.executable, ours_users[0], args.runs))
                extra.update(python_start(str(venv / "bin" / "python"), ours_users[0], args.runs))
            rows = [NEW, SCALE, STOP, MANY]
            if args.ours_defaults:
                print("\nNOTE: --ours-defaults: ours ran its default scheduler/worker commands.")
            print_table(rows, ours, theirs, args)
            if extra:
                print("\nPlain Slurm and Python, as a user, same invocation (median seconds):")
                for k, v in extra.items():
                    print(f"  {k}: {v:.3f}")
    finally:
        for d, mode in reversed(restore):
            os.chmod(d, mode)
        for user in created:
            subprocess.run(["scancel", f"--user={user}"], capture_output=True)
        if created:
            until_queue_empty(created, timeout=60)
        for user in created:
            subprocess.run(["userdel", "--remove", user], capture_output=True)
    print(
        f"\n(total {time.monotonic() - t_start:.0f} s; a 2-core machine shared with other "
        "work is noisy)"
    )


if __name__ == "__main__":
    main()
