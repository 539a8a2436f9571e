"""A cluster's events, from real gateways with real schedulers and workers: the history of a
normal life, a killed worker, a scheduler that cannot import distributed, the long-poll, who
may read them, and their retention after the cluster ended."""

from __future__ import annotations

import functools
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from support import waiting
from support.gateway_process import GatewayProcess, _kill_leftovers
from support.http_helpers import basic, call, create
from support.paths import CONFIGS
from support.procs import cluster_processes

ALICE = basic("alice")
BOB = basic("bob")
ADMIN = basic("events-admin")

wait_for = functools.partial(waiting.wait_for, timeout=60, interval=0.1)

#: The test configuration, an admin, and an environment whose Python lacks distributed.
CONFIG = """
exec(open({default!r}).read())

from dask_gateway_server.options import Float, Integer, Options, Select

c.Authenticator.admin_users = {{"events-admin"}}
c.Backend.cluster_options = Options(
    Integer("worker_cores", default=1, min=1, max=4, label="Worker Cores"),
    Float("worker_memory", default=1, min=0.25, max=4, label="Worker Memory (GiB)"),
    Select(
        "environment",
        [("basic", {python!r}), ("broken", {broken!r})],
        label="Environment",
        target="python",
    ),
    handler=options_handler,
)
"""


