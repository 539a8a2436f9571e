"""Which path a client's scheduler connection took, as /metrics tells it: handed to a local
scheduler (its bytes never pass the gateway), or relayed by a tunnel (every byte counted).
Benchmarks read the same counters to say what they measured."""

from __future__ import annotations

import numpy as np
import pytest
from support.paths import CONFIGS
from test_metrics import scrape

HANDOFFS = 'dask_gateway_proxy_connections_total{path="handoff"}'
TUNNELS = 'dask_gateway_proxy_connections_total{path="tunnel"}'
FALLBACKS = "dask_gateway_proxy_handoff_fallbacks_total"
TO_SCHEDULER = 'dask_gateway_proxy_tunnel_bytes_total{direction="to_scheduler"}'
TO_CLIENT = 'dask_gateway_proxy_tunnel_bytes_total{direction="to_client"}'
OPEN = "dask_gateway_proxy_open_tunnels"
NBYTES = 16 * 2**20


def relay(gw) -> dict[str, float]:
    m = scrape(gw)
    return {k: m[k] for k in (HANDOFFS, TUNNELS, FALLBACKS, TO_SCHEDULER, TO_CLIENT, OPEN)}


def round_trip(gw) -> None:
    """A cluster with a worker; NBYTES scattered through the scheduler and gathered back."""
    from dask_gateway import Gateway

    data = np.frombuffer(np.random.default_rng(7).bytes(NBYTES), dtype=np.uint8)
    with Gateway(gw.address, auth="basic") as gateway:
        with gateway.new_cluster() as cluster:
            cluster.scale(1)
            with cluster.get_client(set_as_default=False) as client:
                client.wait_for_workers(1, timeout=60)
                future = client.scatter(data, direct=False)
                back = client.gather(future, direct=False)
                assert np.array_equal(back, data)


def test_local_scheduler_connections_are_handed_off(gateway):
    before = relay(gateway)
    round_trip(gateway)
    after = relay(gateway)
    assert after[HANDOFFS] - before[HANDOFFS] >= 1
    # Nothing was tunnelled: the data never went through the gateway.
    for key in (TUNNELS, FALLBACKS, TO_SCHEDULER, TO_CLIENT):
        assert after[key] == before[key], key


@pytest.mark.parametrize("separate", [False, True], ids=["in-process", "separate-process"])
def test_tunnelled_connections_and_bytes_are_counted(fresh_gateway, separate):
    """Without a handoff (as for a scheduler on another host) every byte goes through the
    relay, and is counted there, also when the relay runs in its own process."""
    args = ["--Proxy.separate_process=True"] if separate else []
    gw = fresh_gateway(args, config=CONFIGS / "tunnel_gateway_config.py")
    gw.start()
    before = relay(gw)
    assert before[HANDOFFS] == before[TUNNELS] == before[TO_SCHEDULER] == 0
    round_trip(gw)
    after = relay(gw)
    assert after[HANDOFFS] == 0 and after[FALLBACKS] == 0
    assert after[TUNNELS] >= 1
    assert after[TO_SCHEDULER] >= NBYTES
    assert after[TO_CLIENT] >= NBYTES


async def test_counts_from_a_proxy_process_old_or_new():
    """The gateway asks its separate proxy process for the counts; one that does not know
    the question (a process older than it) is asked once, not at every scrape."""
    import asyncio
    import json
    import socket

    from dask_gateway_server.proxy import Proxy, ProxyLink
    from dask_gateway_server.proxy.process import _Channel

    loop = asyncio.get_running_loop()
    for answers in (True, False):
        link = ProxyLink(Proxy())
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        theirs.setblocking(False)
        asked: list[dict] = []

        def on_question(theirs=theirs, asked=asked, answers=answers) -> None:
            msg = json.loads(theirs.recv(65536))
            asked.append(msg)
            if answers:
                counts = {"handoffs": 3, "tunnels": 2, "bytes_to_client": 7, "bad": "x"}
                theirs.send(json.dumps({"op": "stats", "counts": counts}).encode())

        loop.add_reader(theirs.fileno(), on_question)
        link.channel = _Channel(ours, link._on_message, link._on_close)
        try:
            first = await link.relay_counts()
            second = await link.relay_counts()
        finally:
            loop.remove_reader(theirs.fileno())
            link.channel.close()
            theirs.close()
        if answers:
            assert first == second == {"handoffs": 3, "tunnels": 2, "bytes_to_client": 7}
            assert asked == [{"op": "stats"}] * 2
        else:
            assert first is None and second is None
            assert asked == [{"op": "stats"}]  # not asked again
