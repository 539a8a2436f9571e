"""Gateway secrets in every scheduler's memory (issue 14, finding 5).

Schedulers and workers are forked from a pre-started interpreter (the fork server). Whatever
that process ever held is in every child's memory, which the child's user may read
(/proc/self/mem). It must never hold the gateway's secrets (its environment: database keys,
the hub's token) nor any cluster's (the environment of each process it forks). And, run as
root, it must not import a Python environment someone else can write to.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

from cryptography.fernet import Fernet
from support.waiting import wait_for
from users import ALICE, BOB, SHARED_VENV, in_scheduler, run_as, user_gateway

# Searches a process's memory for secrets given in two halves each (so that the search itself
# never holds a whole secret); also its initial environment. Run by a user's scheduler on
# itself, as its code could.
SCAN = """
def scan(pid, halves):
    found = set()
    if pid == "self":  # a process that dropped root is not dumpable; it may make itself so
        import ctypes

        ctypes.CDLL(None).prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE
    with open(f"/proc/{pid}/environ", "rb") as f:
        environ = f.read()
    with open(f"/proc/{pid}/maps") as f:
        maps = f.read().splitlines()
    longest = max(len(a) + len(b) for a, b in halves.values())
    with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        for line in maps:
            fields = line.split()
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            if "r" not in fields[1] or fields[-1] in ("[vvar]", "[vsyscall]", "[vvar_vclock]"):
                continue
            pos = lo
            while pos < hi:
                try:
                    mem.seek(pos)
                    chunk = mem.read(min((1 << 22) + longest, hi - pos))
                except OSError:
                    break
                for label, (a, b) in halves.items():
                    i = chunk.find(a)
                    while i >= 0 and label not in found:
                        if chunk.startswith(b, i + len(a)):
                            found.add(label)
                        i = chunk.find(a, i + 1)
                pos += 1 << 22
        for label, (a, b) in halves.items():
            i = environ.find(a)
            if i >= 0 and environ.startswith(b, i + len(a)):
                found.add(label)
    return sorted(found)
"""


def _halves(secrets: dict[str, str]) -> dict[str, tuple[bytes, bytes]]:
    return {k: (v[: len(v) // 2].encode(), v[len(v) // 2 :].encode()) for k, v in secrets.items()}


def _scan_here(pid: int, secrets: dict[str, str]) -> list[str]:
    namespace: dict = {}
    exec(SCAN, namespace)
    return namespace["scan"](pid, _halves(secrets))


def _fork_servers(gw, python: str) -> list[int]:
    """Pids of the fork servers of ``python`` that gateway process ``gw`` started."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
                ppid = int((entry / "stat").read_bytes().rsplit(b")", 1)[1].split()[1])
            except OSError:
                continue
            if (
                ppid == gw.proc.pid
                and cmdline[:1] == [python.encode()]
                and any(a.endswith(b"/zygote.py") for a in cmdline)
            ):
                pids.append(int(entry.name))
    return pids