def bare_python(directory: Path) -> str:
    """A fresh venv's interpreter: the standard library only, no distributed."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(directory)], check=True)
    python = str(directory / "bin" / "python")
    probe = subprocess.run([python, "-c", "import distributed"], capture_output=True)
    assert probe.returncode != 0, "the bare venv can import distributed"
    return python


def write_config(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "events_gateway_config.py"
    config.write_text(
        CONFIG.format(
            default=str(CONFIGS / "gateway_config.py"),
            python=sys.executable,
            broken=bare_python(directory / "bare-venv"),
        )
    )
    return config


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("events-gateway")
    gateway = GatewayProcess(data_dir / "gw", config=write_config(data_dir))
    gateway.start()
    yield gateway
    code = gateway.stop()
    _kill_leftovers(gateway.data_dir)
    assert code == 0, gateway.log()


def events(gw, name: str, headers=ALICE, query: str = "", timeout: float = 30):
    r = call(
        "GET",
        f"{gw.address}/api/v1/clusters/{name}/events{query}",
        headers=headers,
        timeout=timeout,
    )
    assert r.status == 200, r.body
    return r.json()


def kinds(gw, name: str) -> list[str]:
    return [e["kind"] for e in events(gw, name)["events"]]


def until_done(gw, name: str, headers=ALICE) -> list[dict]:
    """Every event of ``name`` once it ended, read as a client follows them: by cursor and
    long-poll."""
    seen: list[dict] = []
    cursor = 0

    def more() -> bool:
        nonlocal cursor
        answer = events(gw, name, headers, f"?after={cursor}&wait=5")
        seen.extend(answer["events"])
        cursor = answer["cursor"]
        return answer["done"]

    wait_for(more, what=f"cluster {name} to end")
    return seen


def stop(gw, name: str, headers=ALICE) -> None:
    r = call("DELETE", f"{gw.address}/api/v1/clusters/{name}", headers=headers)
    assert r.status == 204, r.body


def scale(gw, name: str, count: int) -> None:
    r = call("POST", f"{gw.address}/api/v1/clusters/{name}/scale", {"count": count}, ALICE)
    assert r.status == 200, r.body


def test_a_normal_life(gw):
    """Create, scale to 2, the workers join, scale to 0, stop: every step, in order."""
    name = create(gw, ALICE)
    wait_for(lambda: "running" in kinds(gw, name), what="running")
    scale(gw, name, 2)
    wait_for(lambda: kinds(gw, name).count("worker-joined") == 2, what="two workers joined")
    scale(gw, name, 0)
    wait_for(lambda: kinds(gw, name).count("worker-left") == 2, what="two workers left")
    stop(gw, name)
    history = until_done(gw, name)

    ids = [e["id"] for e in history]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert [e["time"] for e in history] == sorted(e["time"] for e in history)
    cluster_kinds = [e["kind"] for e in history if not e["kind"].startswith("worker-")]
    assert cluster_kinds == [
        "submitted",
        "starting",
        "scheduler-started",
        "running",
        "scaled",
        "scaled",
        "stop-requested",
        "stopped",
    ], history
    by_kind = {e["kind"]: e for e in history}
    assert by_kind["submitted"]["message"] == "Cluster created by alice"
    assert by_kind["running"]["message"] == "Scheduler running on 127.0.0.1"
    scaled = [e for e in history if e["kind"] == "scaled"]
    assert [e["message"] for e in scaled] == [
        "Scaled to 2 workers by alice",
        "Scaled to 0 workers by alice",
    ]
    assert by_kind["stop-requested"]["message"] == "Stop requested by alice"
    assert all(e["worker"] is None for e in history if not e["kind"].startswith("worker-"))

    # Each worker: started, joined, left, between the two scale events.
    workers = {e["worker"] for e in history if e["kind"].startswith("worker-")}
    assert len(workers) == 2
    first, second = (history.index(e) for e in scaled)
    for worker in workers:
        mine = [(i, e) for i, e in enumerate(history) if e["worker"] == worker]
        assert [e["kind"] for _, e in mine] == ["worker-started", "worker-joined", "worker-left"]
        started, joined, left = (i for i, _ in mine)
        assert first < started and joined < second < left
        assert mine[1][1]["message"] == f"Worker {worker} joined the scheduler"

    # A cursor gives only what came after it; an ended cluster's answer says it is done.
    later = events(gw, name, query=f"?after={ids[-3]}")
    assert [e["id"] for e in later["events"]] == ids[-2:]
    assert later["cursor"] == ids[-1] and later["done"] is True
    assert events(gw, name, query="?limit=2")["done"] is False  # more than 2 to read
    assert events(gw, name, query=f"?since={history[-1]['time']}")["events"][-1]["kind"] == (
        "stopped"
    )


def test_killed_worker_fails_with_its_reason(gw):
    """A worker killed under the scheduler: a worker-failed event naming it."""
    name = create(gw, ALICE)
    wait_for(lambda: "running" in kinds(gw, name), what="running")
    scale(gw, name, 1)
    joined = wait_for(
        lambda: [e for e in events(gw, name)["events"] if e["kind"] == "worker-joined"],
        what="a worker joined",
    )
    worker = joined[0]["worker"]
    (pid,) = [
        p
        for p in cluster_processes(name, "worker")
        if os.path.basename(os.readlink(f"/proc/{p}/cwd")) == worker  # its own directory
    ]
    os.kill(pid, signal.SIGKILL)
    failed = wait_for(
        lambda: [e for e in events(gw, name)["events"] if e["kind"] == "worker-failed"],
        what="worker-failed",
    )
    assert failed[0]["worker"] == worker
    assert failed[0]["message"] == f"Worker {worker} failed: killed by signal 9 (SIGKILL)"
    # The detail: the end of its own log (distributed's start-up lines).
    assert "Start worker at" in failed[0]["detail"], failed
    # The gateway replaces it (its count is still 1): a new worker joins after the failure.
    wait_for(
        lambda: [
            e
            for e in events(gw, name, query=f"?after={failed[0]['id']}")["events"]
            if e["kind"] == "worker-joined" and e["worker"] != worker
        ],
        what="a replacement worker",
    )
    stop(gw, name)
    history = until_done(gw, name)
    assert history[-1]["kind"] == "stopped"
    assert [e["kind"] for e in history if e["worker"] == worker] == [
        "worker-started",
        "worker-joined",
        "worker-failed",
    ]


def test_scheduler_without_distributed_fails_with_the_import_error(gw):
    """A scheduler whose Python cannot import distributed: the failure says so in one
    sentence, and its detail is the end of the scheduler's log."""
    r = call(
        "POST",
        f"{gw.address}/api/v1/clusters/",
        {"cluster_options": {"environment": "broken"}},
        ALICE,
    )
    assert r.status == 201, r.body
    name = r.json()["name"]
    history = until_done(gw, name)
    assert [e["kind"] for e in history] == ["submitted", "starting", "scheduler-started", "failed"]
    failed = history[-1]
    # Its Python's own last words (the fork server of that Python fails on dask, a fresh
    # interpreter on distributed: either is the reason), from the log in the detail.
    error = [line for line in failed["detail"].splitlines() if "ModuleNotFoundError" in line][-1]
    assert re.search(r"ModuleNotFoundError: No module named '(dask|distributed)'", error)
    assert failed["message"] == (
        "The scheduler exited before it started: "
        + error[error.index("ModuleNotFoundError") :].rstrip(")")
    ), failed
    model = call("GET", f"{gw.address}/api/v1/clusters/{name}", headers=ALICE).json()
    assert model["status"] == "FAILED"


