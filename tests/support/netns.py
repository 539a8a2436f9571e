"""A "remote host" on this machine: a network namespace joined to the root one by a veth
pair, for schedulers the gateway must reach over a network (no handoff, every byte through
its tunnel). Needs root and ``ip``. Only addresses in 10.88.<index>.0/24, inside the
namespace this makes; other helpers' bridges (e.g. the multi-node Slurm's) are not touched.

Also the gateway side: :func:`netns_gateway` starts a real gateway (with
``configs/netns_gateway_config.py``) listening on the host end of the pair, whose clusters'
schedulers and workers run in the namespace.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from support.gateway_process import GatewayProcess
from support.paths import CONFIGS

NETNS_CONFIG = CONFIGS / "netns_gateway_config.py"


class Netns(NamedTuple):
    name: str  # the namespace (``ip netns exec NAME ...``)
    host_ip: str  # the root namespace's end of the pair
    ns_ip: str  # the namespace's own address


def _ip(*args: str, check: bool = True) -> None:
    subprocess.run(["ip", *args], check=check, capture_output=True)


def _remove(name: str, host_if: str) -> None:
    """Kill what still runs in the namespace, then remove it and the pair (idempotent)."""
    out = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True)
    for pid in out.stdout.split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    _ip("link", "del", host_if, check=False)
    _ip("netns", "del", name, check=False)


@contextlib.contextmanager
def veth_netns(index: int) -> Iterator[Netns]:
    """Namespace ``dgw-tun<index>`` at 10.88.<index>.2, reached from here at
    10.88.<index>.1 over a veth pair (MTU 1500, as an Ethernet link)."""
    name, host_if, ns_if = f"dgw-tun{index}", f"dgwt{index}h", f"dgwt{index}n"
    host_ip, ns_ip = f"10.88.{index}.1", f"10.88.{index}.2"
    _remove(name, host_if)  # a run killed before its cleanup
    try:
        _ip("netns", "add", name)
        _ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if, "netns", name)
        _ip("addr", "add", f"{host_ip}/24", "dev", host_if)
        _ip("link", "set", host_if, "up")
        _ip("-n", name, "addr", "add", f"{ns_ip}/24", "dev", ns_if)
        _ip("-n", name, "link", "set", ns_if, "up")
        _ip("-n", name, "link", "set", "lo", "up")
        yield Netns(name, host_ip, ns_ip)
    finally:
        _remove(name, host_if)


class NetnsGatewayProcess(GatewayProcess):
    """A gateway listening on the host end of a :class:`Netns` (not loopback), so that
    schedulers in the namespace reach its API, and clients its tunnels."""

    def __init__(self, data_dir: Path, netns: Netns, extra_args: list[str] | None = None):
        self.netns = netns
        super().__init__(data_dir, extra_args, config=NETNS_CONFIG, host=netns.host_ip)

    def start(self, timeout: float = 30, health_path: str = "/api/health") -> None:
        """Start it with the namespace in its environment (for the config file)."""
        saved = {k: os.environ.get(k) for k in ("DGW_NETNS", "DGW_NETNS_IP")}
        os.environ.update(DGW_NETNS=self.netns.name, DGW_NETNS_IP=self.netns.ns_ip)
        try:
            super().start(timeout, health_path)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


@contextlib.contextmanager
def netns_gateway(
    data_dir: Path, netns: Netns, extra_args: list[str] | None = None
) -> Iterator[NetnsGatewayProcess]:
    """A started :class:`NetnsGatewayProcess`; stopped (its clusters too) on exit."""
    from support.gateway_process import _kill_leftovers

    gw = NetnsGatewayProcess(data_dir, netns, extra_args)
    gw.start()
    try:
        yield gw
    finally:
        try:
            gw.stop()
        finally:
            _kill_leftovers(gw.data_dir)
