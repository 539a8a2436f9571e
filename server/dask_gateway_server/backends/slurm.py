"""Clusters whose scheduler and workers are Slurm jobs, submitted as the requesting user.

The gateway (root, or a user allowed to ``sudo`` to the others) runs a small launcher as the
cluster's user (``slurm_launcher.py``): it writes the cluster's TLS key and API token to a
private staging directory and calls ``sbatch``. Secrets travel on the launcher's stdin, never
on a command line, in the environment or in the job script. Status comes from one ``squeue``
call per status period for every job the gateway knows; ``scancel`` stops jobs. What that
call shows of a waiting job (Slurm's pending reason, the node it then starts on) goes to the
cluster's history (``Backend.emit``); the jobs' output files in the staging directory are
the cluster's logs (``read_log``).
"""

from __future__ import annotations

import asyncio
import base64
import getpass
import ipaddress
import json
import math
import os
import pwd
import shlex
import shutil
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from traitlets import Bool, Enum, Float, List, Type, Unicode, default

from ..addresses import (
    AddressNotYetKnown,
    AddressRefused,
    IPAddress,
    ReportedAddress,
    is_local,
    listeners,
    listeners_at,
    local_addresses,
    socket_inodes,
    unmapped,
)
from ..logs import about
from ..models import Cluster, JobStatus, User, Worker
from .base import ClusterConfig, DBBackendBase, LogChunk, config_of, local_account
from .safe_files import read_user_file

__all__ = ["SlurmBackend", "SlurmClusterConfig"]

LAUNCHER_SOURCE = (Path(__file__).parent / "slurm_launcher.py").read_text()

#: Job states after which the job's processes are gone (or going). Anything else (PENDING,
#: RUNNING, CONFIGURING, SUSPENDED, REQUEUED...) is alive; a job squeue no longer lists is gone.
ENDED_STATES = frozenset(
    {
        "BOOT_FAIL",
        "CANCELLED",
        "COMPLETED",
        "COMPLETING",
        "DEADLINE",
        "FAILED",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "REVOKED",
        "SPECIAL_EXIT",
        "TIMEOUT",
    }
)
GONE = "GONE"


class JobState(NamedTuple):
    """A job as squeue lists it: its state, Slurm's reason (why it is pending, or how it
    ended) and its node(s) (empty while pending)."""

    state: str
    reason: str = ""
    node: str = ""


GONE_STATE = JobState(GONE)

#: squeue's reasons that say nothing (a job just submitted, not yet considered).
_NO_REASON = frozenset({"", "None", "(null)"})

#: What Slurm's most common pending reasons mean, for the user reading them.
PENDING_REASONS = {
    "Resources": "the nodes it may run on are busy; it starts when enough are free",
    "Priority": "jobs of higher priority are ahead of it in the queue",
    "BeginTime": "it was asked not to start before a later time",
    "Dependency": "it waits for another job to finish",
    "JobHeldUser": "it is held (scontrol hold); it waits to be released",
    "JobHeldAdmin": "an administrator holds it",
    "PartitionTimeLimit": "its time limit is over the partition's: it can never start there",
    "PartitionNodeLimit": "it asks for more nodes than the partition allows",
    "PartitionDown": "the partition is down",
    "PartitionInactive": "the partition is inactive",
    "ReqNodeNotAvail": "a node it needs is unavailable (down, drained or reserved)",
    "NodeDown": "a node it needs is down",
    "QOSMaxJobsPerUserLimit": "the user already runs as many jobs as the QOS allows",
    "QOSMaxCpuPerUserLimit": "the user already uses as many CPUs as the QOS allows",
    "AssocGrpCpuLimit": "the account already uses as many CPUs as it may",
    "AssocGrpMemLimit": "the account already uses as much memory as it may",
    "AssocMaxJobsLimit": "the account already runs as many jobs as it may",
    "Reservation": "it waits for its reservation to start",
    "Licenses": "it waits for licenses",
}

#: Seconds the launcher gets beyond ``command_timeout``: its own start and clean answer.
LAUNCHER_MARGIN = 5.0

#: Seconds the first of a burst of worker starts waits for the rest (see _Batcher.gather).
WORKER_GATHER = 0.02

#: Seconds the first of a burst of cancellations (a cluster's shutdown) waits for the rest.
CANCEL_GATHER = 0.01

#: scancel complaints that mean "nothing left to cancel".
_BENIGN_SCANCEL = ("already completing or completed", "Invalid job id", "Job has finished")

#: Runs ``python -m MODULE ARGS...`` (as ``python -c JOB_BOOTSTRAP MODULE ARGS...``) with a
#: process name Slurm can read. distributed retitles its processes ("dask scheduler [...]")
#: with setproctitle, which also sets the kernel's name of the calling thread (comm, the
#: second field of /proc/PID/stat) to the title's first 15 bytes. Slurm's
#: proctrack/linuxproc parses that file with ``sscanf("%ld %s %c %ld")``: a name with a space
#: fails the parse and the process is skipped, so scancel never signals it, the job stays
#: COMPLETING until the process ends by itself, and the node's resources stay held. Every
#: title is kept, in ps; only the thread name loses its spaces ("dask-scheduler").
#: Once the module is done (its main returned or called sys.exit, e.g. after SIGTERM from
#: scancel), the process runs its atexit handlers (logging's flush among them), flushes its
#: output and ends with os._exit: the interpreter's own teardown (joining idle pool threads,
#: freeing every module) takes a dask worker or scheduler most of a second more, and Slurm
#: counts a job ending until its last process is gone. (A worker's scratch directory left
#: behind is purged by the next worker on that node, as after any killed worker.)
#: Standard library only (setproctitle if the environment has it).
JOB_BOOTSTRAP = """\
import atexit, os, runpy, sys
try:
    import setproctitle as spt
except ImportError:
    spt = None
if spt is not None:
    def _title(title, _set=spt.setproctitle):
        _set(title)
        name = "-".join(title.split(" [")[0].split())[:15] or "python"
        try:
            spt.setthreadtitle(name)
        except AttributeError:  # setproctitle < 1.3
            import ctypes
            ctypes.CDLL(None).prctl(15, name.encode(), 0, 0, 0)  # PR_SET_NAME
    spt.setproctitle = _title
del sys.argv[0]
try:
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
    code = 0
except SystemExit as e:
    code = e.code
if code is not None and not isinstance(code, int):
    print(code, file=sys.stderr)
    code = 1
try:
    atexit._run_exitfuncs()
finally:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(code or 0)
"""