def test_long_poll_returns_when_an_event_is_recorded(gw):
    name = create(gw, ALICE)
    wait_for(lambda: "running" in kinds(gw, name), what="running")
    cursor = events(gw, name)["cursor"]
    answers: list[dict] = []

    def poll() -> None:
        answers.append(events(gw, name, query=f"?after={cursor}&wait=60", timeout=90))

    poller = threading.Thread(target=poll)
    poller.start()
    # The poll is held (nothing new yet); a scale records an event, which answers it.
    scale(gw, name, 0)
    poller.join(90)
    assert not poller.is_alive()
    (answer,) = answers
    assert answer["events"], answer  # an empty answer would mean it waited the 60 s out
    assert answer["events"][0]["kind"] == "scaled"
    assert answer["events"][0]["message"] == "Scaled to 0 workers by alice"
    assert answer["cursor"] == answer["events"][-1]["id"] > cursor

    stop(gw, name)
    until_done(gw, name)
    # An ended cluster's long-poll answers at once, done.
    last = events(gw, name)["cursor"]
    done = events(gw, name, query=f"?after={last}&wait=60", timeout=10)
    assert done == {"events": [], "cursor": last, "done": True}


def test_who_may_read_events(gw):
    """The owner and admins; another user gets 403 on both routes; bad arguments are 400."""
    name = create(gw, ALICE)
    wait_for(lambda: "running" in kinds(gw, name), what="running")
    base = f"{gw.address}/api/v1/clusters/{name}/events"

    r = call("GET", base, headers=BOB)
    assert r.status == 403 and "bob" in r.json()["error"]
    assert events(gw, name, ADMIN)["events"][0]["kind"] == "submitted"
    r = call("GET", f"{gw.address}/api/v1/clusters/no-such-cluster/events", headers=ALICE)
    assert r.status == 404 and "no-such-cluster" in r.json()["error"]
    assert call("GET", base).status == 401

    # The user-wide route: bob's own only; everyone's for the admin.
    r = call("GET", f"{gw.address}/api/v1/events", headers=BOB)
    assert r.status == 200 and all(e["user"] == "bob" for e in r.json()["events"])
    assert name not in {e["cluster"] for e in r.json()["events"]}
    r = call("GET", f"{gw.address}/api/v1/events?all=1", headers=BOB)
    assert r.status == 403 and "admin" in r.json()["error"]
    mine = call("GET", f"{gw.address}/api/v1/events", headers=ALICE).json()["events"]
    assert {"cluster": name, "user": "alice", "kind": "submitted"}.items() <= next(
        e for e in mine if e["cluster"] == name
    ).items()
    everyone = call("GET", f"{gw.address}/api/v1/events?all=1", headers=ADMIN).json()["events"]
    assert any(e["cluster"] == name and e["user"] == "alice" for e in everyone)

    for query in [
        "?after=-1",
        "?after=x",
        "?since=yesterday",
        "?since=-5",
        f"?since={2**64}",
        f"?after={2**64}",
        "?limit=0",
        "?limit=1001",
        "?wait=61",
        "?wait=nan",
        "?wait=soon",
    ]:
        for url in (base, f"{gw.address}/api/v1/events"):
            r = call("GET", url + query, headers=ALICE)
            assert r.status == 400, (url, query, r.body)
            assert "Traceback" not in r.json()["error"]
    assert events(gw, name, query="?since=2020-01-01T00:00:00Z")["events"]

    # Bob cannot stop it; the admin can, and the history says who did.
    assert call("DELETE", f"{gw.address}/api/v1/clusters/{name}", headers=BOB).status == 403
    stop(gw, name, ADMIN)
    history = until_done(gw, name)
    requested = [e for e in history if e["kind"] == "stop-requested"]
    assert [e["message"] for e in requested] == ["Stop requested by admin events-admin"]


