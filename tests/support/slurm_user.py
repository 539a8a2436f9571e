"""A local user whose Slurm jobs a test module owns: Slurm checked up (a failure, not a skip),
the user made if missing, and afterwards its jobs cancelled and the user removed again."""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dask_gateway_server.models import Cluster

#: A Python 3 every test user can run: the Slurm launcher needs the standard library only.
SYSTEM_PYTHON = shutil.which("python3", path="/usr/bin:/bin") or "python3"


def job_cluster(prefix: str, username: str, config: dict[str, Any]) -> Cluster:
    """A cluster record of ``username`` for a SlurmBackend a test drives itself (no
    gateway): a fresh name starting with ``prefix``, its own TLS keypair, ``config``."""
    from dask_gateway_server.models import Cluster
    from dask_gateway_server.tls import new_keypair

    cert, key = new_keypair(prefix)
    return Cluster(
        name=prefix + os.urandom(4).hex(),
        username=username,
        token="t" * 32,
        options={},
        config=config,
        tls_cert=cert,
        tls_key=key,
    )


def user_jobs(user: str) -> list[str]:
    """The ids of ``user``'s jobs still in Slurm's queue."""
    out = subprocess.run(
        ["squeue", "--noheader", f"--user={user}", "--format=%i"], capture_output=True, text=True
    )
    return out.stdout.split()


def slurm_test_user(user: str) -> Iterator[pwd.struct_passwd]:
    """For a module-scoped fixture: yields ``user``'s passwd entry."""
    assert os.geteuid() == 0, "the Slurm tests run as root, as the gateway does"
    assert shutil.which("sbatch"), "Slurm is not installed; run scripts/services/start-slurm.sh"
    ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True)
    assert "is UP" in ping.stdout, f"Slurm is not running: {ping.stdout}{ping.stderr}"
    created = False
    try:
        pwd.getpwnam(user)
    except KeyError:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", user], check=True)
        created = True
    try:
        yield pwd.getpwnam(user)
    finally:
        subprocess.run(["scancel", f"--user={user}"], capture_output=True)
        if created:
            end = time.monotonic() + 30
            while user_jobs(user) and time.monotonic() < end:
                time.sleep(0.2)
            subprocess.run(["userdel", "--remove", user], capture_output=True)


def open_for_others(paths: list[str]) -> list[tuple[str, int]]:
    """Give others search (x) permission on the directories above ``paths`` that lack it
    (e.g. /root when Python lives under /root/.pyenv), so jobs run as another user reach
    them; returns the (directory, mode) pairs to restore."""
    changed = []
    for path in paths:
        parts = Path(os.path.realpath(path)).parts
        for i in range(1, len(parts)):
            d = os.path.join(*parts[:i])
            mode = os.stat(d).st_mode
            if stat.S_ISDIR(mode) and not mode & stat.S_IXOTH:
                os.chmod(d, stat.S_IMODE(mode) | stat.S_IXOTH)
                changed.append((d, stat.S_IMODE(mode)))
    return changed
