"""Revalidations on kept connections (`supernode/cdn/keepalive.py`): each new requester
of a task is still asked about with its own headers, the answers never cross, and a
connection is kept only after a clean, complete exchange."""

from __future__ import annotations

import base64
import contextlib
import os
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path

import pytest
import trio
from conftest import Fetch, StartSupernode

from common.origins import OriginPolicy
from dfget.errors import OriginFailed
from proto.pieces import MiB
from supernode.cdn.keepalive import KeptConnections
from supernode.cdn.lean import lean_get
from testkit.origin import FakeOrigin

AUTH = "Basic " + base64.b64encode(b"user:secret").decode()


def revalidations(origin: FakeOrigin, path: str) -> int:
    """GETs of one byte at `path`: the supernode's revalidations (a fetch asks for more)."""
    return sum(
        1
        for method, headers in origin.stats[path].requests
        if method == "GET" and dict(headers).get("range") == "bytes=0-0"
    )


async def test_new_requesters_are_revalidated_on_one_kept_connection(
    origin: FakeOrigin, start_supernode: StartSupernode, fetch: Fetch
) -> None:
    data = os.urandom(2 * MiB + 1)
    origin.add("/f.bin", data)
    node = await start_supernode()
    await fetch(origin.url("/f.bin"), node, name="first")  # the CDN fetches it
    before = origin.connections
    for n in range(5):  # five more requesters, each revalidated with its own headers
        headers = (("X-Requester", str(n)),)
        result = await fetch(origin.url("/f.bin"), node, headers=headers, name=f"r{n}")
        assert Path(result.output).read_bytes() == data
    assert revalidations(origin, "/f.bin") == 5
    assert origin.connections - before == 1  # (one each before)
    assert node.node.origin.kept.reused == 4


async def test_a_refused_requester_and_the_next_get_their_own_answers(
    origin: FakeOrigin, start_supernode: StartSupernode, fetch: Fetch
) -> None:
    data = os.urandom(MiB + 5)
    origin.add("/private.bin", data, require_auth=AUTH)
    node = await start_supernode()
    authorised = (("Authorization", AUTH),)
    await fetch(origin.url("/private.bin"), node, headers=authorised, name="owner")
    before = origin.connections
    with pytest.raises(OriginFailed) as refused:  # no credentials: 401 from the origin
        await fetch(origin.url("/private.bin"), node, name="stranger")
    assert refused.value.status == 401
    # The next requester's revalidation goes on the connection the 401 came on, and
    # gets its own answer: the bytes.
    result = await fetch(origin.url("/private.bin"), node, headers=authorised, name="second")
    assert Path(result.output).read_bytes() == data
    assert origin.connections - before == 1
    assert node.node.origin.kept.reused >= 1


Serve = Callable[[trio.SocketStream], Awaitable[None]]


async def serve_raw(nursery: trio.Nursery, handler: Serve) -> tuple[int, list[int]]:
    """A TCP server on 127.0.0.1 running `handler` per connection: (port, a list that
    counts connections)."""
    accepted: list[int] = []

    async def one(stream: trio.SocketStream) -> None:
        accepted.append(1)
        with contextlib.suppress(trio.BrokenResourceError):  # (the client closed first)
            await handler(stream)

    listeners = await nursery.start(partial(trio.serve_tcp, one, 0, host="127.0.0.1"))
    return listeners[0].socket.getsockname()[1], accepted


async def read_request(stream: trio.SocketStream) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        more = await stream.receive_some(4096)
        if not more:
            return data
        data += more
    return data


ANSWER = b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-0/9\r\nContent-Length: 1\r\n\r\nx"


async def get(port: int, kept: KeptConnections, path: str = "/f") -> bytes:
    response = await lean_get(
        f"http://127.0.0.1:{port}{path}",
        [],
        policy=OriginPolicy(defaults=False),
        read_timeout=5,
        connect_timeout=5,
        kept=kept,
    )
    view = memoryview(bytearray(16))
    count = await response.read_into(view)
    await response.aclose()
    return bytes(view[:count])


