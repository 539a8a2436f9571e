"""Schedulers and workers as processes on the gateway's machine."""

from __future__ import annotations

import asyncio
import hashlib
import os
import pwd
import re
import signal
import sys
import tempfile
import time
from typing import Any

from traitlets import Float, List, Type, Unicode, default

from ..addresses import (
    AddressRefused,
    ReportedAddress,
    is_local,
    listeners,
    listeners_at,
    local_addresses,
    processes_in,
    socket_inodes,
)
from ..logs import about
from ..models import Cluster, User, Worker
from .base import ClusterConfig, DBBackendBase, LogChunk, local_account
from .launchers import ForkServerLauncher, SubprocessLauncher, describe_exit, process_start_ticks
from .safe_files import ensure_private_dir, make_owned_tree, read_range, read_tail, remove_tree

__all__ = [
    "LocalBackend",
    "UnsafeLocalBackend",
    "LocalClusterConfig",
    "SubprocessLauncher",
    "ForkServerLauncher",
]


#: What a worker's name must look like to name its log file (the gateway's own are hex).
_WORKER_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}")


def worker_log_name(worker_name: str) -> str | None:
    """The file name of a worker's log in the cluster's ``logs`` directory, or None for a
    name that cannot be one."""
    return f"worker-{worker_name}.log" if _WORKER_NAME.fullmatch(worker_name) else None


class LocalClusterConfig(ClusterConfig):
    """ClusterConfig of the local backends."""


#: Seconds a status check waits for the end of a process it found dead to be told (the
#: fork server reaps it, then says how it ended, a moment after it is seen gone).
EXIT_STATUS_WAIT = 2.0


def kill_processes_in(directory: str) -> int:
    """SIGKILL every process whose working directory is ``directory`` or below it.

    Each scheduler and worker runs in a directory of its own, so this finds processes the
    gateway started but never recorded (it was killed between the two). Blocking: /proc.
    """
    killed = 0
    prefix = directory.rstrip("/") + "/"
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cwd = os.readlink(f"/proc/{entry}/cwd")
        except OSError:
            continue
        if cwd == directory or cwd.startswith(prefix):
            try:
                os.kill(int(entry), signal.SIGKILL)
                killed += 1
            except OSError:
                pass
    return killed


def is_alive(state: dict) -> bool:
    pid = state.get("pid")
    if not pid:
        return False
    ticks = process_start_ticks(pid)
    return ticks is not None and ticks == state.get("start_ticks", ticks)


