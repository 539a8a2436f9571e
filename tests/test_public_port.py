"""The public port end to end: dashboards through the gateway, a separate scheduler port,
and a URL prefix."""

from __future__ import annotations

import getpass

from support.gateway_process import free_port
from support.http_helpers import basic, call


def test_dashboard_is_served_through_the_gateway(gateway):
    from dask_gateway import Gateway

    with Gateway(gateway.address, auth="basic") as gw:
        with gw.new_cluster() as cluster:
            link = cluster.dashboard_link
            assert link == f"{gateway.address}/clusters/{cluster.name}/status"
            owner = basic(getpass.getuser())
            r = call("GET", link, headers=owner)
            page = r.body.decode()
            assert r.status == 200 and "Dask" in page and "bokeh" in page.lower()
            # Another page of the dashboard, with the session cookie the first answer set.
            cookie = r.headers["Set-Cookie"].split(";")[0]
            r = call(
                "GET",
                f"{gateway.address}/clusters/{cluster.name}/info/main/workers.html",
                headers={"Cookie": cookie},
            )
            assert r.status == 200
            # Nobody else: no credentials is a login challenge, another user is refused.
            r = call("GET", link)
            assert r.status == 401 and r.headers["WWW-Authenticate"] == "Basic"
            r = call("GET", link, headers=basic("mallory"))
            assert r.status == 403
            assert r.json() == {
                "error": f"User mallory lacks permissions to view cluster {cluster.name}"
            }


def test_separate_tcp_port_and_prefix(fresh_gateway):
    from dask_gateway import Gateway

    tcp_port = free_port()
    gw_proc = fresh_gateway(
        [f"--Proxy.tcp_address=127.0.0.1:{tcp_port}", "--Proxy.prefix=/services/dask-gateway"]
    )
    gw_proc.start(health_path="/services/dask-gateway/api/health")
    address = f"{gw_proc.address}/services/dask-gateway"
    with Gateway(address, proxy_address=tcp_port, auth="basic") as gw:
        assert gw.proxy_address == f"gateway://127.0.0.1:{tcp_port}"
        with gw.new_cluster() as cluster:
            cluster.scale(1)
            client = cluster.get_client()
            assert client.submit(lambda: 1 + 1).result() == 2
            assert cluster.dashboard_link.startswith(f"{address}/clusters/")
            r = call("GET", cluster.dashboard_link, headers=basic(getpass.getuser()))
            assert r.status == 200
            client.close()
