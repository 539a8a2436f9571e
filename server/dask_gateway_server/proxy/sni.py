"""TLS ClientHello parsing: the server name (SNI) a dask client asks for, read from the
peeked first bytes of a connection (nothing is consumed)."""

from __future__ import annotations

__all__ = ["SNI_PREFIX", "ClientHelloError", "parse_client_hello"]

SNI_PREFIX = "daskgateway-"

TLS_HANDSHAKE = 0x16
_HELLO_TYPE = 0x01
# Upper bound on how many bytes we are willing to peek for a ClientHello.
# Real hellos are < 2 KiB (a few KiB with post-quantum key shares); this keeps
# a hostile peer from making us buffer a 16 MiB handshake message.
_MAX_HELLO_BYTES = 64 * 1024
_MAX_RECORD = 16384 + 2048


class ClientHelloError(ValueError):
    """The peeked bytes are not a well-formed (or acceptably small) ClientHello."""


def _u16(buf: bytes, pos: int) -> int:
    if pos + 2 > len(buf):
        raise ClientHelloError("truncated")
    return (buf[pos] << 8) | buf[pos + 1]


def _extract_sni(body: bytes) -> str | None:
    """Return the host_name from a ClientHello body (after the 4-byte header)."""
    pos = 2 + 32  # legacy_version, random
    if pos + 1 > len(body):
        raise ClientHelloError("truncated")
    pos += 1 + body[pos]  # session id
    pos += 2 + _u16(body, pos)  # cipher suites
    if pos + 1 > len(body):
        raise ClientHelloError("truncated")
    pos += 1 + body[pos]  # compression methods
    if pos > len(body):
        raise ClientHelloError("truncated")
    if pos == len(body):
        return None  # no extensions at all
    end = pos + 2 + _u16(body, pos)
    pos += 2
    if end > len(body):
        raise ClientHelloError("extensions overflow")
    while pos + 4 <= end:
        ext_type = _u16(body, pos)
        ext_len = _u16(body, pos + 2)
        pos += 4
        if pos + ext_len > end:
            raise ClientHelloError("extension overflow")
        if ext_type == 0:  # server_name
            list_end = pos + 2 + _u16(body, pos)
            q = pos + 2
            if list_end > pos + ext_len:
                raise ClientHelloError("server_name overflow")
            while q + 3 <= list_end:
                name_type = body[q]
                name_len = _u16(body, q + 1)
                q += 3
                if q + name_len > list_end:
                    raise ClientHelloError("server_name overflow")
                if name_type == 0:
                    try:
                        return body[q : q + name_len].decode("ascii")
                    except UnicodeDecodeError:
                        raise ClientHelloError("non-ascii server name") from None
                q += name_len
            return None
        pos += ext_len
    return None


def parse_client_hello(data: bytes) -> tuple[int, str | None]:
    """Parse TLS records at the start of ``data`` looking for a ClientHello.

    Returns ``(need, sni)``: ``need > 0`` means at least ``need`` bytes must be
    available before a verdict is possible (a hello may span several records
    and TCP segments); ``need == 0`` means the hello is complete and ``sni`` is
    its server name (or None). Raises :class:`ClientHelloError` when the bytes
    cannot be a ClientHello or it would exceed our size bound.
    """
    handshake = bytearray()
    hs_len: int | None = None
    pos = 0
    while True:
        if len(data) < pos + 5:
            return pos + 5, None
        if data[pos] != TLS_HANDSHAKE:
            raise ClientHelloError("not a handshake record")
        if data[pos + 1] != 3:
            raise ClientHelloError("bad record version")
        rec_len = _u16(data, pos + 3)
        if rec_len == 0 or rec_len > _MAX_RECORD:
            raise ClientHelloError("bad record length")
        end = pos + 5 + rec_len
        if end > _MAX_HELLO_BYTES:
            raise ClientHelloError("ClientHello too large")
        if len(data) < end:
            return end, None
        handshake += data[pos + 5 : end]
        pos = end
        if hs_len is None and len(handshake) >= 4:
            if handshake[0] != _HELLO_TYPE:
                raise ClientHelloError("not a ClientHello")
            hs_len = int.from_bytes(handshake[1:4], "big")
            if hs_len + 4 > _MAX_HELLO_BYTES:
                raise ClientHelloError("ClientHello too large")
        if hs_len is not None and len(handshake) >= hs_len + 4:
            return 0, _extract_sni(bytes(handshake[4 : 4 + hs_len]))
