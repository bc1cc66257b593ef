"""One HTTP/1.1 connection of the daemon's server (`httpserver.py`): h11 over a trio
stream, with what bounds a client's cost (a body that stalls, an answer nobody reads,
an unread body kept short), and answer bodies straight from files: by sendfile, or as
a descriptor passed over a Unix socket.
"""

from __future__ import annotations

import array
import contextlib
import fcntl
import os
import socket
import struct
import termios
from collections.abc import AsyncIterator, Iterator

import h11
import trio

from common.io.connections import remote_address
from proto.io import SENDFILE_YIELD, STREAM_ERRORS, send_file
from proto.io.eager import Eager

READ_SIZE = 64 * 1024
MAX_HEAD = 64 * 1024  # request line and headers
BODY_TIMEOUT = 60.0  # a request body that sends nothing for this long is given up
SEND_TIMEOUT = 60.0  # an answer the client reads nothing of for this long is given up
# Answers go out in slices of this size, each under SEND_TIMEOUT from the previous
# one's end: a client reading at least this much a minute keeps its connection.
SEND_SLICE = 256 * 1024
# A request body the handler left unread is read and dropped after the answer, to keep
# the connection for the next request, only if it is this short and this quick; any
# longer or slower (an endless upload, say) and the connection is closed instead.
MAX_UNREAD_BODY = 64 * 1024
UNREAD_BODY_TIMEOUT = 5.0
# Before closing on a client still sending: say so (FIN) and drop what still comes for
# this long, so the kernel does not answer its bytes with a reset that can destroy the
# answer before the client has read it (nginx's lingering close).
LINGER = 2.0
# A passed descriptor sits in the client's socket until the client reads it, counted
# by the kernel against the daemon's user (and keeping its file open). One local user
# may leave at most this many unread at once (its next answers are streamed instead),
# and a connection whose descriptor is unread is held open, in its user's share, until
# the client reads it or closes its end: the daemon looks this often.
MAX_UNREAD_PASSES = 8  # (as many as `dfget -r -j 8` may have on their way)
UNREAD_POLL = 0.5


class ClientGone(Exception):
    """The client closed or broke the connection."""


class BrokenBody(ClientGone):
    """The client's request body broke HTTP/1.1 (a bad chunk size, cut short): its
    fault, answered 400 if the answer has not started, never a 500."""


# Each local user's connections that passed a descriptor it may not have read yet.
_passing: dict[str, set[Connection]] = {}


class _FileSpan(bytes):
    """Stands in for `size` bytes of a file in an h11 Data event: only its length
    counts (an empty bytes object underneath, never written itself)."""

    size: int

    def __new__(cls, size: int) -> _FileSpan:
        span = super().__new__(cls)
        span.size = size
        return span

    def __len__(self) -> int:
        return self.size


