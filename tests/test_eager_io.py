"""Frames on real sockets written and read at once (`proto.io.eager`): what the short
way must still keep of trio's. Another task gets its turn while a peer's frames are
always there; frames sent together never interleave when the socket takes only part
of one; a cancelled sender sends nothing; a file's payload arrives whole past a full
socket; and a peer that stops reading is still cut off at the send deadline. And what the
other short ways of the same change must not give a stranger: a URL's canonical form
remembered, a small file's wait left unwatched for a moment (found by review).
"""

from __future__ import annotations

import gc
import itertools
import os
import socket
import threading
import tracemalloc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import cast

import pytest
import trio

from dfdaemon import control
from dfdaemon.httpconn import ClientGone
from dfdaemon.httpserver import Reply
from proto import ErrorReply, PieceData, PieceRequest, Session, Side
from proto.codec import MAX_ITEMS, decode_header, encode_header
from proto.errors import ConnectionLost
from proto.frames import MAX_HEADER
from proto.io import FramedStream, client_handshake, server_handshake
from proto.io.eager import RUN_ON, Eager
from proto.messages import KeepAlive, Register
from supernode.cdn.task import TaskSpec

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
    async with _sessions(left, right) as pair:
        yield pair


@asynccontextmanager
async def _sessions(
    near: trio.socket.SocketType, far: trio.socket.SocketType, *, pieces_whole: bool = False
) -> AsyncIterator[tuple[FramedStream, FramedStream]]:
    """(server on `near`, client on `far`) after their handshake; closed after."""
    server = FramedStream(trio.SocketStream(near), Session(Side.SERVER), send_timeout=30)
    if pieces_whole:
        server.send_pieces_whole()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(server_handshake, server, role="peer"))
        client = await client_handshake(
            trio.SocketStream(far), role="peer", peer_id="p", max_payload=8 << 20
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


async def test_a_shielded_send_goes_even_from_a_cancelled_task() -> None:
    # A piece's report must reach the supernode even from a transfer being cancelled
    # (its uploader's slot is free only once it does): at once, and past a full socket.
    texts = [f"{i}{'x' * 4000}" for i in range(8)]
    async with framed_pair(sndbuf=4096) as (server, client):

        async def cancelled_sender() -> None:
            with trio.CancelScope() as scope:
                scope.cancel()
                for text in texts:
                    await server.send(ErrorReply(code="busy", message=text), shield=True)

        got = []
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(cancelled_sender)
                for _ in texts:
                    message = (await client.receive()).message
                    assert isinstance(message, ErrorReply)
                    got.append(message.message)
                    await trio.sleep(0.001)
        assert got == texts and server.can_send


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


async def test_a_flood_of_small_frames_is_read_a_buffer_a_turn() -> None:
    # A receive loop whose handling awaits nothing else (the supernode's control session
    # on KeepAlive, PieceResult, Leave) while its peer keeps the socket full: counted by
    # calls alone, 16 reads of 16 KiB went between two turns of the other tasks (about
    # 420 ms on a loaded machine; found by review). A read that fills its buffer yields.
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    client_stream = await trio.open_tcp_stream("127.0.0.1", port)
    server = FramedStream(await listeners[0].accept(), Session(Side.SERVER), send_timeout=30)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(server_handshake, server, role="supernode"))
        client = await client_handshake(client_stream, role="peer", peer_id="p", max_payload=0)
    one = client.session.send(KeepAlive())  # (unsealed: every one the same bytes)
    frames = 60_000
    raw = socket.socket(fileno=os.dup(client_stream.socket.fileno()))
    raw.setblocking(True)
    writer = threading.Thread(target=raw.sendall, args=(one * frames,), daemon=True)
    writer.start()
    handled = 0
    seen: list[int] = []

    async def other() -> None:
        while True:
            await trio.lowlevel.checkpoint()
            seen.append(handled)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(other)
            await trio.sleep(0.2)  # the socket fills
            seen.clear()
            with trio.fail_after(60):
                while handled < frames:
                    assert isinstance((await server.receive()).message, KeepAlive)
                    handled += 1
            nursery.cancel_scope.cancel()
    finally:
        writer.join(10)
        raw.close()
        await server.aclose()
        await client.aclose()
        await listeners[0].aclose()
    most = max(b - a for a, b in itertools.pairwise(seen))
    assert most * len(one) <= 64 * 1024  # a read or two of 16 KiB a turn, not 16


@asynccontextmanager
async def tcp_framed_pair(
    sndbuf: int | None = None,
) -> AsyncIterator[tuple[FramedStream, FramedStream]]:
    """`framed_pair` over TCP on 127.0.0.1 (the server sending pieces whole)."""
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    near = trio.socket.socket()
    if sndbuf is not None:
        near.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, sndbuf)
    await near.connect(listener.getsockname())
    far, _ = await listener.accept()
    listener.close()
    if sndbuf is not None:
        far.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    async with _sessions(far, near, pieces_whole=True) as pair:
        yield pair


