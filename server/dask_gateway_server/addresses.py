"""Where a scheduler says it listens, checked before the gateway ever connects there.

A scheduler's first heartbeat names three addresses (its TLS port, its dashboard, its small
API); the proxy and the reconciler then connect to them from the gateway's host, with the
gateway's network position. The heartbeat comes from code the cluster's owner controls (or
from anyone holding the cluster's token), so nothing in it is believed: this module parses
the addresses, refuses those no scheduler may have (unspecified, multicast, link-local,
cloud metadata services), and tells who owns the listening socket behind a local address
(``/proc/net/tcp{,6}``, ``/proc/PID/fd``). Each backend decides the rest in
``Backend.validate_addresses``. No project imports; the ``/proc`` readers block (run them in
an executor).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from dataclasses import dataclass
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: The heartbeat's address fields, in the order they are checked.
ADDRESS_KEYS = ("scheduler_address", "dashboard_address", "api_address")

#: Schemes each field may use ("" = a bare ``host:port``).
_SCHEMES = {
    "scheduler_address": ("tls", "tcp", ""),
    "dashboard_address": ("http", "https", ""),
    "api_address": ("http", "https"),
}

#: What the store's address columns hold.
MAX_LENGTH = 255

#: Addresses of cloud metadata and other host-internal services that are not link-local
#: (link-local ones, 169.254.169.254 included, are refused as a class).
METADATA_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in (
        "fd00:ec2::/32",  # AWS over IPv6: metadata fd00:ec2::254, DNS, time
        "100.100.100.200/32",  # Alibaba Cloud metadata
    )
)

_NAT64 = ipaddress.ip_network("64:ff9b::/96")

_TCP_LISTEN = "0A"


class AddressRefused(Exception):
    """A reported address the gateway will not connect to; the message says why."""


class MalformedAddress(AddressRefused):
    """Not an address of the expected form at all."""


class AddressNotYetKnown(AddressRefused):
    """The backend cannot confirm the address yet (e.g. the job is still pending): the
    scheduler's next heartbeat may succeed."""


class AddressMoved(AddressRefused):
    """A heartbeat named other addresses than the ones already set: addresses never move."""


@dataclass(frozen=True)
class ReportedAddress:
    """One address of a heartbeat, parsed: ``key`` is its field, ``value`` as reported."""

    key: str
    value: str
    scheme: str
    ip: IPAddress
    port: int

    def __str__(self) -> str:
        return f"{self.key} {self.value!r}"


def parse_address(key: str, value: str) -> ReportedAddress | None:
    """Parse one reported address; None for an empty dashboard address (no dashboard).

    Only IP literals: a scheduler reports the address its socket is bound to, and a host
    name could resolve elsewhere when the gateway connects than when it was checked.
    Raises MalformedAddress (or AddressRefused for a forbidden IP).
    """
    if key == "dashboard_address" and value == "":
        return None
    if len(value) > MAX_LENGTH:
        raise MalformedAddress(f"{key} is longer than {MAX_LENGTH} characters")
    if any(c.isspace() or not c.isprintable() for c in value):
        raise MalformedAddress(f"{key} {value!r} holds spaces or control characters")
    scheme, sep, _ = value.partition("://")
    if not sep:
        scheme = ""
    if scheme not in _SCHEMES[key]:
        allowed = ", ".join(f"{s}://" for s in _SCHEMES[key] if s)
        raise MalformedAddress(f"{key} {value!r} must start with {allowed}")
    try:
        parts = urlsplit(value if scheme else "//" + value)
        host, port = parts.hostname, parts.port
    except ValueError as e:
        raise MalformedAddress(f"{key} {value!r} is not host:port ({e})") from None
    if parts.username is not None or parts.password is not None:
        raise MalformedAddress(f"{key} {value!r} must not hold credentials")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise MalformedAddress(f"{key} {value!r} must be only scheme://host:port")
    if not host or not port:
        raise MalformedAddress(f"{key} {value!r} must name a host and a port")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise MalformedAddress(
            f"{key} {value!r} must name an IP address, not a host name"
        ) from None
    ip = unmapped(ip)
    reason = forbidden_reason(ip)
    if reason:
        raise AddressRefused(f"{key} {value!r} is {reason}")
    return ReportedAddress(key, value, scheme, ip, port)


def parse_addresses(msg: dict) -> list[ReportedAddress]:
    """The addresses of a heartbeat (its address fields must be strings), parsed."""
    out = []
    for key in ADDRESS_KEYS:
        parsed = parse_address(key, msg[key])
        if parsed is not None:
            out.append(parsed)
    return out


