"""Serving listeners under a `ConnectionLimit`: a connection that does not fit is closed
before anything is read from it."""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from proto.connlimit import ConnectionLimit, host_group

log = logging.getLogger(__name__)

_UCRED = struct.Struct("3i")  # pid, uid, gid (Linux SO_PEERCRED)


def remote_address(stream: trio.SocketStream) -> str:
    """Who is on the other end, as the limit counts them: the IP address of a TCP peer
    (an IPv6 one by its /64: `host_group`; "?" if unknown), `uid:N` for a Unix-socket
    peer (each local user is one address)."""
    sock = stream.socket
    if sock.family == socket.AF_UNIX:
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
            return f"uid:{_UCRED.unpack(raw)[1]}"
        except (OSError, AttributeError):
            return "local"
    try:
        return host_group(str(sock.getpeername()[0]))
    except OSError:
        return "?"


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
    logged now and then, not for each)."""
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
        try:
            await handler(stream)
        finally:
            limit.release(address)

    task_status.started()
    await trio.serve_listeners(one, listeners)
