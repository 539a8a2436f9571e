"""Byte tunnels between a dask client and its scheduler: asyncio transports with flow
control, or (Linux) splice(2) pumps that move the bytes inside the kernel."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from dataclasses import asdict, dataclass

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["HAVE_SPLICE", "RelayCounts", "SpliceTunnel", "Tunnel"]

# Splice tuning: large reads amortise per-syscall/event-loop overhead; the
# write-buffer high-water mark bounds memory per direction while keeping both
# sockets busy.
_SPLICE_BUFSIZE = 256 * 1024
_SPLICE_HIGH_WATER = 1024 * 1024
# A pump's pipe grows to _SPLICE_HIGH_WATER after a read of at least _BULK_READ bytes, and
# shrinks back to the default once empty after one of less than _SMALL_READ (hysteresis).
_BULK_READ = 16 * 1024
_SMALL_READ = 4 * 1024


@dataclass
class RelayCounts:
    """What the public port did with scheduler (TLS/SNI) connections since it started:
    whether the handoff engaged, and what the tunnels carried. Totals only, no names, so
    /metrics may show them; the benchmarks read them to say which path they measured."""

    handoffs: int = 0  # connections passed to a local scheduler (bytes never seen here)
    tunnels: int = 0  # connections relayed by a tunnel
    handoff_fallbacks: int = 0  # had a handoff address, but were tunnelled after all
    bytes_to_scheduler: int = 0
    bytes_to_client: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class _Pipe(asyncio.BufferedProtocol):
    """One socket of a tunnel; what it reads is written to its peer's socket.

    Flow control: when *our* transport's write buffer is full (peer reads
    faster than we can send) we stop the peer from reading, and resume when it
    drains, so memory stays bounded at the high-water mark per direction.
    """

    def __init__(self, tunnel: Tunnel) -> None:
        self.tunnel = tunnel
        self.peer: _Pipe | None = None
        self.transport: asyncio.Transport | None = None
        self.eof = False
        self.closed = False
        self.to_scheduler = False  # the client's side: what it reads goes to the scheduler
        self._buf = memoryview(bytearray(_SPLICE_BUFSIZE))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(high=_SPLICE_HIGH_WATER)  # type: ignore[attr-defined]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        if self.peer is None:
            # Not linked yet (upstream connected before the client was wrapped):
            # don't read until there is somewhere to put the bytes.
            transport.pause_reading()  # type: ignore[attr-defined]

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._buf

    def buffer_updated(self, nbytes: int) -> None:
        # transport.write sends immediately when it can and copies only the
        # unsent remainder, so reusing our buffer afterwards is safe.
        self.peer.transport.write(self._buf[:nbytes])  # type: ignore[union-attr]
        counts = self.tunnel.counts
        if self.to_scheduler:
            counts.bytes_to_scheduler += nbytes
        else:
            counts.bytes_to_client += nbytes

    def eof_received(self) -> bool:
        self.eof = True
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.closed:
            if peer.eof:
                self.tunnel.close()
                return False
            if peer.transport.can_write_eof():
                peer.transport.write_eof()
            else:
                self.tunnel.close()
                return False
        return True  # keep our write side open: half-close

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.closed:
            if exc is None:
                peer.transport.close()  # flushes what is still buffered
            else:
                peer.transport.abort()
        self.tunnel.lost(self)


class Tunnel:
    """A client<->scheduler byte splice over asyncio transports.

    Kept in ``registry`` (the proxy's set of live tunnels, so its stop() can close them)
    while either side is open.
    """

    def __init__(
        self,
        registry: set[Tunnel | SpliceTunnel],
        cluster_name: str,
        counts: RelayCounts | None = None,
    ) -> None:
        self.registry = registry
        self.cluster_name = cluster_name
        self.counts = counts if counts is not None else RelayCounts()
        self.client = _Pipe(self)
        self.client.to_scheduler = True
        self.upstream = _Pipe(self)
        self.client.peer = self.upstream
        self.upstream.peer = self.client

    def close(self) -> None:
        for p in (self.client, self.upstream):
            if p.transport is not None and not p.closed:
                p.transport.close()

    def abort(self) -> None:
        for p in (self.client, self.upstream):
            if p.transport is not None and not p.closed:
                p.transport.abort()
        self.registry.discard(self)

    def lost(self, pipe: _Pipe) -> None:
        if all(p.closed or p.transport is None for p in (self.client, self.upstream)):
            self.registry.discard(self)


HAVE_SPLICE = fcntl is not None and hasattr(os, "splice") and hasattr(fcntl, "F_SETPIPE_SZ")
_SPLICE_FLAGS = (os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK) if HAVE_SPLICE else 0


class _SplicePump:
    """One direction of a kernel-splice tunnel: src socket -> pipe -> dst socket.

    Callback-driven on the event loop (no task per chunk); readable src fills
    the pipe, the pipe drains into dst; when the pipe is full we stop watching
    src, which is the flow control. EOF on src becomes shutdown(SHUT_WR) on
    dst once the pipe is empty (half-close).
    """

    def __init__(
        self, tunnel: SpliceTunnel, src: socket.socket, dst: socket.socket, to_scheduler: bool
    ) -> None:
        self.tunnel = tunnel
        self.to_scheduler = to_scheduler
        self.loop = tunnel.loop
        self.src = src.fileno()
        self.dst_sock = dst
        self.dst = dst.fileno()
        self.pipe_r, self.pipe_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        # Pipes start at the default size (64 KiB) and grow to _SPLICE_HIGH_WATER only while
        # a transfer fills them (see _grow/_shrink): the kernel charges a user's pipes at
        # their size (fs/pipe-user-pages-soft: 64 MiB), and past that a non-root gateway's
        # new pipes would get 8 KiB and no growing: 1 MiB each from the start ran out
        # after 32 tunnels, idle or not.
        self.small = self.capacity = fcntl.fcntl(self.pipe_w, fcntl.F_GETPIPE_SZ)
        self.grow_after = 0.0  # loop time before which growing is not tried again
        self.last_read = 0
        self.pending = 0
        self.reading = False
        self.writing = False
        self.eof = False
        self.done = False

    def start(self) -> None:
        self._want_read(True)

    def _want_read(self, on: bool) -> None:
        if on and not self.reading:
            self.loop.add_reader(self.src, self._on_readable)
        elif not on and self.reading:
            self.loop.remove_reader(self.src)
        self.reading = on

    def _want_write(self, on: bool) -> None:
        if on and not self.writing:
            self.loop.add_writer(self.dst, self._flush)
        elif not on and self.writing:
            self.loop.remove_writer(self.dst)
        self.writing = on

    def _on_readable(self) -> None:
        room = self.capacity - self.pending
        if room <= 0:
            self._want_read(False)
            return
        try:
            n = os.splice(self.src, self.pipe_w, room, flags=_SPLICE_FLAGS)
        except (BlockingIOError, InterruptedError):
            if self.pending:
                # The pipe counts slots, not bytes: it can be "full" before
                # `capacity` bytes. Stop watching src (a readable socket would
                # otherwise spin us) until the pipe drains a little.
                self._want_read(False)
                if self.capacity < _SPLICE_HIGH_WATER:
                    self._grow()
            return
        except OSError as exc:
            self.tunnel.fail(exc)
            return
        if n == 0:
            self.eof = True
            self._want_read(False)
        self.pending += n
        self.last_read = n
        if n >= _BULK_READ and self.capacity < _SPLICE_HIGH_WATER:
            self._grow()
        self._flush()

    def _grow(self) -> None:
        """A large read (or a full pipe): a transfer is on, make room for larger reads. (A
        read is bounded by the pipe's slots, one per received segment, so a transfer over
        a 1500-byte-MTU link fills 16 slots with ~23 KiB: hence "large", not "full".)"""
        if self.loop.time() < self.grow_after:
            return
        try:
            self.capacity = fcntl.fcntl(self.pipe_w, fcntl.F_SETPIPE_SZ, _SPLICE_HIGH_WATER)
        except OSError:  # over the user's pipe quota (or pipe-max-size): try again later
            self.grow_after = self.loop.time() + 1.0

    def _shrink(self) -> None:
        """The pipe is empty after a small read: the transfer is over; give the room back."""
        try:
            self.capacity = fcntl.fcntl(self.pipe_w, fcntl.F_SETPIPE_SZ, self.small)
        except OSError:
            pass

    def _flush(self) -> None:
        while self.pending:
            try:
                m = os.splice(self.pipe_r, self.dst, self.pending, flags=_SPLICE_FLAGS)
            except (BlockingIOError, InterruptedError):
                self._want_write(True)  # dst is full; the pipe buffers meanwhile
                return
            except OSError as exc:
                self.tunnel.fail(exc)
                return
            self.pending -= m
            if self.to_scheduler:
                self.tunnel.counts.bytes_to_scheduler += m
            else:
                self.tunnel.counts.bytes_to_client += m
            if not self.reading and not self.eof:
                self._want_read(True)  # room again in the pipe
        self._want_write(False)
        if self.capacity > self.small and self.last_read < _SMALL_READ:
            self._shrink()
        if self.eof:
            try:
                self.dst_sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            self.done = True
            self.tunnel.pump_done()

    def close(self) -> None:
        self._want_read(False)
        self._want_write(False)
        for fd in (self.pipe_r, self.pipe_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self.pipe_r = self.pipe_w = -1


class SpliceTunnel:
    """A client<->scheduler tunnel using splice(2); kept in ``registry`` until closed."""

    def __init__(
        self,
        registry: set[Tunnel | SpliceTunnel],
        log: logging.Logger,
        client: socket.socket,
        upstream: socket.socket,
        counts: RelayCounts | None = None,
    ) -> None:
        self.registry = registry
        self.log = log
        self.counts = counts if counts is not None else RelayCounts()
        self.loop = asyncio.get_running_loop()
        self.client = client
        self.upstream = upstream
        for s in (client, upstream):
            try:
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        self.pumps: list[_SplicePump] = []
        self.closed = False
        try:  # pipes can run out (EMFILE): release what we got, let the caller close
            self.pumps.append(_SplicePump(self, client, upstream, to_scheduler=True))
            self.pumps.append(_SplicePump(self, upstream, client, to_scheduler=False))
        except OSError:
            for p in self.pumps:
                p.close()
            raise

    def start(self) -> None:
        for p in self.pumps:
            p.start()

    def pump_done(self) -> None:
        if all(p.done for p in self.pumps):
            self.close()

    def fail(self, exc: Exception) -> None:
        self.log.debug("Tunnel closed on error: %r", exc)
        self.abort()

    def abort(self) -> None:
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for p in self.pumps:
            p.close()
        self.client.close()
        self.upstream.close()
        self.registry.discard(self)
