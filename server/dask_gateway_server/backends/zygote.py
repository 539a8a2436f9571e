"""A pre-started interpreter that forks schedulers and workers.

Run as a script (``python zygote.py``) by the gateway, in the cluster's Python environment,
which need not have the gateway installed. It imports distributed once; each request forks a
child that already has everything imported (and shares those pages copy-on-write), then gets
its environment, TLS files, working directory and identity, and runs the requested module as
``python -m`` would.

Protocol: one JSON object per line on stdin, one answer per line on stdout.
    {"module": "distributed.cli.dask_scheduler", "args": [...], "env": {...}, "cwd": "...",
     "log": "/path/to/log", "user": null | "name"}
    -> {"pid": 1234, "start_ticks": 5678} or {"error": "..."}
The zygote exits when stdin closes (the gateway went away); its children live on.
"""
import importlib
import json
import os
import runpy
import signal
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
    return int(data[data.rfind(b")") + 2:].split()[19])


def reap(signum, frame):
    """Children exit on their own; collect them so none lingers as a zombie."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def set_title(request):
    """Show what this process is in ps (it would otherwise look like the zygote)."""
    try:
        import setproctitle
    except ImportError:
        return
    name = request["env"].get("DASK_GATEWAY_CLUSTER_NAME", "")
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


def run_child(request, channel_fds):
    """In the forked child: become the requested process. Never returns."""
    code = 1
    try:
        # Before the environment changes: setproctitle reuses the original environ's memory.
        set_title(request)
        os.setsid()
        for fd in channel_fds:
            os.close(fd)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        user = request.get("user")
        if user:
            import pwd

            entry = pwd.getpwnam(user)
            os.setgroups(os.getgrouplist(user, entry.pw_gid))
            os.setgid(entry.pw_gid)
            os.setuid(entry.pw_uid)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
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

        traceback.print_exc()
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


def main():
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception as e:  # a missing optional piece only costs start time
            print(f"zygote: could not preload {name}: {e}", file=sys.stderr)
    warm_tls_defaults()
    signal.signal(signal.SIGCHLD, reap)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    inp = sys.stdin.buffer
    out = sys.stdout.buffer
    channel = (inp.fileno(), out.fileno())
    out.write(b'{"ready": true}\n')
    out.flush()
    for line in inp:
        try:
            request = json.loads(line)
            pid = os.fork()
        except Exception as e:
            answer = {"error": f"{type(e).__name__}: {e}"}
        else:
            if pid == 0:
                run_child(request, channel)
            answer = {"pid": pid, "start_ticks": start_ticks(pid)}
        out.write(json.dumps(answer).encode() + b"\n")
        out.flush()


if __name__ == "__main__":
    main()