class Connection:
    """One client connection: h11 over a trio stream, with the timeouts above."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        # A plain socket's reads are tried at once (a TLS stream's go through trio's).
        self._eager = Eager(stream.socket) if isinstance(stream, trio.SocketStream) else None
        self.passed = False  # a descriptor went out on it that may be unread yet
        self._owner = ""  # the local user it counts against (`_user`)
        # A Unix socket's (a descriptor may go out on it; looked up once: each look at
        # a socket's family makes an enum of it)
        self.unix = isinstance(stream, trio.SocketStream) and stream.socket.family == socket.AF_UNIX

    def unread(self) -> int:
        """Bytes sent over this Unix socket that the client has not read yet (with any
        descriptors they carry); 0 for any other stream."""
        if not self.unix:
            return 0
        assert isinstance(self.stream, trio.SocketStream)
        try:
            raw = fcntl.ioctl(self.stream.socket.fileno(), termios.TIOCOUTQ, bytes(4))
        except OSError:
            return 0
        return int(struct.unpack("i", raw)[0])

    def hold_unread(self, size: int) -> None:
        """`Reply.hold_unread`: this Unix socket's send buffer asked to be `size` bytes
        (the kernel doubles it, and caps it at `net.core.wmem_max`)."""
        if self.unix:
            assert isinstance(self.stream, trio.SocketStream)
            with contextlib.suppress(OSError):
                self.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)

    def may_pass(self) -> bool:
        """Whether a descriptor may go out on this Unix socket now: the client has read
        all of the last answer, and its user has fewer than MAX_UNREAD_PASSES unread
        on its other connections."""
        if self.unread() > 0:
            return False
        if self.passed:  # (and read: `settle` without asking the socket again)
            self._forget()
        others = _passing.get(self._user(), set())
        for other in list(others):
            other.settle()
        return len(others) < MAX_UNREAD_PASSES

    def _user(self) -> str:
        """The local user this Unix socket's client counts as (looked up once)."""
        if not self._owner:
            assert isinstance(self.stream, trio.SocketStream)
            self._owner = remote_address(self.stream)
        return self._owner

    def settle(self) -> None:
        """Forget a pass the client has read (nothing of ours left unread)."""
        if self.passed and self.unread() == 0:
            self._forget()

    def _forget(self) -> None:
        self.passed = False
        others = _passing.get(self._owner)
        if others is not None:
            others.discard(self)
            if not others:
                del _passing[self._owner]

    async def hold_while_unread(self) -> None:
        """If a descriptor went out on this connection and may be unread, wait (holding
        the connection, and the client's share with it) until the client has read
        everything, or has closed its end."""
        try:
            while self.passed and self.unread() > 0:  # noqa: ASYNC110 (no event says "read")
                await trio.sleep(UNREAD_POLL)
        finally:
            self._forget()

    async def send(self, event: h11.Event) -> None:
        data = self.h11.send(event)
        if data:
            with self._progress() as watch:
                await self._send_all(data, watch)

    async def send_passing(self, event: h11.Event, fd: int) -> None:
        """Send `event` (an answer's head) with descriptor `fd` attached to its first
        byte (a Unix socket's SCM_RIGHTS)."""
        data = self.h11.send(event) or b""
        assert isinstance(self.stream, trio.SocketStream)
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]).tobytes())]
        if not self.passed:
            self.passed = True
            _passing.setdefault(self._user(), set()).add(self)
        await trio.lowlevel.checkpoint_if_cancelled()  # (as trio's sendmsg would)
        try:
            sent = _sendmsg_now(self.stream.socket.fileno(), data, rights)
        except STREAM_ERRORS as exc:
            raise ClientGone(str(exc)) from exc
        if sent == len(data):  # (most heads: at once, no pass through the scheduler)
            assert self._eager is not None  # (a socket's)
            await self._eager.ran_on()
            return
        with self._progress() as watch:
            try:
                if sent < 0:  # (not taken: the socket is full)
                    sent = await self.stream.socket.sendmsg([data], rights)
            except STREAM_ERRORS as exc:
                raise ClientGone(str(exc)) from exc
            if sent < len(data):
                await self._send_all(data[sent:], watch)

    async def send_file(self, fd: int, offset: int, count: int) -> None:
        # h11 frames the body (Content-Length or chunks) around a stand-in of the right
        # length, and hands it back untouched where the bytes go (h11's sendfile recipe).
        span = _FileSpan(count)
        with self._progress() as watch:
            for part in self.h11.send_with_data_passthrough(h11.Data(data=span)) or ():
                if part is not span:
                    await self._send_all(part, watch)
                    continue
                end = offset + count
                unyielded = 0  # (sent since other tasks last ran, as far as this knows)
                while offset < end:
                    size = min(SEND_SLICE, end - offset)
                    try:
                        if isinstance(self.stream, trio.SocketStream):
                            await send_file(self.stream.socket, fd, offset, size)
                        else:  # TLS: the bytes must pass through the encryption
                            # (read in the loop, as sendfile reads: a thread hop per
                            # slice cost more than the read of a cached blob)
                            data = os.pread(fd, size, offset)
                            if len(data) != size:
                                raise OSError(f"file ended at {offset + len(data)}")
                            await self.stream.send_all(data)
                    except STREAM_ERRORS as exc:
                        raise ClientGone(str(exc)) from exc
                    offset += size
                    watch.deadline = trio.current_time() + SEND_TIMEOUT
                    unyielded += size
                    if unyielded >= SENDFILE_YIELD:  # (a client that keeps up: a slice
                        # never waits, and send_file's own yield counts within a slice)
                        await trio.lowlevel.checkpoint()
                        unyielded = 0

    @contextlib.contextmanager
    def _progress(self) -> Iterator[trio.CancelScope]:
        """A deadline SEND_TIMEOUT ahead, pushed on by every slice that goes out;
        ClientGone if it passes (the client stopped reading)."""
        with trio.CancelScope(deadline=trio.current_time() + SEND_TIMEOUT) as watch:
            yield watch
        if watch.cancelled_caught:
            raise ClientGone(f"the client read nothing for {SEND_TIMEOUT:g}s")

    async def _send_all(self, data: bytes, watch: trio.CancelScope) -> None:
        view = memoryview(data)
        try:
            for start in range(0, len(view), SEND_SLICE):
                await self.stream.send_all(view[start : start + SEND_SLICE])
                watch.deadline = trio.current_time() + SEND_TIMEOUT
        except STREAM_ERRORS as exc:
            raise ClientGone(str(exc)) from exc

    async def next_event(self) -> h11.Event:
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event  # type: ignore[return-value]
            data: bytes | bytearray
            try:
                if self._eager is not None:
                    data = await self._eager.read(READ_SIZE)
                else:
                    data = await self.stream.receive_some(READ_SIZE)
            except STREAM_ERRORS as exc:
                raise ClientGone(str(exc)) from exc
            self.h11.receive_data(bytes(data))  # a TLS stream may give a bytearray

    async def skip_body(self) -> bool:
        """Drop the rest of a request body nobody read, if it is short and quick: True
        if the connection can take the next request."""
        if self.h11.their_state is not h11.SEND_BODY:
            return True  # (nothing left unread: most requests)
        left = MAX_UNREAD_BODY
        with trio.move_on_after(UNREAD_BODY_TIMEOUT):
            while self.h11.their_state is h11.SEND_BODY:
                event = await self.next_event()
                if isinstance(event, h11.Data):
                    left -= len(event.data)
                    if left < 0:
                        return False
            return True
        return False

    async def linger(self) -> None:
        """End our side and read (and drop) what the client still sends, for a while."""
        if not isinstance(self.stream, trio.abc.HalfCloseableStream):
            return  # TLS has no half-close: closing it is all there is
        with trio.move_on_after(LINGER), contextlib.suppress(*STREAM_ERRORS):
            await self.stream.send_eof()
            while await self.stream.receive_some(READ_SIZE):
                pass

    async def body(self) -> AsyncIterator[bytes]:
        while True:
            try:
                event = self.h11.next_event()  # (a short body came with the head)
                if event is h11.NEED_DATA:
                    with trio.move_on_after(BODY_TIMEOUT) as waited:
                        event = await self.next_event()
                    if waited.cancelled_caught:
                        raise ClientGone(f"the request body stalled for {BODY_TIMEOUT:g}s")
            except h11.RemoteProtocolError as exc:
                raise BrokenBody(f"bad request body: {exc}") from exc
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return
            else:
                raise ClientGone(f"unexpected {type(event).__name__} in a request body")


def _sendmsg_now(fd: int, data: bytes, ancillary: list[tuple[int, int, bytes]]) -> int:
    """`sendmsg` on the socket `fd` without waiting: the bytes it took, -1 if none (full,
    or closed here: the caller then goes trio's way, which says why). The stdlib has
    `sendmsg` only on socket objects: one is made around the descriptor, and detached
    before it could close it."""
    if fd < 0 or socket.getdefaulttimeout() is not None:
        return -1  # (a default timeout would have the stand-in wait for the socket)
    sock = None
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0, fd)
        return sock.sendmsg([data], ancillary)  # (`fd` is non-blocking: never a wait)
    except BlockingIOError:
        return -1
    finally:
        if sock is not None:
            sock.detach()
