"""dfdaemon's HTTP/1.1 server on a real socket: a request body its handler never read
keeps the connection only if it is short and quick."""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import h11
import pytest
import trio

from dfdaemon import httpconn
from dfdaemon.httpserver import Reply, Request, serve_http
from proto.io import SENDFILE_YIELD


async def answer_without_reading(request: Request, reply: Reply) -> None:
    await reply.simple(200, f"{request.method} {request.target}\n".encode(), "text/plain")


@pytest.fixture
async def server(nursery: trio.Nursery) -> AsyncIterator[trio.SocketStream]:
    """A client's connection to a server whose one handler never reads a body."""
    port = await nursery.start(serve_http, "127.0.0.1", 0, answer_without_reading)
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        yield stream


def put(length: int) -> h11.Request:
    return h11.Request(
        method="PUT", target="/upload", headers=[("host", "x"), ("content-length", str(length))]
    )


def wire(client: h11.Connection, *events: h11.Event) -> bytes:
    """The bytes that `events` go out as."""
    return b"".join(client.send(event) or b"" for event in events)


async def read_answer(stream: trio.SocketStream, client: h11.Connection) -> bytes:
    """The body of the next whole answer (status 200)."""
    body = b""
    while True:
        event = client.next_event()
        if event is h11.NEED_DATA:
            client.receive_data(await stream.receive_some())
        elif isinstance(event, h11.Response):
            assert event.status_code == 200
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            return body
        else:
            raise AssertionError(f"unexpected {event!r}")


async def wait_closed(stream: trio.SocketStream) -> None:
    """Until the server ends the connection cleanly: its FIN, not a reset (which could
    destroy an answer the client has not read yet)."""
    while await stream.receive_some():
        raise AssertionError("more bytes after the answer")


async def test_an_endless_unread_body_closes_the_connection_after_the_answer(
    server: trio.SocketStream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(httpconn, "UNREAD_BODY_TIMEOUT", 60.0)  # the length, not the clock

    async def send_forever() -> None:
        try:
            while True:
                await server.send_all(bytes(16 * 1024))
        except trio.BrokenResourceError:
            pass  # the server hung up, as it should

    client = h11.Connection(h11.CLIENT)
    async with trio.open_nursery() as nursery:
        await server.send_all(wire(client, put(1 << 40)))
        nursery.start_soon(send_forever)
        with trio.fail_after(10):  # well before the timeout
            assert await read_answer(server, client) == b"PUT /upload\n"
            await wait_closed(server)
        nursery.cancel_scope.cancel()


async def test_a_stalled_unread_body_closes_the_connection_after_a_while(
    server: trio.SocketStream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(httpconn, "UNREAD_BODY_TIMEOUT", 0.2)
    client = h11.Connection(h11.CLIENT)
    # 10 bytes of the 1000 announced, and never the rest
    await server.send_all(wire(client, put(1000), h11.Data(data=bytes(10))))
    with trio.fail_after(5):
        assert await read_answer(server, client) == b"PUT /upload\n"
        await wait_closed(server)


async def test_a_client_that_sends_a_long_body_before_reading_gets_the_whole_answer(
    server: trio.SocketStream,
) -> None:
    client = h11.Connection(h11.CLIENT)
    size = 4 * httpconn.MAX_UNREAD_BODY
    with trio.fail_after(5):  # all of it first, as urllib3 does, then the answer
        await server.send_all(
            wire(client, put(size), h11.Data(data=bytes(size)), h11.EndOfMessage())
        )
        assert await read_answer(server, client) == b"PUT /upload\n"
        await wait_closed(server)


async def test_a_short_unread_body_keeps_the_connection_alive(server: trio.SocketStream) -> None:
    client = h11.Connection(h11.CLIENT)
    get = h11.Request(method="GET", target="/next", headers=[("host", "x")])
    with trio.fail_after(5):
        await server.send_all(
            wire(client, put(1000), h11.Data(data=bytes(1000)), h11.EndOfMessage())
        )
        assert await read_answer(server, client) == b"PUT /upload\n"
        client.start_next_cycle()
        await server.send_all(wire(client, get, h11.EndOfMessage()))
        assert await read_answer(server, client) == b"GET /next\n"


async def test_a_long_file_body_to_a_client_that_keeps_up_lets_other_tasks_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The body goes by sendfile in slices that never wait for a client reading as fast
    # as they come (here a sendfile that takes every slice at once): without a yield of
    # its own every SENDFILE_YIELD bytes, the daemon's other tasks waited for the whole
    # body (20-110 MiB in a review's runs, with a reader that kept up).
    size = 16 * SENDFILE_YIELD
    path = tmp_path / "big"
    with open(path, "wb") as file:
        file.truncate(size)  # (sparse)
    sent = 0

    def takes_all(out: int, fd: int, offset: int, count: int) -> int:
        nonlocal sent
        sent += count
        return count

    monkeypatch.setattr(os, "sendfile", takes_all)  # (proto.io.framed calls os.sendfile)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    theirs.sendall(b"GET /f HTTP/1.1\r\nHost: d\r\n\r\n")
    fd = os.open(path, os.O_RDONLY)
    stream = trio.SocketStream(trio.socket.from_stdlib_socket(ours))
    conn = httpconn.Connection(stream)
    most, turns, sending = 0, 0, True

    async def another_task() -> None:  # how much goes out between two of its turns
        nonlocal most, turns
        while sending:
            before = sent
            await trio.lowlevel.checkpoint()
            most, turns = max(most, sent - before), turns + 1

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(another_task)
            assert isinstance(await conn.next_event(), h11.Request)
            await conn.send(h11.Response(status_code=200, headers=[("content-length", str(size))]))
            turns = 0
            await conn.send_file(fd, 0, size)
            sending = False
    finally:
        os.close(fd)
        theirs.close()
        await stream.aclose()
    assert sent == size
    # (between two of its turns the sender may run twice: trio runs a batch of ready
    # tasks in either order)
    assert turns >= 8 and most <= 2 * SENDFILE_YIELD
