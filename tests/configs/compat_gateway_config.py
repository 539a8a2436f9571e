# The test configuration plus one option of every type, and a way to make a cluster fail,
# for the public dask-gateway client's tests against our server.
import os

from dask_gateway_server.options import Bool, Float, Integer, Mapping, Options, Select, String

exec(open(os.path.join(os.path.dirname(__file__), "gateway_config.py")).read())


def compat_handler(options):
    config = {
        "worker_cores": options.worker_cores,
        "worker_memory": int(options.worker_memory * 2**30),
        "environment": {"COMPAT_LABEL": options.label, **options.env},
    }
    if options.broken:
        config["scheduler_cmd"] = ["/bin/false"]
    return config


c.Backend.cluster_options = Options(
    Integer("worker_cores", default=1, min=1, max=4),
    Float("worker_memory", default=1, min=0.25, max=4),
    Select("size", ["small", "medium"]),
    String("label", default="none"),
    Bool("broken", default=False),
    Mapping("env", default={}),
    handler=compat_handler,
)
c.ClusterConfig.cluster_max_workers = 3
