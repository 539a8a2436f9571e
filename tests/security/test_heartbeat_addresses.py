"""Issue 14, finding 4: a heartbeat names where the gateway connects for a cluster (its
dashboard, its scheduler, its API). Whoever holds the cluster's token (its owner's code)
must not point the gateway at anything else: another user's service, the gateway's own
ports, a metadata address. Addresses are confirmed by the backend once, and never move."""

from __future__ import annotations

import asyncio
import subprocess

import pytest
from support.http_helpers import basic, call
from users import ADMIN, ALICE, BOB, SHARED_VENV, in_scheduler

from dask_gateway_server.addresses import AddressRefused, parse_address
from dask_gateway_server.backends.local import LocalBackend
from dask_gateway_server.models import Cluster

#: Run in alice's scheduler: heartbeats as its preload sends them, but with addresses of
#: her choosing, sent with the cluster's own token. Result: (status, error) of each.
FORGE = """
import json, os, urllib.error, urllib.request
service = dask_scheduler.dask_gateway_service
real = service.build_heartbeat()
url = (os.environ["DASK_GATEWAY_API_URL"] + "/v1/clusters/"
       + os.environ["DASK_GATEWAY_CLUSTER_NAME"] + "/heartbeat")
result = []
for change in CHANGES:
    msg = {**real, **change}
    req = urllib.request.Request(url, data=json.dumps(msg).encode(), method="POST", headers={
        "Authorization": "token " + os.environ["DASK_GATEWAY_API_TOKEN"],
        "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            result.append((r.status, ""))
    except urllib.error.HTTPError as e:
        result.append((e.code, json.loads(e.read())["error"]))
"""

#: Run as a user: listen on a loopback port, serve a page saying whose it is, print the
#: port.
SERVE = """
import http.server, os, pwd, sys
class Page(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("the private service of " + pwd.getpwuid(os.getuid()).pw_name).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
server = http.server.HTTPServer(("127.0.0.1", 0), Page)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


@pytest.fixture
def serve_as():
    """``serve_as(user)``: a small HTTP service of ``user`` on a loopback port; its port."""
    procs = []

    def start(user: str) -> int:
        proc = subprocess.Popen(
            ["runuser", "-u", user, "--", f"{SHARED_VENV}/bin/python", "-c", SERVE],
            stdout=subprocess.PIPE,
            text=True,
            cwd="/",
        )
        procs.append(proc)
        return int(proc.stdout.readline())

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def _dashboard_page(gw, name: str, user: str) -> bytes:
    r = call(
        "GET",
        f"{gw.address}/clusters/{name}/status",
        headers={**basic(user), "Accept": "text/html"},
    )
    assert r.status == 200, (r.status, r.body[:300])
    return r.body


def test_a_heartbeat_cannot_move_a_clusters_addresses(root_gateway, as_user, serve_as):
    bob_port = serve_as(BOB)
    alice = as_user(ALICE)
    cluster = alice.new_cluster()
    name = cluster.name
    with cluster.get_client(set_as_default=False) as client:
        real = in_scheduler(
            client, "result = dask_scheduler.dask_gateway_service.build_heartbeat()"
        )
        changes = [
            {"dashboard_address": f"http://127.0.0.1:{bob_port}"},  # bob's service
            {"dashboard_address": f"http://127.0.0.1:{root_gateway.port}"},  # the gateway's
            {"api_address": f"http://127.0.0.1:{root_gateway.port}"},
            {"scheduler_address": f"tls://127.0.0.1:{root_gateway.port}"},
            {"dashboard_address": "http://169.254.169.254:80"},  # cloud metadata
            {},  # what the scheduler really reports
        ]
        answers = in_scheduler(client, FORGE.replace("CHANGES", repr(changes)))
        for change, (status, error) in zip(changes[:-1], answers[:-1], strict=True):
            assert status == 409, (change, status, error)
            assert "cannot change once set" in error, error
        assert answers[-1] == (200, "")  # the scheduler's own heartbeats still count

        log = root_gateway.log()
        assert f"Refused a heartbeat of cluster {name}: dashboard_address" in log, log[-3000:]
        # Nothing moved: the gateway still proxies alice's own dashboard, for her and for
        # an admin, and her scheduler still computes.
        for user in (ALICE, ADMIN):
            page = _dashboard_page(root_gateway, name, user)
            assert b"private service" not in page and b"bokeh" in page.lower()
        assert call("GET", f"http://127.0.0.1:{bob_port}/").body == (
            f"the private service of {BOB}".encode()
        )
        cluster.scale(1)
        client.wait_for_workers(1, timeout=60)
        assert client.submit(sum, [1, 2, 3]).result() == 6
        assert (
            in_scheduler(client, "result = dask_scheduler.dask_gateway_service.build_heartbeat()")[
                "dashboard_address"
            ]
            == (real["dashboard_address"])
        )
    cluster.shutdown()


def test_local_backend_confirms_only_the_clusters_own_sockets(root_gateway, as_user, serve_as):
    """What a forged *first* heartbeat would meet (LocalBackend.validate_addresses, the check
    the gateway makes before a cluster is RUNNING), against real sockets of real users: the
    cluster's own scheduler passes; another user's service, the gateway's port, a socket of
    the same user outside the cluster and link-local or metadata addresses do not."""
    bob_port = serve_as(BOB)
    alice_elsewhere = serve_as(ALICE)  # alice's, but not her cluster's
    alice = as_user(ALICE)
    cluster = alice.new_cluster()
    with cluster.get_client(set_as_default=False) as client:
        real = in_scheduler(
            client, "result = dask_scheduler.dask_gateway_service.build_heartbeat()"
        )
    backend = LocalBackend(clusters_directory=str(root_gateway.clusters_dir))
    record = Cluster(
        name=cluster.name,
        username=ALICE,
        token="t",
        options={},
        config={},
        tls_cert=b"",
        tls_key=b"",
    )

    def check(**change) -> None:
        msg = {**real, **change}
        parsed = [
            parse_address(k, msg[k])
            for k in ("scheduler_address", "dashboard_address", "api_address")
        ]
        asyncio.run(backend.validate_addresses(record, [p for p in parsed if p]))

    check()  # the scheduler's own addresses
    for change in (
        {"dashboard_address": f"http://127.0.0.1:{bob_port}"},
        {"dashboard_address": f"http://127.0.0.1:{root_gateway.port}"},
        {"api_address": f"http://127.0.0.1:{alice_elsewhere}"},
        {"scheduler_address": f"tls://127.0.0.1:{root_gateway.port}"},
        {"dashboard_address": "http://169.254.169.254:80"},
        {"dashboard_address": "http://[fd00:ec2::254]:80"},
        {"dashboard_address": "http://[::ffff:169.254.169.254]:80"},
        {"scheduler_address": "tls://0.0.0.0:8786"},
        {"dashboard_address": "http://localhost:8787"},
        {"dashboard_address": "http://10.255.255.1:8787"},
    ):  # not this host
        with pytest.raises(AddressRefused):
            check(**change)
    cluster.shutdown()
