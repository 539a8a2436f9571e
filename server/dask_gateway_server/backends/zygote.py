"""A pre-started interpreter that forks schedulers and workers.

Run as a script (``python zygote.py``) by the gateway, in the cluster's Python environment,
which need not have the gateway installed. It imports distributed once; each request forks a
child that already has everything imported (and shares those pages copy-on-write), then gets
its environment, TLS files, working directory and identity, and runs the requested module as
``python -m`` would.

Protocol: stdin is a SOCK_SEQPACKET unix socket to the gateway; one JSON object per message.
First the zygote says ``{"ready": true, "warnings": [...]}`` (what it could not preload: the
gateway logs it). Then each request
    {"module": "distributed.cli.dask_scheduler", "args": [...], "cwd": "...",
     "log": "/path/to/log", "user": null | "name", "title": "cluster name"}
comes with one descriptor: a pipe holding the child's environment (JSON). Only the forked
child reads it, so the secrets in it never enter this process's memory, which every later
child inherits; this process itself starts with a minimal environment. Answer:
    {"pid": 1234, "start_ticks": 5678} or {"error": "..."}
Each child's end is told on stdout (a pipe of the gateway's own; the children never hold it),
one JSON line per child as it is reaped:
    {"pid": 1234, "start_ticks": 5678, "returncode": 3}   (-9: killed by SIGKILL)
The child becomes its user before it touches the file system: it creates its working
directory and opens its log as that user. The zygote exits when the socket closes (the
gateway went away); its children live on.
"""

import importlib
import json
import os
import runpy
import signal
import socket
import sys

PRELOAD = [
    "distributed",
    "distributed.cli.dask_scheduler",
    "distributed.cli.dask_worker",
    "distributed.dashboard.scheduler",
    "dask_gateway.scheduler_preload",
    "dask.array",
    "setproctitle",
]


def start_ticks(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return int(data[data.rfind(b")") + 2 :].split()[19])


#: Where each child's end is told (set in main: a private duplicate of stdout), and the
#: start ticks of the children not yet reaped (the gateway tells a reused pid by them).
STATUS_FD = -1
CHILDREN: "dict[int, int | None]" = {}
#: Children reaped before their start ticks were recorded (a handler pending from an earlier
#: child ran in between): told once they are.
EARLY: "dict[int, int]" = {}


def returncode(status):
    """A wait status as subprocess says it: the exit code, or minus the signal number."""
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    return None


def tell_exit(pid, status):
    """One line on the status pipe; never blocks (a gateway not reading loses it)."""
    line = {"pid": pid, "start_ticks": CHILDREN.pop(pid, None), "returncode": returncode(status)}
    try:
        os.write(STATUS_FD, (json.dumps(line) + "\n").encode())
    except OSError:
        pass


def reap(signum, frame):
    """Children exit on their own; collect them so none lingers as a zombie, and tell the
    gateway how each ended."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        if pid in CHILDREN:
            tell_exit(pid, status)
        else:
            EARLY[pid] = status


def set_title(request):
    """Show what this process is in ps (it would otherwise look like the zygote)."""
    try:
        import setproctitle
    except ImportError:
        return
    name = request.get("title", "")
    setproctitle.setproctitle(
        f"{sys.executable} -m {request['module']} [dask-gateway cluster {name}]"
    )
    try:  # distributed's CLIs would replace the title with their own, which has no name
        module = importlib.import_module(request["module"])
        if hasattr(module, "enable_proctitle_on_current"):
            module.enable_proctitle_on_current = lambda: None
    except ImportError:
        pass


def run_module(name, args):
    """Run ``python -m name args`` in this process (the module is imported already)."""
    module = importlib.import_module(name)
    main = getattr(module, "main", None)
    if hasattr(main, "main"):  # a click command, like distributed's CLIs
        main.main(args=args, prog_name=name, standalone_mode=True)
    else:
        runpy.run_module(name, run_name="__main__", alter_sys=True)


def read_env(fd):
    """The environment the gateway wrote into the pipe ``fd`` (closed afterwards)."""
    chunks = []
    try:
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(fd)
    env = json.loads(b"".join(chunks))
    if not isinstance(env, dict):
        raise ValueError("the environment is not a JSON object")
    return {str(k): str(v) for k, v in env.items()}


def become(user):
    """Drop root for ``user``'s identity, for good; never to root itself."""
    import pwd

    entry = pwd.getpwnam(user)
    if entry.pw_uid == 0:
        raise PermissionError(f"refusing to run a process as {user!r}: uid 0")
    os.setgroups(os.getgrouplist(user, entry.pw_gid))
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)


