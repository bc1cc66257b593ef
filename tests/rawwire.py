"""The wire as an attacker writes and reads it: frames from any header (no codec check on
the way out), raw sockets, frames read until the other side closes."""

from __future__ import annotations

import socket
import struct
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path

import msgpack
import trio

from proto import FrameDecoder, Message
from proto.io import FramedStream, server_handshake
from proto.session import Session, Side

PREFIX = struct.Struct(">I")  # a frame's header length


def raw_frame(header: object, payload: bytes = b"") -> bytes:
    """A frame around any msgpack value as its header (even one no sender would make)."""
    raw = msgpack.packb(header, use_bin_type=True)
    return PREFIX.pack(len(raw)) + raw + payload


async def raw_connect(
    address: str | Path, *, receive_buffer: int | None = None
) -> trio.SocketStream:
    """A connection to HOST:PORT, or to the Unix socket at a Path. With
    `receive_buffer`, a tiny window: a client that never reads fills the sender's
    buffers at once."""
    if isinstance(address, Path):
        sock = trio.socket.socket(socket.AF_UNIX)
        target: str | tuple[str, int] = str(address)
    else:
        host, port = address.rsplit(":", 1)
        if receive_buffer is None:
            return await trio.open_tcp_stream(host, int(port))
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        target = (host, int(port))
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    await sock.connect(target)
    return trio.SocketStream(sock)


async def next_message(stream: trio.SocketStream, decoder: FrameDecoder) -> Message | None:
    """The next frame's message, or None once the other side has closed."""
    while (frame := decoder.next_frame()) is None:
        try:
            data = await stream.receive_some(1 << 20)
        except trio.BrokenResourceError:  # reset
            return None
        if not data:
            return None
        decoder.receive_data(data)
    return frame.message


async def until_closed(
    stream: trio.SocketStream, seconds: float, decoder: FrameDecoder | None = None
) -> list[Message]:
    """Every message the server sends until it closes the connection, which it must do
    within `seconds`."""
    decoder = decoder or FrameDecoder()
    messages = []
    with trio.fail_after(seconds):
        while (message := await next_message(stream, decoder)) is not None:
            messages.append(message)
    return messages


async def connect_through(proxy: str, target: str) -> tuple[trio.SocketStream, bytes]:
    """A CONNECT to `target` through the proxy at HOST:PORT: the stream, and the
    answer's head (up to its blank line, and whatever came with it)."""
    host, _, port = proxy.rpartition(":")
    stream = await trio.open_tcp_stream(host.strip("[]"), int(port))
    await stream.send_all(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    head = b""
    with trio.fail_after(10):
        while b"\r\n\r\n" not in head:
            data = await stream.receive_some(4096)
            assert data, head
            head += data
    return stream, head


Answer = Callable[[FramedStream], Awaitable[None]]


async def scripted_supernode(nursery: trio.Nursery, answer: Answer) -> str:
    """A server on 127.0.0.1 (its HOST:PORT) that speaks the handshake, takes one request
    and leaves the rest to `answer(framed)`: a hostile or an older supernode."""

    async def handle(stream: trio.SocketStream) -> None:
        framed = FramedStream(stream, Session(Side.SERVER))
        try:
            await server_handshake(framed, role="supernode", agent="scripted")
            await framed.receive()
            await answer(framed)
            await framed.linger_close()
        finally:
            await framed.aclose()

    listeners = await nursery.start(partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
    return f"127.0.0.1:{listeners[0].socket.getsockname()[1]}"
