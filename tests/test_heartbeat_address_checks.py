"""The parts that check a heartbeat's addresses (issue 14, finding 4): parsing, the /proc
readers, and the reconciler's rules (the backend confirms a first heartbeat's addresses once,
one check at a time; later heartbeats must repeat them). The attacks themselves, as other
users against real gateways, are in tests/security/test_heartbeat_addresses.py and
tests/test_slurm.py."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket

import pytest
from support.waiting import wait_for_async

from dask_gateway_server.addresses import (
    AddressMoved,
    AddressNotYetKnown,
    AddressRefused,
    MalformedAddress,
    listeners,
    listeners_at,
    parse_address,
    socket_inodes,
)
from dask_gateway_server.backends.base import DBBackendBase
from dask_gateway_server.models import JobStatus, User
from dask_gateway_server.reconciler import Reconciler
from dask_gateway_server.store import Store, load_or_create_key_file


def test_parse_address():
    ok = {
        ("scheduler_address", "tls://10.0.0.5:8786"): ("10.0.0.5", 8786),
        ("scheduler_address", "127.0.0.1:8786"): ("127.0.0.1", 8786),
        ("scheduler_address", "tls://[fd00::2]:8786"): ("fd00::2", 8786),
        ("dashboard_address", "http://192.0.2.2:8787/"): ("192.0.2.2", 8787),
        ("dashboard_address", "http://[::ffff:10.1.2.3]:8787"): ("10.1.2.3", 8787),
        ("api_address", "https://10.0.0.5:8788"): ("10.0.0.5", 8788),
    }
    for (key, value), (ip, port) in ok.items():
        parsed = parse_address(key, value)
        assert (parsed.ip, parsed.port, parsed.value) == (ipaddress.ip_address(ip), port, value)
    assert parse_address("dashboard_address", "") is None  # no dashboard

    malformed = [
        ("scheduler_address", "http://10.0.0.5:8786"),
        ("scheduler_address", ""),
        ("scheduler_address", "tls://[::1"),
        ("scheduler_address", "tls://10.0.0.5"),
        ("scheduler_address", "tls://10.0.0.5:0"),
        ("scheduler_address", "tls://10.0.0.5:99999"),
        ("scheduler_address", "tls://10.0.0.5:x"),
        ("api_address", "10.0.0.5:8788"),
        ("api_address", "http://user:pw@10.0.0.5:8788"),
        ("api_address", "http://10.0.0.5:1/a"),
        ("dashboard_address", "http://10.0.0.5:1?x=1"),
        ("dashboard_address", "http://h.example:1"),
        ("dashboard_address", "http://localhost:8787"),
        ("dashboard_address", "http://10.0.0.5 :1"),
        ("dashboard_address", "http://10.0.0.5:1\n"),
        ("dashboard_address", "http://1:" + "1" * 300),
        ("dashboard_address", "file:///etc/passwd"),
        ("dashboard_address", "gopher://10.0.0.5:70"),
    ]
    for key, value in malformed:
        with pytest.raises(MalformedAddress):
            parse_address(key, value)

    forbidden = [
        "169.254.169.254",
        "169.254.170.2",
        "[fe80::1]",
        "[fe80::1%25eth0]",
        "[fd00:ec2::254]",
        "100.100.100.200",
        "0.0.0.0",
        "[::]",
        "224.0.0.1",
        "255.255.255.255",
        "240.0.0.1",
        "0.1.2.3",
        "[::ffff:169.254.169.254]",
        "[64:ff9b::a9fe:a9fe]",
        "[ff02::1]",
    ]
    for host in forbidden:
        with pytest.raises(AddressRefused) as info:
            parse_address("dashboard_address", f"http://{host}:80")
        assert not isinstance(info.value, MalformedAddress), host


def test_listening_sockets_are_read_from_proc():
    """/proc/net/tcp{,6} entries decoded: address, port, owner and inode of real sockets."""
    made = []
    try:
        for family, host in (
            (socket.AF_INET, "127.0.0.1"),
            (socket.AF_INET, "0.0.0.0"),
            (socket.AF_INET6, "::1"),
        ):
            s = socket.socket(family)
            made.append(s)
            s.bind((host, 0))
            s.listen()
        table = listeners()
        assert table is not None
        mine = socket_inodes(os.getpid())
        for s in made:
            host, port = s.getsockname()[:2]
            inode = os.fstat(s.fileno()).st_ino
            (entry,) = [e for e in table if e.port == port and str(e.ip) == host]
            assert (entry.uid, entry.inode) == (os.getuid(), inode)
            assert inode in mine
        # A connection to 127.0.0.1 could reach a wildcard listener of its port too.
        wildcard_port = made[1].getsockname()[1]
        found = listeners_at(ipaddress.ip_address("127.0.0.1"), wildcard_port, table)
        assert [str(e.ip) for e in found] == ["0.0.0.0"]
        assert (
            listeners_at(ipaddress.ip_address("127.0.0.1"), made[2].getsockname()[1], table) == []
        )
    finally:
        for s in made:
            s.close()


class _Backend(DBBackendBase):
    """A backend whose address check the test drives."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.checks: list[list] = []
        self.outcome: BaseException | None = None
        self.release = asyncio.Event()
        self.release.set()

    async def validate_addresses(self, cluster, addresses):
        self.checks.append([a.value for a in addresses])
        await self.release.wait()
        if self.outcome is not None:
            raise self.outcome