async def test_a_kept_connection_the_origin_closed_or_spoke_on_is_not_used(
    nursery: trio.Nursery,
) -> None:
    async def answer_then_close(stream: trio.SocketStream) -> None:  # an idle close
        await read_request(stream)
        await stream.send_all(ANSWER)
        await stream.aclose()

    async def answer_then_time_out(stream: trio.SocketStream) -> None:  # a 408 while idle
        await read_request(stream)
        await stream.send_all(ANSWER)
        await trio.sleep(0.02)
        await stream.send_all(b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n")
        await trio.sleep(1)

    for handler in (answer_then_close, answer_then_time_out):
        port, accepted = await serve_raw(nursery, handler)
        kept = KeptConnections()
        assert await get(port, kept) == b"x"
        assert len(kept) == 1
        await trio.sleep(0.1)
        assert await get(port, kept) == b"x"  # on a new connection: not the 408
        assert len(accepted) == 2 and kept.reused == 0


async def test_a_kept_connection_closed_as_the_request_goes_is_tried_once(
    nursery: trio.Nursery,
) -> None:
    async def one_answer_a_connection(stream: trio.SocketStream) -> None:
        await read_request(stream)
        await stream.send_all(ANSWER)
        await read_request(stream)  # a second request: closed unanswered
        await stream.aclose()

    port, accepted = await serve_raw(nursery, one_answer_a_connection)
    kept = KeptConnections()
    assert await get(port, kept) == b"x"
    assert await get(port, kept) == b"x"  # the kept one failed unanswered: a new one
    assert len(accepted) == 2 and kept.reused == 1


async def test_bytes_nobody_asked_for_keep_no_connection(nursery: trio.Nursery) -> None:
    async def answer_twice(stream: trio.SocketStream) -> None:  # a second answer, unasked
        await read_request(stream)
        await stream.send_all(ANSWER + ANSWER.replace(b"x", b"!"))
        await trio.sleep(1)

    port, accepted = await serve_raw(nursery, answer_twice)
    kept = KeptConnections()
    assert await get(port, kept) == b"x"
    assert len(kept) == 0  # what followed would have answered the next request
    assert await get(port, kept) == b"x"
    assert len(accepted) == 2


async def test_an_answer_longer_than_a_revalidation_keeps_no_connection(
    nursery: trio.Nursery,
) -> None:
    body = os.urandom(MiB)  # an origin that ignores Range: the whole body, not one byte

    async def whole_body(stream: trio.SocketStream) -> None:
        while await read_request(stream):
            await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % MiB + body)

    port, accepted = await serve_raw(nursery, whole_body)
    kept = KeptConnections()
    assert await get(port, kept) == body[:16]  # (what the caller reads: it stops there)
    assert len(kept) == 0  # the rest is not read to keep the connection
    assert await get(port, kept) == body[:16]
    assert len(accepted) == 2


async def test_kept_connections_are_bounded_and_expire(nursery: trio.Nursery) -> None:
    async def keep_answering(stream: trio.SocketStream) -> None:
        while await read_request(stream):
            await stream.send_all(ANSWER)

    port, accepted = await serve_raw(nursery, keep_answering)
    kept = KeptConnections(per_origin=2, idle=0.2)
    async with trio.open_nursery() as requests:
        for _ in range(4):  # four at once: four connections, two kept after
            requests.start_soon(get, port, kept)
    assert len(accepted) == 4 and len(kept) == 2
    assert await get(port, kept) == b"x"
    assert len(accepted) == 4 and kept.reused == 1
    await trio.sleep(0.3)  # past `idle`: both dropped, a new connection
    assert await get(port, kept) == b"x"
    assert len(accepted) == 5 and len(kept) == 1