def test_events_outlive_the_cluster_until_retention(tmp_path):
    """A forgotten cluster's events stay readable by its owner (not by others) until
    events_max_age after it ended; then 404."""
    config = write_config(tmp_path)
    data_dir = tmp_path / "gw"
    first = GatewayProcess(data_dir, config=config)
    first.start()
    try:
        name = create(first, ALICE)
        wait_for(lambda: "running" in kinds(first, name), what="running")
        stop(first, name)
        until_done(first, name)
    finally:
        assert first.stop() == 0, first.log()

    # The gateway forgets the cluster at once; its events are kept (default retention).
    forgetful = GatewayProcess(
        data_dir,
        ["--LocalBackend.db_cluster_max_age=0", "--LocalBackend.db_cleanup_period=0.2"],
        config=config,
    )
    forgetful.start()
    try:
        wait_for(
            lambda: (
                call("GET", f"{forgetful.address}/api/v1/clusters/{name}", headers=ALICE).status
                == 404
            ),
            what="the cluster forgotten",
        )
        kept = events(forgetful, name)
        assert kept["done"] is True and [e["kind"] for e in kept["events"]][-1] == "stopped"
        assert events(forgetful, name, ADMIN)["events"] == kept["events"]
        r = call("GET", f"{forgetful.address}/api/v1/clusters/{name}/events", headers=BOB)
        assert r.status == 403
    finally:
        assert forgetful.stop() == 0, forgetful.log()

    # Past retention, they go: 404 like any unknown cluster.
    strict = GatewayProcess(
        data_dir,
        ["--DaskGateway.events_max_age=0.5", "--LocalBackend.db_cleanup_period=0.2"],
        config=config,
    )
    strict.start()
    try:
        url = f"{strict.address}/api/v1/clusters/{name}/events"
        wait_for(lambda: call("GET", url, headers=ALICE).status == 404, what="events removed")
        assert call("GET", url, headers=ADMIN).status == 404
        assert call("GET", f"{strict.address}/api/v1/events", headers=ALICE).json()["events"] == []
    finally:
        assert strict.stop() == 0, strict.log()
        _kill_leftovers(data_dir)


def test_scale_and_adapt_say_who_and_which_limit(gw):
    """A scale over the cluster's limit says it was clamped and by which limit; adaptive
    scaling's own counts are told apart from the user's."""
    name = create(gw, ALICE)
    wait_for(lambda: "running" in kinds(gw, name), what="running")
    scale(gw, name, 50)  # the test configuration allows 10 workers per cluster
    scale(gw, name, 0)
    r = call(
        "POST",
        f"{gw.address}/api/v1/clusters/{name}/adapt",
        {"minimum": 1, "maximum": 2},
        ALICE,
    )
    assert r.status == 200, r.body
    adaptive = wait_for(
        lambda: [
            e
            for e in events(gw, name)["events"]
            if e["kind"] == "scaled" and e["message"].startswith("Adaptive")
        ],
        what="adaptive scaling's own count",
    )
    assert adaptive[0]["message"] == "Adaptive scaling asked for 1 worker"
    stop(gw, name)
    history = until_done(gw, name)
    told = [e["message"] for e in history if e["kind"] in ("scaled", "adaptive")]
    assert told[:4] == [
        "alice asked for 50 workers, clamped to 10 by the limit of 10 workers per cluster",
        "Scaled to 0 workers by alice",
        "Adaptive scaling set by alice: 1 to 2 workers",
        "Adaptive scaling asked for 1 worker",
    ], told


@pytest.fixture(scope="module")
def plain_gw(tmp_path_factory):
    """Fresh interpreters (no fork server), and clusters that stop when idle for 2 s."""
    data_dir = tmp_path_factory.mktemp("events-plain-gateway")
    gateway = GatewayProcess(
        data_dir / "gw",
        [
            "--LocalBackend.launcher_class="
            "dask_gateway_server.backends.launchers.SubprocessLauncher",
            "--ClusterConfig.idle_timeout=2",
        ],
        config=write_config(data_dir),
    )
    gateway.start()
    yield gateway
    code = gateway.stop()
    _kill_leftovers(gateway.data_dir)
    assert code == 0, gateway.log()


def test_missing_distributed_is_the_failure_sentence(plain_gw):
    """The interpreter's own words, "Error while finding module specification for
    'distributed.cli.dask_scheduler' (ModuleNotFoundError: ...)", give the sentence."""
    r = call(
        "POST",
        f"{plain_gw.address}/api/v1/clusters/",
        {"cluster_options": {"environment": "broken"}},
        ALICE,
    )
    assert r.status == 201, r.body
    failed = until_done(plain_gw, r.json()["name"])[-1]
    assert failed["kind"] == "failed"
    assert failed["message"] == (
        "The scheduler exited before it started: ModuleNotFoundError: No module named 'distributed'"
    )
    assert "distributed.cli.dask_scheduler" in failed["detail"]


def test_idle_scheduler_says_why_it_asked_to_stop(plain_gw):
    """Our scheduler preload's DELETE says "idle"; the sentence's number is the cluster's
    own setting, not anything the scheduler sent."""
    name = create(plain_gw, ALICE)
    history = until_done(plain_gw, name)
    requested = [e["message"] for e in history if e["kind"] == "stop-requested"]
    assert requested == ["Its scheduler asked to stop: idle for more than 2 s"]
    assert history[-1]["kind"] == "stopped"
