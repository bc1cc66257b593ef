"""Frames on real sockets written and read at once (`proto.io.eager`): what the short
way must still keep of trio's. Another task gets its turn while a peer's frames are
always there; frames sent together never interleave when the socket takes only part
of one; a cancelled sender sends nothing; a file's payload arrives whole past a full
socket; and a peer that stops reading is still cut off at the send deadline.
"""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import pytest
import trio

from proto import ErrorReply, PieceData, PieceRequest, Session, Side
from proto.errors import ConnectionLost
from proto.io import FramedStream, client_handshake, server_handshake
from proto.io.eager import RUN_ON, Eager
from proto.messages import KeepAlive

TASK = "ab" * 32


@asynccontextmanager
async def framed_pair(
    sndbuf: int | None = None,
) -> AsyncIterator[tuple[FramedStream, FramedStream]]:
    """(server, client): two sessions after their handshake, over a Unix socket pair
    (the server's send buffer `sndbuf` bytes when given)."""
    left, right = trio.socket.socketpair()
    if sndbuf is not None:
        left.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        right.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, sndbuf)
    server = FramedStream(trio.SocketStream(left), Session(Side.SERVER), send_timeout=30)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(server_handshake, server, role="peer"))
        client = await client_handshake(
            trio.SocketStream(right), role="peer", peer_id="p", max_payload=8 << 20
        )
    try:
        yield server, client
    finally:
        await server.aclose()
        await client.aclose()


async def test_a_peer_whose_bytes_are_always_there_does_not_keep_the_loop() -> None:
    left, right = trio.socket.socketpair()
    await right.send(b"x" * 4096)  # every read below finds a byte waiting
    turns = 0

    async def other() -> None:
        nonlocal turns
        while True:
            await trio.lowlevel.checkpoint()
            turns += 1

    async with trio.open_nursery() as nursery:
        nursery.start_soon(other)
        await trio.lowlevel.checkpoint()
        turns = 0
        eager = Eager(left)
        for _ in range(4 * RUN_ON):
            assert await eager.read(1) == b"x"
        nursery.cancel_scope.cancel()
    assert turns >= 3  # once every RUN_ON reads that did not wait
    left.close()
    right.close()


async def test_frames_of_two_senders_never_interleave_when_the_socket_takes_part() -> None:
    # A send buffer of a few KiB and frames of ~3 KiB: most writes go in part, and the
    # rest must follow before any other frame starts.
    async with framed_pair(sndbuf=4096) as (server, client):
        text = {name: name * 3000 for name in "ab"}

        async def sender(name: str) -> None:
            for i in range(50):
                await server.send(ErrorReply(code="busy", message=f"{i:03d}{text[name]}"))

        got: dict[str, list[int]] = {"a": [], "b": []}
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender, "a")
            nursery.start_soon(sender, "b")
            for _ in range(100):
                message = (await client.receive()).message
                assert isinstance(message, ErrorReply)
                body = message.message[3:]
                assert body in (text["a"], text["b"])
                got[body[0]].append(int(message.message[:3]))
                await trio.sleep(0.001)  # a slow reader: the buffer stays full
        assert got == {"a": list(range(50)), "b": list(range(50))}


async def test_a_cancelled_sender_sends_nothing() -> None:
    async with framed_pair() as (server, client):
        with trio.CancelScope() as scope:
            scope.cancel()
            await server.send(ErrorReply(code="busy", message="never"))
        assert scope.cancelled_caught
        await server.send(ErrorReply(code="busy", message="after"))
        message = (await client.receive()).message
        assert isinstance(message, ErrorReply) and message.message == "after"


async def test_a_file_payload_arrives_whole_past_a_full_socket(tmp_path: Path) -> None:
    content = os.urandom(3 << 20)
    path = tmp_path / "piece"
    path.write_bytes(content)
    async with framed_pair(sndbuf=16384) as (server, client):
        await client.send(PieceRequest(task_id=TASK, generation=1, index=0, ticket=b"t"))
        assert isinstance((await server.receive()).message, PieceRequest)
        fd = os.open(path, os.O_RDONLY)
        try:
            with trio.fail_after(20):
                async with trio.open_nursery() as nursery:
                    message = PieceData(task_id=TASK, generation=1, index=0)
                    nursery.start_soon(server.send_file, message, fd, 0, len(content))
                    frame = await client.receive()
        finally:
            os.close(fd)
        assert isinstance(frame.message, PieceData)
        assert bytes(frame.payload) == content
        await server.send(KeepAlive())  # the session goes on after it
        assert isinstance((await client.receive()).message, KeepAlive)


async def test_a_peer_that_stops_reading_is_cut_off_at_the_deadline(
    autojump_clock: object,
) -> None:
    async with framed_pair(sndbuf=4096) as (server, _client):
        started = trio.current_time()
        with pytest.raises(ConnectionLost, match="within 30s"):
            while True:  # the first ones fit in the buffers; then one cannot go
                await server.send(ErrorReply(code="busy", message="x" * 1000))
        assert trio.current_time() - started == pytest.approx(30)
        with pytest.raises(ConnectionLost, match="within 30s"):  # nothing may follow
            await server.send(KeepAlive())
