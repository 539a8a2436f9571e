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
