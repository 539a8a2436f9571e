"""Handoff socket squatting (issue 14, finding 9).

The proxy passes each client connection to the cluster's scheduler over an abstract unix
socket, which has no file permissions: once the scheduler's listener is gone (the scheduler
died, or closed it) anyone on the machine who knows the name may bind it and would receive
the clients' connections.
"""

from __future__ import annotations

import subprocess

from users import ALICE, BOB, SHARED_VENV, in_scheduler

# Bob's listener: binds the name, then reports what each connection brought, for a while.
SQUAT = """
import socket, sys
name = sys.argv[1]
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.bind("\\0" + name[1:])
sock.listen(8)
sock.settimeout(float(sys.argv[2]))
print("listening", flush=True)
try:
    while True:
        conn, _ = sock.accept()
        conn.settimeout(10)
        try:
            _, fds, _, _ = socket.recv_fds(conn, 1, 4)
        except OSError:
            fds = []
        print("connection", len(fds), flush=True)
        conn.close()
except socket.timeout:
    pass
"""

# In alice's scheduler: close its handoff listener, as if it had died (but keep it serving,
# so that the proxy keeps the route), and say the name.
CLOSE_HANDOFF = """
import asyncio, gc, os, socket
for obj in gc.get_objects():
    sock = getattr(obj, "_handoff", None) if hasattr(obj, "_accept_handoffs") else None
    if isinstance(sock, socket.socket):
        asyncio.get_running_loop().remove_reader(sock.fileno())
        sock.close()
        obj._handoff = None
result = os.environ["DASK_GATEWAY_HANDOFF_ADDRESS"]
"""


def test_squatter_gets_no_client_connection(root_gateway, as_user):
    alice = as_user(ALICE)
    cluster = alice.new_cluster()
    cluster.scale(1)
    with cluster.get_client() as client:
        client.wait_for_workers(1, timeout=60)
        name = in_scheduler(client, CLOSE_HANDOFF)
    assert name.startswith("@dask-gateway-")
    squatter = subprocess.Popen(
        ["runuser", "-u", BOB, "--", f"{SHARED_VENV}/bin/python", "-c", SQUAT, name, "10"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd="/",
    )
    try:
        assert squatter.stdout.readline().strip() == "listening", squatter.stderr.read()
        # Alice connects: the proxy finds bob's listener on the name, and must pass nothing.
        with cluster.get_client() as client:
            assert client.submit(lambda x: x + 1, 41).result(timeout=60) == 42
        out, err = squatter.communicate(timeout=60)
    finally:
        squatter.kill()
    received = [int(line.split()[1]) for line in out.splitlines() if line.startswith("conn")]
    assert received, f"the proxy never tried the handoff name: {out!r} {err!r}"
    assert sum(received) == 0, f"bob received {sum(received)} client connection(s)"
    assert "held by uid" in root_gateway.log()
    cluster.shutdown()
