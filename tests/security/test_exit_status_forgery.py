"""A user's process cannot tell the gateway false ends of other processes (issue 18).

The fork server reports how each child ended on a pipe to the gateway; ``exit_reason`` (what
users and admins read: "Worker w failed: killed by signal 9") comes from there. The children
run users' code: none may hold that pipe, or reach it through the fork server's /proc entry.
The attacker here is code in alice's own process, forked by a root gateway's fork server as
alice, writing forged status lines to every descriptor it has and to the fork server's.
"""

from __future__ import annotations

import os
import signal
import textwrap
from pathlib import Path

from users import ALICE

from dask_gateway_server.backends.launchers import ForkServerLauncher, process_start_ticks

PROBE = textwrap.dedent(
    """
    import json, os, sys, time

    if __name__ == "__main__":
        if sys.argv[1] == "sleep":
            time.sleep(600)
        pid, ticks = int(sys.argv[2]), int(sys.argv[3])
        line = (json.dumps({"pid": pid, "start_ticks": ticks, "returncode": 77}) + "\\n")
        reached = []
        for fd in range(3, 1024):
            try:
                os.write(fd, line.encode())
                reached.append(fd)
            except OSError:
                pass
        for fd in range(64):
            try:
                with open(f"/proc/{os.getppid()}/fd/{fd}", "w") as f:
                    f.write(line)
                reached.append(f"fork server {fd}")
            except OSError:
                pass
        print("forged into", reached, flush=True)
        os._exit(5)
    """
)

DEADLINE = 60.0


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[1])


async def test_child_cannot_forge_exit_statuses(shared_python, public_tmp, local_users):
    mods = public_tmp / "mods"
    mods.mkdir()
    (mods / "forge_probe.py").write_text(PROBE)
    home = public_tmp / "alice"
    home.mkdir(mode=0o700)
    alice = local_users[ALICE]
    os.chown(home, alice.uid, alice.gid)

    launcher = ForkServerLauncher(environment={"PYTHONPATH": str(mods)})
    victim: dict = {}
    try:
        victim = await launcher.launch(
            [shared_python, "-m", "forge_probe", "sleep"],
            {},
            str(home / "victim"),
            str(home / "victim.log"),
            ALICE,
        )
        zygote = launcher._zygotes[shared_python].proc
        assert zygote is not None and parent_of(victim["pid"]) == zygote.pid  # forked
        ticks = victim["start_ticks"]
        assert ticks == process_start_ticks(victim["pid"])

        # The attack: alice's process writes "the victim exited with 77" wherever it can.
        forger = await launcher.launch(
            [shared_python, "-m", "forge_probe", "forge", str(victim["pid"]), str(ticks)],
            {},
            str(home / "forger"),
            str(home / "forger.log"),
            ALICE,
        )
        assert await launcher.wait_exit(forger, DEADLINE) == 5  # its own end, truly told
        assert "forged into" in (home / "forger.log").read_text()
        assert "fork server" not in (home / "forger.log").read_text()
        assert launcher.exit_status(victim) is None  # still running: no end believed

        # The legitimate path still works: the victim's real end is what is told.
        os.kill(victim["pid"], signal.SIGKILL)
        assert await launcher.wait_exit(victim, DEADLINE) == -signal.SIGKILL
        assert launcher.exit_status(victim) == -9
    finally:
        await launcher.close()
        if victim:
            try:
                os.kill(victim["pid"], signal.SIGKILL)
            except OSError:
                pass
