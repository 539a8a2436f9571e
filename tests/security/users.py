"""Distinct local accounts for the security tests, and ways to act as each of them.

The tests play every part as a real process: the gateway as root, each user's scheduler and
workers as that user (LocalBackend), and an attacker as a shell of their own account
(``run_as``) or as code in their own scheduler (``in_scheduler``).
"""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
from dataclasses import dataclass

import cloudpickle

# Functions of this module travel by value to schedulers, which cannot import the tests.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

ALICE, BOB, ADMIN = "dgwsec-alice", "dgwsec-bob", "dgwsec-admin"
SYSTEM = "dgwsec-sys"  # a system account (uid below 1000)
SHARED_VENV = os.environ.get("DASK_GATEWAY_TEST_SHARED_VENV", "/opt/dask-gateway-test/venv")


@dataclass(frozen=True)
class LocalUser:
    name: str
    uid: int
    gid: int
    home: str


def ensure_user(name: str, system: bool = False) -> tuple[LocalUser, bool]:
    """The account ``name``, created if missing; also says whether it was created."""
    created = False
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        args = ["useradd", "--shell", "/bin/bash"]
        args += ["--system", "--no-create-home"] if system else ["--create-home"]
        subprocess.run([*args, name], check=True, capture_output=True)
        entry = pwd.getpwnam(name)
        created = True
    return LocalUser(name, entry.pw_uid, entry.pw_gid, entry.pw_dir), created


def kill_processes_of(name: str) -> None:
    subprocess.run(["pkill", "-KILL", "-u", name], capture_output=True)


def run_as(
    user: str, code: str, timeout: float = 60, python: str | None = None
) -> subprocess.CompletedProcess:
    """Run Python ``code`` as ``user`` from a login-less shell of theirs (runuser)."""
    return subprocess.run(
        ["runuser", "-u", user, "--", python or f"{SHARED_VENV}/bin/python", "-c", code],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd="/",
    )


def _exec(source: str, dask_scheduler=None):
    namespace = {"dask_scheduler": dask_scheduler}
    exec(source, namespace)
    return namespace.get("result")


def in_scheduler(client, source: str):
    """Run ``source`` inside the cluster's scheduler, as its owner could; returns the value
    it leaves in ``result`` (``dask_scheduler`` is the Scheduler object)."""
    return client.run_on_scheduler(_exec, source)


def user_gateway(gw, user: str):
    """A client of gateway process ``gw`` logged in as ``user`` (simple auth: the name is the
    local account)."""
    from dask_gateway import Gateway
    from dask_gateway.auth import BasicAuth

    return Gateway(gw.address, auth=BasicAuth(user))
