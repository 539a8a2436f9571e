"""How the local backend starts a process: the strategy the backend is configured with.

``SubprocessLauncher`` forks and execs a fresh interpreter each time (about a second of
imports before a scheduler is up). ``ForkServerLauncher`` keeps one pre-started interpreter
per Python environment that has imported distributed already and forks children from it:
the process is up in milliseconds and shares the imported modules' memory copy-on-write.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import pwd
import signal
import socket
from collections import OrderedDict

from .safe_files import check_python_trusted

log = logging.getLogger("dask_gateway_server")

ZYGOTE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "zygote.py")


def process_start_ticks(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot): tells a reused pid from ours."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # The command name may hold spaces; fields resume after the last ')'.
    fields = data[data.rfind(b")") + 2 :].split()
    if fields and fields[0] == b"Z":
        return None  # a zombie is dead
    return int(fields[19])


def user_identity(username: str) -> tuple[int, int, list[int]]:
    """uid, gid and groups to run a process as ``username``; never root (blocking: NSS)."""
    entry = pwd.getpwnam(username)
    if entry.pw_uid == 0:
        raise PermissionError(f"Refusing to start a process as {username!r}: uid 0")
    return entry.pw_uid, entry.pw_gid, os.getgrouplist(username, entry.pw_gid)


#: A process as the gateway tells it apart: its pid and when it started (a reused pid
#: started later). The start ticks are None when they could not be read.
ProcessKey = tuple[int, "int | None"]


def process_key(state: dict) -> ProcessKey | None:
    """The key of the process a backend state records; None if it records none."""
    pid = state.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool):
        return None
    ticks = state.get("start_ticks")
    return pid, ticks if isinstance(ticks, int) else None


def describe_exit(returncode: int) -> str:
    """``returncode`` (subprocess's: minus the signal number if a signal ended it) in words."""
    if returncode >= 0:
        return f"exited with code {returncode}"
    try:
        name = f" ({signal.Signals(-returncode).name})"
    except ValueError:
        name = ""
    return f"killed by signal {-returncode}{name}"


class ExitStatuses:
    """How the processes this gateway started ended, as their parent saw it (the parent
    reaps them: nothing else can know). Only in memory: after a gateway restart nothing is
    known of the processes started before."""

    #: Ends remembered; the oldest are forgotten first (a backend asks soon after an end).
    keep = 10000

    def __init__(self) -> None:
        self._ended: OrderedDict[ProcessKey, int] = OrderedDict()
        self._running: dict[ProcessKey, asyncio.Future[int | None]] = {}

    def started(self, key: ProcessKey) -> None:
        """``key`` was started here: its end will be told (``ended``) or lost (``lost``)."""
        if key not in self._ended and key not in self._running:
            self._running[key] = asyncio.get_running_loop().create_future()

    def ended(self, key: ProcessKey, returncode: int) -> None:
        self._ended[key] = returncode
        self._ended.move_to_end(key)
        while len(self._ended) > self.keep:
            self._ended.popitem(last=False)
        future = self._running.pop(key, None)
        if future is not None and not future.done():
            future.set_result(returncode)

    def lost(self, keys: list[ProcessKey]) -> None:
        """The ends of ``keys`` will never be told (their parent, a fork server, is gone)."""
        for key in keys:
            future = self._running.pop(key, None)
            if future is not None and not future.done():
                future.set_result(None)

    def get(self, key: ProcessKey) -> int | None:
        return self._ended.get(key)

    async def wait(self, key: ProcessKey, timeout: float) -> int | None:
        """The return code of ``key``, waiting up to ``timeout`` s for it if it was started
        here and its end is not told yet (a process seen dead is reaped a moment later)."""
        if key in self._ended:
            return self._ended[key]
        future = self._running.get(key)
        if future is None:
            return None
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        except asyncio.TimeoutError:
            return None


# Runs as the process's user, before the command: creates its working directory and opens its
# log there, so no path the user controls is ever resolved with the gateway's privileges.
# (Only shell built-ins and ``command -p mkdir``: the command's own PATH may lack mkdir.)
_BOOTSTRAP = (
    '(umask 077 && command -p mkdir -p -- "$1" && : >>"$2") && cd -- "$1" && '
    'exec >>"$2" 2>&1 && shift 2 && exec "$@"'
)


class SubprocessLauncher:
    """Starts each process with fork+exec of a fresh interpreter.

    The process is created as its user (the kernel switches identity before exec, no Python
    runs in the forked child) and makes its own directory and log through a tiny shell
    bootstrap: see ``_BOOTSTRAP``.
    """

    def __init__(self, environment: dict[str, str] | None = None) -> None:
        #: The environment of helper processes the launcher keeps (none here): only what
        #: every cluster may see, never a secret.
        self.environment = dict(environment or {})
        #: How the processes started by this launcher ended.
        self.exits = ExitStatuses()

    def exit_status(self, state: dict) -> int | None:
        """The return code of the process ``state`` records (see ``launch``), if it ended
        and this launcher saw it end; None otherwise."""
        key = process_key(state)
        return None if key is None else self.exits.get(key)

    async def wait_exit(self, state: dict, timeout: float) -> int | None:
        """Like ``exit_status``, but waits up to ``timeout`` s for the end of a process this
        launcher started and is about to reap (one just found dead)."""
        key = process_key(state)
        return None if key is None else await self.exits.wait(key, timeout)

    async def launch(
        self, cmd: list[str], env: dict, cwd: str, log_path: str, user: str | None = None
    ) -> dict:
        """Start ``cmd``; return ``{"pid": ..., "start_ticks": ...}``."""
        identity: dict = {}
        if user:
            uid, gid, groups = user_identity(user)
            identity = {"user": uid, "group": gid, "extra_groups": groups}
        proc = await asyncio.create_subprocess_exec(
            "/bin/sh",
            "-c",
            _BOOTSTRAP,
            "sh",
            cwd,
            log_path,
            *cmd,
            env=env,
            cwd="/",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            # Own session: the process outlives a gateway restart and gets no terminal
            # signals meant for the gateway.
            start_new_session=True,
            **identity,
        )
        key: ProcessKey = (proc.pid, process_start_ticks(proc.pid))
        self.exits.started(key)
        # Reap the child when it exits so it does not linger as a zombie, keeping how it ended.
        asyncio.ensure_future(self._reap(proc, key))
        return {"pid": key[0], "start_ticks": key[1]}

    async def _reap(self, proc: asyncio.subprocess.Process, key: ProcessKey) -> None:
        try:
            code = await proc.wait()
        except asyncio.CancelledError:  # the loop is closing: the end is not known
            self.exits.lost([key])
            raise
        self.exits.ended(key, code)

    async def warm_up(self, python: str) -> None:
        """Nothing to prepare."""

    async def close(self) -> None:
        """Nothing to release."""


_MAX_MESSAGE = 1 << 20  # one request or answer on the fork server's socket


def _env_pipe(env: dict) -> int:
    """A pipe already holding ``env`` (JSON, then end of file); returns its read end.

    The forked child reads it: the secrets in it (the cluster's API token) never pass
    through the fork server's memory, where every later child would inherit them.
    """
    data = json.dumps(env).encode()
    rfd, wfd = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        if len(data) > 65536:
            fcntl.fcntl(wfd, fcntl.F_SETPIPE_SZ, len(data))  # EPERM beyond pipe-max-size
        view = memoryview(data)
        while view:
            view = view[os.write(wfd, view) :]
    except BaseException:
        os.close(rfd)
        raise
    finally:
        os.close(wfd)
    return rfd


def _set_once(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


class _Zygote:
    """One pre-started interpreter and the socket to it (SOCK_SEQPACKET: one message per
    request or answer; a request carries its environment pipe as a descriptor)."""

    def __init__(self, python: str, environment: dict[str, str], exits: ExitStatuses) -> None:
        self.python = python
        self.environment = environment
        self.exits = exits
        self.proc: asyncio.subprocess.Process | None = None
        self.sock: socket.socket | None = None
        self.lock = asyncio.Lock()
        self._stderr: asyncio.Task | None = None
        self._statuses: asyncio.Task | None = None
        self._children: set[ProcessKey] = set()  # forked by the running fork server

    async def start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.proc = await asyncio.create_subprocess_exec(
                # -s: not root's (or anyone's) ~/.local; a minimal environment: nothing of
                # the gateway's own (its database keys, the hub's token) in this process,
                # whose memory every scheduler and worker inherits.
                self.python,
                "-s",
                ZYGOTE,
                stdin=theirs.fileno(),
                stdout=asyncio.subprocess.PIPE,  # how each child ended, a line each
                stderr=asyncio.subprocess.PIPE,
                env=self.environment,
                cwd="/",
                start_new_session=True,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        self.sock = ours
        self._stderr = asyncio.ensure_future(self._log_stderr(self.proc))
        self._children = set()
        self._statuses = asyncio.ensure_future(self._read_statuses(self.proc, self._children))
        try:
            ready = await self._recv()
        except BaseException:  # a hung interpreter, given up on: it must not linger
            self.kill()
            raise
        if not ready:
            self.kill()
            raise RuntimeError(f"the fork server of {self.python} exited at start")
        for warning in json.loads(ready).get("warnings", []):
            log.warning("Fork server of %s: %s", self.python, warning)

    async def _log_stderr(self, proc: asyncio.subprocess.Process) -> None:
        """Anything the fork server (or a child, before its log is open) writes to stderr
        goes to the gateway's log, in the gateway's format."""
        assert proc.stderr is not None
        async for line in proc.stderr:
            text = line.decode(errors="replace").rstrip()
            if text:
                log.warning("Fork server of %s: %s", self.python, text)

    async def _read_statuses(
        self, proc: asyncio.subprocess.Process, children: set[ProcessKey]
    ) -> None:
        """How each child of this fork server ended, from its status pipe (only it holds
        the pipe: its children close their copy first). ``children``: those it forked
        (``fork`` adds them); once the fork server is gone, their ends are lost."""
        assert proc.stdout is not None
        try:
            async for line in proc.stdout:
                try:
                    status = json.loads(line)
                    ticks = status["start_ticks"]
                    key: ProcessKey = (
                        int(status["pid"]),
                        ticks if isinstance(ticks, int) else None,
                    )
                    code = int(status["returncode"])
                except (ValueError, KeyError, TypeError):
                    log.warning("Fork server of %s: unreadable status %r", self.python, line)
                    continue
                children.discard(key)
                self.exits.ended(key, code)
        finally:
            self.exits.lost(list(children))
            children.clear()

    async def _recv(self) -> bytes:
        assert self.sock is not None
        return await asyncio.get_running_loop().sock_recv(self.sock, _MAX_MESSAGE)

    async def _send(self, data: bytes, fds: list[int]) -> None:
        sock = self.sock
        assert sock is not None
        loop = asyncio.get_running_loop()
        while True:
            try:
                socket.send_fds(sock, [data], fds)
                return
            except BlockingIOError:
                writable = loop.create_future()
                loop.add_writer(sock.fileno(), _set_once, writable)
                try:
                    await writable
                finally:
                    loop.remove_writer(sock.fileno())

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def kill(self) -> None:
        """Kill the fork server (not the processes it forked: they are on their own)."""
        proc = self.proc
        if proc is not None and proc.returncode is None:  # alive
            try:
                proc.kill()
            except ProcessLookupError:
                pass
        if self.sock is not None:
            self.sock.close()
        self.proc = self.sock = None  # the next fork starts a fresh one (asyncio reaps this)

    async def fork(self, request: dict, env: dict) -> dict:
        async with self.lock:
            if not self.alive:
                await self.start()
            env_fd = _env_pipe(env)
            try:
                await self._send(json.dumps(request).encode(), [env_fd])
                os.close(env_fd)
                env_fd = -1
                line = await self._recv()
            except BaseException:
                # Given up on mid-exchange (a start timeout cancelled us): its late answer
                # would be read as the next request's, so this fork server is done for.
                if env_fd >= 0:
                    os.close(env_fd)
                self.kill()
                raise
        if not line:
            self.kill()
            raise RuntimeError("the fork server exited")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"the fork server could not start the process: {answer['error']}")
        key = process_key(answer)
        if key is not None:
            self.exits.started(key)
            if self.exits.get(key) is not None:
                pass  # it ended already, and its status came first
            elif self._statuses is not None and not self._statuses.done():
                self._children.add(key)
            else:  # its status pipe closed already: this end will not be told
                self.exits.lost([key])
        return answer

    async def close(self) -> None:
        proc, sock = self.proc, self.sock
        if proc is not None and proc.returncode is None:  # alive (and so sock is set)
            try:
                assert sock is not None
                sock.shutdown(socket.SHUT_WR)  # the zygote exits on EOF; not its children
            except OSError:
                pass
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except asyncio.TimeoutError:  # not the builtin one before Python 3.11
                proc.kill()
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self._stderr is not None:
            await asyncio.gather(self._stderr, return_exceptions=True)
        if self._statuses is not None:  # EOF once the fork server is gone (nothing else
            # holds its status pipe); never wait long on it at shutdown all the same
            await asyncio.wait([self._statuses], timeout=5)
            self._statuses.cancel()
            await asyncio.gather(self._statuses, return_exceptions=True)


class ForkServerLauncher(SubprocessLauncher):
    """Forks ``python -m <module>`` commands from a pre-started interpreter of that Python.

    Other commands (a custom ``scheduler_cmd``, say) start the ordinary way, and so does
    everything of a Python that a gateway running as root must not import as root (one
    anyone but root can write to: see ``safe_files.check_python_trusted``).
    """

    def __init__(self, environment: dict[str, str] | None = None) -> None:
        super().__init__(environment)
        self._zygotes: dict[str, _Zygote] = {}
        self._refused: dict[str, str] = {}  # python -> why it gets no fork server
        self._checks: dict[str, asyncio.Future] = {}

    def _zygote(self, python: str) -> _Zygote:
        if python not in self._zygotes:
            self._zygotes[python] = _Zygote(python, self.environment, self.exits)
        return self._zygotes[python]

    async def _trusted(self, python: str) -> bool:
        """May a fork server of ``python`` run with this process's identity? Checked once per
        interpreter when that identity is root; refusals are logged once."""
        if os.geteuid() != 0:
            return True
        if python not in self._checks:
            self._checks[python] = asyncio.get_running_loop().run_in_executor(
                None, check_python_trusted, python, self.environment.get("PYTHONPATH", "")
            )
        try:
            await asyncio.shield(self._checks[python])
        except Exception as e:  # UnsafePath, or a check that could not be made
            if python not in self._refused:
                self._refused[python] = str(e)
                log.warning(
                    "No fork server for %s: %s. Importing it as root would run code "
                    "others can change; its processes start with a fresh interpreter "
                    "as their user instead (slower)",
                    python,
                    e,
                )
            return False
        return True

    async def warm_up(self, python: str) -> None:
        try:
            if not await self._trusted(python):
                return
            zygote = self._zygote(python)
            async with zygote.lock:
                if not zygote.alive:
                    await zygote.start()
        except Exception as e:
            log.warning("Could not start the fork server of %s: %s", python, e)

    async def launch(
        self, cmd: list[str], env: dict, cwd: str, log_path: str, user: str | None = None
    ) -> dict:
        if len(cmd) < 3 or cmd[1] != "-m" or not await self._trusted(cmd[0]):
            return await super().launch(cmd, env, cwd, log_path, user)
        if user:
            user_identity(user)  # refuse root here too, before anything is forked
        request = {
            "module": cmd[2],
            "args": cmd[3:],
            "cwd": cwd,
            "log": log_path,
            "user": user,
            "title": env.get("DASK_GATEWAY_CLUSTER_NAME", ""),
        }
        try:
            return await self._zygote(cmd[0]).fork(request, env)
        except Exception as e:
            log.warning("Fork server failed (%s); starting %s the ordinary way", e, cmd[2])
            return await super().launch(cmd, env, cwd, log_path, user)

    async def close(self) -> None:
        await asyncio.gather(*(z.close() for z in self._zygotes.values()))
        self._zygotes.clear()
