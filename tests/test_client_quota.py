"""The client's side of usage and quotas: ``Gateway.quota()`` and ``Gateway.usage()`` (sync
and async) against our gateway, ``GatewayUnsupportedError`` against the public server, the
query ``usage()`` sends, and the gateway's quota warning header as a ``GatewayWarning``.
(Refusals and warnings from a real used-up quota: tests/test_quotas.py.)"""

from __future__ import annotations

import asyncio
import threading
from datetime import datetime, timezone
from urllib.parse import quote

import pytest
from support.upstream_server import UPSTREAM_CONFIG, upstream_server
from tornado import web
from tornado.httpclient import HTTPClientError
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from dask_gateway import BasicAuth, Gateway, GatewayUnsupportedError, GatewayWarning
from dask_gateway.client import GatewayRequestError


def test_quota_of_our_gateway(gateway):
    """The shared test gateway has no quota: the state is still there, with the use."""
    with Gateway(gateway.address, auth=BasicAuth("quota-client", "")) as g:
        state = g.quota()
        assert state["user"] == "quota-client" and state["period"] == "month"
        assert state["quotas"] == [] and state["state"] == "ok" and state["message"] is None
        assert set(state["use"]) == {"core_hours", "memory_gib_hours"}
        assert g.quota(user="quota-client")["user"] == "quota-client"
        with pytest.raises(HTTPClientError) as info:
            g.quota(user="someone-else")
        assert info.value.code == 403 and "may only see their own quota" in str(info.value)
        with pytest.raises(ValueError, match="user must be a non-empty name"):
            g.quota(user="")


def test_usage_of_our_gateway(gateway):
    """The report as the usage route gives it; another user's is for admins."""
    with Gateway(gateway.address, auth=BasicAuth("quota-client", "")) as g:
        report = g.usage()
        assert report["by"] == "user" and report["next_offset"] is None
        assert set(report) >= {"since", "until", "rows", "total"}
        assert all(row["user"] == "quota-client" for row in report["rows"])
        days = g.usage(since=datetime(2026, 1, 1), until=datetime(2026, 1, 3), by="day")
        assert days["since"] == int(datetime(2026, 1, 1, tzinfo=timezone.utc).timestamp() * 1000)
        assert days["total"]["core_seconds"] == 0
        with pytest.raises(HTTPClientError) as info:
            g.usage(user="someone-else")
        assert info.value.code == 403
        with pytest.raises(HTTPClientError) as info:
            g.usage(since="yesterday")
        assert info.value.code == 400


async def test_quota_async(gateway):
    async with Gateway(gateway.address, auth=BasicAuth("quota-client", ""), asynchronous=True) as g:
        state = await g.quota()
        assert state["user"] == "quota-client"


@pytest.mark.interop
@pytest.mark.timeout(300)
def test_the_public_server_has_neither(tmp_path):
    password = "client-quota-public"
    with (
        upstream_server(tmp_path / "upstream", password, UPSTREAM_CONFIG) as address,
        Gateway(address, auth=BasicAuth("alice", password)) as g,
    ):
        with pytest.raises(GatewayUnsupportedError) as info:
            g.quota()
        assert str(info.value) == (
            f"The gateway at {address} does not have quotas over time: it has no quota route "
            "(the public dask-gateway-server, or an older version of this one)."
        )
        with pytest.raises(GatewayUnsupportedError, match="does not report usage"):
            g.usage()
        assert g.list_clusters() == []  # the rest works as before


