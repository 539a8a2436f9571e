"""The public port end to end: dashboards through the gateway, a separate scheduler port,
and a URL prefix."""
from __future__ import annotations

import urllib.request

from conftest import free_port


def test_dashboard_is_served_through_the_gateway(gateway):
    from dask_gateway import Gateway

    with Gateway(gateway.address, auth="basic") as gw:
        with gw.new_cluster() as cluster:
            link = cluster.dashboard_link
            assert link == f"{gateway.address}/clusters/{cluster.name}/status"
            with urllib.request.urlopen(link, timeout=30) as r:
                page = r.read().decode()
            assert r.status == 200 and "Dask" in page and "bokeh" in page.lower()
            # The JSON the dashboard's pages poll, through the same route.
            with urllib.request.urlopen(
                f"{gateway.address}/clusters/{cluster.name}/info/main/workers.html", timeout=30
            ) as r:
                assert r.status == 200


def test_separate_tcp_port_and_prefix(fresh_gateway):
    from dask_gateway import Gateway

    tcp_port = free_port()
    gw_proc = fresh_gateway([f"--Proxy.tcp_address=127.0.0.1:{tcp_port}",
                             "--Proxy.prefix=/services/dask-gateway"])
    gw_proc.start(health_path="/services/dask-gateway/api/health")
    address = f"{gw_proc.address}/services/dask-gateway"
    with Gateway(address, proxy_address=tcp_port, auth="basic") as gw:
        assert gw.proxy_address == f"gateway://127.0.0.1:{tcp_port}"
        with gw.new_cluster() as cluster:
            cluster.scale(1)
            client = cluster.get_client()
            assert client.submit(lambda: 1 + 1).result() == 2
            assert cluster.dashboard_link.startswith(f"{address}/clusters/")
            with urllib.request.urlopen(cluster.dashboard_link, timeout=30) as r:
                assert r.status == 200
            client.close()