def unmapped(ip: IPAddress) -> IPAddress:
    """The IPv4 address behind an IPv4-mapped IPv6 one (``::ffff:127.0.0.1``)."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip.scope_id:
            return ipaddress.IPv6Address(str(ip).split("%")[0])
    return ip


def forbidden_reason(ip: IPAddress) -> str | None:
    """Why no scheduler may have ``ip``, or None: addresses that are no single host's, and
    host-internal services of clouds."""
    if isinstance(ip, ipaddress.IPv6Address) and ip in _NAT64:
        embedded = forbidden_reason(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        if embedded:
            return embedded
    if ip.is_unspecified:
        return "an unspecified address (a wildcard, not a host)"
    if ip.is_multicast:
        return "a multicast address"
    if ip.is_link_local:
        return "a link-local address (where cloud metadata services listen)"
    if any(ip in net for net in METADATA_NETWORKS):
        return "a cloud metadata address"
    if isinstance(ip, ipaddress.IPv4Address) and any(ip in net for net in _NO_HOST_V4):
        return "a reserved, broadcast or 'this network' address"
    return None


#: IPv4 networks of no single host: "this network", and reserved (255.255.255.255 too).
_NO_HOST_V4 = (ipaddress.ip_network("0.0.0.0/8"), ipaddress.ip_network("240.0.0.0/4"))


def local_addresses() -> set[IPAddress]:
    """The IP addresses of this host's interfaces (loopback included)."""
    import psutil  # a dependency of distributed, hence of the gateway

    out: set[IPAddress] = set()
    for addrs in psutil.net_if_addrs().values():
        for addr in addrs:
            if addr.family in (socket.AF_INET, socket.AF_INET6):
                try:
                    out.add(unmapped(ipaddress.ip_address(addr.address.split("%")[0])))
                except ValueError:
                    continue
    return out


def is_local(ip: IPAddress, local: set[IPAddress] | None = None) -> bool:
    """Whether a connection to ``ip`` from here stays on this host."""
    return ip.is_loopback or ip in (local_addresses() if local is None else local)


@dataclass(frozen=True)
class Listener:
    """A listening TCP socket of this host's network namespace."""

    ip: IPAddress
    port: int
    uid: int
    inode: int


def _decode_ip(hexaddr: str) -> IPAddress:
    """An address of /proc/net/tcp{,6}: 32-bit words in host byte order, printed in hex."""
    raw = b"".join(
        struct.pack("=I", int(hexaddr[i : i + 8], 16)) for i in range(0, len(hexaddr), 8)
    )
    return unmapped(ipaddress.ip_address(raw))


def listeners(proc: str = "/proc") -> list[Listener] | None:
    """Every listening TCP socket (IPv4 and IPv6); None where /proc/net cannot tell
    (not Linux)."""
    found = []
    readable = False
    for name in ("tcp", "tcp6"):
        try:
            with open(os.path.join(proc, "net", name)) as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        readable = True
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != _TCP_LISTEN:
                continue
            hexip, _, hexport = fields[1].partition(":")
            try:
                found.append(
                    Listener(_decode_ip(hexip), int(hexport, 16), int(fields[7]), int(fields[9]))
                )
            except ValueError:
                continue
    return found if readable else None


def listeners_at(ip: IPAddress, port: int, table: list[Listener]) -> list[Listener]:
    """The listening sockets a connection to (ip, port) could reach: bound to that address
    or to a wildcard of a family that accepts it."""
    out = []
    for entry in table:
        if entry.port != port:
            continue
        if entry.ip == ip:
            out.append(entry)
        elif entry.ip.is_unspecified and (entry.ip.version == ip.version or entry.ip.version == 6):
            # An IPv6 wildcard takes IPv4 connections too unless it is IPV6_V6ONLY, which
            # /proc does not show: count it, so that it must be the cluster's as well.
            out.append(entry)
    return out


def socket_inodes(pid: int, proc: str = "/proc") -> set[int]:
    """The inodes of the sockets process ``pid`` holds open (empty if it cannot be read)."""
    fd_dir = os.path.join(proc, str(pid), "fd")
    out: set[int] = set()
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return out
    for name in names:
        try:
            target = os.readlink(os.path.join(fd_dir, name))
        except OSError:
            continue
        if target.startswith("socket:[") and target.endswith("]"):
            try:
                out.add(int(target[8:-1]))
            except ValueError:
                continue
    return out


def processes_in(directory: str, proc: str = "/proc") -> list[int]:
    """Pids of the processes whose working directory is ``directory`` or below it."""
    prefix = directory.rstrip("/") + "/"
    pids: list[int] = []
    try:
        entries = os.listdir(proc)
    except OSError:
        return pids
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            cwd = os.readlink(os.path.join(proc, entry, "cwd"))
        except OSError:
            continue
        if cwd == directory or cwd.startswith(prefix):
            pids.append(int(entry))
    return pids