def named_for_slurm(cmd: list[str]) -> list[str]:
    """``cmd`` started through JOB_BOOTSTRAP when it is ``python -m MODULE ...``; other
    commands (a site's wrapper script) run as they are."""
    if len(cmd) >= 3 and cmd[1] == "-m":
        return [cmd[0], "-c", JOB_BOOTSTRAP, *cmd[2:]]
    return list(cmd)


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL ``proc`` and everything in its process group (it leads one)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:  # gone already, or not ours to kill (sudo): the process at least
        try:
            proc.kill()
        except ProcessLookupError:
            pass


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


class SlurmClusterConfig(ClusterConfig):
    """ClusterConfig of the Slurm backend: where and how the jobs are submitted."""

    partition = Unicode(
        "", help="Slurm partition of the jobs (empty: Slurm's default).", config=True
    )
    qos = Unicode("", help="Slurm QOS of the jobs (empty: the default).", config=True)
    account = Unicode(
        "", help="Slurm account charged for the jobs (empty: the user's default).", config=True
    )
    scheduler_setup = Unicode(
        "",
        help="Shell lines the scheduler's job runs before the scheduler (e.g. activating "
        "an environment).",
        config=True,
    )
    worker_setup = Unicode(
        "", help="Shell lines each worker's job runs before the worker.", config=True
    )
    staging_directory = Unicode(
        "{home}/.dask-gateway/",
        help="Where each cluster's private files and job logs go, as the user; '{home}' and "
        "'{username}' are filled in. Must be visible on every node (a shared file system).",
        config=True,
    )
    scheduler_time_limit = Unicode(
        "",
        help="Slurm time limit of the scheduler's job, e.g. '8:00:00' (empty: the "
        "partition's default).",
        config=True,
    )
    worker_time_limit = Unicode(
        "",
        help="Slurm time limit of each worker's job (empty: the partition's default).",
        config=True,
    )
    sbatch_options = List(
        Unicode(),
        help="Extra sbatch options for every job, e.g. ['--constraint=gpu'].",
        config=True,
    )
    scheduler_sbatch_options = List(
        Unicode(), help="Extra sbatch options for the scheduler's job.", config=True
    )
    worker_sbatch_options = List(
        Unicode(), help="Extra sbatch options for each worker's job.", config=True
    )


class _Batcher:
    """Calls ``fn(items)`` once for all items that arrive while a previous call runs.

    A burst of requests (twenty workers to start) becomes one call, with no added delay for a
    lone request (but ``gather``). ``fn`` returns one result per item: a value, or an exception to raise.
    Callers that give up (cancelled) don't stop the call; ``on_abandoned`` gets their results.
    """

    def __init__(
        self,
        fn: Callable[[list], Awaitable[list]],
        on_abandoned: Callable[[Any], object] | None = None,
        gather: float = 0.0,
    ) -> None:
        self.fn = fn
        self.on_abandoned = on_abandoned
        #: Seconds a first request waits for more (while more keep coming, up to 5 times
        #: that): a burst the reconciler sends over several store writes is one call.
        self.gather = gather
        self.pending: list[tuple[Any, asyncio.Future]] = []
        self.task: asyncio.Task | None = None

    async def submit(self, item: Any) -> Any:
        fut = asyncio.get_running_loop().create_future()
        self.pending.append((item, fut))
        if self.task is None or self.task.done():
            self.task = asyncio.ensure_future(self._drain())
        return await fut

    async def _drain(self) -> None:
        if self.gather > 0:
            deadline = time.monotonic() + 5 * self.gather
            seen = -1
            while len(self.pending) != seen and time.monotonic() < deadline:
                seen = len(self.pending)
                await asyncio.sleep(self.gather)
        while self.pending:
            batch, self.pending = self.pending, []
            try:
                results = await self.fn([item for item, _ in batch])
            except Exception as e:
                results = [e] * len(batch)
            for (_, fut), result in zip(batch, results, strict=False):
                if fut.cancelled():
                    if self.on_abandoned and not isinstance(result, BaseException):
                        self.on_abandoned(result)
                elif isinstance(result, BaseException):
                    fut.set_exception(result)
                else:
                    fut.set_result(result)


