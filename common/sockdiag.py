"""Who owns the other end of a loopback TCP connection.

On a Unix socket the kernel names the peer's uid (SO_PEERCRED); on loopback TCP every
client has the same address, 127.0.0.1 or ::1, so a server that gives each client a
share of its connections would give all local users one share together. The client's
socket is on this host, though, and the kernel's socket diagnostics
(NETLINK_SOCK_DIAG, what `ss -e` reads) name the uid that made it, looked up by the
connection's four addresses: one netlink request and answer, some 20 µs.
"""

from __future__ import annotations

import ipaddress
import math
import os
import socket
import struct
import time

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 1
_NLMSG = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
_REQUEST = struct.Struct("=BBBBI")  # family, protocol, extensions, pad, states
_PORTS = struct.Struct("!HH")  # source port, destination port (network order)
_TAIL = struct.Struct("=III")  # interface, cookie (two words: none)
_NO_COOKIE = 0xFFFFFFFF
_ALL_STATES = 0xFFFFFFFF
_UID_AT = 4 + 48 + 12  # in inet_diag_msg: 4 bytes, the socket id, expires, queues
_STATE_AT = 1  # in inet_diag_msg: the TCP state, after the family
_INODE_AT = _UID_AT + 4
TCP_TIME_WAIT = 6
_ANSWER_BYTES = 8192
RETRY_PROBE = 60.0  # seconds before a kernel that did not answer is asked again

_works = False  # whether this kernel answers (probed: a yes is kept)
_failed_at = -math.inf  # when it last did not


def loopback_ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """`host` as an address if it is a loopback one (an IPv4-mapped one as IPv4)."""
    try:
        address = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address if address.is_loopback else None


def tcp_owner(*, local: tuple[str, int], peer: tuple[str, int]) -> int | None:
    """The uid that owns the socket at `peer` connected to `local` (both loopback, as
    `getpeername()` and `getsockname()` of the accepted socket name them); None if it
    cannot be told (no such socket any more, a kernel without the diagnostics)."""
    ours, theirs = loopback_ip(local[0]), loopback_ip(peer[0])
    if ours is None or theirs is None or ours.version != theirs.version:
        return None
    family = socket.AF_INET if theirs.version == 4 else socket.AF_INET6
    # The client's socket: its source is our peer, its destination us.
    sockid = _PORTS.pack(peer[1], local[1])
    sockid += theirs.packed.ljust(16, b"\0") + ours.packed.ljust(16, b"\0")
    sockid += _TAIL.pack(0, _NO_COOKIE, _NO_COOKIE)
    request = _REQUEST.pack(family, socket.IPPROTO_TCP, 0, 0, _ALL_STATES) + sockid
    header = _NLMSG.pack(_NLMSG.size + len(request), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, 1, 0)
    answer = _ask(header + request)
    if answer is None or len(answer) < _NLMSG.size + _INODE_AT + 4:
        return None
    _, kind, _, _, _ = _NLMSG.unpack_from(answer)
    if kind != SOCK_DIAG_BY_FAMILY:  # (NLMSG_ERROR: no such socket)
        return None
    state = answer[_NLMSG.size + _STATE_AT]
    uid, inode = struct.unpack_from("=II", answer, _NLMSG.size + _UID_AT)
    if state == TCP_TIME_WAIT or inode == 0:
        # Closed by its process: what is left (a time-wait record, an orphan) is
        # named as uid 0 and nobody's. A client that sends and closes must not count
        # as root (found by review).
        return None
    return int(uid)


def works() -> bool:
    """Whether this kernel names the owners of loopback TCP sockets: asked of a
    connection of this process's own (a kernel without TCP diagnostics answers every
    lookup "no such socket", as it does for a socket that is gone). A yes is kept; a
    no is asked again after RETRY_PROBE (it may have been a passing shortage)."""
    global _works, _failed_at
    if _works or time.monotonic() - _failed_at < RETRY_PROBE:
        return _works
    _works = _owns_a_connection()
    if not _works:
        _failed_at = time.monotonic()
    return _works


def _owns_a_connection() -> bool:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
            server.bind(("127.0.0.1", 0))
            server.listen(1)
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as client:
                client.settimeout(1.0)
                client.connect(server.getsockname())
                local, peer = server.getsockname(), client.getsockname()
                return tcp_owner(local=local, peer=peer) == os.geteuid()
    except OSError:
        return False


def _ask(message: bytes) -> bytes | None:
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG) as link:
            link.settimeout(1.0)  # (the kernel answers at once; never wait on it long)
            link.send(message)
            return link.recv(_ANSWER_BYTES)
    except (OSError, AttributeError):  # (no netlink here; AF_NETLINK is Linux's)
        return None


__all__ = ["loopback_ip", "tcp_owner", "works"]
