"""Throughput of a TLS connection through the gateway's public port vs direct.

Usage: python bench/proxy_throughput.py [--mb 200] [--runs 3] [--impl splice|transport]
       python bench/proxy_throughput.py --remote [--mb 200] [--runs 5] [--separate-process]

``--remote`` (root, Linux): a real gateway and a real cluster whose scheduler and worker run
on "another host", a network namespace joined by a veth pair (tests/support/netns.py,
10.88.0.0/24): dask scatter(direct=False) and gather(direct=False) of N MB through the
gateway's tunnel and over a direct TLS connection to the same scheduler, taking turns, each
``--runs`` times after a warm-up; medians, spread, the ratio paired by round, what the relay
counted, and the gateway's (or its proxy process's) CPU per GB relayed.

Without ``--remote``:

Three processes, as in production: a TLS sink/source server (stands in for a
scheduler), the Proxy (stands in for the gateway), and this client. Each run
pushes N MB client->server, then pulls N MB server->client, over one TLS
connection whose SNI is "daskgateway-bench". Prints MB/s (median of runs) for
direct and proxied connections, the ratio, and the proxy
process's CPU cost per GB (robust to a busy machine, unlike MB/s).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import socket
import ssl
import statistics
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import MB, cpu_seconds, one_transfer, relay_counts, spread

CHUNK = 1024 * 1024


def make_cert(directory: str) -> tuple[str, str]:
    """A cluster-style self-signed pair, written to files (the server's own generator)."""
    from dask_gateway_server.tls import new_keypair

    cert, key = new_keypair("bench")
    cert_path, key_path = os.path.join(directory, "c.pem"), os.path.join(directory, "k.pem")
    for path, data in ((cert_path, cert), (key_path, key)):
        with open(path, "wb") as f:
            f.write(data)
    return cert_path, key_path


def recv_exact(conn: ssl.SSLSocket, nbytes: int, buf: bytearray) -> None:
    view = memoryview(buf)
    while nbytes:
        n = conn.recv_into(view, min(len(buf), nbytes))
        if not n:
            raise ConnectionError("early EOF")
        nbytes -= n


def server_main(cert: str, key: str, port_q: mp.Queue) -> None:
    """Blocking TLS server: 'U'+size -> read size bytes, reply 'k'; 'D'+size -> send size."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    lsock = socket.create_server(("127.0.0.1", 0))
    port_q.put(lsock.getsockname()[1])

    def serve(raw: socket.socket) -> None:
        buf = bytearray(CHUNK)
        payload = os.urandom(CHUNK)
        with ctx.wrap_socket(raw, server_side=True) as conn:
            while True:
                head = conn.recv(9)
                if not head:
                    return
                op, size = head[:1], int.from_bytes(head[1:9], "big")
                if op == b"U":
                    recv_exact(conn, size, buf)
                    conn.sendall(b"k")
                else:
                    while size:
                        n = min(size, CHUNK)
                        conn.sendall(payload[:n])
                        size -= n

    while True:
        raw, _ = lsock.accept()
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=serve, args=(raw,), daemon=True).start()


def proxy_main(target_port: int, impl: str, port_q: mp.Queue) -> None:
    from tornado import web

    from dask_gateway_server.proxy import Proxy

    async def run() -> None:
        Proxy._kernel_splice = impl == "splice"
        proxy = Proxy(address="127.0.0.1:0")
        await proxy.start(web.Application([]))
        proxy.add_route("bench", f"tls://127.0.0.1:{target_port}", None)
        port_q.put(proxy.http_port)
        await asyncio.Event().wait()

    asyncio.run(run())


def one_run(port: int, cert: str, size: int) -> tuple[float, float]:
    """Return (upload MB/s, download MB/s) for one connection."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cert)
    ctx.check_hostname = False
    raw = socket.create_connection(("127.0.0.1", port))
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    with ctx.wrap_socket(raw, server_hostname="daskgateway-bench") as conn:
        payload = os.urandom(CHUNK)
        buf = bytearray(CHUNK)
        t0 = time.perf_counter()
        conn.sendall(b"U" + size.to_bytes(8, "big"))
        left = size
        while left:
            n = min(left, CHUNK)
            conn.sendall(payload[:n])
            left -= n
        assert conn.recv(1) == b"k"
        t1 = time.perf_counter()
        conn.sendall(b"D" + size.to_bytes(8, "big"))
        recv_exact(conn, size, buf)
        t2 = time.perf_counter()
    mb = size / 1e6
    return mb / (t1 - t0), mb / (t2 - t1)


def remote(args: argparse.Namespace) -> None:
    """A real gateway, its cluster in a network namespace: tunnel vs direct TLS."""
    import resource
    from pathlib import Path

    import numpy as np
    from distributed import Client

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from support.gateway_process import proxy_processes
    from support.netns import netns_gateway, veth_netns

    from dask_gateway import Gateway

    def own_cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    extra = ["--Proxy.separate_process=True"] if args.separate_process else []
    tmp = Path(tempfile.mkdtemp(prefix="dg-tunnel-"))
    data = np.frombuffer(os.urandom(args.mb * MB), dtype=np.uint8)
    # label -> [scatter MB/s], [gather MB/s], [CPU s per GB moved, all processes]
    samples: dict[str, tuple[list[float], list[float], list[float]]] = {
        "tunnel": ([], [], []),
        "direct": ([], [], []),
    }
    with (
        veth_netns(0) as ns,
        netns_gateway(tmp / "gateway", ns, extra) as gw,
        Gateway(gw.address, auth="basic") as gateway,
        gateway.new_cluster() as cluster,
    ):
        cluster.scale(1)
        with cluster.get_client(set_as_default=False) as client:
            client.wait_for_workers(1, timeout=120)
            address = client.scheduler_info()["address"]
            print(f"scheduler {address} in namespace {ns.name}; gateway {gw.address}")
            print(f"(logs of the gateway and the cluster under {tmp}; remove it afterwards)")
            relay_pid = proxy_processes(gw.data_dir)[0] if args.separate_process else gw.proc.pid
            # Same pid namespace: `ip netns exec` changes the network only.
            pids = [
                gw.proc.pid,
                relay_pid,
                client.run_on_scheduler(os.getpid),
                *client.run(os.getpid).values(),
            ]
            pids = list(dict.fromkeys(pids))

            def total_cpu() -> float:
                return own_cpu() + sum(cpu_seconds(pid) for pid in pids)

            with Client(address, security=cluster.security, set_as_default=False) as direct:
                clients = {"tunnel": client, "direct": direct}
                for c in clients.values():
                    one_transfer(c, data)  # warm-up
                before, relay0 = relay_counts(gw), cpu_seconds(relay_pid)
                for i in range(args.runs):
                    for label in ("tunnel", "direct") if i % 2 == 0 else ("direct", "tunnel"):
                        cpu0 = total_cpu()
                        up, down = one_transfer(clients[label], data)
                        samples[label][0].append(up)
                        samples[label][1].append(down)
                        samples[label][2].append((total_cpu() - cpu0) / (2 * len(data) / 1e9))
                after, relay1 = relay_counts(gw), cpu_seconds(relay_pid)
    print(
        f"\n{args.mb} MB each way, {args.runs} runs per path after a warm-up each, paths taking "
        "turns (each round starting with the other one)"
    )
    for label in ("tunnel", "direct"):
        for i, way in enumerate(("scatter", "gather")):
            values = samples[label][i]
            print(
                f"{way:7s} {label:6s} median {statistics.median(values):7.1f} MB/s  "
                f"spread {spread(values):5.1f} %   samples " + " ".join(f"{v:.0f}" for v in values)
            )
    for i, way in enumerate(("scatter", "gather")):
        pairs = zip(samples["tunnel"][i], samples["direct"][i], strict=True)
        paired = statistics.median(t / d for t, d in pairs)
        ratio = statistics.median(samples["tunnel"][i]) / statistics.median(samples["direct"][i])
        print(
            f"{way:7s} tunnel / direct: {100 * ratio:5.1f} % (ratio of medians), "
            f"{100 * paired:5.1f} % (paired by round, median)"
        )
    cpu = {label: statistics.median(samples[label][2]) for label in samples}
    print(
        "CPU of client + gateway + scheduler + worker per GB moved (scatter + gather), "
        f"median: tunnel {cpu['tunnel']:.2f} s, direct {cpu['direct']:.2f} s; "
        f"direct / tunnel {100 * cpu['direct'] / cpu['tunnel']:.1f} % (the throughput ratio "
        "where CPU is the limit, as on this shared machine; robust to its load)"
    )
    key = "dask_gateway_proxy_tunnel_bytes_total"
    relayed = sum(v - before.get(k, 0) for k, v in after.items() if k.startswith(key))
    handoffs = after.get('dask_gateway_proxy_connections_total{path="handoff"}', 0)
    print(
        f"relayed by the gateway's tunnels: {relayed / MB:.0f} MB (handoffs: {handoffs:.0f}); "
        f"{'proxy process' if args.separate_process else 'gateway process'} CPU "
        f"{(relay1 - relay0) / (relayed / 1e9) if relayed else float('nan'):.2f} s per GB relayed"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--runs", type=int, default=None, help="default 3; 5 with --remote")
    parser.add_argument("--impl", default="splice", choices=["splice", "transport"])
    parser.add_argument("--remote", action="store_true", help="scheduler in a network namespace")
    parser.add_argument(
        "--separate-process", action="store_true", help="--remote: Proxy.separate_process"
    )
    args = parser.parse_args()
    if args.remote:
        args.runs = args.runs or 5
        remote(args)
        return
    args.runs = args.runs or 3
    size = args.mb * 1024 * 1024

    tmp = tempfile.mkdtemp()
    cert, key = make_cert(tmp)
    ctx = mp.get_context("spawn")
    q: mp.Queue = ctx.Queue()
    server = ctx.Process(target=server_main, args=(cert, key, q), daemon=True)
    server.start()
    server_port = q.get(timeout=30)
    proxy = ctx.Process(target=proxy_main, args=(server_port, args.impl, q), daemon=True)
    proxy.start()
    proxy_port = q.get(timeout=30)

    one_run(server_port, cert, CHUNK)  # warm up both paths
    one_run(proxy_port, cert, CHUNK)
    results: dict[str, list[tuple[float, float]]] = {"direct": [], "proxied": []}
    proxy_cpu = 0.0
    for _ in range(args.runs):  # interleave so machine noise hits both alike
        results["direct"].append(one_run(server_port, cert, size))
        before = cpu_seconds(proxy.pid)
        results["proxied"].append(one_run(proxy_port, cert, size))
        proxy_cpu += cpu_seconds(proxy.pid) - before

    medians = {}
    for name, runs in results.items():
        up = statistics.median(r[0] for r in runs)
        down = statistics.median(r[1] for r in runs)
        both = statistics.median(2 / (1 / r[0] + 1 / r[1]) for r in runs)
        medians[name] = (up, down, both)
        print(
            f"{name:8s} upload {up:8.1f} MB/s   download {down:8.1f} MB/s   "
            f"combined {both:8.1f} MB/s   (median of {len(runs)}, {args.mb} MiB each way)"
        )
    d, p = medians["direct"], medians["proxied"]
    print(
        f"ratio    upload {p[0] / d[0]:8.1%}        download {p[1] / d[1]:8.1%}        "
        f"combined {p[2] / d[2]:8.1%}"
    )
    gb_moved = 2 * size * args.runs / 1e9
    print(f"proxy process CPU: {proxy_cpu / gb_moved:.2f} s per GB relayed ({args.impl})")
    proxy.terminate()
    server.terminate()
    sys.stdout.flush()


if __name__ == "__main__":
    main()