class _Recorder(web.RequestHandler):
    """A gateway's routes as far as the client needs them here, recording the requests."""

    def initialize(self, seen: list) -> None:
        self.seen = seen

    def get(self) -> None:
        query = {k: self.get_query_argument(k) for k in self.request.query_arguments}
        self.seen.append((self.request.path, query))
        if query.get("by") == "cluster":  # three pages of two rows
            offset = int(query.get("offset", 0))
            rows = [{"cluster": f"c{i}"} for i in range(offset, min(offset + 2, 5))]
            following = offset + 2 if offset + 2 < 5 else None
            self.finish(
                {
                    "since": 10,
                    "until": 20,
                    "by": "cluster",
                    "rows": rows,
                    "total": {"clusters": 5},
                    "next_offset": following,
                }
            )
            return
        self.finish(
            {
                "since": 0,
                "until": 1,
                "by": query.get("by"),
                "rows": [],
                "total": {},
                "next_offset": None,
            }
        )

    def post(self) -> None:
        self.seen.append((self.request.path, {}))
        if self.request.path.endswith("/scale"):
            self.set_status(429)
            self.set_header("Retry-After", "60")
            self.finish({"error": "Cannot scale cluster x up to 3 workers: used up"})
            return
        self.set_header(
            "X-Dask-Gateway-Warning", quote("Gruppe Физика has used 90 % of it", safe=" ")
        )
        self.finish({"name": "x"} if self.request.path.endswith("clusters/") else {"ok": True})


@pytest.fixture(scope="module")
def recorder():
    seen: list = []
    started = threading.Event()
    holder: dict = {}

    def run() -> None:
        async def main() -> None:
            app = web.Application(
                [
                    (r"/api/v1/usage", _Recorder, {"seen": seen}),
                    (r"/api/v1/clusters/", _Recorder, {"seen": seen}),
                    (r"/api/v1/clusters/x/(?:scale|adapt)", _Recorder, {"seen": seen}),
                ]
            )
            sockets = bind_sockets(0, "127.0.0.1")
            server = HTTPServer(app)
            server.add_sockets(sockets)
            holder["port"] = sockets[0].getsockname()[1]
            holder["stop"] = asyncio.Event()
            holder["loop"] = asyncio.get_running_loop()
            started.set()
            await holder["stop"].wait()
            server.stop()

        asyncio.run(main())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(10)
    yield f"http://127.0.0.1:{holder['port']}", seen
    holder["loop"].call_soon_threadsafe(holder["stop"].set)
    thread.join(10)


def test_usage_query(recorder):
    address, seen = recorder
    with Gateway(address, auth=BasicAuth("alice", "pw")) as g:
        seen.clear()
        assert g.usage()["by"] == "user"
        g.usage(
            since=datetime(2026, 12, 1),  # naive: UTC
            until="2026-12-06T12:00:00+01:00",
            by="day",
            user="alice",
            group="physics",
        )
        paged = g.usage(since=1764547200000, by="cluster")
        assert [r["cluster"] for r in paged["rows"]] == ["c0", "c1", "c2", "c3", "c4"]
        assert paged["total"] == {"clusters": 5} and paged["next_offset"] is None
        assert seen == [
            ("/api/v1/usage", {"by": "user"}),
            (
                "/api/v1/usage",
                {
                    "by": "day",
                    "since": str(int(datetime(2026, 12, 1, tzinfo=timezone.utc).timestamp()))
                    + "000",
                    "until": "2026-12-06T12:00:00+01:00",
                    "user": "alice",
                    "group": "physics",
                },
            ),
            ("/api/v1/usage", {"by": "cluster", "since": "1764547200000"}),
            # The next pages: the same period as the first answer's.
            ("/api/v1/usage", {"by": "cluster", "since": "10", "until": "20", "offset": "2"}),
            ("/api/v1/usage", {"by": "cluster", "since": "10", "until": "20", "offset": "4"}),
        ]
        with pytest.raises(ValueError, match="by must be one of user, group, cluster, day"):
            g.usage(by="week")
        with pytest.raises(TypeError, match="since must be a datetime"):
            g.usage(since=[2026])
        with pytest.raises(ValueError, match="group must be a non-empty name"):
            g.usage(group="")
        assert len(seen) == 5  # nothing sent for the bad ones


def test_the_warning_header_is_a_gateway_warning(recorder):
    address, _ = recorder
    with Gateway(address, auth=BasicAuth("alice", "pw")) as g:
        with pytest.warns(GatewayWarning, match="^Gruppe Физика has used 90 % of it$"):
            assert g.submit() == "x"
        with pytest.warns(GatewayWarning, match="Физика"):
            g.adapt_cluster("x", maximum=3)
        with pytest.raises(GatewayRequestError) as info:
            g.scale_cluster("x", 3)
        assert info.value.status == 429 and str(info.value).endswith("used up")
