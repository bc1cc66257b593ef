"""Serving listeners under a `ConnectionLimit`: a connection that does not fit is closed
before anything is read from it."""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import pwd
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from common import sockdiag
from common.connlimit import ConnectionLimit, host_group

log = logging.getLogger(__name__)

_UCRED = struct.Struct("3i")  # pid, uid, gid (Linux SO_PEERCRED)
# Subordinate uid ranges (`user:first:count`, shadow-utils): a user with one (rootless
# containers) can connect as any uid of it, each of which would otherwise be a local
# user of its own, with a share of its own.
SUBUID = "/etc/subuid"
_MAX_SUBUID = 1 << 20  # bytes of it read
_ranges: tuple[tuple[int, int], list[tuple[int, int, str]]] | None = None  # (stat, ranges)
_owners: dict[str, int] = {}  # a range owner's name → its uid, for the file as read


def _number(text: str) -> int | None:
    return int(text) if text.isascii() and text.isdecimal() and len(text) <= 10 else None


def _subuid_ranges() -> list[tuple[int, int, str]]:
    """(first, count, owner) of each range in SUBUID (the owner as written: a user name
    or a uid), read again when it changes. Names are not resolved here: that is for the
    one range a connecting uid falls in (a name service may be slow)."""
    global _ranges
    try:
        stat = os.stat(SUBUID)
    except OSError:
        return []
    key = (stat.st_mtime_ns, stat.st_size)
    if _ranges is not None and _ranges[0] == key:
        return _ranges[1]
    found = []
    try:
        with open(SUBUID, encoding="utf-8", errors="replace") as file:
            lines = file.read(_MAX_SUBUID).splitlines()
    except OSError:
        lines = []
    for line in lines:
        name, _, rest = line.partition(":")
        first, _, count = (_number(part) if part else None for part in rest.partition(":"))
        if name and first is not None and count is not None:
            found.append((first, count, name))
    _ranges = (key, found)
    _owners.clear()
    return found


def local_user(uid: int) -> int:
    """The user a uid counts as: the owner of the subordinate range it is in, if any
    (a range whose owner is no known user changes nothing)."""
    for first, count, owner in _subuid_ranges():
        if first <= uid < first + count:
            number = _number(owner)
            if number is not None:
                return number
            if owner not in _owners:  # (each name once a version of the file)
                try:
                    _owners[owner] = pwd.getpwnam(owner).pw_uid
                except (KeyError, ValueError):  # (no such user, yet; a NUL in the name)
                    return uid
            return _owners[owner]
    return uid


def remote_address(stream: trio.SocketStream) -> str:
    """Who is on the other end, as the limit counts them: the IP address of a TCP peer
    (an IPv6 one by its /64: `host_group`; "?" if unknown), `uid:N` for a Unix-socket
    peer (each local user is one address, the uids of its subordinate ranges with it)
    and for a loopback TCP peer, whose socket the kernel names the owner of
    (`common.sockdiag`; `uid:?` if it cannot tell for this one, the address as before
    on a kernel that never can)."""
    sock = stream.socket
    if sock.family == socket.AF_UNIX:
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
            return f"uid:{local_user(_UCRED.unpack(raw)[1])}"
        except (OSError, AttributeError):
            return "local"
    try:
        peer, local = sock.getpeername(), sock.getsockname()
    except OSError:
        return "?"
    host = str(peer[0])
    if sockdiag.loopback_ip(host) is not None and sockdiag.works():
        uid = sockdiag.tcp_owner(local=(str(local[0]), int(local[1])), peer=(host, int(peer[1])))
        return "uid:?" if uid is None else f"uid:{local_user(uid)}"
    return host_group(host)


class _Place:
    """A connection's place in its server's limit, given back once."""

    def __init__(self, limit: ConnectionLimit, address: str) -> None:
        self.limit, self.address, self.held = limit, address, True

    def release(self) -> None:
        if self.held:
            self.held = False
            self.limit.release(self.address)


_place: contextvars.ContextVar[_Place | None] = contextvars.ContextVar("place", default=None)


def release_place() -> bool:
    """Give back, now, the place the connection this task serves holds in its server's
    limit (see `serve_limited`); False if it holds none. For sessions that proved
    who they are (a peer admitted with the cluster token): the caps bound what
    strangers can hold, and an admitted dfdaemon keeps a session for every blob it
    seeds, hundreds of them from one address."""
    place = _place.get()
    if place is None or not place.held:
        return False
    place.release()
    return True


async def serve_limited(
    handler: Callable[[trio.SocketStream], Awaitable[Any]],
    listeners: list[trio.SocketListener],
    limit: ConnectionLimit,
    *,
    what: str = "server",
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """`trio.serve_listeners` with `limit` checked on every accepted connection: one
    from an address over its share, or past the total, is closed at once (a warning is
    logged now and then, not for each). The handler may give its place back early
    (`release_place`)."""
    warned_at = -1e9

    async def one(stream: trio.SocketStream) -> None:
        nonlocal warned_at
        address = remote_address(stream)
        if not limit.try_acquire(address):
            now = trio.current_time()
            if now - warned_at > 10:
                warned_at = now
                stats = limit.statistics()
                log.warning(
                    "%s: connection from %s refused: %d open (limit %d, %d per address)",
                    what,
                    address,
                    stats.open,
                    stats.total_limit,
                    stats.per_address_limit,
                )
            with contextlib.suppress(OSError):
                # RST rather than FIN: nothing is owed to a connection we never served.
                stream.socket.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
            await stream.aclose()
            return
        place = _Place(limit, address)
        token = _place.set(place)
        try:
            await handler(stream)
        finally:
            place.release()
            _place.reset(token)

    task_status.started()
    await trio.serve_listeners(one, listeners)