class SlurmBackend(DBBackendBase):
    """Runs each cluster's scheduler and workers as Slurm jobs of the requesting user."""

    bind_host = ""  # jobs run on other nodes: listen on the node's interfaces

    cluster_config_class = Type(
        SlurmClusterConfig,
        klass=SlurmClusterConfig,
        help="The ClusterConfig class to use.",
        config=True,
    )
    sbatch = Unicode("sbatch", help="The sbatch command (name or path).", config=True)
    squeue = Unicode("squeue", help="The squeue command (name or path).", config=True)
    scancel = Unicode("scancel", help="The scancel command (name or path).", config=True)
    sinfo = Unicode("sinfo", help="The sinfo command (name or path).", config=True)
    scontrol = Unicode(
        "scontrol",
        help="The scontrol command (name or path); 'scontrol listpids' tells "
        "the processes of a scheduler's job when it runs on the gateway's own host.",
        config=True,
    )
    user_switch = Enum(
        ["auto", "runuser", "sudo", "none"],
        "auto",
        help="How the gateway acts as the cluster's user: 'runuser' (the gateway runs as "
        "root), 'sudo' (sudo -nHu; the gateway's user needs a sudoers rule), 'none' (every "
        "job runs as the gateway's own user), 'auto': runuser as root, else sudo.",
        config=True,
    )
    launcher_python = Unicode(
        help="Python 3 (standard library only) that runs the launcher as the user; default: "
        "the gateway's interpreter. Every user must be able to execute it.",
        config=True,
    )
    inherited_environment = List(
        ["PATH", "LANG", "LC_ALL", "TMPDIR", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"],
        help="Environment variables passed from the gateway to the jobs.",
        config=True,
    )
    job_name_prefix = Unicode(
        "dask-gateway",
        help="Jobs are named '<prefix>-scheduler' and '<prefix>-worker'; their "
        "comment is the cluster's name.",
        config=True,
    )
    command_timeout = Float(
        60,
        help="Seconds a Slurm command (sbatch, squeue, scancel, sinfo) may take before "
        "it is killed and the call fails (a cluster whose sbatch times out fails with "
        "'sbatch ... timed out'). The launcher that runs sbatch gets 5 s more.",
        config=True,
    )
    completing_wait = Float(
        3,
        help="Seconds to wait for the final state of a job found ending (COMPLETING), "
        "to report why it ended.",
        config=True,
    )
    partition_cache_ttl = Float(
        60,
        help="Seconds the list of Slurm partitions (to check options) is reused.",
        config=True,
    )

    worker_job_arrays = Bool(
        True,
        help="Submit workers started together (a scale-up) as one Slurm job array: one "
        "sbatch, and Slurm starts all the tasks in one scheduling pass. Each task is still "
        "its own job to Slurm (its own resources, cancelled on its own). False: one job each.",
        config=True,
    )

    @default("launcher_python")
    def _default_launcher_python(self) -> str:
        return sys.executable

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._tracked: set[str] = set()  # job ids squeue is asked about
        self._states: dict[str, JobState] = {}
        self._polled: set[str] = set()
        self._poll_time = -math.inf
        self._poll_lock = asyncio.Lock()
        self._ended: dict[str, str] = {}  # job id -> why it ended, in words
        self._pending: dict[str, str] = {}  # job id -> Slurm's reason, while it waits
        self._told: dict[str, str] = {}  # job id -> the pending reason last emitted
        self._details: dict[str, str] = {}  # cluster name -> failure details
        self._worker_batchers: dict[str, _Batcher] = {}
        self._cancel_batchers: dict[str, _Batcher] = {}
        self._partitions: tuple[float, set[str]] | None = None

    async def setup(self) -> None:
        """Warn about addresses that work for local processes but not for Slurm jobs."""
        host = urlsplit(self.api_url).hostname or ""
        if host in ("127.0.0.1", "localhost", "::1"):
            self.log.warning(
                "Schedulers reach the gateway at %s, a loopback address: that works only "
                "when Slurm runs jobs on this machine. Set c.DaskGateway.address (or "
                "c.SlurmBackend.api_url) to an address the compute nodes can reach.",
                self.api_url,
            )
        address = getattr(self.parent, "address", "")
        if address.endswith(":0"):
            self.log.warning(
                "c.DaskGateway.address %r has no fixed port: after a gateway restart, running "
                "schedulers cannot find it again. Give it a fixed port.",
                address,
            )

    # -- running commands -------------------------------------------------------
    async def _run(
        self,
        cmd: list[str],
        input: bytes | None = None,
        env: dict | None = None,
        what: str = "",
        timeout: float | None = None,
    ) -> tuple[int, str, str]:
        """Run ``cmd`` without blocking the event loop; returns (returncode, stdout, stderr).

        A command that outlives ``timeout`` (default ``command_timeout``) is killed with its
        whole process group (a hung sbatch under runuser too) and raises RuntimeError naming
        ``what`` was run: a hung Slurm never holds a cluster, or the gateway, forever.
        """
        timeout = self.command_timeout if timeout is None else timeout
        try:
            proc = await asyncio.create_subprocess_exec(
                *cmd,
                stdin=asyncio.subprocess.PIPE if input is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env if env is not None else self._command_env(),
                start_new_session=True,  # its own process group, to kill it all at once
            )
        except FileNotFoundError:
            raise RuntimeError(f"Command not found: {cmd[0]} (is Slurm installed here?)") from None
        try:
            out, err = await asyncio.wait_for(proc.communicate(input), timeout)
        except asyncio.TimeoutError:
            _kill_group(proc)
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except asyncio.TimeoutError:
                pass
            what = what or os.path.basename(cmd[0])
            self.log.warning("%s timed out after %g s; killed it", what, timeout)
            raise RuntimeError(f"{what} timed out after {timeout:g} s") from None
        except asyncio.CancelledError:
            _kill_group(proc)
            raise
        code = proc.returncode
        assert code is not None  # communicate() waited for the exit
        return code, out.decode(errors="replace"), err.decode(errors="replace")

    def _command_env(self) -> dict[str, str]:
        keep = ("PATH", "LANG", "LC_ALL", "SLURM_CONF")
        return {k: os.environ[k] for k in keep if k in os.environ}

    def _user_prefix(self, username: str) -> list[str]:
        """The command prefix that runs a command as ``username``."""
        mode = self.user_switch
        if mode == "none" or username == getpass.getuser():
            return []
        if mode == "auto":
            mode = "runuser" if os.geteuid() == 0 and shutil.which("runuser") else "sudo"
        if mode == "runuser":
            return [shutil.which("runuser") or "runuser", "-u", username, "--"]
        return ["sudo", "-nHu", username, "--"]

    async def _launch(self, username: str, request: dict) -> dict:
        """Run the launcher as ``username`` with ``request``; returns its answer."""
        cmd = [
            *self._user_prefix(username),
            self.launcher_python,
            "-I",
            "-S",
            "-c",
            LAUNCHER_SOURCE,
        ]
        # The launcher stops a hung sbatch itself after command_timeout and says so; the
        # margin covers its own start, and a launcher hung elsewhere is killed past it.
        request = {**request, "timeout": self.command_timeout}
        what = f"the Slurm launcher ({request['action']}, as {username})"
        code, out, err = await self._run(
            cmd,
            input=json.dumps(request).encode(),
            what=what,
            timeout=self.command_timeout + LAUNCHER_MARGIN,
        )
        try:
            answer = json.loads(out)
        except ValueError:
            detail = err.strip() or out.strip() or f"exit code {code}"
            raise RuntimeError(f"The Slurm launcher failed for user {username}: {detail}") from None
        if "error" in answer:
            raise RuntimeError(answer["error"])
        return answer

    # -- what the jobs are ------------------------------------------------------------
    def cluster_config(self, cluster: Cluster) -> SlurmClusterConfig:
        """The stored configuration of ``cluster``, with its Slurm settings."""
        return config_of(self.cluster_config_class, cluster)

    async def _staging_dir(self, cluster: Cluster, config: SlurmClusterConfig) -> str:
        loop = asyncio.get_running_loop()
        if self._user_prefix(cluster.username):
            entry = await loop.run_in_executor(None, pwd.getpwnam, cluster.username)
        else:  # jobs run as the gateway's user
            entry = await loop.run_in_executor(None, pwd.getpwuid, os.getuid())
        base = config.staging_directory.format(home=entry.pw_dir, username=cluster.username)
        return os.path.join(base, cluster.name)

    def _job_env(self) -> dict[str, str]:
        """The environment of sbatch (and so of the jobs): ``inherited_environment``, and
        SLURM_CONF if the gateway has one, so that sbatch submits to the Slurm that squeue
        and scancel ask (a site's, or a test's, non-default configuration)."""
        keep = [*self.inherited_environment, "SLURM_CONF"]
        return {k: os.environ[k] for k in keep if k in os.environ}

    def _exports(
        self, cluster: Cluster, config: ClusterConfig, staging: str, role: str
    ) -> dict[str, str]:
        """Variables the job script exports: paths to secrets, never the secrets."""
        cert = os.path.join(staging, "dask.crt")
        key = os.path.join(staging, "dask.pem")
        env = {str(k): str(v) for k, v in config.environment.items()}
        env.update(
            {
                "DASK_GATEWAY_CLUSTER_NAME": cluster.name,
                "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "True",
                "DASK_DISTRIBUTED__COMM__TLS__CA_FILE": cert,
                f"DASK_DISTRIBUTED__COMM__TLS__{role.upper()}__CERT": cert,
                f"DASK_DISTRIBUTED__COMM__TLS__{role.upper()}__KEY": key,
            }
        )
        if role == "scheduler":
            env["DASK_GATEWAY_API_URL"] = self.api_url
            # A value holding '/' is a file the preload reads the token from.
            env["DASK_GATEWAY_API_TOKEN"] = os.path.join(staging, "api-token")
            # Its dashboard listens on every interface of the node: the key guards it.
            env.update(self.scheduler_preload_env(config))
        return env

    def _script(self, exports: dict[str, str], setup: str, cmd: list[str]) -> str:
        return self._job_script(exports, setup, ["exec " + shlex.join(cmd)])

    def _array_script(
        self, exports: dict[str, str], setup: str, commands: list[list[str]], logs: list[str]
    ) -> str:
        """The script of a job array: task i writes its output to ``logs[i]`` and runs
        ``commands[i]`` (after the shared exports and setup)."""
        redirect = ['case "${SLURM_ARRAY_TASK_ID:-}" in']
        redirect += [f"{i}) exec >>{shlex.quote(log)} 2>&1 ;;" for i, log in enumerate(logs)]
        redirect += ["*) echo 'not a task of this job array' >&2; exit 1 ;;", "esac"]
        run = ['case "$SLURM_ARRAY_TASK_ID" in']
        run += [f"{i}) exec {shlex.join(cmd)} ;;" for i, cmd in enumerate(commands)]
        run.append("esac")
        return self._job_script(exports, setup, run, before_setup=redirect)

    def _job_script(
        self,
        exports: dict[str, str],
        setup: str,
        run: list[str],
        before_setup: list[str] | None = None,
    ) -> str:
        """A batch script: the exports, ``before_setup``, the user's setup, then ``run``."""
        lines = ["#!/bin/bash", "# Submitted by dask-gateway."]
        lines += [f"export {k}={shlex.quote(v)}" for k, v in exports.items()]
        lines += before_setup or []
        if setup.strip():
            lines.append(setup.rstrip())
        lines += run
        return "\n".join(lines) + "\n"

    def _sbatch_args(
        self,
        cluster: Cluster,
        config: SlurmClusterConfig,
        role: str,
        staging: str,
        log_name: str | None,
    ) -> list[str]:
        """sbatch's options for a job of ``role``; its output goes to ``log_name`` in the
        staging directory (None: nowhere, the job script redirects it)."""
        if role == "scheduler":
            cores, memory = config.scheduler_cores, config.scheduler_memory
            time_limit, extra = config.scheduler_time_limit, config.scheduler_sbatch_options
        else:
            cores, memory = config.worker_cores, config.worker_memory
            time_limit, extra = config.worker_time_limit, config.worker_sbatch_options
        args = [
            f"--job-name={self.job_name_prefix}-{role}",
            f"--comment={cluster.name}",
            f"--chdir={staging}",
            f"--output={os.path.join(staging, log_name) if log_name else '/dev/null'}",
            "--nodes=1",
            "--ntasks=1",
            f"--cpus-per-task={cores}",
            f"--mem={max(1, math.ceil(memory / 2**20))}M",
            # A job whose node fails ends (NODE_FAIL) instead of starting again later,
            # elsewhere: the gateway replaces a lost worker itself, and a scheduler that
            # moved would have new addresses its cluster cannot take.
            "--no-requeue",
        ]
        for flag, value in (
            ("--partition", config.partition),
            ("--qos", config.qos),
            ("--account", config.account),
            ("--time", time_limit),
        ):
            if value:
                args.append(f"{flag}={value}")
        return args + list(config.sbatch_options) + list(extra)

    # -- job status ---------------------------------------------------------------
    @property
    def _poll_max_age(self) -> float:
        # Half the shortest period: the reconciler's checks of one period share one squeue.
        return max(0.05, min(self.cluster_status_period, self.worker_status_period) / 2)

    async def _job_states(self, job_ids: list[str]) -> dict[str, JobState]:
        """State, reason and node of each job; one squeue call answers every caller of a
        period."""
        job_ids = [j for j in job_ids if j]
        self._tracked.update(job_ids)
        async with self._poll_lock:
            fresh = time.monotonic() - self._poll_time < self._poll_max_age
            if not (fresh and self._polled.issuperset(job_ids)):
                await self._poll()
            ending = [
                j
                for j in job_ids
                if self._states.get(j, GONE_STATE).state == "COMPLETING" and j not in self._ended
            ]
            if ending:
                await self._settle(ending)
        return {j: self._states.get(j, GONE_STATE) for j in job_ids}

    async def _squeue(self, ids: list[str]) -> dict[str, JobState]:
        """One squeue call: job id -> its state; ids it doesn't list are gone."""
        states: dict[str, JobState] = {}
        if not ids:
            return states
        self.log.debug("squeue: asking about %d jobs", len(ids))
        code, out, err = await self._run(
            [
                self.squeue,
                "--noheader",
                "--states=all",
                "--array",  # a pending job array's tasks one by one, not "ID_[0-9]"
                "--jobs=" + ",".join(ids),
                "--format=%i|%T|%r|%N",
            ],
            what="squeue",
        )
        # squeue fails when *every* id asked about is unknown: all of them are gone.
        if code != 0 and "Invalid job id" not in err:
            raise RuntimeError(f"squeue failed: {err.strip() or out.strip()}")
        for line in out.splitlines():
            parts = line.strip().split("|")
            if len(parts) == 4:
                states[parts[0]] = JobState(*parts[1:])
        return states

    async def _poll(self) -> None:
        ids = sorted(self._tracked, key=lambda j: (len(j), j))
        started = time.monotonic()
        self._states = await self._squeue(ids)
        self._polled = set(ids)
        self._poll_time = started

    async def _settle(self, ids: list[str]) -> None:
        """Jobs just found ending (COMPLETING) get their final state (CANCELLED, FAILED,
        TIMEOUT...) within a moment: wait for it, briefly, since it is the reason users read.
        Only on job ends, and one squeue for all of them."""
        deadline = time.monotonic() + self.completing_wait
        while ids and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            states = await self._squeue(ids)
            for j in ids:
                self._states[j] = states.get(j, GONE_STATE)
            ids = [j for j in ids if self._states[j].state == "COMPLETING"]

    def _alive(self, job_id: str, state: JobState, what: str = "", cluster: str = "") -> bool:
        """Whether the job still runs; remember why it ended if it did (and log it with
        ``what``: the reconciler logs what ``check_*`` finds itself, with ``exit_reason``)."""
        name, reason = state.state, state.reason
        if name not in ENDED_STATES and name != GONE:
            return True
        if job_id not in self._ended:
            if name == GONE:
                why = f"Slurm job {job_id} is no longer known to Slurm"
            elif name == "COMPLETING":  # the final state (CANCELLED, FAILED...) comes later
                why = f"Slurm job {job_id} COMPLETING (its processes are ending)"
            else:
                why = f"Slurm job {job_id} {name}"
                if reason and reason not in ("None", "(null)"):
                    why += f" ({reason})"
            self._ended[job_id] = why
            if what:
                self.log.warning(
                    "%s ended: %s", what, why, extra=about(cluster) if cluster else None
                )
        return False

    async def check_clusters(self, clusters: list[Cluster]) -> list[bool]:
        ids = [c.state.get("job_id", "") for c in clusters]
        states = await self._job_states(ids)
        for c, j in zip(clusters, ids, strict=True):
            if j:
                self._observe(c, None, j, states[j])
        return [bool(j) and self._alive(j, states[j]) for j in ids]

    async def check_workers(self, cluster: Cluster, workers: list[Worker]) -> list[bool]:
        ids = [w.state.get("job_id", "") for w in workers]
        states = await self._job_states(ids)
        for w, j in zip(workers, ids, strict=True):
            if j:
                self._observe(cluster, w, j, states[j])
        return [bool(j) and self._alive(j, states[j]) for j in ids]

    def _observe(self, cluster: Cluster, worker: Worker | None, job_id: str, job: JobState) -> None:
        """Tell the cluster's history what Slurm does with a job the gateway waits for: a
        new pending reason (one event per change), and, for a job that was seen waiting,
        the node it then started on."""
        told = self._told.get(job_id)
        if job.state == "PENDING":
            if job.reason in _NO_REASON:
                return
            self._pending[job_id] = job.reason
            if told == job.reason:
                return
            self._told[job_id] = job.reason
            self.emit(
                cluster,
                "worker-queued" if worker else "queued",
                f"Waiting in Slurm's queue: {job.reason}",
                worker=worker,
                detail=PENDING_REASONS.get(job.reason, ""),
            )
            return
        self._pending.pop(job_id, None)
        if told and job.state == "RUNNING":
            self._told[job_id] = ""  # left the queue (a requeued job may wait again)
            node = "" if job.node in _NO_REASON else f" on node {job.node}"
            if worker is None:
                self.emit(cluster, "scheduler-started", f"Slurm job {job_id} started{node}")
            else:
                self.emit(
                    cluster,
                    "worker-started",
                    f"Worker {worker.name}'s Slurm job {job_id} started{node}",
                    worker=worker,
                )

    def exit_reason(self, cluster: Cluster, worker: Worker | None = None) -> str:
        """How the job ended, as Slurm says; for one that never left the queue (a start
        timeout), Slurm's last reason for keeping it there."""
        job_id = (worker or cluster).state.get("job_id", "")
        return self._ended.get(job_id) or self._pending_reason(job_id)

    def _pending_reason(self, job_id: str) -> str:
        reason = self._pending.get(job_id, "")
        return f"Slurm kept it pending: {reason}" if reason else ""

    # -- logs -------------------------------------------------------------------------
    async def log_components(self, cluster: Cluster) -> list[str]:
        """The scheduler (once submitted) and each worker submitted, by start time: from the
        gateway's records, never from a listing of the user's staging directory."""
        if not cluster.state.get("job_id") or not cluster.state.get("staging_dir"):
            return []
        workers = sorted(
            (w for w in cluster.workers.values() if w.state.get("job_id")),
            key=lambda w: (w.start_time, w.id or 0),
        )
        return ["scheduler", *(f"worker:{w.name}" for w in workers)]

    @staticmethod
    def _log_name(cluster: Cluster, component: str) -> str | None:
        """The job output file of a component (``--output`` of its job); None for one the
        gateway has no record of."""
        if component == "scheduler":
            return "scheduler.log"
        kind, _, name = component.partition(":")
        if kind != "worker" or name not in cluster.workers or "/" in name:
            return None
        return f"worker-{name}.log"

    async def read_log(
        self, cluster: Cluster, component: str, offset: int | None, limit: int
    ) -> LogChunk | None:
        """A job's output file in the cluster's staging directory (the user's, on a shared
        file system): only a regular file of the jobs' user, reached without following a
        link the user could plant (``read_user_file``), in an executor."""
        name = self._log_name(cluster, component)
        staging = cluster.state.get("staging_dir")
        if name is None or not staging:
            return None

        def read() -> tuple[LogChunk | None, bool]:
            """(the chunk, whether only the user can read it)."""
            try:
                owner = self._jobs_uid(cluster.username)
            except KeyError:  # the account is gone
                return None, False
            if os.geteuid() not in (0, owner):
                return None, True
            try:
                return read_user_file(staging, name, offset, limit, owner, {0, os.geteuid()}), False
            except PermissionError:
                return None, True

        chunk, as_user = await asyncio.get_running_loop().run_in_executor(None, read)
        if as_user:
            chunk = await self._read_as_user(cluster, staging, name, offset, limit)
        return chunk

    async def _read_as_user(
        self, cluster: Cluster, staging: str, name: str, offset: int | None, limit: int
    ) -> LogChunk | None:
        """A job output file read by the launcher, as the user (where the gateway cannot
        read the user's files itself)."""
        request = {
            "action": "read",
            "staging_dir": staging,
            "name": name,
            "offset": offset,
            "limit": limit,
        }
        try:
            answer = await self._launch(cluster.username, request)
            if answer.get("missing"):
                return None
            data = base64.b64decode(answer["data"])
            start = max(0, int(answer["start"]))
        except Exception as e:  # the user's launcher: a failure is no log, never an error
            self.log.debug("Could not read %s as %s: %s", name, cluster.username, e)
            return None
        return LogChunk(data[:limit], start, start + len(data[:limit]))

    def _jobs_uid(self, username: str) -> int:
        """The uid the cluster's jobs run as (blocking: NSS)."""
        if self._user_prefix(username):
            return pwd.getpwnam(username).pw_uid
        return os.getuid()

    # -- where a scheduler may be ------------------------------------------------------
    async def validate_addresses(self, cluster: Cluster, addresses: list[ReportedAddress]) -> None:
        """Only addresses of the node the scheduler's job runs on, as Slurm says (squeue's
        batch host; sinfo's address and host name of that node). Where that
        node is the gateway's own host, the socket behind each address must also be one
        the job's processes hold, as the job's user. Loopback and the gateway host's own
        addresses are refused for jobs on other nodes."""
        job_id = cluster.state.get("job_id")
        if not job_id:
            raise AddressNotYetKnown("the scheduler's Slurm job is not submitted yet")
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        uid = await loop.run_in_executor(None, self._jobs_uid, cluster.username)
        node = await self._job_node(job_id, uid)
        node_ips, here = await self._node_addresses(node)
        pids: set[int] | None = None
        if here and (uid == os.getuid() or os.geteuid() == 0):
            pids = await self._job_pids(job_id)
        await loop.run_in_executor(
            None, self._confirm_addresses, addresses, job_id, node, node_ips, here, uid, pids
        )
        self.log.info(
            "Confirmed the scheduler's addresses: Slurm job %s on node %s (%.0f ms)",
            job_id,
            node,
            1000 * (time.monotonic() - started),
            extra=about(cluster),
        )

    async def _job_pids(self, job_id: str) -> set[int]:
        """The processes of a job running on this host (``scontrol listpids``: Slurm's own
        tracking; a scheduler's environment and command line may be rewritten)."""
        try:
            code, out, err = await self._run(
                [self.scontrol, "listpids", job_id], what="scontrol listpids"
            )
        except RuntimeError as e:
            raise AddressNotYetKnown(str(e)) from None
        if code != 0:
            raise AddressNotYetKnown(
                f"scontrol listpids {job_id} failed: {err.strip() or out.strip()}"
            )
        return {
            int(line.split()[0])
            for line in out.splitlines()[1:]
            if line.split() and line.split()[0].isdigit()
        }

    async def _job_node(self, job_id: str, uid: int) -> str:
        """The node running the job's batch script (the scheduler); raises
        AddressNotYetKnown while the job does not run, and AddressRefused if the job is not
        ``uid``'s: its id came from the launcher, a process of the user, who can change what
        it answers. (squeue's fixed fields, not scontrol's text, where a user may rename
        their job to anything.)"""
        try:
            code, out, err = await self._run(
                [
                    self.squeue,
                    "--noheader",
                    "--states=all",
                    f"--jobs={job_id}",
                    "--format=%i|%T|%B|%U",
                ],
                what="squeue",
            )
        except RuntimeError as e:  # squeue timed out or is missing
            raise AddressNotYetKnown(str(e)) from None
        rows = [line.strip().split("|") for line in out.splitlines()]
        rows = [r for r in rows if len(r) == 4 and r[0] == job_id]
        if code != 0 or not rows:
            raise AddressNotYetKnown(
                f"Slurm does not list the scheduler's job {job_id}: {err.strip() or out.strip()}"
            )
        _, state, node, owner = rows[0]
        if owner != str(uid):
            raise AddressRefused(
                f"Slurm job {job_id} is not a job of the cluster's user (uid {uid}): "
                f"Slurm says it is uid {owner}'s"
            )
        if state != "RUNNING" or not node or node in ("n/a", "(null)"):
            raise AddressNotYetKnown(f"the scheduler's Slurm job {job_id} is not running ({state})")
        return node

    async def _node_addresses(self, node: str) -> tuple[set[IPAddress], bool]:
        """The IP addresses of a Slurm node (its NodeAddr and NodeHostName resolved), and
        whether it is the gateway's own host."""
        try:
            _, out, _ = await self._run(
                [self.sinfo, "--noheader", "--Node", f"--nodes={node}", "--format=%N|%n|%o"],
                what="sinfo",
            )
        except RuntimeError as e:
            raise AddressNotYetKnown(str(e)) from None
        names = {node}
        for line in out.splitlines():
            parts = line.strip().split("|")
            if len(parts) == 3 and parts[0] == node:
                names.update(parts[1:])
        names -= {"", "n/a", "(null)"}
        loop = asyncio.get_running_loop()
        ips: set[IPAddress] = set()
        for name in names:
            try:
                infos = await loop.run_in_executor(
                    None, partial(socket.getaddrinfo, name, None, type=socket.SOCK_STREAM)
                )
            except OSError:
                continue
            for info_ in infos:
                host = info_[4][0]
                if not isinstance(host, str):  # not an IP socket address
                    continue
                try:
                    ips.add(unmapped(ipaddress.ip_address(host.split("%")[0])))
                except ValueError:
                    continue
        me = socket.gethostname().split(".")[0]
        local = await loop.run_in_executor(None, local_addresses)
        here = any(n.split(".")[0] == me for n in names if not _is_ip(n)) or any(
            not ip.is_loopback and ip in local for ip in ips
        )
        return ips, here

    def _confirm_addresses(
        self,
        addresses: list[ReportedAddress],
        job_id: str,
        node: str,
        node_ips: set[IPAddress],
        here: bool,
        uid: int,
        pids: set[int] | None,
    ) -> None:
        """Blocking (/proc): raise AddressRefused unless each address is the job's."""
        local = local_addresses()
        table = listeners() if here else None
        held: set[int] | None = None
        for addr in addresses:
            refused = AddressRefused(
                f"{addr} is not an address of the scheduler's Slurm job {job_id} on node {node}"
            )
            if not here:
                # Loopback or an address of the gateway's host would reach the gateway's
                # own services, never the node's.
                if is_local(addr.ip, local) or addr.ip not in node_ips:
                    raise refused
                continue
            if not is_local(addr.ip, local) or table is None:
                raise refused
            found = listeners_at(addr.ip, addr.port, table)
            if not found or any(s.uid != uid for s in found):
                raise refused
            if pids is None:
                continue  # the user's socket, and the gateway cannot read their processes
            if held is None:  # the job's processes, not any of the same user
                held = set().union(*(socket_inodes(pid) for pid in pids))
            if any(s.inode not in held for s in found):
                raise refused

    def failure_details(self, cluster: Cluster) -> str:
        return self._details.pop(cluster.name, "")

    # -- options ----------------------------------------------------------------------
    async def check_user(self, user: User) -> None:
        """Jobs run as their user (unless user_mode is 'none'): never as root, a system
        account or the gateway's own account."""
        if self.user_switch != "none":
            await asyncio.get_running_loop().run_in_executor(
                None, local_account, user.name, self.min_user_uid
            )

    async def process_cluster_options(self, user: User, request: Any) -> tuple[dict, dict]:
        """Also refuse, with a message for the user, what sbatch would refuse later."""
        options, config = await super().process_cluster_options(user, request)
        wanted = [p for p in config.get("partition", "").split(",") if p]
        known = await self._known_partitions() if wanted else None
        if known is not None:  # None: Slurm cannot say, sbatch will
            missing = [p for p in wanted if p not in known]
            if missing:
                raise ValueError(
                    f"Slurm partition {missing[0]!r} does not exist; available: "
                    + ", ".join(sorted(known))
                )
        return options, config

    async def _known_partitions(self) -> set[str] | None:
        """Partition names from sinfo (cached); None if Slurm cannot say."""
        now = time.monotonic()
        if self._partitions and now - self._partitions[0] < self.partition_cache_ttl:
            return self._partitions[1]
        try:
            code, out, err = await self._run(
                [self.sinfo, "--noheader", "--all", "--format=%R"], what="sinfo"
            )
        except RuntimeError as e:
            self.log.warning("Cannot list Slurm partitions: %s", e)
            return None
        if code != 0:
            self.log.warning("Cannot list Slurm partitions: %s", err.strip())
            return None
        names = {line.strip() for line in out.splitlines() if line.strip()}
        self._partitions = (now, names)
        return names

    # -- the backend interface ----------------------------------------------------------
    async def start_cluster(self, cluster: Cluster) -> dict:
        config = self.cluster_config(cluster)
        staging = await self._staging_dir(cluster, config)
        request = {
            "action": "submit",
            "staging_dir": staging,
            "sbatch": shutil.which(self.sbatch) or self.sbatch,
            "env": self._job_env(),
            "files": {
                "dask.crt": cluster.tls_cert.decode(),
                "dask.pem": cluster.tls_key.decode(),
                "api-token": cluster.token,
            },
            "jobs": [
                {
                    "script": self._script(
                        self._exports(cluster, config, staging, "scheduler"),
                        config.scheduler_setup,
                        named_for_slurm(self.scheduler_command(cluster, config)),
                    ),
                    "args": self._sbatch_args(
                        cluster, config, "scheduler", staging, "scheduler.log"
                    ),
                }
            ],
        }
        # Shielded: if the reconciler gives up waiting, a job submitted anyway is cancelled.
        task = asyncio.ensure_future(self._launch(cluster.username, request))
        try:
            answer = await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(lambda t: self._cancel_abandoned(cluster.username, t))
            raise
        result = answer["results"][0]
        if "error" in result:
            raise RuntimeError(result["error"])
        job_id = result["job_id"]
        self._tracked.add(job_id)
        self.log.info(
            "Submitted Slurm job %s: scheduler of cluster %s (user %s)",
            job_id,
            cluster.name,
            cluster.username,
            extra=about(cluster),
        )
        return {"job_id": job_id, "staging_dir": staging}

    def _cancel_abandoned(self, username: str, task: asyncio.Task) -> None:
        if task.cancelled() or task.exception() is not None:
            return
        for result in task.result()["results"]:
            if "job_id" in result:
                asyncio.ensure_future(self._cancel_quietly(username, result["job_id"]))

    async def _cancel_quietly(self, username: str, job_id: str) -> None:
        self.log.info("Cancelling Slurm job %s, submitted after its start was abandoned", job_id)
        try:
            await self._cancel(username, job_id)
        except Exception as e:
            self.log.warning("Could not cancel Slurm job %s: %s", job_id, e)

    async def stop_cluster(self, cluster: Cluster) -> None:
        job_id = cluster.state.get("job_id")
        if job_id:
            await self._cancel(cluster.username, job_id)
        self._worker_batchers.pop(cluster.name, None)
        staging = cluster.state.get("staging_dir")
        if not staging:
            try:
                staging = await self._staging_dir(cluster, self.cluster_config(cluster))
            except KeyError:
                staging = None
        tail = ""
        if staging:
            try:
                answer = await self._launch(
                    cluster.username,
                    {
                        "action": "cleanup",
                        "staging_dir": staging,
                        "log": "scheduler.log",
                    },
                )
                tail = answer.get("log_tail", "")
            except Exception as e:
                self.log.warning(
                    "Could not remove the staging directory %s: %s",
                    staging,
                    e,
                    extra=about(cluster),
                )
        if cluster.target == JobStatus.FAILED:
            reason = self._ended.get(job_id or "") or self._pending_reason(job_id or "")
            self._details[cluster.name] = "\n".join(x for x in (reason, tail) if x)
        if job_id:
            self._forget(job_id)

    async def start_worker(self, cluster: Cluster, worker: Worker) -> dict:
        batcher = self._worker_batchers.get(cluster.name)
        if batcher is None:
            batcher = self._worker_batchers[cluster.name] = _Batcher(
                lambda workers: self._submit_workers(cluster, workers),
                lambda job_id: asyncio.ensure_future(
                    self._cancel_quietly(cluster.username, job_id)
                ),
                gather=WORKER_GATHER,
            )
        job_id = await batcher.submit(worker)
        self._tracked.add(job_id)
        self.log.info(
            "Submitted Slurm job %s: worker %s of cluster %s",
            job_id,
            worker.name,
            cluster.name,
            extra=about(cluster),
        )
        return {"job_id": job_id}

    async def _submit_workers(self, cluster: Cluster, workers: list[Worker]) -> list:
        """Submit the workers with one launcher run: one job for a lone worker, else one job
        array (one sbatch, and Slurm starts all its tasks in one scheduling pass); a job id
        (``ARRAY_TASK`` for array tasks) or an error each."""
        config = self.cluster_config(cluster)
        staging = cluster.state.get("staging_dir") or await self._staging_dir(cluster, config)
        exports = self._exports(cluster, config, staging, "worker")
        commands = [named_for_slurm(self.worker_command(cluster, config, w)) for w in workers]
        if len(workers) == 1 or not self.worker_job_arrays:
            jobs = [
                {
                    "script": self._script(exports, config.worker_setup, cmd),
                    "args": self._sbatch_args(
                        cluster, config, "worker", staging, f"worker-{w.name}.log"
                    ),
                }
                for w, cmd in zip(workers, commands, strict=True)
            ]
        else:
            logs = [os.path.join(staging, f"worker-{w.name}.log") for w in workers]
            jobs = [
                {
                    "script": self._array_script(exports, config.worker_setup, commands, logs),
                    "args": [
                        *self._sbatch_args(cluster, config, "worker", staging, None),
                        f"--array=0-{len(workers) - 1}",
                    ],
                }
            ]
        answer = await self._launch(
            cluster.username,
            {
                "action": "submit",
                "staging_dir": staging,
                "env": self._job_env(),
                "sbatch": shutil.which(self.sbatch) or self.sbatch,
                "jobs": jobs,
            },
        )
        results = answer["results"]
        if len(jobs) != len(workers):  # one array
            (result,) = results
            if "error" in result:
                return [RuntimeError(result["error"])] * len(workers)
            return [f"{result['job_id']}_{i}" for i in range(len(workers))]
        return [r["job_id"] if "job_id" in r else RuntimeError(r["error"]) for r in results]

    async def stop_worker(self, cluster: Cluster, worker: Worker) -> None:
        job_id = worker.state.get("job_id")
        if not job_id:
            return
        if worker.target == JobStatus.FAILED and job_id not in self._ended:
            # Say why a lost worker's job ended.
            self._alive(
                job_id,
                await self._lost_job_state(job_id),
                f"Worker {worker.name} of cluster {cluster.name}",
                cluster.name,
            )
        await self._cancel(cluster.username, job_id)
        self._forget(job_id)

    async def _lost_job_state(self, job_id: str) -> JobState:
        """The state of the job of a worker its scheduler saw leave. The shared squeue of the
        period may predate the job's end (the scheduler notices a killed worker first): ask
        Slurm again, for up to ``completing_wait`` s, until the end shows."""
        state = (await self._job_states([job_id]))[job_id]
        deadline = time.monotonic() + self.completing_wait
        while state.state not in ENDED_STATES and state.state != GONE:
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.2)
            state = (await self._squeue([job_id])).get(job_id, GONE_STATE)
        return state

    def _forget(self, job_id: str) -> None:
        self._tracked.discard(job_id)
        self._ended.pop(job_id, None)
        self._pending.pop(job_id, None)
        self._told.pop(job_id, None)

    async def _cancel(self, username: str, job_id: str) -> None:
        """scancel ``job_id`` as the jobs' user, even when the gateway is root: job ids come
        from the launcher, a process of that user (who may ptrace it and change its answer),
        so Slurm itself must refuse to cancel another user's job under a forged id.
        Concurrent cancellations (of one user) share one scancel call."""
        prefix = tuple(self._user_prefix(username))
        key = " ".join(prefix)
        batcher = self._cancel_batchers.get(key)
        if batcher is None:
            batcher = self._cancel_batchers[key] = _Batcher(
                lambda ids: self._scancel(list(prefix), ids), gather=CANCEL_GATHER
            )
        await batcher.submit(job_id)

    async def _scancel(self, prefix: list[str], job_ids: list[str]) -> list:
        ids = sorted(set(job_ids))
        code, out, err = await self._run([*prefix, self.scancel, *ids], what="scancel")
        problems = [
            line
            for line in err.splitlines()
            if line.strip() and not any(b in line for b in _BENIGN_SCANCEL)
        ]
        if code != 0 and problems:
            error = RuntimeError(f"scancel failed: {'; '.join(problems)}")
            return [error] * len(job_ids)
        return [None] * len(job_ids)
