"""A config file written for the public dask-gateway-server runs our server unchanged.

tests/configs/upstream_style_config.py uses the public server's documented traits. The same file
starts both servers (ours, and the public one from .venv-upstream) and the same workflow with
our client must give the same results on both. Settings our server does not read are
named in a warning, never a crash and never silence.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import os
import sqlite3
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from support import waiting
from support.gateway_process import free_port
from support.paths import CONFIGS
from support.upstream_server import require_upstream_venv, server_process
from tornado.httpclient import HTTPClientError
from traitlets.utils.importstring import import_item

from dask_gateway import BasicAuth, Gateway, GatewayWarning
from dask_gateway.client import ClusterStatus

pytestmark = [pytest.mark.interop, pytest.mark.timeout(600)]

CONFIG = CONFIGS / "upstream_style_config.py"
PASSWORD = "upstream-style-password"
PREFIX = "/services/dask-gateway"


class Site:
    """One server started from a config file, as an admin would: ``dask-gateway-server -f``."""

    def __init__(self, home: Path, server_bin: Path, config: Path):
        self.home = home
        self.server_bin = server_bin
        self.config = config
        self.http_port, self.tcp_port, self.api_port = free_port(), free_port(), free_port()
        self.address = f"http://127.0.0.1:{self.http_port}{PREFIX}"
        self.proxy_address = f"gateway://127.0.0.1:{self.tcp_port}"
        self.log_path = home / "server.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    @contextlib.contextmanager
    def running(self) -> Iterator[Site]:
        self.home.mkdir(parents=True, exist_ok=True)
        env = dict(
            os.environ,
            GATEWAY_HOME=str(self.home),
            GATEWAY_HTTP_PORT=str(self.http_port),
            GATEWAY_TCP_PORT=str(self.tcp_port),
            GATEWAY_API_PORT=str(self.api_port),
            GATEWAY_PASSWORD=PASSWORD,
            GATEWAY_DB_KEY=Fernet.generate_key().decode(),
        )
        env.pop("VIRTUAL_ENV", None)
        with server_process(
            [str(self.server_bin), "-f", str(self.config)],
            self.home,
            env,
            self.log_path,
            self.address,
        ):
            yield self


_wait_for = functools.partial(waiting.wait_for, timeout=90, interval=0.2)


def _workflow(site: Site) -> dict:
    """What a user sees of the site's settings; must be equal on both servers."""
    out: dict = {}
    with Gateway(
        site.address, proxy_address=site.proxy_address, auth=BasicAuth("alice", "wrong")
    ) as bad:
        with pytest.raises(HTTPClientError) as info:
            bad.list_clusters()
        out["wrong_password"] = info.value.code

    with Gateway(
        site.address, proxy_address=site.proxy_address, auth=BasicAuth("alice", PASSWORD)
    ) as gateway:
        opts = gateway.cluster_options()
        out["options"] = dict(opts)
        with pytest.raises(ValueError) as info:
            gateway.new_cluster(worker_cores=3)
        out["bad_option"] = "worker_cores must be <= 2" in str(info.value)

        # Two cores per worker: the 3-core cluster limit leaves room for one worker.
        cluster = gateway.new_cluster(
            worker_cores=2, profile="large", label="big", debug=True, extra_env={"EXTRA": "1"}
        )
        try:
            out["reported_options"] = gateway.get_cluster(cluster.name).options
            with pytest.warns(GatewayWarning) as caught:
                cluster.scale(5)
            out["scale_warning"] = [str(w.message) for w in caught]
            client = cluster.get_client(set_as_default=False)
            client.wait_for_workers(1, timeout=120)
            [worker] = client.scheduler_info()["workers"].values()
            out["worker"] = {"nthreads": worker["nthreads"], "memory_limit": worker["memory_limit"]}
            keys = ["SITE_NAME", "SITE_PROFILE", "SITE_USER", "SITE_LABEL", "SITE_DEBUG", "EXTRA"]
            [env] = client.run(lambda: {k: os.environ.get(k) for k in keys}).values()
            out["worker_env"] = env
            out["compute"] = client.submit(sum, range(10)).result(timeout=60)
            # Ours asks dashboard viewers to log in like API users; theirs ignores the header.
            auth = base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
            req = urllib.request.Request(
                cluster.dashboard_link, headers={"Authorization": f"Basic {auth}"}
            )
            with urllib.request.urlopen(req, timeout=30) as r:
                out["dashboard"] = (r.status, cluster.dashboard_link.startswith(site.address))
            client.close()
        finally:
            cluster.shutdown()

        # Defaults: one core and 512 MiB per worker -> the core limit (3 - 1) gives 2 workers.
        with gateway.new_cluster() as cluster:
            with pytest.warns(GatewayWarning) as caught:
                cluster.scale(5)
            out["default_scale_warning"] = [str(w.message) for w in caught]
            client = cluster.get_client(set_as_default=False)
            client.wait_for_workers(2, timeout=120)
            cluster.adapt(minimum=1, maximum=2)
            _wait_for(lambda: len(client.scheduler_info()["workers"]) == 1, what="adapt to 1")
            out["adapted"] = True
            client.close()
        name = cluster.name
        _wait_for(lambda: gateway.get_cluster(name).status is ClusterStatus.STOPPED, what="STOPPED")
        out["final_list"] = gateway.list_clusters()
    return out


