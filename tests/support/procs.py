"""Find the scheduler and worker processes of a cluster, as an admin would with ps."""

from __future__ import annotations

from pathlib import Path


def cluster_processes(cluster_name: str, role: str) -> list[int]:
    """Pids of live ``role`` ("scheduler" or "worker") processes of ``cluster_name``."""
    marker = f"DASK_GATEWAY_CLUSTER_NAME={cluster_name}".encode()
    module = f"dask_{role}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_bytes().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        # Forked from the fork server: the cluster is named in the process title.
        named = marker in environ.split(b"\0") or f"cluster {cluster_name}]".encode() in cmdline
        if state != b"Z" and named and module in cmdline:
            pids.append(int(entry.name))
    return pids
