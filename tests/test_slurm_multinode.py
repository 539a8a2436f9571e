"""The user's workflow on a Slurm of several nodes, where the scheduler runs on another host
than the gateway, and what happens when a node fails.

The module starts its own multi-node Slurm (scripts/services/start-slurm-multinode.sh: a
controller and three slurmd nodes, each in its own network and UTS namespace, hostnames
node1..3 at 10.87.0.11-13 on a bridge whose address, 10.87.0.1, is the gateway's) and stops it
afterwards, beside the single-node Slurm of the other Slurm tests (own ports, munged and
state; SLURM_CONF picks it). A real gateway runs as root on the bridge address; the jobs run
as a user this module creates. Nothing here can take the gateway's fast paths for a local
scheduler: every byte between a client and its scheduler crosses the gateway's tunnel, and
a scheduler's addresses are those of its node, as Slurm says.
"""

from __future__ import annotations

import base64
import fcntl
import functools
import ipaddress
import os
import pwd
import re
import socket
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import waiting
from support.gateway_process import GatewayProcess, free_port, proxy_processes
from support.paths import CONFIGS, ROOT
from support.slurm_user import slurm_test_user

CONFIG = CONFIGS / "slurm_multinode_gateway_config.py"
START = ROOT / "scripts" / "services" / "start-slurm-multinode.sh"
STOP = ROOT / "scripts" / "services" / "stop-slurm-multinode.sh"
USER = "dgslurmmn"
BRIDGE = "10.87.0.1"  # the gateway's address on the nodes' network
NODE_IPS = {"node1": "10.87.0.11", "node2": "10.87.0.12", "node3": "10.87.0.13"}
LOCK = "/run/lock/dgw-slurm-multinode.lock"
ACTIVE = "PENDING,RUNNING,CONFIGURING,COMPLETING,SUSPENDED"

wait_for = functools.partial(waiting.wait_for, timeout=120, interval=0.2)