async def test_pieces_sent_whole_arrive_whole_past_a_full_socket() -> None:
    """A piece goes with its head in one write at once, and what a full socket does not
    take after it: frames after it arrive intact, in order."""
    async with tcp_framed_pair(sndbuf=16384) as (server, client):
        pieces = [os.urandom((1 << 20) + 16) for _ in range(3)]

        async def send_all() -> None:
            for index, payload in enumerate(pieces):
                await server.send(PieceData(task_id=TASK, generation=1, index=index), payload)
            await server.send(ErrorReply(code="busy", message="after them"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_all)
            for index, payload in enumerate(pieces):
                await trio.sleep(0.05)  # (the socket fills meanwhile)
                frame = await client.receive()
                assert frame.message == PieceData(task_id=TASK, generation=1, index=index)
                assert bytes(frame.payload) == payload
            assert (await client.receive()).message == ErrorReply(code="busy", message="after them")


async def test_a_piece_sent_whole_does_not_pass_the_scheduler() -> None:
    """On a socket that takes it at once (and whose peer takes it: nothing left to
    drain), a piece's send is one system call and no pass through the scheduler (it
    had three: the send lock, the head, the payload)."""
    async with tcp_framed_pair() as (server, client):
        payload = os.urandom(1 << 20)
        piece = PieceData(task_id=TASK, generation=1, index=0)
        for _ in range(2):  # (a connection in use: its window grown past a piece)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(partial(server.send, piece, payload))
                assert bytes((await client.receive()).payload) == payload
        passes = 0

        class Steps(trio.abc.Instrument):
            def before_task_step(self, task: trio.lowlevel.Task) -> None:
                nonlocal passes
                passes += task is sender

        sender = trio.lowlevel.current_task()
        steps = Steps()
        trio.lowlevel.add_instrument(steps)
        try:
            await server.send(piece, payload)
        finally:
            trio.lowlevel.remove_instrument(steps)
        assert passes == 0
        assert bytes((await client.receive()).payload) == payload


async def test_a_piece_arriving_in_parts_over_tcp_wakes_its_reader_once() -> None:
    """A payload's reader asks the kernel (SO_RCVLOWAT) to wake it once the rest of the
    piece is there: one read of a 1 MiB piece that comes in eight parts, where a wake
    every 256 KiB took four or more (a pass through the scheduler and a system call
    each, on every piece a daemon downloads)."""
    async with tcp_framed_pair() as (server, client):
        await _parts_read_once(server, client)


async def _parts_read_once(server: FramedStream, client: FramedStream) -> None:
    payload = os.urandom(1 << 20)
    piece = PieceData(task_id=TASK, generation=1, index=0)
    async with trio.open_nursery() as nursery:  # (a connection in use: its window grown)
        nursery.start_soon(partial(server.send, piece, payload))
        assert bytes((await client.receive()).payload) == payload
    data = server.session.send(piece, len(payload)) + payload
    reads = 0
    eager = client._eager
    assert eager is not None
    real_read_into = eager.read_into

    async def counted(view: memoryview) -> int:
        nonlocal reads
        reads += 1
        return await real_read_into(view)

    eager.read_into = counted  # type: ignore[method-assign]

    async def send_in_parts() -> None:
        part = len(data) // 8 + 1
        for start in range(0, len(data), part):
            await server.stream.send_all(data[start : start + part])
            await trio.sleep(0.02)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send_in_parts)
        frame = await client.receive()
    assert isinstance(frame.message, PieceData) and bytes(frame.payload) == payload
    assert reads <= 2  # (the header's read may take the start of the payload with it)


def test_registers_of_a_stranger_leave_little_remembered() -> None:
    # Only the URL's length bounded what a task id's computation kept: 512 Registers
    # each naming 4096 filter keys pinned 200 MiB in the supernode (found by review).
    keys = tuple(f"\U0001f600{i:03x}" for i in range(MAX_ITEMS))
    tracemalloc.start()
    try:
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        for n in range(512):
            register = Register(
                url=f"http://origin.example/{n}",
                headers=(),
                digest=None,
                tag="",
                filter=keys,
                public_key=b"k" * 32,
            )
            wire = encode_header(register)
            assert len(wire) <= MAX_HEADER
            message, _ = decode_header(wire)  # what a session hands the control loop
            assert isinstance(message, Register)
            TaskSpec.from_request(message.url, message.headers, filter_keys=message.filter)
            del message, wire, register
        gc.collect()
        retained = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert retained < 16 << 20, f"{retained / 2**20:.1f} MiB"


class _GoneReply:
    async def client_gone(self) -> None:
        return  # it left before the wait began


async def test_a_client_gone_is_let_go_within_the_unwatched_time_for_all_its_waits(
    autojump_clock: object,
) -> None:
    # A framed dfget whose origin names the length late waits twice (the length, then
    # the small file's end): each wait had half a second unwatched (found by review).
    async def takes(seconds: float) -> bool:
        await trio.sleep(seconds)
        return True

    started = trio.current_time()
    until = started + control.UNWATCHED
    gone = cast(Reply, _GoneReply())
    with pytest.raises(ClientGone):
        await control._while_asked(gone, partial(takes, 0.45), unwatched_until=until)
        await control._while_asked(gone, partial(takes, 10), unwatched_until=until)
    assert trio.current_time() - started <= control.UNWATCHED
