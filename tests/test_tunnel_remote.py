"""A scheduler on another host (a network namespace of its own, tests/support/netns.py): the
gateway cannot hand the client's connection over, so every byte goes through its tunnel,
and must arrive intact both ways. Not timed: bench/proxy_throughput.py --remote measures."""

from __future__ import annotations

import os

import numpy as np
import pytest
from support.netns import netns_gateway, veth_netns
from test_relay_counts import FALLBACKS, HANDOFFS, TO_CLIENT, TO_SCHEDULER, TUNNELS, relay

NBYTES = 64 * 2**20


@pytest.fixture(scope="module")
def remote_gateway(tmp_path_factory):
    with veth_netns(1) as ns, netns_gateway(tmp_path_factory.mktemp("netns-gw"), ns) as gw:
        yield gw


def test_remote_scheduler_traffic_goes_through_the_tunnel_intact(remote_gateway):
    from distributed import Client

    from dask_gateway import Gateway

    gw = remote_gateway
    ns_ip = gw.netns.ns_ip
    rng = np.random.default_rng(21)
    data = np.frombuffer(rng.bytes(NBYTES), dtype=np.uint8)
    before = relay(gw)
    with Gateway(gw.address, auth="basic") as gateway, gateway.new_cluster() as cluster:
        cluster.scale(1)
        with cluster.get_client(set_as_default=False) as client:
            client.wait_for_workers(1, timeout=60)
            # The scheduler and its worker really are on the other "host".
            info = client.scheduler_info()
            assert info["address"].startswith(f"tls://{ns_ip}:")
            assert all(w.startswith(f"tls://{ns_ip}:") for w in info["workers"])
            own_net = os.readlink("/proc/self/ns/net")
            pids = [client.run_on_scheduler(os.getpid), *client.run(os.getpid).values()]
            assert all(os.readlink(f"/proc/{pid}/ns/net") != own_net for pid in pids)

            # Large messages both ways, and a second one concurrently with small ones.
            future = client.scatter(data, direct=False)
            assert np.array_equal(client.gather(future, direct=False), data)
            other = data[::-1].copy()
            big = client.scatter(other, direct=False)
            small = client.map(lambda i: i * i, range(200))
            assert client.gather(small) == [i * i for i in range(200)]
            assert np.array_equal(client.gather(big, direct=False), other)
            assert client.submit(lambda x: int(x.sum()), future).result() == int(data.sum())

            # The same scheduler directly over TLS (the bench's reference): same bytes back.
            with Client(info["address"], security=cluster.security) as direct:
                mine = direct.scatter(data, direct=False)
                assert np.array_equal(direct.gather(mine, direct=False), data)

    after = relay(gw)
    assert after[HANDOFFS] == before[HANDOFFS] and after[FALLBACKS] == before[FALLBACKS]
    assert after[TUNNELS] - before[TUNNELS] >= 1
    # Everything the client sent and got went through the relay.
    assert after[TO_SCHEDULER] - before[TO_SCHEDULER] >= 2 * NBYTES
    assert after[TO_CLIENT] - before[TO_CLIENT] >= 2 * NBYTES
