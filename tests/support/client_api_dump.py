"""Print, as JSON, the documented API of whichever ``dask_gateway`` this Python imports.

Run with the public client's Python and with ours (tests/test_public_client_api.py compares
the two): for every target ``module:Name`` (a class brings its public members, and any
listed ``_hook``), its kind and, for callables, each parameter's name, kind and default.
"""

from __future__ import annotations

import importlib
import inspect
import json
import sys

TARGETS = [
    "dask_gateway:__version__",
    "dask_gateway:Gateway",
    "dask_gateway:GatewayCluster",
    "dask_gateway:Options",
    "dask_gateway:BasicAuth",
    "dask_gateway:KerberosAuth",
    "dask_gateway:JupyterHubAuth",
    "dask_gateway:GatewayClusterError",
    "dask_gateway:GatewayServerError",
    "dask_gateway:GatewayWarning",
    "dask_gateway.client:ClusterReport",
    "dask_gateway.client:ClusterStatus",
    "dask_gateway.client:GatewaySecurity",
    "dask_gateway.client:cleanup_lingering_clusters",
    "dask_gateway.auth:GatewayAuth",
    "dask_gateway.auth:get_auth",
    "dask_gateway.options:Field",
    "dask_gateway.options:String",
    "dask_gateway.options:Bool",
    "dask_gateway.options:Number",
    "dask_gateway.options:Integer",
    "dask_gateway.options:Float",
    "dask_gateway.options:Select",
    "dask_gateway.options:Mapping",
    "dask_gateway.options:register_field_type",
    "dask_gateway.comm:parse_gateway_address",
    "dask_gateway.utils:format_template",
    "dask_gateway.utils:cancel_task",
    "dask_gateway.scheduler_preload:make_gateway_client",
    "dask_gateway.scheduler_preload:GatewayClient",
    "dask_gateway.scheduler_preload:GatewaySchedulerService",
]
# Members of a class checked besides its public ones: hooks subclasses override.
HOOKS = {"GatewayCluster": ["_start_async", "_stop_async"]}
# The public preload's service is checked for what its server's backend and distributed use.
ONLY = {
    "GatewaySchedulerService": ["__init__", "listen", "stop", "scale", "adapt", "heartbeat"],
    "GatewayClient": ["__init__", "heartbeat", "shutdown"],
}


def _params(obj):
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return None
    return [
        [
            p.name,
            p.kind.name,
            p.default is not inspect.Parameter.empty,
            None if p.default is inspect.Parameter.empty else repr(p.default),
        ]
        for p in sig.parameters.values()
    ]


def _describe(obj):
    if isinstance(obj, property):
        return {"kind": "property"}
    if isinstance(obj, (classmethod, staticmethod)):
        obj = obj.__func__
    if inspect.isclass(obj):
        return {"kind": "class", "params": _params(obj.__init__)}
    if callable(obj):
        kind = "coroutine" if inspect.iscoroutinefunction(obj) else "function"
        return {"kind": kind, "params": _params(obj)}
    return {"kind": "value"}


def describe(key):
    """Describe ``module:Name`` or ``module:Name.member`` (looked up statically)."""
    module_name, path = key.split(":")
    name, _, member = path.partition(".")
    try:
        obj = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError):
        return {"kind": "missing"}
    if member:
        obj = inspect.getattr_static(obj, member, None)
        if obj is None:
            return {"kind": "missing"}
    return _describe(obj)


def dump():
    """Every target, and the public members (and hooks) of each class among them."""
    out = {}
    for target in TARGETS:
        out[target] = describe(target)
        module_name, name = target.split(":")
        obj = getattr(importlib.import_module(module_name), name, None)
        if not inspect.isclass(obj):
            continue
        members = ONLY.get(name) or [
            m
            for m in dir(obj)
            if not m.startswith("_")
            and any(m in vars(k) for k in obj.__mro__ if k.__module__.startswith("dask_gateway"))
        ] + HOOKS.get(name, [])
        for member in members:
            out[f"{target}.{member}"] = describe(f"{target}.{member}")
    return out


if __name__ == "__main__":
    json.dump(dump(), sys.stdout, indent=1, sort_keys=True)
