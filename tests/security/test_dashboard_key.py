"""Issue 14, finding 8: a scheduler's dashboard listens on a port every local user can
connect to (loopback here, every interface of a Slurm node). Another user must not read it
there, past the gateway's access check: the scheduler's HTTP server answers only requests
carrying the cluster's dashboard key, which only the gateway's proxy adds."""

from __future__ import annotations

import asyncio
import json
import re

from support.http_helpers import basic, call
from tornado import websocket
from tornado.httpclient import HTTPRequest
from users import ADMIN, ALICE, BOB, in_scheduler, run_as

#: Pages of every kind the scheduler's HTTP server has: distributed's own routes, the
#: Bokeh server's documents, JSON, its info pages, Prometheus metrics.
PAGES = [
    "/status",
    "/individual-plots.json",
    "/individual-task-stream",
    "/workers",
    "/info/main/workers.html",
    "/sitemap.json",
    "/metrics",
    "/health",
]

#: Run as bob: fetch each page of alice's dashboard straight from its port (without and
#: with a made-up key), and open Bokeh's websocket there; print the status of each.
BOB_READS = """
import json, socket, urllib.error, urllib.request
port, pages = PORT, PAGES
out = {}
for page in pages:
    for key in (None, "0" * 64):
        req = urllib.request.Request(f"http://127.0.0.1:{port}{page}")
        if key:
            req.add_header("X-Dask-Gateway-Dashboard-Key", key)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                out[f"{page} {key}"] = [r.status, r.read(300).decode("latin-1")]
        except urllib.error.HTTPError as e:
            out[f"{page} {key}"] = [e.code, e.read(300).decode("latin-1")]
with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
    s.sendall(b"GET /status/ws HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\nUpgrade: websocket\\r\\n"
              b"Connection: Upgrade\\r\\nSec-WebSocket-Version: 13\\r\\n"
              b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\\r\\n\\r\\n")
    out["websocket"] = [int(s.recv(100).split()[1]), ""]
print(json.dumps(out))
"""


async def _pull_bokeh_document(page_url: str, headers: dict) -> dict:
    """What a browser does to show a Bokeh page: fetch it, open its websocket with the
    session token in it, ask for the document. Returns the document's JSON."""
    page = call("GET", page_url, headers={**headers, "Accept": "text/html"})
    assert page.status == 200, (page.status, page.body[:300])
    html = page.body.decode()
    token = re.search(r'"token":\s*"([^"]+)"', html).group(1)
    ws_url = "ws" + page_url[len("http") :] + "/ws"
    conn = await websocket.websocket_connect(
        HTTPRequest(ws_url, headers=headers), subprotocols=["bokeh", token]
    )
    try:

        async def message() -> tuple[dict, dict]:
            header = json.loads(await conn.read_message())
            await conn.read_message()  # metadata
            content = json.loads(await conn.read_message())
            for _ in range(header.get("num_buffers", 0)):
                await conn.read_message()
            return header, content

        header, _ = await asyncio.wait_for(message(), 30)
        assert header["msgtype"] == "ACK", header
        for part in ({"msgid": "1", "msgtype": "PULL-DOC-REQ"}, {}, {}):
            await conn.write_message(json.dumps(part))
        while True:
            header, content = await asyncio.wait_for(message(), 30)
            if header["msgtype"] == "PULL-DOC-REPLY":
                return content["doc"]
    finally:
        conn.close()


def test_other_users_cannot_read_a_dashboard_past_the_gateway(root_gateway, as_user):
    alice = as_user(ALICE)
    cluster = alice.new_cluster()
    with cluster.get_client(set_as_default=False) as client:
        host, port = in_scheduler(
            client, "s = dask_scheduler.http_server; result = (s.address, s.port)"
        )
    assert host == "127.0.0.1"  # a loopback port: every local user can connect to it

    # The attack: bob reads alice's dashboard straight from its port.
    r = run_as(BOB, BOB_READS.replace("PORT", str(port)).replace("PAGES", repr(PAGES)))
    assert r.returncode == 0, r.stderr
    statuses = json.loads(r.stdout)
    assert len(statuses) == 2 * len(PAGES) + 1
    for what, (status, body) in statuses.items():
        assert status == 403, (what, status, body)
        assert "Dask Gateway" in body or what == "websocket", (what, body)

    # The legitimate use: through the gateway, alice and an admin get the dashboard and its
    # live document.
    base = f"{root_gateway.address}/clusters/{cluster.name}"
    for user in (ALICE, ADMIN):
        doc = asyncio.run(_pull_bokeh_document(f"{base}/status", basic(user)))
        assert doc["roots"], doc.keys()
        plots = call("GET", f"{base}/individual-plots.json", headers=basic(user))
        assert plots.status == 200 and "Individual Task Stream" in plots.json(), plots.body[:300]
        info = call("GET", f"{base}/info/main/workers.html", headers=basic(user))
        assert info.status == 200 and b"Workers" in info.body
    # ...and bob, through the gateway, is refused by the gateway's own check.
    assert call("GET", f"{base}/status", headers=basic(BOB)).status == 403
    # A key bob puts in his request is not passed on as if it were the gateway's.
    forged = call(
        "GET", f"{base}/status", headers={**basic(ALICE), "X-Dask-Gateway-Dashboard-Key": "0" * 64}
    )
    assert forged.status == 200
    cluster.shutdown()
