"""Run by the PUBLIC dask-gateway client (its own venv) against our server; prints JSON results.

Usage: python upstream_client_workflow.py http://127.0.0.1:PORT
"""

import base64
import getpass
import json
import sys
import time
import urllib.request
import warnings

import dask.array as da

from dask_gateway import Gateway, GatewayCluster, GatewayClusterError, GatewayWarning

address = sys.argv[1]
out = {}


def wait_for_exactly(client, n, timeout=60):
    """wait_for_workers(n) returns once *at least* n workers are attached: after scaling
    down, workers still retiring are counted. Wait until exactly n are left."""
    deadline = time.monotonic() + timeout
    while (count := len(client.scheduler_info()["workers"])) != n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{count} workers after {timeout} s, not {n}")
        time.sleep(0.1)


gateway = Gateway(address, auth="basic")
out["initial_list"] = [c.name for c in gateway.list_clusters()]

options = gateway.cluster_options()
out["options"] = dict(options)
options.worker_cores = 2
options.label = "hello"
options.env = {"A": "1"}
options.size = "medium"
try:
    options.worker_cores = 10
except ValueError as e:
    out["bad_option"] = str(e)
try:
    gateway.new_cluster(worker_cores=99)
except ValueError as e:
    out["server_bad_option"] = str(e)

cluster = gateway.new_cluster(options, shutdown_on_close=True)
out["cluster_options"] = gateway.get_cluster(cluster.name).options
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    cluster.scale(5)
out["scale_warning"] = [str(w.message) for w in caught if w.category is GatewayWarning]
cluster.scale(2)
client = cluster.get_client()
client.wait_for_workers(2, timeout=60)
# scale(5) started up to 3 workers (the limit): the third may still be leaving.
wait_for_exactly(client, 2)
out["mean"] = float(da.random.normal(size=(1000, 1000), chunks=(500, 500)).mean().compute())
# A third worker whose start was under way when scale(2) came may still attach, then be
# stopped: what the user sees settles at 2.
wait_for_exactly(client, 2)
out["workers"] = len(client.scheduler_info()["workers"])
# Dashboards are for their owner: log in as the user the client runs as.
creds = base64.b64encode(f"{getpass.getuser()}:".encode()).decode()
req = urllib.request.Request(cluster.dashboard_link, headers={"Authorization": f"Basic {creds}"})
with urllib.request.urlopen(req, timeout=30) as r:
    out["dashboard_status"] = r.status
cluster.adapt(minimum=1, maximum=2)
cluster.adapt(active=False)
client.close()
cluster.shutdown()

with gateway.new_cluster(label="ctx") as c2:
    out["ctx_status"] = gateway.get_cluster(c2.name).status.name

with GatewayCluster(address, auth="basic") as c3:
    out["gc_ctx"] = c3.name is not None

keep = gateway.new_cluster(shutdown_on_close=False)
keep.close()
out["listed"] = [c.name == keep.name for c in gateway.list_clusters()]
again = gateway.connect(keep.name)
again.scale(1)
cl = again.get_client()
out["connected_compute"] = cl.submit(lambda: 21 * 2).result()
cl.close()
gateway.stop_cluster(keep.name)

try:
    gateway.new_cluster(broken=True)
except GatewayClusterError as e:
    out["failed_cluster"] = str(e)
try:
    gateway.connect("0" * 32)
except ValueError as e:
    out["unknown_cluster"] = str(e)
gateway.close()
print(json.dumps(out))
