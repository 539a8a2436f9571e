"""How the local backend starts a process: the strategy the backend is configured with.

``SubprocessLauncher`` forks and execs a fresh interpreter each time (about a second of
imports before a scheduler is up). ``ForkServerLauncher`` keeps one pre-started interpreter
per Python environment that has imported distributed already and forks children from it:
the process is up in milliseconds and shares the imported modules' memory copy-on-write.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import pwd

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
    fields = data[data.rfind(b")") + 2:].split()
    if fields and fields[0] == b"Z":
        return None  # a zombie is dead
    return int(fields[19])


def _switch_user(username: str):
    entry = pwd.getpwnam(username)

    def preexec() -> None:
        os.setgroups(os.getgrouplist(username, entry.pw_gid))
        os.setgid(entry.pw_gid)
        os.setuid(entry.pw_uid)

    return preexec


class SubprocessLauncher:
    """Starts each process with fork+exec of a fresh interpreter."""

    async def launch(self, cmd: list[str], env: dict, cwd: str, log_path: str,
                     user: str | None = None) -> dict:
        """Start ``cmd``; return ``{"pid": ..., "start_ticks": ...}``."""
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            proc = await asyncio.create_subprocess_exec(
                *cmd,
                env=env,
                cwd=cwd,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=fd,
                stderr=asyncio.subprocess.STDOUT,
                # Own session: the process outlives a gateway restart and gets no terminal
                # signals meant for the gateway.
                start_new_session=True,
                preexec_fn=_switch_user(user) if user else None,
            )
        finally:
            os.close(fd)
        # Reap the child when it exits so it does not linger as a zombie.
        asyncio.ensure_future(proc.wait())
        return {"pid": proc.pid, "start_ticks": process_start_ticks(proc.pid)}

    async def warm_up(self, python: str) -> None:
        """Nothing to prepare."""

    async def close(self) -> None:
        """Nothing to release."""


class _Zygote:
    """One pre-started interpreter and the pipe to it."""

    def __init__(self, python: str):
        self.python = python
        self.proc: asyncio.subprocess.Process | None = None
        self.lock = asyncio.Lock()

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            self.python, ZYGOTE,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        try:
            ready = await self.proc.stdout.readline()
        except BaseException:  # a hung interpreter, given up on: it must not linger
            self.kill()
            raise
        if not ready:
            raise RuntimeError(f"the fork server of {self.python} exited at start")

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def kill(self) -> None:
        """Kill the fork server (not the processes it forked: they are on their own)."""
        if self.alive:
            try:
                self.proc.kill()
            except ProcessLookupError:
                pass
        self.proc = None  # the next fork starts a fresh one (asyncio reaps this one)

    async def fork(self, request: dict) -> dict:
        async with self.lock:
            if not self.alive:
                await self.start()
            try:
                self.proc.stdin.write(json.dumps(request).encode() + b"\n")
                await self.proc.stdin.drain()
                line = await self.proc.stdout.readline()
            except BaseException:
                # Given up on mid-exchange (a start timeout cancelled us): its late answer
                # would be read as the next request's, so this fork server is done for.
                self.kill()
                raise
        if not line:
            raise RuntimeError("the fork server exited")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"the fork server could not start the process: {answer['error']}")
        return answer

    async def close(self) -> None:
        if self.alive:
            self.proc.stdin.close()  # the zygote exits on EOF; its children do not
            try:
                await asyncio.wait_for(self.proc.wait(), 5)
            except asyncio.TimeoutError:
                self.proc.kill()


class ForkServerLauncher(SubprocessLauncher):
    """Forks ``python -m <module>`` commands from a pre-started interpreter of that Python.

    Other commands (a custom ``scheduler_cmd``, say) start the ordinary way.
    """

    def __init__(self) -> None:
        self._zygotes: dict[str, _Zygote] = {}

    def _zygote(self, python: str) -> _Zygote:
        if python not in self._zygotes:
            self._zygotes[python] = _Zygote(python)
        return self._zygotes[python]

    async def warm_up(self, python: str) -> None:
        try:
            zygote = self._zygote(python)
            async with zygote.lock:
                if not zygote.alive:
                    await zygote.start()
        except Exception as e:
            log.warning("Could not start the fork server of %s: %s", python, e)

    async def launch(self, cmd: list[str], env: dict, cwd: str, log_path: str,
                     user: str | None = None) -> dict:
        if len(cmd) < 3 or cmd[1] != "-m":
            return await super().launch(cmd, env, cwd, log_path, user)
        request = {"module": cmd[2], "args": cmd[3:], "env": env, "cwd": cwd, "log": log_path,
                   "user": user}
        try:
            return await self._zygote(cmd[0]).fork(request)
        except Exception as e:
            log.warning("Fork server failed (%s); starting %s the ordinary way", e, cmd[2])
            return await super().launch(cmd, env, cwd, log_path, user)

    async def close(self) -> None:
        await asyncio.gather(*(z.close() for z in self._zygotes.values()))
        self._zygotes.clear()