EXPECTED = {
    "wrong_password": 401,
    "options": {
        "worker_cores": 1,
        "worker_memory": 0.5,
        "profile": "small",
        "label": "",
        "debug": False,
        "extra_env": {},
    },
    "bad_option": True,
    "reported_options": {
        "worker_cores": 2,
        "worker_memory": 0.5,
        "profile": "large",
        "label": "big",
        "debug": True,
        "extra_env": {"EXTRA": "1"},
    },
    "scale_warning": [
        "Scale request of 5 workers would exceed resource limit of 1 workers. Scaling to 1 instead."
    ],
    "worker": {"nthreads": 2, "memory_limit": 2**29},
    # The handler's `environment` replaces ClusterConfig.environment (no merge), as upstream.
    "worker_env": {
        "SITE_NAME": None,
        "SITE_PROFILE": "large",
        "SITE_USER": "alice",
        "SITE_LABEL": "big",
        "SITE_DEBUG": "1",
        "EXTRA": "1",
    },
    "compute": 45,
    "dashboard": (200, True),
    "default_scale_warning": [
        "Scale request of 5 workers would exceed resource limit of 2 workers. Scaling to 2 instead."
    ],
    "adapted": True,
    "final_list": [],
}


def _warnings(log: str) -> list[str]:
    return [line.split(": ", 1)[1] for line in log.splitlines() if " WARNING " in line]


def test_our_server_runs_the_public_servers_config_file(tmp_path):
    site = Site(tmp_path / "ours", Path(sys.executable).parent / "dask-gateway-server", CONFIG)
    with site.running():
        startup = site.log()
        assert _workflow(site) == EXPECTED
    log = site.log()
    assert "Traceback" not in log, log
    # The config's log format is in force, and every ignored setting is named once at start.
    assert _warnings(startup) == [
        "Config option `Proxy.gateway_url` is ignored: the proxy runs inside the gateway process",
        "Config option `Proxy.api_token` is ignored: the proxy runs inside the gateway process",
        "Config option `Proxy.log_level` is ignored: the proxy runs inside the gateway process",
        "Config option `Proxy.proxy_status_period` is ignored: the proxy runs inside the "
        "gateway process",
        "Config option `KubeClusterConfig.image` is not supported: this gateway has no "
        "KubeClusterConfig; ignoring it",
        "Config option `KubeBackend.gateway_instance` is not supported: this gateway has no "
        "KubeBackend; ignoring it",
    ], startup
    assert " DEBUG " in log  # DaskGateway.log_level
    # The state lives in the configured SQLite file, with secrets encrypted by the given key.
    db = sqlite3.connect(site.home / "gateway.sqlite")
    try:
        tables = {r[0] for r in db.execute("select name from sqlite_master where type='table'")}
        assert tables, "no tables in the configured database"
        dump = "\n".join(db.iterdump())
    finally:
        db.close()
    assert "BEGIN CERTIFICATE" not in dump and "PRIVATE KEY" not in dump
    assert not (site.home / ".dask-gateway" / "dask_gateway.key").exists()


def test_the_public_server_gives_the_same_results_with_that_file(tmp_path):
    """The file really is a config of the public server, and the workflow agrees."""
    venv = require_upstream_venv()
    site = Site(tmp_path / "theirs", venv / "bin" / "dask-gateway-server", CONFIG)
    with site.running():
        assert _workflow(site) == EXPECTED


def test_misspelled_and_foreign_settings_are_named(tmp_path):
    """Typos warn with the setting's name and a suggestion; the server still starts."""
    config = tmp_path / "typos_config.py"
    config.write_text(
        f"exec(open({str(CONFIG)!r}).read())\n"
        "c.ClusterConfig.worker_memroy = '1 G'\n"  # ClusterConfig: built per cluster, later
        "c.JupyterHubAuthenticator.jupyterhub_api_urll = 'http://hub/api'\n"  # inactive class
        "c.UnsafeLocalBackend.sigint_timout = 1\n"  # the active backend (traitlets' own check)
        "c.YarnClusterConfig.queue = 'dask'\n"
    )
    site = Site(tmp_path / "typos", Path(sys.executable).parent / "dask-gateway-server", config)
    with site.running():
        warnings = _warnings(site.log())
    for expected in [
        "Config option `ClusterConfig.worker_memroy` is not supported: ClusterConfig has no "
        "such setting (did you mean `worker_memory`?); ignoring it",
        "Config option `JupyterHubAuthenticator.jupyterhub_api_urll` is not supported: "
        "JupyterHubAuthenticator has no such setting (did you mean `jupyterhub_api_url`?); "
        "ignoring it",
        "Config option `YarnClusterConfig.queue` is not supported: this gateway has no "
        "YarnClusterConfig; ignoring it",
    ]:
        assert expected in warnings, warnings
    assert any("`sigint_timout`" in w and "UnsafeLocalBackend" in w for w in warnings), warnings


@pytest.mark.parametrize(
    "path, base",
    [
        ("dask_gateway_server.backends.local.UnsafeLocalBackend", "backends.base.Backend"),
        ("dask_gateway_server.backends.local.LocalBackend", "backends.base.Backend"),
        ("dask_gateway_server.backends.base.ClusterConfig", "backends.base.ClusterConfig"),
        ("dask_gateway_server.backends.local.LocalClusterConfig", "backends.base.ClusterConfig"),
        ("dask_gateway_server.auth.SimpleAuthenticator", "auth.Authenticator"),
        ("dask_gateway_server.auth.KerberosAuthenticator", "auth.Authenticator"),
        ("dask_gateway_server.auth.JupyterHubAuthenticator", "auth.Authenticator"),
    ],
)
def test_class_paths_of_public_configs_resolve(path, base):
    assert issubclass(import_item(path), import_item("dask_gateway_server." + base))


def test_options_module_has_the_public_names():
    import dask_gateway_server.options as options

    for name in ["Options", "String", "Bool", "Integer", "Float", "Select", "Mapping"]:
        assert callable(getattr(options, name)), name