class _Routes:
    def __init__(self):
        self.added: list[tuple] = []

    def add_route(self, name, scheduler, dashboard, dashboard_key=None, **handoff):
        self.added.append((name, scheduler, dashboard, dashboard_key))

    def remove_route(self, name):
        pass


def _heartbeat(port: int, **change) -> dict:
    msg = {
        "scheduler_address": f"tls://127.0.0.1:{port}",
        "dashboard_address": f"http://127.0.0.1:{port + 1}",
        "api_address": f"http://127.0.0.1:{port + 2}",
        "count": 0,
        "active_workers": [],
        "closing_workers": [],
        "closed_workers": [],
    }
    return {**msg, **change}


async def test_first_heartbeat_is_confirmed_once_and_addresses_never_move(tmp_path, caplog):
    store = Store(
        f"sqlite:///{tmp_path / 'db.sqlite'}", [load_or_create_key_file(str(tmp_path / "key"))]
    )
    await store.setup()
    backend = _Backend()
    routes = _Routes()
    log = logging.getLogger("test-heartbeat-addresses")
    reconciler = Reconciler(store, backend, routes, log=log)
    try:
        cluster = await reconciler.create_cluster(User("alice"), {}, {})
        await store.update_cluster(cluster, status=JobStatus.SUBMITTED)

        # Not an address: refused before the backend is asked.
        with pytest.raises(MalformedAddress):
            await reconciler.on_heartbeat(cluster, _heartbeat(1, api_address="ftp://x"))
        # The backend cannot tell yet (a pending job), then fails: neither is a 500, and
        # the cluster stays as it was.
        backend.outcome = AddressNotYetKnown("pending")
        with pytest.raises(AddressNotYetKnown):
            await reconciler.on_heartbeat(cluster, _heartbeat(1000))
        backend.outcome = RuntimeError("squeue exploded")
        with (
            caplog.at_level(logging.WARNING, logger=log.name),
            pytest.raises(AddressNotYetKnown, match="could not check"),
        ):
            await reconciler.on_heartbeat(cluster, _heartbeat(1000))
        assert "Could not check the addresses of cluster" in caplog.text
        assert "Refused a heartbeat of cluster" in caplog.text
        assert (cluster.status, cluster.scheduler_address, routes.added) == (
            JobStatus.SUBMITTED,
            "",
            [],
        )

        # Two first heartbeats at once (a forged one racing the scheduler's): one check at
        # a time; the first confirmed is kept, the other compared and refused.
        backend.outcome = None
        backend.release.clear()
        first = asyncio.ensure_future(reconciler.on_heartbeat(cluster, _heartbeat(2000)))
        second = asyncio.ensure_future(reconciler.on_heartbeat(cluster, _heartbeat(3000)))
        await wait_for_async(
            lambda: len(backend.checks) >= 3, timeout=30, interval=0.01, what="three checks"
        )
        await asyncio.sleep(0.05)
        assert len(backend.checks) == 3  # the second waits for the first's check
        backend.release.set()
        await first
        with pytest.raises(AddressMoved):
            await second
        assert len(backend.checks) == 3
        assert cluster.status == JobStatus.RUNNING
        assert cluster.scheduler_address == "tls://127.0.0.1:2000"
        assert routes.added == [
            (cluster.name, "tls://127.0.0.1:2000", "http://127.0.0.1:2001", cluster.dashboard_key)
        ]

        # Later heartbeats repeat them (and count); none moves them, nor asks the backend.
        await reconciler.on_heartbeat(cluster, _heartbeat(2000, count=1))
        assert cluster.count == 1
        for change in (
            {"dashboard_address": "http://127.0.0.1:5432"},
            {"api_address": "http://127.0.0.1:2001"},
            {"scheduler_address": "tls://127.0.0.1:1"},
            {"dashboard_address": ""},
        ):
            with pytest.raises(AddressMoved):
                await reconciler.on_heartbeat(cluster, _heartbeat(2000, count=0, **change))
        assert cluster.count == 1 and cluster.dashboard_address == "http://127.0.0.1:2001"
        assert len(backend.checks) == 3

        # A cluster stopped while its addresses were being checked does not become RUNNING.
        other = await reconciler.create_cluster(User("alice"), {}, {})
        await store.update_cluster(other, status=JobStatus.SUBMITTED)
        backend.release.clear()
        pending = asyncio.ensure_future(reconciler.on_heartbeat(other, _heartbeat(4000)))
        await wait_for_async(
            lambda: len(backend.checks) >= 4, timeout=30, interval=0.01, what="a fourth check"
        )
        await reconciler.stop_cluster(other)
        backend.release.set()
        await pending
        assert (other.status, other.scheduler_address) == (JobStatus.SUBMITTED, "")
        (loaded,) = [c for c in await store.load() if c.name == cluster.name]
        assert loaded.dashboard_address == "http://127.0.0.1:2001"
    finally:
        reconciler.queue.close()
        await store.close()
