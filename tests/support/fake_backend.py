"""A backend whose clusters cost nothing: for list_clusters() with 1,000 clusters.

No scheduler runs: starting a cluster posts ONE heartbeat to the gateway's API (the same
request a real scheduler sends first), which makes the cluster RUNNING through the normal
path. The bench config sets a long heartbeat timeout so the clusters stay RUNNING.

Loaded by either server (``c.DaskGateway.backend_class = "support.fake_backend.FakeBackend"``
with tests/ on sys.path, as bench/compare_config.py does); it adapts to the backend interface of the server that imports it.
"""

from __future__ import annotations

import asyncio
import json

from tornado.httpclient import AsyncHTTPClient, HTTPClientError

try:  # the public server
    from dask_gateway_server.backends.db_base import DBBackendBase as _Base

    PUBLIC = True
except ImportError:  # ours
    from dask_gateway_server.backends.base import DBBackendBase as _Base

    PUBLIC = False

_tasks: set = set()


async def _heartbeat(api_url: str, name: str, token: str) -> None:
    """The first heartbeat of a scheduler with no workers (retried until accepted)."""
    msg = {
        "scheduler_address": "tls://127.0.0.1:9",
        "dashboard_address": "",
        "api_address": "http://127.0.0.1:9",
        "count": 0,
        "active_workers": [],
        "closing_workers": [],
        "closed_workers": [],
    }
    client = AsyncHTTPClient()
    for _ in range(100):
        try:
            await client.fetch(
                f"{api_url}/v1/clusters/{name}/heartbeat",
                method="POST",
                body=json.dumps(msg),
                headers={"Authorization": f"token {token}", "Content-Type": "application/json"},
            )
            return
        except (HTTPClientError, OSError):
            await asyncio.sleep(0.2)


def _send_heartbeat(api_url: str, name: str, token: str) -> None:
    task = asyncio.ensure_future(_heartbeat(api_url, name, token))
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


if PUBLIC:

    class FakeBackend(_Base):
        """Fake clusters for the public server (its documented custom-backend interface)."""

        async def do_start_cluster(self, cluster):
            _send_heartbeat(self.api_url, cluster.name, cluster.token)
            yield {"fake": True}

        async def do_stop_cluster(self, cluster):
            pass

        async def do_check_clusters(self, clusters):
            return [True] * len(clusters)

        async def do_start_worker(self, worker):
            yield {"fake": True}

        async def do_stop_worker(self, worker):
            pass

        async def do_check_workers(self, workers):
            return [True] * len(workers)

else:

    class FakeBackend(_Base):
        """Fake clusters for our server (the Backend interface of backends/base.py)."""

        async def start_cluster(self, cluster) -> dict:
            _send_heartbeat(self.api_url, cluster.name, cluster.token)
            return {"fake": True}

        async def stop_cluster(self, cluster) -> None:
            pass

        async def start_worker(self, cluster, worker) -> dict:
            return {"fake": True}

        async def stop_worker(self, cluster, worker) -> None:
            pass