def run_child(request, env_fd, channel_fd):
    """In the forked child: become the requested process. Never returns."""
    code = 1
    try:
        os.setsid()
        # First: nothing of the gateway's channels stays in a process the user controls
        # (with the status pipe, it could tell false ends of other processes).
        os.close(channel_fd)
        os.close(STATUS_FD)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        env = read_env(env_fd)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})  # blocked at fork
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if request.get("user"):
            become(request["user"])
        # Before the environment changes: setproctitle reuses the original environ's memory.
        set_title(request)
        # As the user: the working directory and the log are in a directory the user owns,
        # so what they resolve to is only ever what the user could reach anyway.
        os.makedirs(request["cwd"], mode=0o700, exist_ok=True)
        os.chdir(request["cwd"])
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        os.environ.clear()
        os.environ.update(env)
        # Configuration was read at import time, before this child had its environment.
        import dask.config

        dask.config.refresh()
        sys.argv = [request["module"], *request["args"]]
        run_module(request["module"], request["args"])
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        import traceback

        traceback.print_exc()  # to the log, or before it is open to the gateway's log
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def warm_tls_defaults() -> None:
    """tornado builds its default TLS contexts, reading the system's CA bundle (tens of ms of
    CPU), on the first TLS connection a process accepts: every scheduler and worker paid it
    (bench/profile.py showed a third of their start-up there). Build them once, for all."""
    try:
        from tornado import netutil

        netutil._client_ssl_defaults()
        netutil._server_ssl_defaults()
    except Exception:  # a tornado without them: only start time is lost
        pass


def send(channel, message):
    channel.send(json.dumps(message).encode())


def main():
    global STATUS_FD
    # stdout is the status pipe: keep it on a descriptor of its own (not inherited by what
    # the children exec) and point fd 1 at /dev/null, so that a stray print of a preloaded
    # module can never pass for a status line.
    STATUS_FD = os.dup(1)
    os.set_blocking(STATUS_FD, False)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)
    # Nothing on stderr from here on unless it is a real failure: the gateway logs
    # stderr as warnings, and what is expected (a module missing) goes in the ready message.
    warnings = []
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception as e:  # a missing optional piece only costs start time
            warnings.append(f"could not preload {name}: {e}")
    warm_tls_defaults()
    signal.signal(signal.SIGCHLD, reap)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    channel = socket.socket(fileno=0)
    send(channel, {"ready": True, "warnings": warnings})
    while True:
        msg, fds, flags, _ = socket.recv_fds(channel, 1 << 20, 4)
        if not msg and not fds:
            return  # the gateway went away
        env_fd = fds[0] if fds else -1
        for fd in fds[1:]:
            os.close(fd)
        try:
            if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC) or env_fd < 0:
                raise ValueError("malformed request")
            request = json.loads(msg)
            # Until its start ticks are recorded, a child that exits at once is not reaped
            # (they go with its status line; the child unblocks SIGCHLD itself).
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
            try:
                pid = os.fork()
                if pid == 0:
                    run_child(request, env_fd, channel.fileno())
                ticks = CHILDREN[pid] = start_ticks(pid)
                while EARLY:
                    tell_exit(*EARLY.popitem())
            finally:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
        except Exception as e:
            answer = {"error": f"{type(e).__name__}: {e}"}
        else:
            answer = {"pid": pid, "start_ticks": ticks}
        finally:
            if env_fd >= 0:
                os.close(env_fd)
        send(channel, answer)


if __name__ == "__main__":
    main()
