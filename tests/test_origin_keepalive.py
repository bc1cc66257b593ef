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

from common.io.keptconns import KeptConnections
from common.origins import OriginPolicy
from dfget.errors import OriginFailed
from proto.pieces import MiB
from supernode.cdn.lean import DRAIN_TIMEOUT, LeanResponse, lean_get
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
    asked = [
        dict(headers).get("x-requester")
        for method, headers in origin.stats["/f.bin"].requests
        if method == "GET" and dict(headers).get("range") == "bytes=0-0"
    ]
    assert asked == ["0", "1", "2", "3", "4"]  # each with its own headers
    assert origin.connections - before == 1  # (one each before)
    assert node.node.origin.kept.reused == 4


async def test_a_stranger_on_a_kept_connection_gets_its_own_refusal(
    origin: FakeOrigin, start_supernode: StartSupernode, fetch: Fetch
) -> None:
    data = os.urandom(MiB + 5)
    origin.add("/private.bin", data, require_auth=AUTH)
    node = await start_supernode()
    kept = node.node.origin.kept
    owner = (("Authorization", AUTH),)
    await fetch(origin.url("/private.bin"), node, headers=owner, name="owner")
    await fetch(origin.url("/private.bin"), node, headers=owner, name="second")
    assert len(kept) == 1  # the second owner's revalidation: kept after it
    before = origin.connections
    with pytest.raises(OriginFailed) as refused:  # no credentials, on the kept connection
        await fetch(origin.url("/private.bin"), node, name="stranger")
    assert refused.value.status == 401 and kept.reused == 1
    assert origin.connections == before and len(kept) == 0  # a refusal: not kept
    result = await fetch(origin.url("/private.bin"), node, headers=owner, name="third")
    assert Path(result.output).read_bytes() == data
    assert origin.connections == before + 1


async def test_framing_headers_with_underscores_never_reach_the_origin(
    origin: FakeOrigin, start_supernode: StartSupernode, fetch: Fetch
) -> None:
    data = os.urandom(MiB)
    origin.add("/f.bin", data)
    node = await start_supernode()
    await fetch(origin.url("/f.bin"), node, name="first")
    sneaky = (("Content_Length", "100"), ("Transfer_Encoding", "chunked"), ("X_Ok", "1"))
    await fetch(origin.url("/f.bin"), node, headers=sneaky, name="sneaky")
    last = dict(origin.stats["/f.bin"].requests[-1][1])
    assert "content_length" not in last and "transfer_encoding" not in last
    assert last.get("x_ok") == "1"  # other names are passed on as they are


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


async def ask(port: int, kept: KeptConnections, path: str = "/f") -> LeanResponse:
    """`GET path` on the lean path, `kept` its connections: the open response."""
    policy = OriginPolicy(defaults=False)
    url = f"http://127.0.0.1:{port}{path}"
    return await lean_get(url, [], policy=policy, read_timeout=5, connect_timeout=5, kept=kept)


async def get(port: int, kept: KeptConnections, path: str = "/f") -> bytes:
    """The first bytes (16 at most) of `GET path`'s answer, the response then closed."""
    response = await ask(port, kept, path)
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


async def test_a_408_on_a_kept_connection_sends_the_request_again(
    nursery: trio.Nursery,
) -> None:
    async def then_time_out(stream: trio.SocketStream) -> None:
        await read_request(stream)
        await stream.send_all(ANSWER)
        await read_request(stream)  # its idle timeout, as the next request arrives
        await stream.send_all(b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n\r\n")
        await stream.aclose()

    port, accepted = await serve_raw(nursery, then_time_out)
    kept = KeptConnections()
    assert await get(port, kept) == b"x"
    assert await get(port, kept) == b"x"  # not the 408: asked again on a new connection
    assert len(accepted) == 2 and kept.reused == 1


async def test_chunked_answers_are_kept_close_answers_are_not(nursery: trio.Nursery) -> None:
    chunked = (
        b"HTTP/1.1 206 Partial Content\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n"
    )
    closing = ANSWER.replace(b"Content-Length: 1", b"Connection: close\r\nContent-Length: 1")
    both = ANSWER.replace(b"Content-Length: 1", b"Transfer-Encoding: chunked\r\nContent-Length: 1")
    both = both.removesuffix(b"x") + b"1\r\nx\r\n0\r\n\r\n"
    for answer, keeps in ((chunked, True), (closing, False), (both, False)):

        async def respond(stream: trio.SocketStream, answer: bytes = answer) -> None:
            while await read_request(stream):
                await stream.send_all(answer)

        port, _ = await serve_raw(nursery, respond)
        kept = KeptConnections()
        assert await get(port, kept) == b"x"
        assert len(kept) == (1 if keeps else 0), answer


async def test_room_is_made_by_dropping_stale_connections_of_other_origins(
    nursery: trio.Nursery,
) -> None:
    async def keep_answering(stream: trio.SocketStream) -> None:
        while await read_request(stream):
            await stream.send_all(ANSWER)

    one, _ = await serve_raw(nursery, keep_answering)
    two, _ = await serve_raw(nursery, keep_answering)
    kept = KeptConnections(total=2, idle=0.1)
    async with trio.open_nursery() as requests:
        for _ in range(2):
            requests.start_soon(get, one, kept)
    assert len(kept) == 2  # full, with the first origin's
    await trio.sleep(0.2)  # those expire
    assert await get(two, kept) == b"x"
    assert len(kept) == 1  # the second origin's kept: the stale ones made room
    kept.close()
    assert len(kept) == 0 and await get(two, kept) == b"x"
    assert len(kept) == 0  # closed: nothing is kept any more


async def test_an_answer_that_never_ends_costs_its_close_a_second_at_most(
    nursery: trio.Nursery,
) -> None:
    async def head_only(stream: trio.SocketStream) -> None:  # the one byte never comes
        await read_request(stream)
        await stream.send_all(ANSWER.removesuffix(b"x"))
        await trio.sleep_forever()

    port, _ = await serve_raw(nursery, head_only)
    kept = KeptConnections()
    response = await ask(port, kept)
    started = trio.current_time()
    await response.aclose()  # (a revalidation reads nothing of the body itself)
    assert trio.current_time() - started < DRAIN_TIMEOUT + 0.5
    assert len(kept) == 0


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
