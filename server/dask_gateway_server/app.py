"""The gateway application: configuration, command line, wiring, start and stop."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
from collections.abc import Iterable
from typing import Any

from tornado import web
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from traitlets import Bool, Enum, Float, Integer, TraitError, Unicode, default, observe, validate
from traitlets.config import Application, Configurable, catch_config_error
from traitlets.utils.importstring import import_item

from . import __version__, console
from .api import clusters, events, heartbeat, login, logs, overview, quota, server, usage
from .api.base import NotFoundHandler, Route, loggable_uri, url_specs
from .api.login import check_dashboard_access
from .auth import Authenticator
from .backends.base import Backend, ClusterConfig
from .cluster_logs import ClusterLogs
from .config_check import unrecognized_settings
from .limits import UserLimits
from .logs import cluster_in_path, logging_config, share_handlers
from .metrics import Metrics
from .proxy import HTTP_LIMITS, Proxy, ProxyLink, PublicPort
from .quotas import UsageQuotas
from .reconciler import EVENTS_MAX_AGE, Reconciler
from .store import Store, load_or_create_key_file
from .traits import EntryPointType, MemoryLimit
from .usage import Accounting

#: Every API route, from the lists the API modules end with (in tornado's matching order).
API_ROUTES: list[Route] = [
    *server.ROUTES,
    *clusters.ROUTES,
    *events.ROUTES,
    *logs.ROUTES,
    *usage.ROUTES,
    *quota.ROUTES,
    *overview.ROUTES,
    *heartbeat.ROUTES,
    *login.ROUTES,
]


def web_routes(prefix: str, proxy: Proxy) -> list:
    """The gateway web app's URL specs: the API under ``prefix``, the web console (HTML, not
    API: no OpenAPI entry), the dashboards, and a JSON 404 for everything else."""
    return [
        *url_specs(prefix, API_ROUTES),
        *console.url_specs(prefix),
        *proxy.dashboard_handlers(),
        (r".*", NotFoundHandler),
    ]


def with_bases(classes: Iterable[type], root: type) -> list[type]:
    """``classes`` each after the classes between it and ``root`` it derives from (their
    settings apply to it too), each once."""
    out: list[type] = []
    for cls in classes:
        for base in reversed(cls.__mro__):
            if issubclass(base, root) and base not in out:
                out.append(base)
    return out


def _default_class(cls: type[Configurable], name: str) -> type:
    """The default of ``cls``'s Type trait ``name`` (traitlets keeps an import string until
    an instance needs it)."""
    value = cls.class_traits()[name].default_value
    return import_item(value) if isinstance(value, str) else value


def split_host_port(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep:
        raise ValueError(f"Address must be 'host:port', got {address!r}")
    return host.strip("[]"), int(port)


class GenerateConfig(Application):
    """Write a config file listing every setting with its default."""

    name = "dask-gateway-server generate-config"
    output = Unicode("dask_gateway_config.py", help="Where to write the file.", config=True)
    force = Bool(False, help="Overwrite an existing file.", config=True)
    aliases = {"output": "GenerateConfig.output"}
    flags = {"force": ({"GenerateConfig": {"force": True}}, "Overwrite an existing file.")}

    def start(self) -> None:
        path = os.path.abspath(self.output)
        if os.path.exists(path) and not self.force:
            print(f"{path} exists; pass --force to overwrite it", file=sys.stderr)
            self.exit(1)
        text = DaskGateway(parent=self.parent).generate_config_file()
        with open(path, "w") as f:
            f.write(text)
        print(f"Wrote {path}")


class DaskGateway(Application):
    """A multi-user gateway to Dask clusters."""

    name = "dask-gateway-server"
    version = __version__
    # A config file that fails must stop the gateway, not start one with default settings.
    raise_config_file_errors = True
    description = "Start a Dask Gateway server."

    aliases = {
        "log-level": "DaskGateway.log_level",
        "f": "DaskGateway.config_file",
        "config": "DaskGateway.config_file",
    }
    subcommands = {
        "generate-config": (GenerateConfig, "Write a config file with every setting."),
    }

    config_file = Unicode(
        "dask_gateway_config.py", help="The config file to load (if it exists).", config=True
    )
    data_dir = Unicode(
        help="Directory for the gateway's database and keys (created if missing).", config=True
    )
    address = Unicode(
        "127.0.0.1:0",
        help="Private address serving the API to schedulers (port 0: a free port). The public "
        "port (Proxy.address) serves the API to users.",
        config=True,
    )
    open_dashboards = Bool(
        False,
        help="Let anyone who knows a cluster's name see its dashboard (the public "
        "dask-gateway's behaviour). By default only its owner and admins can.",
        config=True,
    )
    events_max_age = Float(
        EVENTS_MAX_AGE,
        min=0,
        help="Seconds a cluster's events (and kept logs) are kept after it stopped or failed "
        "(default 7 days); removed every db_cleanup_period seconds. A stopped cluster's events "
        "stay readable by its owner and admins until then, even once the gateway forgot the "
        "cluster itself (db_cluster_max_age).",
        config=True,
    )
    usage_metrics = Bool(
        False,
        help="Export each user's use on the metrics page: dask_gateway_core_seconds_total and "
        "dask_gateway_memory_byte_seconds_total, labelled by user and group. Off by default: "
        "the page needs no credentials, and user names in metrics are not always wanted.",
        config=True,
    )
    usage_max_age = Float(
        0,
        min=0,
        help="Seconds the usage accounting of a scheduler or worker is kept after it stopped "
        "(0, the default: forever); older records are removed every db_cleanup_period "
        "seconds, and with them the usage reports and metrics of that time.",
        config=True,
    )
    log_style = Enum(
        ["text", "json"],
        "text",
        help="How log lines are written to stderr. 'text': formatted by "
        "DaskGateway.log_format, with '[cluster NAME]' before the message of every line "
        "about a cluster. 'json': one JSON object a line, with the keys time (UTC, ISO "
        "8601), level, logger, message, and cluster (the cluster's name) on lines about a "
        "cluster; tracebacks in exc_info.",
        config=True,
    )
    cluster_log_max_bytes = MemoryLimit(
        2**20,
        help="The most of each scheduler's and worker's log that the gateway keeps once its "
        "cluster stopped (the newest bytes, from a line start), and the most of one log in "
        "any answer of the logs route (bytes or a string like '1 M').",
        config=True,
    )
    cluster_log_max_workers = Integer(
        100,
        min=0,
        help="Worker logs kept per cluster once it stopped (the newest workers'); the "
        "scheduler's log is always kept.",
        config=True,
    )
    backend_class = EntryPointType(
        "unsafe-local",
        klass=Backend,
        entry_point_group="dask_gateway_server.backends",
        kind="backend",
        help="The backend that runs clusters: one of the installed names, a class's import "
        "path ('package.module.Class'), or the class.",
        config=True,
    )
    authenticator_class = EntryPointType(
        "simple",
        klass=Authenticator,
        entry_point_group="dask_gateway_server.authenticators",
        kind="authenticator",
        help="How users are authenticated: one of the installed names, a class's import path "
        "('package.module.Class'), or the class.",
        config=True,
    )

    def __init__(self, **kwargs: Any) -> None:
        self.classes = self._configurable_classes()
        self._usage_retention: asyncio.Task | None = None
        super().__init__(**kwargs)

    @default("data_dir")
    def _default_data_dir(self) -> str:
        return os.path.join(os.getcwd(), ".dask-gateway")

    @default("log_level")
    def _default_log_level(self) -> int:
        return logging.INFO

    @default("log_format")
    def _default_log_format(self) -> str:
        return "[%(levelname)1.1s %(asctime)s.%(msecs).03d %(name)s] %(message)s"

    @default("log_datefmt")
    def _default_log_datefmt(self) -> str:
        return "%Y-%m-%d %H:%M:%S"

    def get_default_logging_config(self) -> dict:
        """Our formatters and handler (logs.py): cluster names on lines, JSON if asked, and
        a log that cannot be written (a full disk) costs lines, never the gateway."""
        return logging_config(
            self.log_style,
            self._log_level_number(),
            self.log_format,
            self.log_datefmt,
            self.__class__.__name__,
        )

    def _log_level_number(self) -> int:
        """``log_level`` as a number: traitlets turns a name into its number when it is set
        (the trait is typed ``object``)."""
        level = self.log_level
        if isinstance(level, int):
            return level
        number = logging.getLevelName(str(level))
        return number if isinstance(number, int) else logging.INFO

    @observe("log_style")
    def _log_style_changed(self, change) -> None:
        self._configure_logging()

    def _configure_logging(self) -> None:
        """traitlets leaves the logger at DEBUG and lets each handler filter, so every
        debug call built a record no handler kept (a visible share of a request's CPU).
        The logger's level becomes its most verbose handler's: records are dropped up front,
        and an extra DEBUG handler from ``logging_config`` still gets everything."""
        super()._configure_logging()
        if self.log.handlers:
            self.log.setLevel(min(h.level for h in self.log.handlers) or logging.DEBUG)

    @validate("cluster_log_max_bytes")
    def _check_log_max_bytes(self, proposal):
        if proposal.value < 1024:
            raise TraitError(
                f"cluster_log_max_bytes must be at least 1024 bytes, got {proposal.value}"
            )
        return proposal.value

    @validate("address")
    def _check_address(self, proposal):
        split_host_port(proposal.value)
        return proposal.value

    @classmethod
    def _configurable_classes(cls) -> list[type[Configurable]]:
        """What a config file may set (for --help-all, generate-config,
        docs/configuration.md and the unknown-settings check): the gateway, every installed
        authenticator and backend (the entry points of their traits), each with the classes
        it derives from, and each backend's cluster configuration."""
        auth_trait = cls.class_traits()["authenticator_class"]
        backend_trait = cls.class_traits()["backend_class"]
        assert isinstance(auth_trait, EntryPointType)
        assert isinstance(backend_trait, EntryPointType)
        backends = backend_trait.load_all()
        cluster_configs = [_default_class(b, "cluster_config_class") for b in backends]
        return [
            cls,
            Proxy,
            *with_bases(auth_trait.load_all(), Authenticator),
            UserLimits,
            UsageQuotas,
            *with_bases(backends, Backend),
            *with_bases(cluster_configs, ClusterConfig),
        ]

    @catch_config_error
    def initialize(self, argv=None) -> None:
        super().initialize(argv)
        if self.subapp is not None:
            return
        self.load_config_file(self.config_file)
        self.log.name = "dask_gateway_server"
        self.log.propagate = False
        self.authenticator = self.authenticator_class(parent=self, log=self.log)
        self.backend = self.backend_class(parent=self, log=self.log)
        self.proxy = Proxy(parent=self, log=self.log)
        self.limits = UserLimits(parent=self)
        self.quotas = UsageQuotas(parent=self)
        known: list[type] = [
            *self.classes,
            GenerateConfig,
            self.backend.cluster_config_class,
            type(self.backend),
            type(self.authenticator),
        ]
        configured = [
            self,
            self.authenticator,
            self.backend,
            self.proxy,
            self.limits,
            self.quotas,
        ]
        for message in unrecognized_settings(self.config, known, configured):
            self.log.warning(message)

    def _store(self) -> Store:
        backend = self.backend
        url = getattr(backend, "db_url", "")
        keys = list(getattr(backend, "db_encrypt_keys", []))
        os.makedirs(self.data_dir, mode=0o700, exist_ok=True)
        if not url:
            url = "sqlite:///" + os.path.join(self.data_dir, "dask_gateway.sqlite")
            if not keys:
                keys = [load_or_create_key_file(os.path.join(self.data_dir, "dask_gateway.key"))]
        elif not keys:
            raise ValueError(
                "db_encrypt_keys (or DASK_GATEWAY_ENCRYPT_KEYS) must be set with a custom db_url"
            )
        return Store(
            url,
            keys,
            echo=getattr(backend, "db_debug", False),
            timeout=getattr(backend, "db_timeout", 10.0),
        )

    async def start_async(self) -> None:
        self.store = self._store()
        await self.store.setup()
        if self.store.n_keys > 1:
            n = await self.store.rotate_keys()
            self.log.info(
                "Re-encrypted the secrets of %d clusters with the first key; the "
                "other keys may now be removed",
                n,
            )
        self.public_port = self._public_port()
        self.cluster_logs = ClusterLogs(
            self.backend,
            os.path.join(self.data_dir, "cluster-logs"),
            max_bytes=self.cluster_log_max_bytes,
            max_workers=self.cluster_log_max_workers,
            log=self.log,
        )
        self.reconciler = Reconciler(
            self.store,
            self.backend,
            self.public_port,
            log=self.log,
            count_limit=self._count_limit,
            events_max_age=self.events_max_age,
            logs=self.cluster_logs,
        )
        self.accounting = Accounting(self.store)
        self.quotas.bind(self.accounting, self.reconciler, owner=self.limits.owner, log=self.log)
        self.metrics = Metrics(
            self.reconciler,
            self.accounting if self.usage_metrics else None,
            relay=self.public_port.relay_counts,
        )
        self.reconciler.queue.on_wait = self.metrics.queue_wait.observe
        self.web_app = web.Application(
            web_routes(self.proxy.prefix, self.proxy),
            authenticator=self.authenticator,
            backend=self.backend,
            reconciler=self.reconciler,
            limits=self.limits,
            quotas=self.quotas,
            usage_period=self.quotas.period,
            metrics=self.metrics,
            accounting=self.accounting,
            prefix=self.proxy.prefix,
            log=self.log,
            log_function=self._log_request,
        )
        host, port = split_host_port(self.address)
        sockets = bind_sockets(
            port, host or None, family=socket.AF_INET if not host else socket.AF_UNSPEC
        )
        self.private_server = HTTPServer(self.web_app, **HTTP_LIMITS)
        bound = sockets[0].getsockname()
        if not self.backend.api_url:
            self.backend.api_url = self._default_api_url(host, bound[1], port)
        await self.authenticator.setup()
        await self.backend.setup()
        if not self.open_dashboards:
            self.proxy.check_dashboard_access = check_dashboard_access
        # Load the clusters before opening the public port: a request must never see an
        # empty gateway while it is still reading the database.
        await self.reconciler.start()
        self.private_server.add_sockets(sockets)
        await self.public_port.start(self.web_app)
        self.metrics.start()
        if self.usage_max_age > 0:
            self._usage_retention = asyncio.create_task(
                self.accounting.retention_loop(
                    self.usage_max_age, getattr(self.backend, "db_cleanup_period", 600.0), self.log
                )
            )
        self.quotas.start()
        self.log.info("Dask Gateway %s started at %s", __version__, self.public_port.public_url)

    def _public_port(self) -> PublicPort:
        """The proxy listening in this process, or the link to a separate proxy process
        (``Proxy.separate_process``) that listens and passes HTTP connections to it."""
        self.proxy.state_dir = self.data_dir
        if self.proxy.separate_process:
            return ProxyLink(self.proxy)
        return self.proxy

    def _default_api_url(self, private_host: str, private_port: int, configured: int) -> str:
        """Where schedulers report. They outlive the gateway, so prefer an address that
        survives a restart: the public port, unless it is HTTPS (schedulers may not trust its
        certificate) or random; then the private one."""
        public_host, public_port = split_host_port(self.proxy.address)
        if self.proxy.tls_cert or public_port == 0:
            api_host, api_port = private_host, private_port
            if configured == 0:
                self.log.warning(
                    "Schedulers report to the private port %d, which changes at "
                    "every restart: give DaskGateway.address a fixed port",
                    private_port,
                )
        else:
            api_host, api_port = public_host, public_port
        if api_host in ("", "0.0.0.0", "::"):
            api_host = "127.0.0.1"
        return f"http://{api_host}:{api_port}{self.proxy.prefix}/api"

    def _count_limit(self, cluster) -> int | tuple[int, str] | None:
        """The most workers ``cluster`` may have: the user's limits, or a used-up quota's
        cap (the count it has, ``when_exhausted = "no-new-workers"``), whichever is lower."""
        # Called on every heartbeat: the owner's clusters only, not everyone's.
        limit = self.limits.max_count(
            self.limits.owner(cluster), self.reconciler.clusters_of(cluster.username), cluster
        )
        cap = self.quotas.cap(cluster)
        if cap is not None and (limit is None or cap[0] < limit):
            return cap
        return limit

    async def stop_async(self) -> None:
        self.log.info("Stopping the gateway")
        await self.metrics.stop()
        if self._usage_retention is not None:
            self._usage_retention.cancel()
            await asyncio.gather(self._usage_retention, return_exceptions=True)
        await self.quotas.stop()
        await self.reconciler.stop()
        # Clusters left running keep their clients' connections: a separate proxy process
        # stays up for the next gateway to re-attach to.
        await self.public_port.stop(
            keep_separate_process=not getattr(self.backend, "stop_clusters_on_shutdown", True)
        )
        self.private_server.stop()
        await self.backend.cleanup()
        await self.authenticator.cleanup()
        await self.store.close()

    def _log_request(self, handler: web.RequestHandler) -> None:
        self.metrics.observe_request(handler)
        status = handler.get_status()
        path = handler.request.path
        if path.endswith(("/api/health", "/heartbeat")) or (
            status < 300 and handler.request.method in ("GET", "HEAD")
        ):
            # Clients poll; successful reads would drown the log. Changes stay at INFO.
            level = logging.DEBUG
        elif status < 400:
            level = logging.INFO
        elif status < 500:
            level = logging.WARNING
        else:
            level = logging.ERROR
        if not self.log.isEnabledFor(level):  # the polls, mostly: no need to format them
            return
        self.log.log(
            level,
            "%d %s %s %.1fms",
            status,
            handler.request.method,
            loggable_uri(handler.request),
            1000 * handler.request.request_time(),
            extra=cluster_in_path(path),
        )

    async def run(self) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await self.start_async()
        try:
            await stop.wait()
        finally:
            await self.stop_async()

    def start(self) -> None:
        if self.subapp is not None:
            return self.subapp.start()
        share_handlers(self.log)
        try:
            asyncio.run(self.run())
        except Exception as e:
            self.log.critical(
                "The gateway failed: %s", e, exc_info=self._log_level_number() <= logging.DEBUG
            )
            sys.exit(1)


main = DaskGateway.launch_instance
