"""Frames over a trio stream: one `Session` driven by real I/O.

On a plain TCP socket, payloads are read straight into the frame's buffer with
`recv_into` and file ranges are sent with `os.sendfile`, so a multi-MiB piece costs
no Python-level copy on either side. Other streams (TLS, in-memory test streams) take
the generic path. trio and OS errors become `ConnectionLost` here: nothing above this
module sees a raw trio exception.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from proto.errors import ConnectionLost, MalformedFrame, RemoteFailure, VersionMismatch
from proto.frames import Frame
from proto.messages import PROTOCOL_VERSIONS, ErrorReply, Hello, Message, Welcome
from proto.session import Session, Side, negotiate

READ_SIZE = 256 * 1024
# What a stream that the other side left (or we closed) raises.
STREAM_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)
_SENDFILE_YIELD = 16 << 20  # let other tasks run at least this often while sending a file


class FramedStream:
    def __init__(self, stream: trio.abc.Stream, session: Session) -> None:
        self.stream = stream
        self.session = session
        self._send_lock = trio.Lock()
        self._socket = stream.socket if isinstance(stream, trio.SocketStream) else None
        self.welcome: Welcome | None = None  # the server's, on a client stream

    async def send(
        self, message: Message, payload: bytes | bytearray | memoryview | None = None
    ) -> None:
        """Send one frame; concurrent senders queue behind each other."""
        size = len(payload) if payload is not None else 0
        async with self._send_lock:
            head = self.session.send(message, size)
            try:
                if payload is not None and size < READ_SIZE:
                    await self.stream.send_all(head + payload)
                else:
                    await self.stream.send_all(head)
                    if payload is not None:
                        await self.stream.send_all(payload)
            except STREAM_ERRORS as exc:
                raise ConnectionLost(f"send failed: {exc}", clean=False) from exc

    async def send_file(self, message: Message, fd: int, offset: int, count: int) -> None:
        """Send one frame whose payload is `count` bytes of file `fd` at `offset`."""
        if self._socket is None:
            await self.send(message, os.pread(fd, count, offset))
            return
        async with self._send_lock:
            head = self.session.send(message, count)
            try:
                await self.stream.send_all(head)
                await send_file(self._socket, fd, offset, count)
            except STREAM_ERRORS as exc:
                raise ConnectionLost(f"send failed: {exc}", clean=False) from exc

    async def receive(self) -> Frame:
        """The next frame; ConnectionLost if the peer closes, RemoteProtoError if it lies."""
        decoder = self.session.decoder
        try:
            while True:
                frame = self.session.next_frame()
                if frame is not None:
                    return frame
                view = decoder.payload_view()
                if view is not None and self._socket is not None:
                    count = await self._socket.recv_into(view)
                    if count == 0:
                        raise MalformedFrame("connection closed in the middle of a payload")
                    decoder.payload_received(count)
                    continue
                data = await self.stream.receive_some(READ_SIZE)
                if not data:
                    if decoder.in_frame:
                        raise MalformedFrame("connection closed in the middle of a frame")
                    raise ConnectionLost("peer closed the connection", clean=True)
                self.session.receive_data(data)
        except STREAM_ERRORS as exc:
            raise ConnectionLost(f"receive failed: {exc}", clean=False) from exc

    async def refuse(self, exc: Exception) -> None:
        """Server side, before closing: tell the peer why, if the session still allows a
        word (best effort: a peer that is gone is not waited for)."""
        refusal = self.session.refuse(exc)
        if refusal is not None:
            with trio.move_on_after(1), contextlib.suppress(*STREAM_ERRORS):
                await self.stream.send_all(refusal)

    def recycle(self, payload: bytearray) -> None:
        """Give a received payload back for reuse (see `FrameDecoder.recycle`)."""
        self.session.decoder.recycle(payload)

    async def aclose(self) -> None:
        with trio.move_on_after(1) as scope:
            scope.shield = True
            await self.stream.aclose()


async def send_file(sock: trio.socket.SocketType, fd: int, offset: int, count: int) -> None:
    """`count` bytes of file `fd` from `offset` on a non-blocking socket, by sendfile(2):
    the kernel copies them from the page cache, they never pass through Python."""
    out = sock.fileno()
    end = offset + count
    since_yield = 0
    while offset < end:
        try:
            sent = os.sendfile(out, fd, offset, end - offset)
        except BlockingIOError:
            await trio.lowlevel.wait_writable(sock)
            since_yield = 0
            continue
        if sent == 0:
            raise OSError("file ended before the piece did")
        offset += sent
        since_yield += sent
        if since_yield >= _SENDFILE_YIELD:
            await trio.lowlevel.checkpoint()
            since_yield = 0


async def server_handshake(
    framed: FramedStream,
    *,
    role: str,
    agent: str = "",
    challenge: bytes = b"",
) -> Hello:
    """Server side: wait for Hello, answer Welcome (callers put a deadline around it).

    Errors propagate with the session still able to `refuse()` them.
    """
    hello = (await framed.receive()).message
    assert isinstance(hello, Hello)  # the session table admits nothing else first
    await framed.send(negotiate(hello, role=role, agent=agent, challenge=challenge))
    return hello


async def client_handshake(
    stream: trio.abc.Stream, *, role: str, peer_id: str, agent: str = ""
) -> FramedStream:
    """Client side: say Hello, wait for Welcome; the open framed stream (the Welcome is
    kept in `framed.welcome`).

    On any failure the stream is closed before the error propagates.
    """
    framed = FramedStream(stream, Session(Side.CLIENT))
    try:
        await framed.send(
            Hello(versions=PROTOCOL_VERSIONS, role=role, peer_id=peer_id, agent=agent)
        )
        frame = await framed.receive()
        if isinstance(frame.message, ErrorReply):
            if frame.message.code == "version":
                raise VersionMismatch(frame.message.message)
            raise RemoteFailure(frame.message.code, frame.message.message, frame.message.status)
        assert isinstance(frame.message, Welcome)
        framed.welcome = frame.message
    except BaseException:
        await framed.aclose()
        raise
    return framed


@asynccontextmanager
async def open_session(
    stream: trio.abc.Stream, *, role: str, peer_id: str, agent: str = ""
) -> AsyncIterator[FramedStream]:
    """`client_handshake`, closing the stream when the block ends."""
    framed = await client_handshake(stream, role=role, peer_id=peer_id, agent=agent)
    try:
        yield framed
    finally:
        await framed.aclose()
