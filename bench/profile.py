"""Where the time of the user's workflow goes: py-spy samples of the gateway AND of the
scheduler and worker processes it forks, while bench/workflow.py's runs execute.

    python bench/profile.py [--runs 5] [--top 25] [--raw out.txt]

Needs py-spy (`pip install py-spy`; run as root or with ptrace allowed). Prints, per kind of
process (gateway, fork server, scheduler, worker), its share of the samples and the
functions where most of its samples fall (inclusive), so the note can say which part of
new_cluster()/scale() is the gateway's and which is distributed's own start-up.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from workflow import one_run, start_gateway


def role(process: str) -> str:
    if "dask_worker" in process or "distributed.cli.dask_worker" in process:
        return "worker"
    if "dask_scheduler" in process:
        return "scheduler"
    if "zygote" in process:
        return "fork server"
    return "gateway"


#: Leaf frames of a thread that is waiting, not working.
IDLE = (
    "select (selectors.py",
    "EpollSelector.select",
    "Condition.wait",
    "Event.wait",
    "_worker (concurrent/futures/thread.py:81",
    "poll (selectors.py",
    "sleep (",
    "_do_waitpid",
    "main (dask_gateway_server/backends/zygote.py",
)


def frame_name(frame: str) -> str:
    """``func (path/file.py:12)`` -> ``func (file.py)``: one entry per function."""
    name, _, where = frame.partition(" (")
    return f"{name} ({os.path.basename(where.split(':')[0])})" if where else name


def summarize(raw: str, top: int) -> None:
    by_role: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    totals: collections.Counter = collections.Counter()
    for line in open(raw):
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack:
            continue
        frames = stack.split(";")
        procs = [f for f in frames if f.startswith("process ")]
        frames = [f for f in frames if not f.startswith("process ")]
        if not frames or any(i in frames[-1] for i in IDLE):
            continue
        who = role(procs[-1]) if procs else "gateway"
        n = int(count)
        totals[who] += n
        for name in dict.fromkeys(frame_name(f) for f in frames):
            by_role[who][name] += n
    grand = sum(totals.values()) or 1
    for who, n in totals.most_common():
        print(f"\n## {who}: {100 * n / grand:.1f}% of the busy samples")
        # Frames in (nearly) every sample are the interpreter's and the event loop's frame
        # stack, not where the time goes.
        shown = [(name, c) for name, c in by_role[who].most_common() if c < 0.85 * n]
        for name, c in shown[:top]:
            print(f"  {100 * c / n:5.1f}%  {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--raw", help="keep py-spy's raw samples here")
    args = parser.parse_args()
    spy = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")

    from dask_gateway import Gateway

    with tempfile.TemporaryDirectory() as tmp:
        raw = args.raw or os.path.join(tmp, "samples.txt")
        proc, address = start_gateway(tmp)
        try:
            with Gateway(address, auth="basic") as gateway:
                one_run(gateway)  # warm-up, not profiled
                recorder = subprocess.Popen(
                    [
                        spy,
                        "record",
                        "--subprocesses",
                        "--nonblocking",
                        "--idle",
                        "-r",
                        "250",  # idle frames dropped in summarize()
                        "-f",
                        "raw",
                        "-o",
                        raw,
                        "-p",
                        str(proc.pid),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                time.sleep(1)
                t0 = time.perf_counter()
                for _ in range(args.runs):
                    one_run(gateway)
                elapsed = time.perf_counter() - t0
                recorder.send_signal(signal.SIGINT)
                recorder.wait(60)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
        print(
            f"{args.runs} workflow runs in {elapsed:.2f} s, sampled at 250 Hz; waiting threads left out"
        )
        summarize(raw, args.top)


if __name__ == "__main__":
    main()