class LocalBackend(DBBackendBase):
    """Runs each cluster's processes as the requesting user (the gateway must run as root and
    every user must exist on the machine)."""

    cluster_config_class = Type(
        LocalClusterConfig,
        klass=ClusterConfig,
        help="The ClusterConfig class to use.",
        config=True,
    )
    launcher_class = Type(
        ForkServerLauncher,
        klass=SubprocessLauncher,
        help="How processes are started: ForkServerLauncher forks them from a pre-started "
        "interpreter (fast); SubprocessLauncher starts a fresh interpreter each time.",
        config=True,
    )
    sigint_timeout = Float(10, help="Seconds to wait after SIGINT before SIGTERM.", config=True)
    sigterm_timeout = Float(5, help="Seconds to wait after SIGTERM before SIGKILL.", config=True)
    sigkill_timeout = Float(5, help="Seconds to wait after SIGKILL.", config=True)
    clusters_directory = Unicode(
        "",
        help="Where cluster working directories go (default: dask-gateway-clusters in "
        "the temporary directory). Created if missing; the gateway refuses to start if "
        "anyone but its own user (or root) owns it or may write to it or to a directory above "
        "it (sticky ones like /tmp excepted).",
        config=True,
    )
    inherited_environment = List(
        [
            "PATH",
            "PYTHONPATH",
            "CONDA_ROOT",
            "CONDA_DEFAULT_ENV",
            "VIRTUAL_ENV",
            "LANG",
            "LC_ALL",
            "HOME",
            "TMPDIR",
            "OPENBLAS_CORETYPE",
            "OPENBLAS_L2_SIZE",
        ],
        help="Environment variables passed from the gateway to the clusters (and all the "
        "fork servers get: list nothing secret).",
        config=True,
    )

    run_as_user = True

    @default("clusters_directory")
    def _default_clusters_directory(self) -> str:
        return os.path.join(tempfile.gettempdir(), "dask-gateway-clusters")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.launcher = self.launcher_class(environment=self._base_environment())
        self._log_tails: dict[str, str] = {}

    def _base_environment(self) -> dict[str, str]:
        """What every cluster gets from the gateway's environment (nothing secret: the
        launcher's fork servers run with only this)."""
        return {k: os.environ[k] for k in self.inherited_environment if k in os.environ}

    # -- paths and environment ------------------------------------------------
    def workdir(self, cluster: Cluster) -> str:
        return os.path.join(self.clusters_directory, cluster.name)

    def _owner(self, cluster: Cluster) -> tuple[int, int] | None:
        """(uid, gid) the cluster's processes and files belong to; None: the gateway's
        (blocking: NSS). Checked again here, not only at creation: a cluster of a user who
        has since become unfit (or of an older gateway) must not start either."""
        if not self.run_as_user:
            return None
        entry = local_account(cluster.username, self.min_user_uid)
        return entry.pw_uid, entry.pw_gid

    def _setup_workdir(self, cluster: Cluster, owner: tuple[int, int] | None) -> dict[str, str]:
        """A fresh working directory, its TLS files, logs/ and workers/, given to the user
        last (see make_owned_tree). Blocking."""
        ensure_private_dir(self.clusters_directory, "clusters directory")
        workdir = self.workdir(cluster)
        if os.path.lexists(workdir):  # left by a start that was interrupted
            remove_tree(workdir)
        make_owned_tree(
            workdir,
            {".certs/dask.crt": cluster.tls_cert, ".certs/dask.pem": cluster.tls_key},
            [".certs", "logs", "workers"],
            owner,
        )
        return {
            "workdir": workdir,
            "cert": os.path.join(workdir, ".certs", "dask.crt"),
            "key": os.path.join(workdir, ".certs", "dask.pem"),
            "logs": os.path.join(workdir, "logs"),
        }

    def _env(self, cluster: Cluster, config: ClusterConfig, role: str) -> dict[str, str]:
        workdir = self.workdir(cluster)
        cert = os.path.join(workdir, ".certs", "dask.crt")
        key = os.path.join(workdir, ".certs", "dask.pem")
        env = {k: os.environ[k] for k in self.inherited_environment if k in os.environ}
        env.update({str(k): str(v) for k, v in config.environment.items()})
        env.update(
            {
                "USER": cluster.username,
                "DASK_GATEWAY_API_URL": self.api_url,
                "DASK_GATEWAY_API_TOKEN": cluster.token,
                "DASK_GATEWAY_CLUSTER_NAME": cluster.name,
                "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "True",
                "DASK_DISTRIBUTED__COMM__TLS__CA_FILE": cert,
                f"DASK_DISTRIBUTED__COMM__TLS__{role.upper()}__CERT": cert,
                f"DASK_DISTRIBUTED__COMM__TLS__{role.upper()}__KEY": key,
            }
        )
        if role == "scheduler":  # only the scheduler takes connections from the proxy
            env["DASK_GATEWAY_HANDOFF_ADDRESS"] = self.handoff_address(cluster) or ""
            env.update(self.scheduler_preload_env(config))
        return env

    def handoff_uid(self, cluster: Cluster) -> int | None:
        return cluster.state.get("uid") if self.run_as_user else os.geteuid()

    def handoff_address(self, cluster: Cluster) -> str | None:
        """Derived from the cluster's secret token, so no one else can take the name first
        (the abstract namespace has no file permissions)."""
        if not sys.platform.startswith("linux"):
            return None
        digest = hashlib.sha256(b"handoff:" + cluster.token.encode()).hexdigest()[:40]
        return f"@dask-gateway-{digest}"

    # -- the backend interface ------------------------------------------------
    async def check_user(self, user: User) -> None:
        if self.run_as_user:
            await asyncio.get_running_loop().run_in_executor(
                None, local_account, user.name, self.min_user_uid
            )

    async def setup(self) -> None:
        # Everything the gateway creates goes in here: it must be the gateway's alone.
        await asyncio.get_running_loop().run_in_executor(
            None, ensure_private_dir, self.clusters_directory, "clusters directory"
        )
        # Start the default environment's interpreter now, not on the first user's request,
        # but in the background: the API answers meanwhile (a first launch waits for it).
        self._warm_up = asyncio.create_task(self.launcher.warm_up(sys.executable))

    async def cleanup(self) -> None:
        warm_up = getattr(self, "_warm_up", None)
        if warm_up is not None:
            await asyncio.gather(warm_up, return_exceptions=True)
        await self.launcher.close()

    async def start_cluster(self, cluster: Cluster) -> dict:
        config = self.cluster_config(cluster)
        loop = asyncio.get_running_loop()
        owner = await loop.run_in_executor(None, self._owner, cluster)
        await self._kill_unrecorded(self.workdir(cluster), cluster)
        paths = await loop.run_in_executor(None, self._setup_workdir, cluster, owner)
        state = await self.launcher.launch(
            self.scheduler_command(cluster, config),
            self._env(cluster, config, "scheduler"),
            paths["workdir"],
            os.path.join(paths["logs"], "scheduler.log"),
            cluster.username if self.run_as_user else None,
        )
        if owner is not None:
            state["uid"] = owner[0]  # for handoff_uid and reading the log safely
        return state

    async def stop_cluster(self, cluster: Cluster) -> None:
        await self._terminate(cluster.state, cluster)
        workdir = self.workdir(cluster)
        await self._kill_unrecorded(workdir, cluster)  # nothing of the cluster may outlive it

        def remove() -> None:
            # Keep the end of the scheduler's log for failure_details, then clean up.
            self._log_tails[cluster.name] = self._log_tail(cluster)
            while len(self._log_tails) > 100:  # only failures are asked for; forget the rest
                self._log_tails.pop(next(iter(self._log_tails)))
            try:
                remove_tree(workdir)
            except OSError as e:
                self.log.warning("Could not remove %s: %s", workdir, e, extra=about(cluster))

        await asyncio.get_running_loop().run_in_executor(None, remove)

    async def check_clusters(self, clusters: list[Cluster]) -> list[bool]:
        alive = [is_alive(c.state) for c in clusters]
        await self._learn_exits([c.state for c, a in zip(clusters, alive, strict=True) if not a])
        return alive

    async def _learn_exits(self, states: list[dict]) -> None:
        """Wait (briefly) until the launcher knows how the processes just found dead
        ended, so that ``exit_reason`` can say it."""
        if states:
            await asyncio.gather(*(self.launcher.wait_exit(s, EXIT_STATUS_WAIT) for s in states))

    async def start_worker(self, cluster: Cluster, worker: Worker) -> dict:
        config = self.cluster_config(cluster)
        workdir = self.workdir(cluster)
        # A directory per worker: its scratch space, and a way to find it without a pid.
        # The worker's process creates it (and opens its log) as the user: the cluster's
        # directory is the user's, whatever is in it may be a symlink by now.
        worker_dir = os.path.join(workdir, "workers", worker.name)
        await self._kill_unrecorded(worker_dir, cluster)
        return await self.launcher.launch(
            self.worker_command(cluster, config, worker),
            self._env(cluster, config, "worker"),
            worker_dir,
            os.path.join(workdir, "logs", f"worker-{worker.name}.log"),
            cluster.username if self.run_as_user else None,
        )

    async def stop_worker(self, cluster: Cluster, worker: Worker) -> None:
        await self._terminate(worker.state, cluster)

    async def check_workers(self, cluster: Cluster, workers: list[Worker]) -> list[bool]:
        alive = [is_alive(w.state) for w in workers]
        await self._learn_exits([w.state for w, a in zip(workers, alive, strict=True) if not a])
        return alive

    def exit_reason(self, cluster: Cluster, worker: Worker | None = None) -> str:
        """ "exited with code N" / "killed by signal N (NAME)", as the process's parent saw
        it; empty if it was started before this gateway (re)started, or has not ended."""
        code = self.launcher.exit_status((worker or cluster).state)
        return "" if code is None else describe_exit(code)

    async def validate_addresses(self, cluster: Cluster, addresses: list[ReportedAddress]) -> None:
        """Only sockets of the cluster's own processes on this host: listening at the
        address, held open by a process working in the cluster's directory (its scheduler),
        and, where processes run as users, created by the cluster's user. Anything else
        (the gateway's private port, a database, another user's dashboard) is refused."""
        loop = asyncio.get_running_loop()
        uid = None
        if self.run_as_user:
            entry = await loop.run_in_executor(None, pwd.getpwnam, cluster.username)
            uid = entry.pw_uid
        await loop.run_in_executor(None, self._confirm_sockets, cluster, addresses, uid)

    def _confirm_sockets(
        self, cluster: Cluster, addresses: list[ReportedAddress], uid: int | None
    ) -> None:
        """Blocking (/proc): raise AddressRefused unless each address is the cluster's."""
        local = local_addresses()
        table = listeners()
        held: set[int] | None = None
        for addr in addresses:
            refused = AddressRefused(
                f"{addr} is not a socket of this cluster's scheduler on the gateway's host"
            )
            if not is_local(addr.ip, local):
                raise refused
            if table is None:  # no /proc/net (not Linux): the host is all that can be told
                continue
            found = listeners_at(addr.ip, addr.port, table)
            if not found or (uid is not None and any(s.uid != uid for s in found)):
                raise refused
            if held is None:
                pids = set(processes_in(self.workdir(cluster)))
                if is_alive(cluster.state):
                    pids.add(cluster.state["pid"])
                held = set().union(*(socket_inodes(pid) for pid in pids))
            if any(s.inode not in held for s in found):
                raise refused

    def failure_details(self, cluster: Cluster) -> str:
        return self._log_tails.pop(cluster.name, "")

    # -- logs -----------------------------------------------------------------------
    async def log_components(self, cluster: Cluster) -> list[str]:
        """The scheduler (once started) and each worker started, by start time: from the
        gateway's records, never from a listing of the user's directory."""
        if not cluster.state:
            return []
        workers = sorted(
            (w for w in cluster.workers.values() if w.state and worker_log_name(w.name)),
            key=lambda w: (w.start_time, w.id or 0),
        )
        return ["scheduler", *(f"worker:{w.name}" for w in workers)]

    def _log_path(self, cluster: Cluster, component: str) -> str | None:
        """``logs/...`` of a component, relative to the cluster's directory; None for a
        component the gateway has no record of."""
        if component == "scheduler":
            return "logs/scheduler.log"
        kind, _, name = component.partition(":")
        if kind != "worker" or name not in cluster.workers:
            return None
        file = worker_log_name(name)
        return f"logs/{file}" if file else None

    async def read_log(
        self, cluster: Cluster, component: str, offset: int | None, limit: int
    ) -> LogChunk | None:
        """A log file in the cluster's directory, the user's: read as ``read_range`` reads
        (no symlink followed, only a regular file of the cluster's user), in an executor."""
        relpath = self._log_path(cluster, component)
        if relpath is None:
            return None

        def read() -> tuple[bytes, int] | None:
            owner = self._log_owner(cluster)
            if owner is None:
                return None
            return read_range(self.workdir(cluster), relpath, offset, limit, owner)

        got = await asyncio.get_running_loop().run_in_executor(None, read)
        if got is None:
            return None
        data, start = got
        return LogChunk(data, start, start + len(data))

    def _log_owner(self, cluster: Cluster) -> int | None:
        """The uid a log of the cluster must belong to (blocking: NSS); None if unknown."""
        if not self.run_as_user:
            return os.geteuid()
        owner = cluster.state.get("uid")
        if owner is None:
            try:
                owner = local_account(cluster.username, self.min_user_uid).pw_uid
            except Exception:
                return None
        return owner

    def _log_tail(self, cluster: Cluster) -> str:
        """The end of the scheduler's log: a file of the user's, read without following a
        symlink, and only if it is a regular file of theirs (blocking)."""
        owner = self._log_owner(cluster)
        if owner is None:
            return ""
        try:
            return read_tail(self.workdir(cluster), "logs/scheduler.log", 2000, owner)
        except OSError:
            return ""

    async def _kill_unrecorded(self, directory: str, cluster: Cluster) -> None:
        killed = await asyncio.get_running_loop().run_in_executor(
            None, kill_processes_in, directory
        )
        if killed:
            self.log.warning(
                "Killed %d unrecorded process(es) left in %s",
                killed,
                directory,
                extra=about(cluster),
            )

    async def _terminate(self, state: dict, cluster: Cluster) -> None:
        """SIGINT, then SIGTERM, then SIGKILL, waiting a while after each."""
        pid = state.get("pid")
        if not pid:  # never started (is_alive says so too)
            return
        for sig, timeout in (
            (signal.SIGINT, self.sigint_timeout),
            (signal.SIGTERM, self.sigterm_timeout),
            (signal.SIGKILL, self.sigkill_timeout),
        ):
            if not is_alive(state):
                return
            try:
                os.kill(pid, sig)
                if sig != signal.SIGKILL:
                    # A stopped process (SIGSTOP, a debugger) acts on SIGINT/SIGTERM only
                    # once continued; without this a frozen scheduler waits out both timeouts.
                    os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + timeout
            delay = 0.01
            while time.monotonic() < deadline:
                if not is_alive(state):
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.5)
        self.log.warning("Process %s did not exit after SIGKILL", pid, extra=about(cluster))


class UnsafeLocalBackend(LocalBackend):
    """Runs every cluster's processes as the gateway's own user (the default).

    Users are not isolated from each other or from the gateway: for one trusted team.
    """

    run_as_user = False