@pytest.fixture(scope="module")
def multinode() -> Iterator[str]:
    """The multi-node Slurm, up for this module (a failure to start is a failure, not a
    skip), with SLURM_CONF set for this process and the gateway it starts; then stopped."""
    assert os.geteuid() == 0, "the multi-node Slurm tests run as root, as the gateway does"
    # One user of the namespaces and bridge at a time (another run would restart them).
    with open(LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        before = os.environ.get("SLURM_CONF")
        try:
            out = subprocess.run(["bash", str(START)], capture_output=True, text=True, timeout=600)
            assert out.returncode == 0, (
                f"start-slurm-multinode.sh failed:\n{out.stdout}{out.stderr}"
            )
            conf = out.stdout.strip().splitlines()[-1].removeprefix("SLURM_CONF=")
            os.environ["SLURM_CONF"] = conf
            yield conf
        finally:
            subprocess.run(["bash", str(STOP)], capture_output=True, timeout=300)
            if before is None:
                os.environ.pop("SLURM_CONF", None)
            else:
                os.environ["SLURM_CONF"] = before


@pytest.fixture(scope="module")
def gateway(multinode, tmp_path_factory) -> Iterator[GatewayProcess]:
    """A gateway as root on the bridge address (public port and the schedulers' API)."""
    for _ in slurm_test_user(USER):
        data_dir = tmp_path_factory.mktemp("slurm-multinode-gateway")
        gw = GatewayProcess(
            data_dir,
            [f"--DaskGateway.address={BRIDGE}:{free_port()}"],
            config=CONFIG,
            host=BRIDGE,
        )
        gw.start()
        try:
            yield gw
        finally:
            code = gw.stop()
            assert code == 0, gw.log()


def connect(gw: GatewayProcess):
    from dask_gateway import BasicAuth, Gateway

    return Gateway(gw.address, auth=BasicAuth(username=USER, password="any"))


def jobs(cluster_name: str) -> list[dict[str, str]]:
    """The cluster's jobs still queued or running (comment = cluster name), from squeue."""
    out = subprocess.run(
        [
            "squeue",
            "--noheader",
            f"--states={ACTIVE}",
            f"--user={USER}",
            "--format=%i|%j|%k|%T|%N",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found = []
    for line in out.splitlines():
        job_id, name, comment, state, node = line.strip().split("|")
        if comment == cluster_name:
            role = name.rsplit("-", 1)[-1]
            found.append({"id": job_id, "role": role, "state": state, "node": node})
    return found


def running(cluster_name: str, role: str) -> list[dict[str, str]]:
    return [j for j in jobs(cluster_name) if j["role"] == role and j["state"] == "RUNNING"]


def host_of(address: str) -> str:
    """The host of ``tls://HOST:PORT``."""
    return address.split("://", 1)[1].rsplit(":", 1)[0]


def sockets(netns: str | None, port: int) -> list[dict]:
    """Established TCP sockets with local port ``port`` (in node namespace ``netns``, or
    here): local and peer address, process, and the kernel's byte counts (ss -tinp)."""
    cmd = ["ss", "-tinpH", "state", "established", f"( sport = :{port} )"]
    if netns:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    found: list[dict] = []
    for line in out.splitlines():
        if not line.strip():
            continue
        if not line[0].isspace():  # the socket; its details follow, indented
            fields = line.split()
            pids = [int(p) for p in re.findall(r"pid=(\d+)", line)]
            found.append({"local": fields[2], "peer": fields[3], "pids": pids, "info": ""})
        elif found:
            found[-1]["info"] += line

    for s in found:
        for key in ("bytes_received", "bytes_acked"):
            m = re.search(rf"\b{key}:(\d+)", s["info"])
            s[key] = int(m.group(1)) if m else 0
    return found


def tunnelled(gw: GatewayProcess, scheduler_address: str) -> list[dict]:
    """The scheduler's connections whose other end is the gateway (its bridge address),
    each checked to be held there by the gateway's own process (or its proxy's)."""
    host = host_of(scheduler_address)
    node = next(n for n, ip in NODE_IPS.items() if ip == host)
    port = int(scheduler_address.rsplit(":", 1)[1])
    conns = [
        c
        for c in sockets(f"dgwmn-{node}", port)
        if c["peer"].rsplit(":", 1)[0] == BRIDGE and c["local"] == f"{host}:{port}"
    ]
    ours = {gw.proc.pid, *proxy_processes(gw.data_dir)} if gw.proc else set()
    for c in conns:
        here = sockets(None, int(c["peer"].rsplit(":", 1)[1]))
        holders = {p for s in here if s["peer"] == c["local"] for p in s["pids"]}
        assert holders and holders <= ours, (c, here, ours)
    return conns


def node_down(node: str) -> None:
    """The node crashes: its link goes down first (nothing it does reaches anyone any
    more), then every process in it dies at once: slurmd, the job steps, the jobs."""
    netns = f"dgwmn-{node}"
    subprocess.run(["ip", "-n", netns, "link", "set", "eth0", "down"], check=True)
    pids = subprocess.run(
        ["ip", "netns", "pids", netns], capture_output=True, text=True, check=True
    ).stdout.split()
    if pids:
        subprocess.run(["kill", "-KILL", *pids], capture_output=True)


def cut_link(node: str) -> None:
    """The node's network fails; everything in it goes on running, unreachable."""
    subprocess.run(["ip", "-n", f"dgwmn-{node}", "link", "set", "eth0", "down"], check=True)


def user_processes_on(node: str) -> list[int]:
    """The test user's processes inside the node (its scheduler, workers, job shells)."""
    pids = subprocess.run(
        ["ip", "netns", "pids", f"dgwmn-{node}"], capture_output=True, text=True, check=True
    ).stdout.split()
    uid = pwd.getpwnam(USER).pw_uid
    mine = []
    for pid in pids:
        try:
            if os.stat(f"/proc/{pid}").st_uid == uid:
                mine.append(int(pid))
        except OSError:
            continue
    return mine


def node_up(node: str) -> None:
    out = subprocess.run(
        ["bash", str(START), "node", node], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, f"bringing {node} back failed:\n{out.stdout}{out.stderr}"


def test_the_multinode_slurm(multinode):
    """Three nodes, each a host of its own: hostname and address, as a job sees them."""
    out = subprocess.run(
        ["sinfo", "--noheader", "--Node", "--format=%N|%o|%T"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    nodes = {line.split("|")[0]: line.split("|")[1] for line in out.split()}
    assert nodes == NODE_IPS
    for node, ip in NODE_IPS.items():
        seen = subprocess.run(
            ["srun", f"--nodelist={node}", "--quiet", "sh", "-c", "hostname; hostname -I"],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout.split()
        assert seen == [node, ip]
    # Only the bridge between them: the gateway's host has none of the nodes' addresses.
    assert not {ip for ip in NODE_IPS.values()} & {a["local"] for a in _addresses_here()}


def _addresses_here() -> list[dict[str, str]]:
    out = subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True, text=True).stdout
    return [{"local": str(ipaddress.ip_interface(f.split()[3]).ip)} for f in out.splitlines()]


def test_workflow_across_nodes(gateway):
    """The seed workflow with the scheduler on node1 and the workers on the others: a real
    result, the dashboard through the gateway, and the client's scheduler traffic through
    the gateway's tunnel (no handoff: the scheduler is on another host)."""
    import dask.array as da

    with connect(gateway) as gw:
        cluster = gw.new_cluster(scheduler_node="node1")
        name = cluster.name
        cluster.scale(2)
        client = cluster.get_client(set_as_default=False)
        client.wait_for_workers(2, timeout=120)
        wait_for(lambda: len(running(name, "worker")) == 2, what="2 worker jobs running")

        (scheduler,) = running(name, "scheduler")
        workers = running(name, "worker")
        assert scheduler["node"] == "node1"
        assert {w["node"] for w in workers} <= {"node2", "node3"}, workers

        # Where they run, as dask sees it: the nodes' own addresses and hostnames.
        info = client.scheduler_info()
        assert host_of(info["address"]) == NODE_IPS["node1"]
        assert sorted(host_of(a) for a in info["workers"]) == sorted(
            NODE_IPS[w["node"]] for w in workers
        )
        assert client.run_on_scheduler(socket.gethostname) == "node1"
        assert sorted(client.run(socket.gethostname).values()) == sorted(w["node"] for w in workers)
        # The client reaches the scheduler only through the gateway's public port.
        assert cluster.scheduler_address == f"gateway://{BRIDGE}:{gateway.port}/{name}"

        assert da.ones((2000, 2000), chunks=(500, 500)).sum().compute() == 4_000_000
        cluster.scale(1)
        wait_for(lambda: len(jobs(name)) == 2, what="back to 1 worker job")
        wait_for(lambda: len(client.scheduler_info()["workers"]) == 1, what="1 worker")
        cluster.scale(2)
        client.wait_for_workers(2, timeout=120)
        info = client.scheduler_info()

        # 32 MiB out to the cluster and back: every byte crosses the gateway's tunnel.
        before = {c["peer"]: c for c in tunnelled(gateway, info["address"])}
        assert before, "no connection from the gateway to the scheduler"
        payload = os.urandom(32 * 2**20)
        [future] = client.scatter([payload])
        assert client.gather(future) == payload
        after = tunnelled(gateway, info["address"])

        def grown(key: str) -> int:
            return sum(c[key] - before.get(c["peer"], {}).get(key, 0) for c in after)

        # At the scheduler: received from the gateway (scatter), sent to it (gather).
        assert grown("bytes_received") >= len(payload), (before, after)
        assert grown("bytes_acked") >= len(payload), (before, after)
        assert f"handed to the scheduler of cluster {name}" not in gateway.log()

        # The dashboard, through the gateway.
        req = urllib.request.Request(
            f"{gateway.address}/clusters/{name}/status",
            headers={
                "Authorization": "Basic " + base64.b64encode(f"{USER}:any".encode()).decode(),
                "Accept": "text/html",
            },
        )
        with urllib.request.urlopen(req, timeout=60) as r:
            assert r.status == 200 and b"bokeh" in r.read().lower()

        client.close()
        cluster.shutdown()
        wait_for(lambda: gw.get_cluster(name).status.name == "STOPPED", what="STOPPED")
        wait_for(lambda: jobs(name) == [], what="no jobs left")


#: Run as the cluster's user, on the scheduler's node: read the cluster's token from its
#: staging directory (as the job does) and send a first heartbeat claiming the scheduler is
#: at ``target``. Prints the gateway's answer.
FORGE_FIRST_HEARTBEAT = """
import json, sys, urllib.error, urllib.request
token_file, api_url, name, target = sys.argv[1:]
token = open(token_file).read().strip()
msg = {"scheduler_address": "tls://" + target, "dashboard_address": "http://" + target,
       "api_address": "http://" + target, "count": 0, "active_workers": [],
       "closing_workers": [], "closed_workers": []}
req = urllib.request.Request(f"{api_url}/v1/clusters/{name}/heartbeat", method="POST",
                             data=json.dumps(msg).encode(),
                             headers={"Authorization": "token " + token})
try:
    with urllib.request.urlopen(req, timeout=30) as r:
        print(json.dumps([r.status, ""]))
except urllib.error.HTTPError as e:
    print(json.dumps([e.code, json.loads(e.read())["error"]]))
"""


def test_forged_first_heartbeat_from_a_node_is_refused(gateway):
    """The user's code on the node of their scheduler's job, before the scheduler is up,
    sends the first heartbeat with the cluster's token, pointing the gateway at the
    gateway's own API on the bridge, at another node, or at loopback (the gateway's host,
    as the gateway would read it). Each is refused: a scheduler on another host is accepted
    only at its node's address, as Slurm says; then the real scheduler is accepted."""
    import json

    (private,) = [
        a.split("=", 1)[1] for a in gateway.extra_args if a.startswith("--DaskGateway.address=")
    ]
    home = Path(pwd.getpwnam(USER).pw_dir)

    def forge(name: str, target: str) -> tuple[int, str]:
        out = subprocess.run(
            [
                "nsenter",
                "--net=/run/netns/dgwmn-node1",
                "runuser",
                "-u",
                USER,
                "--",
                "/usr/bin/python3",
                "-c",
                FORGE_FIRST_HEARTBEAT,
                str(home / ".dask-gateway" / name / "api-token"),
                f"http://{private}/api",
                name,
                target,
            ],
            capture_output=True,
            text=True,
            check=True,
            cwd="/",
            timeout=60,
        ).stdout
        status, error = json.loads(out)
        return status, error

    with connect(gateway) as gw:
        name = gw.submit(scheduler_node="node1", start="held")
        staging = home / ".dask-gateway" / name
        wait_for(lambda: (staging / "api-token").exists() and jobs(name), what="the job submitted")
        (job,) = jobs(name)
        subprocess.run(["scontrol", "release", job["id"]], check=True)
        wait_for(lambda: running(name, "scheduler"), what="the scheduler's job running")
        assert running(name, "scheduler")[0]["node"] == "node1"

        port = private.rsplit(":", 1)[1]
        for target in (private, f"{NODE_IPS['node2']}:{port}", f"127.0.0.1:{port}"):
            status, error = forge(name, target)
            assert status == 403, (target, status, error)
            assert re.search(
                rf"'(tls|http)://{re.escape(target)}' is not an address of the scheduler's "
                rf"Slurm job {job['id']} on node node1",
                error,
            ), error
            assert gw.get_cluster(name).status.name == "PENDING"

        # The real scheduler starts on node1: accepted at node1's address; it works.
        (staging / "release-scheduler").touch()
        cluster = gw.connect(name, shutdown_on_close=True)
        wait_for(lambda: gw.get_cluster(name).status.name == "RUNNING", what="RUNNING")
        with cluster.get_client(set_as_default=False) as client:
            assert host_of(client.scheduler_info()["address"]) == NODE_IPS["node1"]
            assert client.run_on_scheduler(lambda: 6 * 7) == 42
        # Once set, no heartbeat moves them, not even to the same node.
        status, error = forge(name, f"{NODE_IPS['node1']}:{port}")
        assert status == 409 and "cannot change once set" in error, error
        cluster.shutdown()
        wait_for(lambda: jobs(name) == [], what="no jobs left")


def test_node_failure(gateway):
    """A worker's node crashes: its workers are replaced on the nodes left and the cluster
    computes on. Then the scheduler's node crashes: the cluster FAILS, saying why, and
    nothing of it stays queued or running in Slurm."""
    down: list[str] = []
    try:
        with connect(gateway) as gw:
            cluster = gw.new_cluster(scheduler_node="node2", shutdown_on_close=False)
            name = cluster.name
            cluster.scale(2)
            client = cluster.get_client(set_as_default=False)
            client.wait_for_workers(2, timeout=120)
            wait_for(lambda: len(running(name, "worker")) == 2, what="2 worker jobs running")
            victim = running(name, "worker")[0]["node"]
            assert victim != "node2"
            lost = {w["id"] for w in running(name, "worker") if w["node"] == victim}

            down.append(victim)
            node_down(victim)

            def replaced() -> bool:
                now = running(name, "worker")
                return (
                    len(now) == 2
                    and not lost & {w["id"] for w in now}
                    and victim not in {w["node"] for w in now}
                )

            wait_for(replaced, what=f"the workers on {victim} replaced on other nodes")
            left = {n for n in NODE_IPS if n not in (victim, "node2")}
            assert {w["node"] for w in running(name, "worker")} == left

            def scheduler_sees_replacements() -> bool:
                hosts = [host_of(a) for a in client.scheduler_info()["workers"]]
                return len(hosts) == 2 and NODE_IPS[victim] not in hosts

            wait_for(scheduler_sees_replacements, what="the scheduler to see the new workers")
            assert client.submit(sum, range(10)).result(timeout=60) == 45

            down.append("node2")
            node_down("node2")
            wait_for(lambda: gw.get_cluster(name).status.name == "FAILED", what="FAILED")
            log = gateway.log()
            m = re.search(rf"Cluster {name} failed \((.*)\)", log)
            assert m, log[-3000:]
            assert re.search(r"No heartbeat from the scheduler|NODE_FAIL", m.group(1)), m.group(1)
            # Its workers cancelled, its scheduler's job ended with the node: none left.
            wait_for(lambda: jobs(name) == [], what="no jobs of the cluster left")
            client.close(timeout=5)
            cluster.close()
    finally:
        for node in down:
            node_up(node)


# -- units: no Slurm needed -------------------------------------------------------------


def test_sbatch_uses_the_gateways_slurm(monkeypatch):
    """sbatch (run by the launcher as the user, with only the jobs' environment) submits
    to the Slurm the gateway's squeue and scancel ask: SLURM_CONF goes with it."""
    from dask_gateway_server.backends.slurm import SlurmBackend

    monkeypatch.setenv("SLURM_CONF", "/etc/slurm-site/slurm.conf")
    monkeypatch.setenv("DGW_NOT_INHERITED", "x")
    backend = SlurmBackend()
    env = backend._job_env()
    assert env["SLURM_CONF"] == "/etc/slurm-site/slurm.conf"
    assert "DGW_NOT_INHERITED" not in env
    assert backend._command_env()["SLURM_CONF"] == "/etc/slurm-site/slurm.conf"
    monkeypatch.delenv("SLURM_CONF")
    assert "SLURM_CONF" not in SlurmBackend()._job_env()


def test_scheduler_node_cut_off(gateway):
    """The scheduler's node loses its network while everything on it runs on: the cluster
    FAILS, its jobs end in Slurm, and once the node is back Slurm ends the processes the
    cluster left there (nothing of it runs anywhere)."""
    cut = False
    try:
        with connect(gateway) as gw:
            cluster = gw.new_cluster(scheduler_node="node3", shutdown_on_close=False)
            name = cluster.name
            cluster.scale(1)
            client = cluster.get_client(set_as_default=False)
            client.wait_for_workers(1, timeout=120)
            assert user_processes_on("node3"), "no scheduler process on node3"

            cut = True
            cut_link("node3")
            wait_for(lambda: gw.get_cluster(name).status.name == "FAILED", what="FAILED")
            m = re.search(rf"Cluster {name} failed \((.*)\)", gateway.log())
            assert m and re.search(r"No heartbeat from the scheduler|NODE_FAIL", m.group(1))
            wait_for(lambda: jobs(name) == [], what="no jobs of the cluster left in Slurm")
            assert user_processes_on("node3"), "the cut-off node went on running them"

            node_up("node3")
            cut = False
            wait_for(
                lambda: user_processes_on("node3") == [],
                what="Slurm to end the cluster's processes on the node back",
            )
            assert jobs(name) == []
            client.close(timeout=5)
            cluster.close()
    finally:
        if cut:
            node_up("node3")
