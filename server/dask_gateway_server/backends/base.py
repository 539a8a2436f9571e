"""What a backend is: the per-cluster configuration it accepts and the few calls it answers.

A backend starts and stops schedulers and workers and says whether they are still alive. It
knows nothing of HTTP, the database or timers: the reconciler decides *when*, the backend
knows *how*.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from traitlets import (
    Any as AnyTrait,
)
from traitlets import (
    Bool,
    Bunch,
    Dict,
    Float,
    Instance,
    Integer,
    List,
    TraitError,
    Type,
    Unicode,
    Union,
    default,
    validate,
)
from traitlets.config import Configurable, LoggingConfigurable

from ..addresses import ReportedAddress
from ..models import Cluster, User, Worker
from ..options import Float as FloatField
from ..options import Integer as IntegerField
from ..options import Options, Select
from ..traits import Command, MemoryLimit, format_bytes

if TYPE_CHECKING:
    import pwd


class UserNotAllowed(Exception):
    """The backend will not run processes for this user: the API answers 403 with the
    message."""


def local_account(name: str, min_uid: int) -> pwd.struct_passwd:
    """The local account ``name`` that a backend may run processes as (blocking: NSS).

    Never root, a system account (uid below ``min_uid``) or the gateway's own account
    (whose processes could read the gateway's secrets).
    """
    import pwd  # here: the module is Unix-only

    try:
        entry = pwd.getpwnam(name)
    except (KeyError, ValueError):
        raise UserNotAllowed(
            f"User {name!r} has no account on this machine, and this gateway runs each "
            "user's clusters as their own account: ask an administrator to create it"
        ) from None
    if entry.pw_uid == 0:
        raise UserNotAllowed(f"Clusters never run as root, and user {name!r} is uid 0")
    if entry.pw_uid == os.geteuid():
        raise UserNotAllowed(
            f"User {name!r} is the gateway's own account: its clusters "
            "would share the gateway's privileges"
        )
    if entry.pw_uid < min_uid:
        raise UserNotAllowed(
            f"User {name!r} is a system account (uid {entry.pw_uid}, below min_user_uid "
            f"{min_uid}): clusters do not run as system accounts"
        )
    return entry


class ClusterConfig(Configurable):
    """Settings of one cluster, fixed when it is created (options may override them)."""

    scheduler_cmd = Command(
        [],
        help="Command that starts the scheduler; empty means distributed's, with `python`.",
        config=True,
    )
    worker_cmd = Command(
        [],
        help="Command that starts a worker; empty means distributed's, with `python`.",
        config=True,
    )
    python = Unicode(
        "",
        help="Python interpreter for scheduler and workers; empty means the gateway's own.",
        config=True,
    )
    environment = Dict(
        {}, help="Extra environment variables for the scheduler and workers.", config=True
    )
    worker_memory = MemoryLimit("2 G", help="Memory per worker (bytes or '2 G').", config=True)
    worker_cores = Integer(1, min=1, help="Cores per worker.", config=True)
    worker_threads = Integer(
        help="Threads per worker; defaults to worker_cores.", config=True, allow_none=True
    )
    scheduler_memory = MemoryLimit("2 G", help="Memory for the scheduler.", config=True)
    scheduler_cores = Integer(1, min=1, help="Cores for the scheduler.", config=True)
    adaptive_period = Float(
        3,
        min=0,
        help="Seconds between adaptive scaling decisions on the scheduler.",
        config=True,
    )
    idle_timeout = Float(
        0, min=0, help="Stop a cluster idle this many seconds (0 = never).", config=True
    )
    orphan_timeout = Float(
        0,
        min=0,
        help="Stop a cluster this many seconds after the client process that created it (with "
        "shutdown_on_close=True) died without shutting it down, e.g. a crashed kernel "
        "(0 = never). Clusters made with shutdown_on_close=False are not affected.",
        config=True,
    )
    dashboard_on_demand = Bool(
        True,
        help="Load a scheduler's dashboard at its first request rather than at its start: "
        "clusters are RUNNING sooner and idle schedulers use less CPU and memory; the first "
        "view of a dashboard waits for it (about a second). A clusters' environment with "
        "an older or the public dask-gateway's scheduler preload loads it at start anyway.",
        config=True,
    )
    max_lifetime = Float(
        0,
        min=0,
        help="Stop a cluster this many seconds after it was created (0 = never).",
        config=True,
    )
    cluster_max_memory = MemoryLimit(
        None,
        allow_none=True,
        help="Most memory a cluster may use (scheduler included).",
        config=True,
    )
    cluster_max_cores = Float(
        None,
        allow_none=True,
        help="Most cores a cluster may use (scheduler included).",
        config=True,
    )
    cluster_max_workers = Integer(
        None, allow_none=True, help="Most workers a cluster may have.", config=True
    )

    @default("worker_threads")
    def _default_worker_threads(self) -> int:
        return self.worker_cores

    @validate("worker_threads")
    def _check_worker_threads(self, proposal: Bunch) -> int | None:
        if proposal.value is not None and proposal.value < 1:
            raise TraitError("worker_threads must be >= 1")
        return proposal.value

    def effective_max_workers(self) -> int | None:
        """The worker limit that all three resource limits imply."""
        limits: list[float] = []  # math.inf: no limit
        if self.cluster_max_workers is not None:
            limits.append(self.cluster_max_workers)
        if self.cluster_max_memory is not None:
            if self.scheduler_memory > self.cluster_max_memory:
                raise ValueError(
                    f"Scheduler memory request of {format_bytes(self.scheduler_memory)} exceeds "
                    f"cluster memory limit of {format_bytes(self.cluster_max_memory)}"
                )
            free = self.cluster_max_memory - self.scheduler_memory
            limits.append(free // self.worker_memory if self.worker_memory else math.inf)
        if self.cluster_max_cores is not None:
            if self.scheduler_cores > self.cluster_max_cores:
                raise ValueError(
                    f"Scheduler cores request of {self.scheduler_cores} exceeds "
                    f"cluster cores limit of {self.cluster_max_cores}"
                )
            free = self.cluster_max_cores - self.scheduler_cores
            limits.append(free // self.worker_cores)
        finite = [int(x) for x in limits if x != math.inf]
        return min(finite) if finite else None

    def to_dict(self) -> dict:
        """Every setting, JSON-ready, with the worker limit resolved."""
        out = {name: getattr(self, name) for name in self.trait_names(config=True)}
        out["cluster_max_workers"] = self.effective_max_workers()
        return out


C = TypeVar("C", bound=ClusterConfig)


def config_of(config_class: type[C], cluster: Cluster) -> C:
    """The stored configuration of ``cluster`` as a ``config_class`` (a backend's own
    subclass, with its settings); keys it does not know are left out."""
    known = set(config_class.class_trait_names(config=True))
    return config_class(**{k: v for k, v in cluster.config.items() if k in known})


def default_cluster_options() -> Options:
    """What a fresh gateway offers: cores and memory bounded by this machine, one environment."""
    cores = os.cpu_count() or 1
    try:
        mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        mem_gib = 4.0

    def handler(options: Any) -> dict[str, Any]:
        return {
            "worker_cores": options.worker_cores,
            "worker_memory": int(options.worker_memory * 2**30),
            "python": options.python,
        }

    return Options(
        IntegerField("worker_cores", default=1, min=1, max=cores, label="Worker Cores"),
        FloatField(
            "worker_memory", default=1, min=0.25, max=round(mem_gib, 1), label="Worker Memory (GiB)"
        ),
        Select("environment", [("basic", sys.executable)], label="Environment", target="python"),
        handler=handler,
    )


@dataclass(frozen=True)
class LogChunk:
    """Bytes of a log file: ``data`` is the file's bytes from offset ``start``; ``end`` is
    the file's size when read (where the next read continues)."""

    data: bytes
    start: int
    end: int


#: What a backend calls to tell the gateway of an event: (cluster, kind, message, worker, detail).
EventSink = Callable[[Cluster, str, str, "Worker | None", str], None]


class Backend(LoggingConfigurable):
    """Starts, stops and checks schedulers and workers.

    Subclasses implement the ``start_*``/``stop_*``/``check_*`` coroutines. ``state`` dicts they
    return are stored with the object and handed back later (after a gateway restart too).
    """

    cluster_options = Union(
        [Instance(Options), AnyTrait()],
        help="Options users may set (an Options, or a callable(user) returning one; may be async).",
        config=True,
    )
    cluster_config_class = Type(
        ClusterConfig, klass=ClusterConfig, help="The ClusterConfig class to use.", config=True
    )
    api_url = Unicode(
        "",
        help="URL schedulers use to reach the gateway API; default: the public address + /api.",
        config=True,
    )

    min_user_uid = Integer(
        1000,
        help="Backends that run processes as each user's own account refuse users whose uid "
        "is below this (system accounts), and always root, with a 403 at cluster creation.",
        config=True,
    )

    @default("cluster_options")
    def _default_cluster_options(self) -> Options:
        return default_cluster_options()

    async def check_user(self, user: User) -> None:
        """Raise UserNotAllowed (a 403 for the user) if this backend must not run processes
        for ``user``; called before each cluster is created."""

    async def setup(self) -> None:
        """Prepare to run clusters (called once at gateway start)."""

    async def cleanup(self) -> None:
        """Release resources (called once at gateway stop)."""

    async def get_cluster_options(self, user: User) -> Options:
        opts = self.cluster_options
        if callable(opts) and not isinstance(opts, Options):
            opts = opts(user)
            if hasattr(opts, "__await__"):
                opts = await opts
        if not isinstance(opts, Options):
            raise TypeError(f"cluster_options must give an Options, got {type(opts).__name__}")
        return opts

    async def process_cluster_options(self, user: User, request: Any) -> tuple[dict, dict]:
        """Validate a user's options; returns (options as shown to users, config dict).

        Raises ValueError/TypeError/TraitError with a message meant for the user, and
        UserNotAllowed (see ``check_user``).
        """
        await self.check_user(user)
        opts = await self.get_cluster_options(user)
        options = opts.parse_options(request)
        overrides = await opts.get_configuration(options, user)
        config = self.cluster_config_class(parent=self, **overrides)
        return options, config.to_dict()

    def cluster_config(self, cluster: Cluster) -> ClusterConfig:
        """The stored configuration of ``cluster`` as a ClusterConfig object."""
        return config_of(self.cluster_config_class, cluster)

    # -- the interface ----------------------------------------------------
    async def start_cluster(self, cluster: Cluster) -> dict:
        """Start the scheduler; return the state needed to find and stop it later."""
        raise NotImplementedError

    async def stop_cluster(self, cluster: Cluster) -> None:
        """Stop the scheduler (and anything else of the cluster). Must be idempotent.

        Also called after ``start_cluster`` raised or was cancelled (a timeout, a stop
        requested meanwhile), with the state stored before (empty): stop what it began."""
        raise NotImplementedError

    async def check_clusters(self, clusters: list[Cluster]) -> list[bool]:
        """For each cluster, is its scheduler still alive?"""
        return [True] * len(clusters)

    async def start_worker(self, cluster: Cluster, worker: Worker) -> dict:
        """Start one worker; return the state needed to find and stop it later."""
        raise NotImplementedError

    async def stop_worker(self, cluster: Cluster, worker: Worker) -> None:
        """Stop one worker. Must be idempotent; also called after ``start_worker`` raised
        or was cancelled, with the state stored before (empty)."""
        raise NotImplementedError

    async def check_workers(self, cluster: Cluster, workers: list[Worker]) -> list[bool]:
        """For each worker, is it still alive?"""
        return [True] * len(workers)

    async def validate_addresses(self, cluster: Cluster, addresses: list[ReportedAddress]) -> None:
        """Confirm that the addresses of a cluster's first heartbeat are its scheduler's, or
        raise ``addresses.AddressRefused`` saying why (``AddressNotYetKnown``: not yet, e.g.
        a job still pending; the scheduler's next heartbeat is asked again).

        A heartbeat comes from code the cluster's owner controls, or from anyone who read
        the cluster's token, and the gateway then connects to these addresses (proxying
        dashboards and scheduler traffic, calling the scheduler's API): a backend accepts
        only what it can confirm, an address on the host the scheduler runs on, ideally a
        socket of the cluster's own process or user. Called once per cluster, with parsed IP
        addresses already free of wildcard, multicast, link-local and cloud metadata ones.
        This default confirms nothing more (backends written before it keep working);
        LocalBackend and SlurmBackend check.
        """

    def handoff_address(self, cluster: Cluster) -> str | None:
        """A unix socket address (``@name``: Linux abstract namespace) where the cluster's
        scheduler accepts client connections passed to it by the proxy, or None.

        Only for schedulers on the gateway's host: a handed-off connection no longer flows
        through the gateway, so it runs at direct speed and survives gateway restarts.
        """
        return None

    def handoff_uid(self, cluster: Cluster) -> int | None:
        """The uid whose listener may receive the cluster's client connections at
        ``handoff_address`` (besides root and the gateway's own): the proxy checks it, so
        that another user who binds the name after the scheduler died gets nothing."""
        return None

    def failure_details(self, cluster: Cluster) -> str:
        """A short text (e.g. the end of the scheduler log) explaining a failure; called
        after ``stop_cluster``, which should keep what this needs."""
        return ""

    def exit_reason(self, cluster: Cluster, worker: Worker | None = None) -> str:
        """Why a scheduler (or ``worker``) that a ``check_*`` call found dead ended, in one
        line (e.g. the cluster manager's job state); empty if unknown."""
        return ""

    # -- logs and events ----------------------------------------------------
    async def log_components(self, cluster: Cluster) -> list[str]:
        """The components whose logs ``read_log`` can read now: ``"scheduler"`` and
        ``"worker:NAME"`` (names from ``cluster.workers``, never from a user's directory)."""
        return []

    async def read_log(
        self, cluster: Cluster, component: str, offset: int | None, limit: int
    ) -> LogChunk | None:
        """At most ``limit`` bytes of a component's live log from ``offset`` (None: its last
        ``limit`` bytes), read as the user would (never following a link a user planted);
        None if it has no log."""
        return None

    #: Set by the gateway: where ``emit`` sends events (None: nowhere).
    event_sink: EventSink | None = None

    def emit(
        self,
        cluster: Cluster,
        kind: str,
        message: str,
        worker: Worker | None = None,
        detail: str = "",
    ) -> None:
        """Tell the gateway of an event it cannot see itself (e.g. a batch system's pending
        reason); recorded in the cluster's history for its user."""
        if self.event_sink is not None:
            self.event_sink(cluster, kind, message, worker, detail)


class DBBackendBase(Backend):
    """Settings of the state store and the reconciler.

    They live on the backend class so that config files written for the public dask-gateway
    (``c.DBBackendBase.db_url``, ``c.LocalBackend.stop_clusters_on_shutdown``...) keep working.
    """

    db_url = Unicode(
        "",
        help="SQLAlchemy URL of the state database; empty means a SQLite file in the data "
        "directory.",
        config=True,
    )
    db_encrypt_keys: List[str | bytes] = List(
        help="Keys encrypting secrets at rest (env DASK_GATEWAY_ENCRYPT_KEYS, ';'-separated). "
        "Empty with the default SQLite file: a key file is created next to it.",
        config=True,
    )
    db_debug = Bool(False, help="Log every SQL statement.", config=True)
    db_timeout = Float(
        10,
        min=0.1,
        help="Seconds one database operation may wait for a lock (SQLite) or a connection "
        "(PostgreSQL). Past it, an API request that writes answers 503 and the gateway retries "
        "its own writes with backoff; nothing waits forever on a locked or restarting database.",
        config=True,
    )
    db_cleanup_period = Float(600, help="Seconds between removals of old records.", config=True)
    db_cluster_max_age = Float(86400, help="Seconds a stopped cluster is remembered.", config=True)
    stop_clusters_on_shutdown = Bool(
        True, help="Stop every cluster when the gateway stops.", config=True
    )
    cluster_status_period = Float(
        30, help="Seconds between checks that schedulers are alive.", config=True
    )
    worker_status_period = Float(
        30, help="Seconds between checks that starting workers are alive.", config=True
    )
    status_check_timeout = Float(
        0,
        help="Seconds a backend's status check (e.g. squeue) may take before it is cancelled "
        "and asked again next period. 0: the larger of 10 s and the check's period.",
        config=True,
    )
    cluster_heartbeat_period = Float(15, help="Seconds between scheduler heartbeats.", config=True)
    cluster_heartbeat_timeout = Float(
        help="Seconds without a heartbeat before a cluster is failed (default 2 periods).",
        config=True,
    )
    cluster_start_timeout = Float(60, help="Seconds a cluster may take to start.", config=True)
    worker_start_timeout = Float(60, help="Seconds a worker may take to start.", config=True)
    check_timeouts_period = Float(
        help="Seconds between timeout checks (default: min(20, shortest timeout / 2)).",
        config=True,
    )
    worker_start_failure_limit = Integer(
        3, help="Consecutive worker start failures before the cluster is failed.", config=True
    )
    parallelism = Integer(20, help="How many clusters and workers change at once.", config=True)
    backoff_base_delay = Float(0.1, help="First retry delay after an error.", config=True)
    backoff_max_delay = Float(300, help="Longest retry delay after errors.", config=True)

    #: Interface schedulers and workers listen on: loopback for processes on this machine,
    #: "" (all interfaces) where they run on other hosts.
    bind_host = "127.0.0.1"

    def python(self, config: ClusterConfig) -> str:
        """The interpreter that runs the cluster's processes."""
        return config.python or sys.executable

    def scheduler_preload_env(self, config: ClusterConfig) -> dict[str, str]:
        """What the scheduler preload reads besides the API's address and token."""
        return {
            # Its dashboard answers only requests carrying the key the gateway's proxy adds.
            "DASK_GATEWAY_DASHBOARD_AUTH": "1",
            **({"DASK_GATEWAY_DASHBOARD_ON_DEMAND": "1"} if config.dashboard_on_demand else {}),
        }

    def scheduler_command(self, cluster: Cluster, config: ClusterConfig) -> list[str]:
        """The scheduler's command line: TLS, free ports, the gateway preload."""
        base = config.scheduler_cmd or [self.python(config), "-m", "distributed.cli.dask_scheduler"]
        host = self.bind_host
        return [
            *base,
            "--protocol",
            "tls",
            "--port",
            "0",
            *(["--host", host] if host else []),
            "--dashboard-address",
            f"{host}:0",
            "--preload",
            "dask_gateway.scheduler_preload",
            "--dg-api-address",
            f"{host}:0",
            "--dg-heartbeat-period",
            str(self.cluster_heartbeat_period),
            "--dg-adaptive-period",
            str(config.adaptive_period),
            "--dg-idle-timeout",
            str(config.idle_timeout),
            # Only when set: the public dask-gateway's preload does not know this option.
            *(["--dg-orphan-timeout", str(config.orphan_timeout)] if config.orphan_timeout else []),
        ]

    def worker_command(self, cluster: Cluster, config: ClusterConfig, worker: Worker) -> list[str]:
        """A worker's command line. Without a custom ``worker_cmd``: one process, no nanny
        (it would double start time and memory; the gateway replaces dead workers itself)."""
        if config.worker_cmd:
            base, extra = list(config.worker_cmd), ["--dashboard-address", f"{self.bind_host}:0"]
        else:
            base = [self.python(config), "-m", "distributed.cli.dask_worker"]
            extra = ["--no-nanny", "--no-dashboard"]
        return [
            *base,
            cluster.scheduler_address,
            *extra,
            "--name",
            worker.name,
            "--nthreads",
            str(config.worker_threads),
            "--memory-limit",
            str(config.worker_memory),
        ]

    @default("cluster_heartbeat_timeout")
    def _default_heartbeat_timeout(self) -> float:
        return 2 * self.cluster_heartbeat_period

    @default("check_timeouts_period")
    def _default_check_timeouts_period(self) -> float:
        shortest = min(
            self.cluster_heartbeat_timeout, self.cluster_start_timeout, self.worker_start_timeout
        )
        return min(20.0, shortest / 2)

    @default("db_encrypt_keys")
    def _default_encrypt_keys(self) -> list:
        env = os.environ.get("DASK_GATEWAY_ENCRYPT_KEYS", "")
        return [k for k in env.split(";") if k.strip()]
