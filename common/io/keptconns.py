"""Idle HTTP/1.1 connections to origins, kept for the next small request there.

Both kinds of small question the project asks origins for every new requester go on
kept connections: the supernode's revalidation of a task it holds (a conditional `GET`
of one byte, `supernode/cdn/lean.py`) and dfdaemon's access check (`HEAD`,
`dfdaemon/probe.py`). Without them each question cost a connection closed after a few
hundred bytes: an accept at the origin and a TIME_WAIT port here, for every requester.

The caller gives a connection back only when h11 saw the whole exchange end cleanly on
both sides and nothing unasked-for came after it (and each caller has its own rule on
which answers may be followed by another question at all); it goes out again only if
nothing came on it while it was kept (no early answer, no close): an answer never waits
on a connection for somebody else's request. A kept connection the origin closes just
as a request goes out costs that request one failed try, and the caller a new
connection. At most `per_origin` are kept for one host and port, `total` in all, none
for longer than `idle` seconds.
"""

from __future__ import annotations

import contextlib
import select
import time

import h11
import trio

KEEP_IDLE = 4.0  # seconds; under what origins allow (nginx 75 s, Apache httpd 5 s)
PER_ORIGIN = 16
TOTAL = 64

Origin = tuple[str, int]  # host name (as in the URL) and port


class KeptConnections:
    """Idle origin connections by host and port, newest first to go out again."""

    def __init__(
        self, *, idle: float = KEEP_IDLE, per_origin: int = PER_ORIGIN, total: int = TOTAL
    ) -> None:
        self.idle, self.per_origin, self.total = idle, per_origin, total
        self._kept: dict[Origin, list[tuple[float, trio.SocketStream, h11.Connection]]] = {}
        self.reused = 0  # kept connections taken for a request
        self.closed = False  # the client is shut: nothing is kept any more

    def __len__(self) -> int:
        return sum(len(kept) for kept in self._kept.values())

    def take(self, origin: Origin) -> tuple[trio.SocketStream, h11.Connection] | None:
        """A kept connection to `origin` not idle for too long, if there is one."""
        kept = self._kept.get(origin, [])
        now = time.monotonic()
        while kept:
            since, stream, conn = kept.pop()
            if now - since <= self.idle and _quiet(stream):
                if not kept:
                    del self._kept[origin]
                self.reused += 1
                return stream, conn
            _close(stream)
        self._kept.pop(origin, None)
        return None

    def give(self, origin: Origin, stream: trio.SocketStream, conn: h11.Connection) -> None:
        """Keep `stream` (its last exchange complete: `conn` ready for the next), or close
        it if there is no room (once those idle too long or closed are gone)."""
        if len(self._kept.get(origin, ())) >= self.per_origin or len(self) >= self.total:
            self._sweep()
        kept = self._kept.get(origin, [])
        if self.closed or len(kept) >= self.per_origin or len(self) >= self.total:
            _close(stream)
            return
        self._kept[origin] = kept
        kept.append((time.monotonic(), stream, conn))

    def _sweep(self) -> None:
        """Close the connections kept too long, or that the origin closed or spoke on."""
        now = time.monotonic()
        for origin, kept in list(self._kept.items()):
            for entry in [e for e in kept if now - e[0] > self.idle or not _quiet(e[1])]:
                kept.remove(entry)
                _close(entry[1])
            if not kept:
                del self._kept[origin]

    def close(self) -> None:
        self.closed = True
        for kept in self._kept.values():
            for _, stream, _ in kept:
                _close(stream)
        self._kept.clear()


def _quiet(stream: trio.SocketStream) -> bool:
    """Nothing to read on it: the origin neither closed it nor sent anything unasked."""
    poller = select.poll()
    poller.register(stream.socket.fileno(), select.POLLIN)
    return not poller.poll(0)


def _close(stream: trio.SocketStream) -> None:
    with contextlib.suppress(OSError):
        stream.socket.close()
