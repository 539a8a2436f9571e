"""Hostile clients on the public port: huge requests, slow clients, garbage bytes, truncated
TLS. Each is turned away without harming anyone else's work."""

from __future__ import annotations

import os
import socket
import time

from support.http_helpers import basic, call

ALICE = basic("alice")


def healthy(gw) -> None:
    start = time.monotonic()
    r = call("GET", f"{gw.address}/api/v1/clusters/", headers=ALICE, timeout=10)
    assert r.status == 200
    assert time.monotonic() - start < 5


def raw(gw, data: bytes, timeout: float = 10) -> bytes:
    """Send ``data`` and return what comes back before the server closes."""
    with socket.create_connection(("127.0.0.1", gw.port), timeout=timeout) as s:
        try:
            s.sendall(data)
        except OSError:
            pass
        chunks = []
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except OSError:
            pass
    return b"".join(chunks)


def test_oversized_body_and_headers(gateway):
    body = b"{" + b" " * (20 * 1024 * 1024) + b"}"
    head = (
        f"POST /api/v1/clusters/ HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
        f"Authorization: {ALICE['Authorization']}\r\n\r\n"
    ).encode()
    answer = raw(gateway, head + body[: 1024 * 1024])
    assert not answer.startswith(b"HTTP/1.1 2")
    answer = raw(
        gateway, b"GET /api/health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n"
    )
    assert not answer.startswith(b"HTTP/1.1 2")
    healthy(gateway)


def test_garbage_and_truncated_tls_are_closed(gateway):
    conns = []
    try:
        for payload in [os.urandom(512) for _ in range(20)] + [
            # A TLS record header promising a ClientHello that never completes.
            bytes([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xFC]) + b"\x03\x03",
            # A ClientHello with a valid header and a random body.
            bytes([0x16, 0x03, 0x01, 0x00, 0x40]) + os.urandom(64),
        ]:
            s = socket.create_connection(("127.0.0.1", gateway.port), timeout=60)
            s.sendall(payload)
            conns.append(s)
        healthy(gateway)  # while they hang on
        # The truncated hellos are dropped once the proxy stops waiting for the rest.
        start = time.monotonic()
        for s in conns[-2:]:
            try:
                while s.recv(65536):
                    pass
            except OSError:
                pass
        assert time.monotonic() - start < 40
    finally:
        for s in conns:
            s.close()
    healthy(gateway)


def test_slow_clients_do_not_block_others(gateway):
    from dask_gateway import Gateway

    with Gateway(gateway.address, auth="basic") as gw, gw.new_cluster() as cluster:
        cluster.scale(1)
        client = cluster.get_client()
        client.wait_for_workers(1, timeout=60)
        slow = []
        try:
            for _ in range(100):  # slowloris: headers trickle in, never finish
                s = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
                s.sendall(b"GET /api/v1/clusters/ HTTP/1.1\r\nHost: x\r\n")
                slow.append(s)
            for _ in range(3):
                for s in slow:
                    try:
                        s.sendall(b"X-a: b\r\n")
                    except OSError:
                        pass
                healthy(gateway)
                # Scheduler traffic through the same port keeps flowing.
                assert client.submit(lambda: 1 + 1, pure=False).result(timeout=30) == 2
        finally:
            for s in slow:
                s.close()
        client.close()
    healthy(gateway)