def test_no_gateway_or_other_cluster_secret_in_a_users_memory(
    make_root_gateway, monkeypatch, shared_python
):
    secrets = {
        "DASK_GATEWAY_ENCRYPT_KEYS": Fernet.generate_key().decode(),
        "JUPYTERHUB_API_TOKEN": "hub-token-" + os.urandom(16).hex(),
    }
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    gw = make_root_gateway()
    bob, alice = user_gateway(gw, BOB), user_gateway(gw, ALICE)
    try:
        # Bob's cluster first, through the same fork server: its token passed by there.
        bobs = bob.new_cluster()
        with bobs.get_client() as client:
            secrets["bob's cluster token"] = in_scheduler(
                client, "import os; result = os.environ['DASK_GATEWAY_API_TOKEN']"
            )
        cluster = alice.new_cluster()
        with cluster.get_client() as client:
            found = in_scheduler(
                client,
                SCAN
                + textwrap.dedent(f"""
                import os
                halves = {_halves(secrets)!r}
                own = os.environ["DASK_GATEWAY_API_TOKEN"]  # found: the search works
                halves["alice's own token"] = (own[:len(own) // 2].encode(),
                                               own[len(own) // 2:].encode())
                with open("/proc/self/cmdline", "rb") as f:
                    forked = b"[dask-gateway cluster" in f.read()
                result = forked, os.getuid(), scan("self", halves)
            """),
            )
            forked, uid, leaked = found
            assert forked, "alice's scheduler did not come from the fork server"
            assert uid != 0
            assert leaked == ["alice's own token"]
            # The legitimate use: the cluster computes.
            cluster.scale(1)
            client.wait_for_workers(1, timeout=60)
            assert client.submit(lambda x: x * 2, 21).result() == 42
        # Nor does the fork server itself hold any of them.
        (zygote,) = _fork_servers(gw, shared_python)
        assert _scan_here(zygote, secrets) == []
        cluster.shutdown()
        bobs.shutdown()
    finally:
        alice.close()
        bob.close()


WRITABLE_ENV_CONFIG = """
exec(open({base!r}).read())
from dask_gateway_server.options import Options, Select

c.Backend.cluster_options = Options(
    Select("environment", [("shared", {shared!r}), ("bobs", {bobs!r})], target="python"),
    handler=lambda options: {{"python": options.python}},
)
"""


def test_root_fork_server_never_imports_a_user_writable_environment(
    make_root_gateway, public_tmp, tmp_path, local_users
):
    """Bob makes a Python environment of his own (a venv using the shared packages) and gets
    it offered; a line of his in it runs when Python starts. The gateway, as root, must not
    start a fork server of it (that would run bob's line as root)."""
    tmp = public_tmp / "tmp"
    tmp.mkdir()
    tmp.chmod(0o1777)
    bobenv = tmp / "bobenv"
    made = run_as(
        BOB,
        textwrap.dedent(f"""
        import glob, os, subprocess, sys
        subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", {str(bobenv)!r}],
                       check=True)
        (site,) = glob.glob({str(bobenv)!r} + "/lib/python3*/site-packages")
        shared, = glob.glob({SHARED_VENV!r} + "/lib/python3*/site-packages")
        with open(site + "/shared.pth", "w") as f:
            f.write(shared + "\\n")
        with open(site + "/zz_bob.pth", "w") as f:
            f.write("import os; open({str(tmp)!r} + '/ran-as-%d' % os.getuid(), 'a').close()\\n")
    """),
        timeout=120,
    )
    assert made.returncode == 0, made.stderr
    bobs_python = str(bobenv / "bin" / "python")
    config = tmp_path / "writable_env_config.py"
    config.write_text(
        WRITABLE_ENV_CONFIG.format(
            base=str(Path(__file__).parent / "gateway_config.py"),
            shared=f"{SHARED_VENV}/bin/python",
            bobs=bobs_python,
        )
    )
    gw = make_root_gateway(config=config)
    alice = user_gateway(gw, ALICE)
    try:
        cluster = alice.new_cluster(environment="bobs")
        cluster.scale(1)
        with cluster.get_client() as client:
            client.wait_for_workers(1, timeout=120)
            assert client.submit(lambda x: x + 1, 41).result() == 42
        cluster.shutdown()
    finally:
        alice.close()
    ran = sorted(p.name for p in tmp.glob("ran-as-*"))
    assert "ran-as-0" not in ran, "bob's code ran as root"
    assert ran == [f"ran-as-{local_users[ALICE].uid}"]
    assert f"No fork server for {bobs_python}" in gw.log()
    assert f"is owned by {BOB}" in gw.log()
    # The shared environment, root's alone, still has its fork server.
    wait_for(
        lambda: _fork_servers(gw, f"{SHARED_VENV}/bin/python"),
        timeout=30,
        what="the shared environment's fork server",
    )
