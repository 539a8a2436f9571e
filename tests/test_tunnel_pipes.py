"""The splice tunnels' pipes: default-sized while a connection is quiet, 1 MiB while it moves
bulk data, default-sized again after. The kernel charges a user's pipes at their size
(fs/pipe-user-pages-soft, 64 MiB): pipes of 1 MiB from the start left a non-root gateway
with 8 KiB pipes (many more wakeups per byte) from its 33rd tunnel on, idle or not."""

from __future__ import annotations

import asyncio
import fcntl
import os
import socket

from support.waiting import wait_for_async
from test_proxy import client_hello, raw_connect
from tornado import web

from dask_gateway_server.proxy import Proxy
from dask_gateway_server.proxy.tunnels import _SPLICE_HIGH_WATER, SpliceTunnel


def pipe_size(fd: int) -> int:
    return fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ)


async def test_pipes_grow_for_bulk_data_and_shrink_when_quiet():
    loop = asyncio.get_running_loop()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    proxy = Proxy(address="127.0.0.1:0")
    await proxy.start(web.Application([]))
    proxy.add_route("bulk", f"127.0.0.1:{listener.getsockname()[1]}", None)
    client = await raw_connect(proxy.tcp_port)
    try:
        hello = client_hello("daskgateway-bulk")
        await loop.sock_sendall(client, hello)
        upstream, _ = await loop.sock_accept(listener)
        first = b""
        while len(first) < len(hello):
            first += await loop.sock_recv(upstream, len(hello) - len(first))
        assert first == hello  # a small first read
        (tunnel,) = proxy._tunnels
        assert isinstance(tunnel, SpliceTunnel)
        to_scheduler, to_client = tunnel.pumps
        small = to_scheduler.small
        # A quiet connection's pipes stay at the default size.
        assert [pipe_size(p.pipe_w) for p in tunnel.pumps] == [small, small]

        # Bulk data while the scheduler does not read: the pipe fills, and grows.
        payload = os.urandom(8 * 2**20)
        send = asyncio.ensure_future(loop.sock_sendall(client, payload))
        await wait_for_async(
            lambda: pipe_size(to_scheduler.pipe_w) == _SPLICE_HIGH_WATER, timeout=10
        )
        assert to_scheduler.capacity == _SPLICE_HIGH_WATER
        assert pipe_size(to_client.pipe_w) == small  # the other way stays quiet

        # Every byte arrives, in order.
        got = bytearray()
        while len(got) < len(payload):
            got += await loop.sock_recv(upstream, 2**20)
        await send
        assert got == payload

        # A small message after the transfer: once it has passed, the pipe is small again.
        await loop.sock_sendall(client, b"ping")
        assert await loop.sock_recv(upstream, 16) == b"ping"
        await wait_for_async(lambda: pipe_size(to_scheduler.pipe_w) == small, timeout=10)

        # And back the other way, through the other pump, just as well.
        await loop.sock_sendall(upstream, payload)
        got = bytearray()
        while len(got) < len(payload):
            got += await loop.sock_recv(client, 2**20)
        assert got == payload
        assert proxy.counts.bytes_to_client == len(payload)
        assert proxy.counts.bytes_to_scheduler == len(hello) + len(payload) + 4
    finally:
        client.close()
        await proxy.stop()
        listener.close()
