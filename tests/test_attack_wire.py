"""Strangers with a socket: what they can make the supernode and a peer spend.

Each test does what an attacker would, with raw frames on real sockets: a 60-byte
header naming a 64 MiB payload, a Hello and then silence, a session that never asks
for anything, a requester that never reads, thousands of connections, a refused peer
that stays. Issue 12, item 3 ("anyone who can connect can pin memory") and the send
deadline of item 6.
"""

from __future__ import annotations

import os
import re
import time
import tracemalloc
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from functools import partial
from pathlib import Path

import pytest
import trio
import trio.testing
from conftest import (
    Fetch,
    RunningSupernode,
    StartSupernode,
    supernode_process,
    until,
    until_equal,
)
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from rawwire import next_message, raw_connect, raw_frame, until_closed

import dfget.peer
from common.connlimit import ConnectionLimit
from common.io import RateLimiter
from dfget.connect import connect
from dfget.errors import SupernodeFailed
from dfget.options import PeerOptions
from dfget.sources import PieceConnections, PieceRefusedError, SourceLost
from dfget.uploads import PieceServer, SharedTask
from proto import (
    ErrorReply,
    FrameDecoder,
    Hello,
    Message,
    PieceData,
    PieceRefused,
    PieceRequest,
    Register,
    Registered,
    RemoteProtoError,
    Session,
    Side,
    Welcome,
    encode,
)
from proto.errors import ConnectionLost, FrameTooLarge
from proto.io import FramedStream, open_session
from proto.pieces import TAG_SIZE, MiB, PieceSealer, piece_digest
from proto.tickets import CDN_UPLOADER, TicketIssuer, TicketVerifier
from testkit.origin import FakeOrigin

HUGE = 64 * MiB
TID = "ab" * 32
PUBLIC_KEY = b"\x09" * 32  # a usable X25519 public key (the base point)


# -- frames as an attacker writes them ----------------------------------------------------


def hello_header(peer_id: str = "stranger") -> dict[str, object]:
    return {"t": "hello", "versions": (1,), "role": "peer", "peer_id": peer_id, "agent": ""}


def register_header(url: str = "http://127.0.0.1:9/x") -> dict[str, object]:
    return {
        "t": "register",
        "url": url,
        "headers": (),
        "digest": None,
        "tag": "",
        "filter": (),
        "public_key": PUBLIC_KEY,
    }


def request_header(index: int = 0) -> dict[str, object]:
    return {"t": "piece_request", "task_id": TID, "generation": 1, "index": index, "ticket": b""}


def register_message(url: str) -> Register:
    return Register(url=url, headers=(), digest=None, tag="", filter=(), public_key=PUBLIC_KEY)


async def raw_hello(stream: trio.SocketStream, peer_id: str = "stranger") -> FrameDecoder:
    """Say Hello by hand and read the Welcome; the decoder for what comes next."""
    decoder = FrameDecoder()
    await stream.send_all(raw_frame(hello_header(peer_id)))
    with trio.fail_after(5):
        assert isinstance(await next_message(stream, decoder), Welcome)
    return decoder


async def framed_until_closed(framed: FramedStream, seconds: float) -> list[Message]:
    messages = []
    with trio.fail_after(seconds):
        while True:
            try:
                messages.append((await framed.receive()).message)
            except ConnectionLost:
                return messages


@asynccontextmanager
async def traced() -> AsyncIterator[Callable[[], int]]:
    """Python allocations while the block runs: yields a function giving the peak
    above the level at the start, in bytes."""
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    try:
        yield lambda: tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


# -- 1. payloads: only where one is due, never more than the connection takes ------------


@pytest.mark.parametrize(
    "header",
    [hello_header(), register_header(), request_header(), {"t": "keepalive"}],
    ids=["hello", "register", "piece_request", "keepalive"],
)
def test_a_payload_on_a_message_that_carries_none_is_refused_before_allocating(
    header: dict[str, object],
) -> None:
    decoder = FrameDecoder()  # the permissive default: the rule is the codec's
    tracemalloc.start()
    try:
        with pytest.raises(RemoteProtoError, match="carries no payload"):
            decoder.receive_data(raw_frame({**header, "_n": HUGE}))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert decoder.payload_view() is None
    assert peak < MiB


def test_a_server_session_takes_no_payload_and_only_a_small_hello() -> None:
    piece = raw_frame({"t": "piece_data", "task_id": TID, "generation": 1, "index": 0, "_n": 17})
    with pytest.raises(RemoteProtoError, match="receives none"):
        Session(Side.SERVER).receive_data(piece)
    with pytest.raises(FrameTooLarge) as info:  # a Hello is tiny: 4 KiB is plenty
        Session(Side.SERVER).receive_data((4097).to_bytes(4, "big"))
    assert info.value.limit == 4096
    server = Session(Side.SERVER)  # a real Hello, then larger headers are fine
    server.receive_data(encode(Hello(versions=(1,), role="peer", peer_id="p" * 128)))
    frame = server.next_frame()
    assert frame is not None and isinstance(frame.message, Hello)
    assert server.decoder.max_header == 64 * 1024


async def test_the_supernode_closes_a_first_header_over_4_kib_at_once(
    supernode: RunningSupernode,
) -> None:
    stream = await raw_connect(supernode.address)
    await stream.send_all((5000).to_bytes(4, "big") + b"\x85")  # then a slow drip, or nothing
    [reply] = await until_closed(stream, 2)
    assert isinstance(reply, ErrorReply) and reply.code == "bad_request"
    assert "4096" in reply.message


@asynccontextmanager
async def hostile_uploader(
    answer: Callable[[Message], bytes],
) -> AsyncIterator[str]:
    """A server that says Welcome, then answers the first request with `answer(request)`
    and waits forever; yields its HOST:PORT."""

    async def handler(stream: trio.SocketStream) -> None:
        decoder = FrameDecoder()
        if await next_message(stream, decoder) is None:
            return
        await stream.send_all(encode(Welcome(version=1, role="supernode")))
        request = await next_message(stream, decoder)
        if request is not None:
            with suppress(trio.BrokenResourceError):  # (the downloader may close on it)
                await stream.send_all(answer(request))
            await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
        host, port = listeners[0].socket.getsockname()[:2]
        yield f"{host}:{port}"
        nursery.cancel_scope.cancel()


def piece_data_naming(size: int) -> Callable[[Message], bytes]:
    def answer(request: Message) -> bytes:
        assert isinstance(request, PieceRequest)
        header = {"t": "piece_data", "task_id": TID, "generation": 1, "index": 0, "_n": size}
        return raw_frame(header)

    return answer


@pytest.mark.parametrize("size", [MiB + 17, HUGE], ids=["piece-plus-one", "64MiB"])
async def test_a_piece_connection_takes_one_sealed_piece_of_its_task_at_most(
    nursery: trio.Nursery, size: int
) -> None:
    async with hostile_uploader(piece_data_naming(size)) as address, traced() as peak:
        pool = PieceConnections(peer_id="downloader", piece_size=MiB)
        connection = await pool.get(address, nursery=nursery)
        request = PieceRequest(task_id=TID, generation=1, index=0, ticket=b"t")
        with trio.fail_after(5), pytest.raises(SourceLost, match="exceeds the limit"):
            await connection.fetch(request)
        assert peak() < 4 * MiB


def unasked_answers(count: int) -> Callable[[Message], bytes]:
    """The answer to the request (index 0), then `count` PieceData frames nobody asked
    for, each a length of its own."""

    def answer(request: Message) -> bytes:
        assert isinstance(request, PieceRequest)
        frames = b""
        for i in range(count + 1):
            size = MiB + TAG_SIZE - i
            header = {"t": "piece_data", "task_id": TID, "generation": 1, "index": i, "_n": size}
            frames += raw_frame(header) + bytes(size)
        return frames

    return answer


async def test_answers_nobody_asked_for_break_the_piece_connection(
    nursery: trio.Nursery,
) -> None:
    """An uploader streaming answers to requests never sent (each a payload length of
    its own, each buffer kept for reuse) grew the downloader's memory without bound
    (800 MiB from 200 frames in a review's run): the first one breaks the connection."""
    async with hostile_uploader(unasked_answers(20)) as address:
        pool = PieceConnections(peer_id="downloader", piece_size=MiB)
        connection = await pool.get(address, nursery=nursery)
        request = PieceRequest(task_id=TID, generation=1, index=0, ticket=b"t")
        with trio.fail_after(5):
            frame = await connection.fetch(request)
        assert len(frame.payload) == MiB + TAG_SIZE
        connection.recycle(frame.payload)
        await until(lambda: connection.broken is not None, 5)
        assert "no request" in str(connection.broken)
        spares = connection.framed.session.decoder._spare
        assert sum(len(kept) for kept in spares.values()) <= 2


async def test_a_connection_a_request_was_cut_short_on_is_not_handed_out_again(
    nursery: trio.Nursery,
) -> None:
    """A transfer cancelled while its request was being sent (an endgame copy that lost)
    leaves its connection unable to send: the next transfer to that uploader gets a new
    connection, where it failed at once and counted against the uploader."""
    async with hostile_uploader(piece_data_naming(MiB)) as address:
        pool = PieceConnections(peer_id="downloader", piece_size=MiB)
        first = await pool.get(address, nursery=nursery)
        first.framed._send_broken = "a PieceRequest frame was cut short (cancelled)"
        second = await pool.get(address, nursery=nursery)
        assert second is not first and second.framed.can_send
        assert await pool.get(address, nursery=nursery) is second


def test_a_decoder_keeps_spare_payloads_of_two_lengths_at_most() -> None:
    """A task's pieces come in two lengths (the last may be shorter): buffers of any
    other length are not kept for reuse, however many are handed back."""
    decoder = FrameDecoder()
    for length in range(1000, 1100):
        for _ in range(6):
            decoder.recycle(bytearray(length))
    assert len(decoder._spare) <= 2
    assert all(len(kept) <= 4 for kept in decoder._spare.values())


@pytest.mark.parametrize("tag", ["pieces_ready", "piece_data"])
async def test_the_control_connection_takes_no_payload(tag: str) -> None:
    def answer(request: Message) -> bytes:
        assert isinstance(request, Register)
        header: dict[str, object] = {"t": tag, "task_id": TID, "generation": 1, "_n": HUGE}
        if tag == "pieces_ready":
            header |= {"start": 0, "digests": (b"d" * 32,)}
        else:
            header |= {"index": 0}
        return raw_frame(header)

    async with hostile_uploader(answer) as address, traced() as peak:
        with trio.fail_after(5), pytest.raises(SupernodeFailed, match="payload"):
            async with connect(address, peer_id="downloader") as control:
                await control.send(register_message("http://127.0.0.1:9/x"))
                await control.receive()
        assert peak() < 4 * MiB


def test_the_decoder_holds_undecoded_bytes_not_decoded_frames() -> None:
    flood = raw_frame({"t": "keepalive"}) * 15_000  # 255 KiB
    decoder = FrameDecoder()
    tracemalloc.start()
    try:
        decoder.receive_data(flood)
        held = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert held < 2 * len(flood)  # once: 2.2 MiB, an object per frame
    frames = iter(decoder.next_frame, None)
    assert sum(1 for _ in frames) == 15_000 and not decoder.in_frame


async def test_a_flood_of_tiny_frames_costs_no_more_than_its_bytes(nursery: trio.Nursery) -> None:
    # 256 KiB of 17-byte frames once decoded into 15,000 objects at once: 2.2 MiB a
    # connection, held while the server answered the first one.
    server = FakePieceServer(slots=2, limiter=RateLimiter(None))
    address = await start_upload_server(nursery, server)
    flood = raw_frame(hello_header()) + raw_frame({"t": "keepalive"}) * 15_000

    async def send(stream: trio.SocketStream) -> None:
        with suppress(trio.BrokenResourceError):  # reset once it has been refused
            await stream.send_all(flood)

    async with traced() as peak:
        streams = [await raw_connect(address) for _ in range(20)]
        async with trio.open_nursery() as senders:
            for stream in streams:
                senders.start_soon(send, stream)
            for stream in streams:
                await until_closed(stream, 30)  # refused (a keepalive opens no session)
        assert peak() < 6 * MiB, f"{peak() / MiB:.1f} MiB allocated"


# -- 2. deadlines on every session --------------------------------------------------------


async def test_a_hello_then_silence_is_cut_at_the_first_request_deadline(
    supernode: RunningSupernode,
) -> None:
    supernode.node.server.first_request_timeout = 0.3
    stream = await raw_connect(supernode.address)
    decoder = await raw_hello(stream)
    started = trio.current_time()
    assert await until_closed(stream, 10, decoder) == []  # the default: 15 s
    assert trio.current_time() - started >= 0.25


async def test_a_silent_control_session_is_closed_and_its_peer_leaves(
    origin: FakeOrigin, supernode: RunningSupernode
) -> None:
    origin.add("/f.bin", b"x" * 1000)
    supernode.node.server.control_idle = 0.5
    stream = await raw_connect(supernode.address)
    async with open_session(stream, role="peer", peer_id="sleeper", max_payload=0) as framed:
        await framed.send(register_message(origin.url("/f.bin")))
        messages = await framed_until_closed(framed, 5)  # Registered, news, then the close
        assert isinstance(messages[0], Registered)
    await until(lambda: "sleeper" not in supernode.node.swarm.peers)


async def test_keepalives_keep_a_control_session_open(
    origin: FakeOrigin, supernode: RunningSupernode
) -> None:
    from proto.messages import KeepAlive  # new with the fix: the test fails without it

    origin.add("/f.bin", b"x" * 1000)
    supernode.node.server.control_idle = 0.5
    stream = await raw_connect(supernode.address)
    async with open_session(stream, role="peer", peer_id="awake", max_payload=0) as framed:
        await framed.send(register_message(origin.url("/f.bin")))
        with trio.move_on_after(2):  # four idle deadlines: alive all along
            async with trio.open_nursery() as nursery:

                async def keep_alive() -> None:
                    while True:
                        await trio.sleep(0.1)
                        await framed.send(KeepAlive())

                nursery.start_soon(keep_alive)
                while True:
                    await framed.receive()  # ConnectionLost here would fail the test
        assert "awake" in supernode.node.swarm.peers
        await framed_until_closed(framed, 10)  # keepalives stopped: closed in 0.5 s (not 120)
    await until(lambda: "awake" not in supernode.node.swarm.peers)


async def fetched_task(origin: FakeOrigin, node: RunningSupernode, fetch: Fetch, size: int) -> str:
    """A task of `size` random bytes, complete on the CDN; its id."""
    origin.add("/f.bin", os.urandom(size))
    result = await fetch(origin.url("/f.bin"), node)
    return str(result.task_id)


def cdn_request(node: RunningSupernode, task_id: str, index: int, requester: str) -> PieceRequest:
    ticket = node.node.swarm.ticket(task_id, requester, CDN_UPLOADER)
    return PieceRequest(task_id=task_id, generation=1, index=index, ticket=ticket)


async def test_an_idle_cdn_piece_session_is_closed(
    origin: FakeOrigin, supernode: RunningSupernode, fetch: Fetch
) -> None:
    task_id = await fetched_task(origin, supernode, fetch, 2 * MiB)
    supernode.node.server.piece_idle = 0.4
    stream = await raw_connect(supernode.address)
    async with open_session(stream, role="peer", peer_id="reader", max_payload=MiB + 16) as framed:
        await framed.send(cdn_request(supernode, task_id, 0, "reader"))
        assert isinstance((await framed.receive()).message, PieceData)
        started = trio.current_time()
        assert await framed_until_closed(framed, 10) == []  # the default: 60 s
        assert trio.current_time() - started >= 0.35


# A peer's upload server, in process: a shared task whose pieces are `size` bytes.
TICKET_KEY = Ed25519PrivateKey.generate()
ISSUER = TicketIssuer(TICKET_KEY, 3600)


class FakePieceServer(PieceServer):
    size = 1024

    async def piece_bytes(self, task: SharedTask, index: int) -> bytes | memoryview:
        return bytes(self.size)


def shared_task() -> SharedTask:
    return SharedTask(
        task_id=TID,
        generation=1,
        uploader="seeder",
        sealer=PieceSealer(bytes(32), TID),
        piece_size=MiB,
        tickets=TicketVerifier(TICKET_KEY.public_key()),
        holds=lambda index: True,
        length_of=lambda index: MiB,
        fd=os.open(os.devnull, os.O_RDONLY),
    )


def peer_request(
    index: int = 0, requester: str = "reader", ticket: bytes | None = None
) -> PieceRequest:
    if ticket is None:
        ticket = ISSUER.ticket(TID, requester, "seeder", now=time.time())
    return PieceRequest(task_id=TID, generation=1, index=index, ticket=ticket)


async def start_upload_server(nursery: trio.Nursery, server: PieceServer) -> str:
    server.share(shared_task())
    port = await nursery.start(server.serve, "127.0.0.1", 0)
    return f"127.0.0.1:{port}"


async def test_the_upload_server_cuts_silence_after_hello_and_idle_sessions(
    nursery: trio.Nursery,
) -> None:
    server = FakePieceServer(slots=2, limiter=RateLimiter(None))
    server.first_request_timeout = 0.3
    server.piece_idle = 0.4
    address = await start_upload_server(nursery, server)
    silent = await raw_connect(address)
    decoder = await raw_hello(silent)
    assert await until_closed(silent, 10, decoder) == []
    stream = await raw_connect(address)
    async with open_session(stream, role="peer", peer_id="reader", max_payload=MiB + 16) as framed:
        await framed.send(peer_request())
        assert isinstance((await framed.receive()).message, PieceData)
        started = trio.current_time()
        assert await framed_until_closed(framed, 10) == []  # the default: 60 s
        assert trio.current_time() - started >= 0.35


async def pin_with_made_up_tasks(address: str, idle: float) -> float:
    """A stranger (no token, no ticket) asking for a made-up task a little before each
    idle deadline: how long the server kept the session (found by review: forever; here
    at most 60 idle deadlines)."""
    stream = await raw_connect(address)
    started = trio.current_time()
    async with open_session(stream, role="peer", peer_id="stranger", max_payload=0) as framed:
        with trio.move_on_after(60 * idle):
            while True:
                request = PieceRequest(
                    task_id=os.urandom(32).hex(), generation=1, index=0, ticket=b""
                )
                try:
                    await framed.send(request)
                    reply = (await framed.receive()).message
                except ConnectionLost:
                    break
                assert isinstance(reply, PieceRefused) and reply.code == "unknown_task"
                await trio.sleep(idle * 0.6)
    return trio.current_time() - started


async def test_requests_for_made_up_tasks_do_not_keep_a_piece_session(
    nursery: trio.Nursery, supernode: RunningSupernode
) -> None:
    idle = 0.3
    supernode.node.server.piece_idle = idle
    assert await pin_with_made_up_tasks(supernode.address, idle) < 30 * idle
    server = FakePieceServer(slots=2, limiter=RateLimiter(None))
    server.piece_idle = idle
    address = await start_upload_server(nursery, server)
    assert await pin_with_made_up_tasks(address, idle) < 30 * idle


@pytest.mark.parametrize("keepalive", [True, False], ids=["keepalive", "no-keepalive"])
async def test_a_seeding_dfget_keeps_its_control_session_with_keepalives(
    origin: FakeOrigin,
    supernode: RunningSupernode,
    fetch: Fetch,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    keepalive: bool,
) -> None:
    monkeypatch.setattr(dfget.peer, "KEEPALIVE_INTERVAL", 0.2 if keepalive else 1000.0)
    supernode.node.server.control_idle = 0.8
    data = os.urandom(2 * MiB)
    origin.add("/f.bin", data)
    peer = PeerOptions(listen=("127.0.0.1", 0), seed_for=2.5)
    result = await fetch(origin.url("/f.bin"), supernode, peer=peer)
    assert Path(result.output).read_bytes() == data
    cut = "seeding stopped" in caplog.text
    assert cut is not keepalive, caplog.text


async def test_dfget_replaces_a_piece_connection_idle_too_long_instead_of_reusing_it(
    origin: FakeOrigin, supernode: RunningSupernode, fetch: Fetch, nursery: trio.Nursery
) -> None:
    task_id = await fetched_task(origin, supernode, fetch, 4 * MiB)
    supernode.node.server.piece_idle = 0.6
    pool = PieceConnections(peer_id="reader", piece_size=MiB)
    pool.max_idle = 0.3
    first = await pool.get(supernode.address, nursery=nursery)
    await first.fetch(cdn_request(supernode, task_id, 0, "reader"))
    await trio.sleep(0.2)
    assert await pool.get(supernode.address, nursery=nursery) is first  # fresh enough
    await first.fetch(cdn_request(supernode, task_id, 1, "reader"))
    await trio.sleep(0.45)  # past max_idle, before the server's piece_idle
    second = await pool.get(supernode.address, nursery=nursery)
    assert second is not first and first.broken is not None
    frame = await second.fetch(cdn_request(supernode, task_id, 2, "reader"))
    assert len(frame.payload) == MiB + 16


# -- 3. a refused admission or ticket ends the session ------------------------------------


async def test_a_peer_refused_admission_is_disconnected(
    origin: FakeOrigin, start_supernode: StartSupernode
) -> None:
    node = await start_supernode(token=b"correct horse battery")
    origin.add("/f.bin", b"members only")
    stream = await raw_connect(node.address)
    async with open_session(stream, role="peer", peer_id="intruder", max_payload=0) as framed:
        await framed.send(register_message(origin.url("/f.bin")))
        messages = await framed_until_closed(framed, 3)
    assert len(messages) == 1
    assert isinstance(messages[0], ErrorReply) and messages[0].code == "forbidden"
    assert "intruder" not in node.node.swarm.peers


async def test_the_reserved_peer_id_is_refused_and_disconnected(
    origin: FakeOrigin, supernode: RunningSupernode
) -> None:
    origin.add("/f.bin", b"x")
    stream = await raw_connect(supernode.address)
    async with open_session(stream, role="peer", peer_id="cdn", max_payload=0) as framed:
        await framed.send(register_message(origin.url("/f.bin")))
        [reply] = await framed_until_closed(framed, 3)
    assert isinstance(reply, ErrorReply) and reply.code == "forbidden"
    assert "reserved" in reply.message


async def test_a_bad_ticket_ends_a_cdn_piece_session_and_its_pipelined_requests(
    origin: FakeOrigin, supernode: RunningSupernode, fetch: Fetch
) -> None:
    task_id = await fetched_task(origin, supernode, fetch, 4 * MiB)
    stream = await raw_connect(supernode.address)
    decoder = await raw_hello(stream, "intruder")
    forged = PieceRequest(task_id=task_id, generation=1, index=0, ticket=b"x" * 100)
    good = [cdn_request(supernode, task_id, i, "intruder") for i in (1, 2, 3)]
    await stream.send_all(b"".join(encode(r) for r in [forged, *good]))
    messages = await until_closed(stream, 3, decoder)
    # The refusal arrives whole (no reset destroys it), and nothing after it is served.
    assert len(messages) == 1, messages
    assert isinstance(messages[0], PieceRefused) and messages[0].code == "bad_ticket"


async def test_other_refusals_keep_the_piece_session(
    origin: FakeOrigin, supernode: RunningSupernode, fetch: Fetch
) -> None:
    task_id = await fetched_task(origin, supernode, fetch, 2 * MiB)
    stream = await raw_connect(supernode.address)
    async with open_session(stream, role="peer", peer_id="reader", max_payload=MiB + 16) as framed:
        unknown = cdn_request(supernode, task_id, 0, "reader")
        for request, code in (
            (PieceRequest(task_id="cd" * 32, generation=1, index=0, ticket=b""), "unknown_task"),
            (PieceRequest(task_id=task_id, generation=7, index=0, ticket=unknown.ticket), "stale"),
            (cdn_request(supernode, task_id, 99, "reader"), "not_held"),
        ):
            await framed.send(request)
            reply = (await framed.receive()).message
            assert isinstance(reply, PieceRefused) and reply.code == code
        await framed.send(cdn_request(supernode, task_id, 1, "reader"))
        assert isinstance((await framed.receive()).message, PieceData)


async def test_a_task_just_unshared_is_refused_busy_not_unknown(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A peer whose download ended stops sharing the task at once (`dfget -r`'s files
    on their shared upload server); its Leave may not have reached the supernode, which
    still sends downloaders to it. `unknown_task` counted against it there, as a
    refusal: for LEFT_BUSY it answers `busy`, as a leaving peer does, to a valid ticket
    only (found by review)."""
    from dfget import uploads

    server = FakePieceServer(slots=2, limiter=RateLimiter(None))
    address = await start_upload_server(nursery, server)
    server.unshare(TID)
    stream = await raw_connect(address)
    async with open_session(stream, role="peer", peer_id="reader", max_payload=MiB + 16) as framed:
        for request, code in (
            (peer_request(0), "busy"),
            (PieceRequest(task_id=TID, generation=2, index=0, ticket=b""), "stale"),
        ):
            await framed.send(request)
            reply = (await framed.receive()).message
            assert isinstance(reply, PieceRefused) and reply.code == code
        monkeypatch.setattr(uploads, "LEFT_BUSY", 0.0)  # (then: a task it does not know)
        await framed.send(peer_request(0))
        reply = (await framed.receive()).message
        assert isinstance(reply, PieceRefused) and reply.code == "unknown_task"
    server.share(shared_task())  # shared again: served
    stream = await raw_connect(address)
    async with open_session(stream, role="peer", peer_id="reader", max_payload=MiB + 16) as framed:
        await framed.send(peer_request(0))
        assert isinstance((await framed.receive()).message, PieceData)


def test_what_an_upload_server_keeps_of_tasks_it_left_goes_with_its_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Kept for LEFT_BUSY only, and only what a request's check needs: a task's book of
    pieces, its key and its verified tickets stayed with up to 1024 of them for as long
    as a daemon ran (found by review)."""
    import dataclasses

    from dfget import uploads

    server = FakePieceServer(slots=2, limiter=RateLimiter(None))
    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])  # (the module's clock)
    for n in range(3):
        server.share(dataclasses.replace(shared_task(), task_id=f"{n:064x}"))
        server.unshare(f"{n:064x}")
    assert len(server._left) == 3
    assert not any(
        hasattr(left, "holds") or hasattr(left, "sealer") for left in server._left.values()
    )
    clock[0] += uploads.LEFT_BUSY
    server.share(dataclasses.replace(shared_task(), task_id="f" * 64))
    server.unshare("f" * 64)  # the three older ones go
    assert list(server._left) == ["f" * 64]


async def test_a_bad_ticket_ends_a_peer_upload_session_and_dfget_fails_the_rest_cleanly(
    nursery: trio.Nursery,
) -> None:
    server = FakePieceServer(slots=2, limiter=RateLimiter(None))
    address = await start_upload_server(nursery, server)
    pool = PieceConnections(peer_id="reader", piece_size=MiB)
    connection = await pool.get(address, nursery=nursery)
    outcomes: list[str] = []

    async def one(index: int) -> None:
        try:
            await connection.fetch(peer_request(index, ticket=b"forged" * 20))
            outcomes.append("data")
        except PieceRefusedError as exc:
            outcomes.append(exc.code)
        except SourceLost:
            outcomes.append("lost")

    with trio.fail_after(5):  # none of them hangs
        async with trio.open_nursery() as requests:
            for index in range(4):
                requests.start_soon(one, index)
    assert sorted(outcomes) == ["bad_ticket", "lost", "lost", "lost"]
    assert connection.broken is not None
    again = await pool.get(address, nursery=nursery)  # the next use opens a new one
    assert again is not connection
    frame = await again.fetch(peer_request(5))
    assert isinstance(frame.message, PieceData)
    await until(lambda: server.limit.statistics().open == 1)


# -- 4. connection caps --------------------------------------------------------------------


async def refused_at_once(address: str) -> bool:
    """True if a new connection is closed without a Welcome."""
    stream = await raw_connect(address)
    with suppress(trio.BrokenResourceError):
        await stream.send_all(raw_frame(hello_header()))
    return await until_closed(stream, 2) == []


async def test_the_supernode_caps_connections_per_address(
    start_supernode: StartSupernode,
) -> None:
    node = await start_supernode(max_connections=20)  # per address: 16 (the minimum share)
    held = [await raw_connect(node.address) for _ in range(16)]
    for stream in held:
        await raw_hello(stream)
    assert await refused_at_once(node.address)
    stats = node.node.server.limit.statistics()
    assert (stats.open, stats.per_address_limit, stats.refused) == (16, 16, 1)
    await held.pop().aclose()
    await until(lambda: node.node.server.limit.statistics().open == 15)
    await raw_hello(await raw_connect(node.address))  # room again


async def test_the_upload_server_caps_connections(nursery: trio.Nursery) -> None:
    server = FakePieceServer(slots=2, limiter=RateLimiter(None), connections=ConnectionLimit(3, 2))
    address = await start_upload_server(nursery, server)
    held = [await raw_connect(address) for _ in range(2)]
    for stream in held:
        await raw_hello(stream)
    assert await refused_at_once(address)  # a third from the same address


async def test_max_connections_flags() -> None:
    from dfget.cli import build_parser as dfget_parser
    from supernode.cli import build_parser as supernode_parser

    assert supernode_parser().parse_args([]).max_connections == 4096
    assert supernode_parser().parse_args(["--max-connections", "64"]).max_connections == 64
    assert dfget_parser().parse_args(["http://x/", "-o", "o"]).max_connections == 256
    for parser in (supernode_parser(), dfget_parser()):
        text = " ".join(parser.format_help().split())
        assert "--max-connections N" in text and "N/8 of them, at least 16" in text
    with pytest.raises(SystemExit):
        dfget_parser().parse_args(["http://x/", "-o", "o", "--max-connections", "0"])


# -- 5. send deadline on uploads -----------------------------------------------------------


async def test_a_requester_that_never_reads_loses_its_upload_slot(nursery: trio.Nursery) -> None:
    server = FakePieceServer(slots=1, limiter=RateLimiter(None))
    server.size = 16 * MiB  # far more than the socket buffers hold
    server.min_piece_send, server.min_send_rate = 0.5, 1e12  # the deadline: 0.5 s
    address = await start_upload_server(nursery, server)
    stream = await raw_connect(address, receive_buffer=4096)
    await raw_hello(stream, "reader")
    await stream.send_all(encode(peer_request()))
    await until(lambda: server.slots.borrowed_tokens == 1)  # the upload started...
    started = trio.current_time()
    await until(lambda: server.slots.borrowed_tokens == 0, seconds=10)  # ...and lost its slot
    assert trio.current_time() - started >= 0.3
    await until(lambda: server.limit.statistics().open == 0, seconds=10)
    assert server.pieces_uploaded == 0


async def test_an_upload_holds_its_slot_until_the_piece_is_nearly_on_the_wire(
    nursery: trio.Nursery,
) -> None:
    """A peer's piece goes into the kernel whole (its session lifts trio's 16 KiB bound
    on unsent bytes), but its upload, and its slot, end only once all but a few KiB of
    it have left the kernel's queue: not while the requester has read none of it (else
    a requester with a ticket that stops reading could have piece after piece, and
    refusal after refusal, put into the kernel for it). The piece arrives whole."""
    server = FakePieceServer(slots=1, limiter=RateLimiter(None))
    server.size = MiB
    address = await start_upload_server(nursery, server)
    stream = await raw_connect(address, receive_buffer=4096)  # a window of a few KiB
    decoder = await raw_hello(stream, "reader")
    await stream.send_all(encode(peer_request()))
    await until(lambda: server.slots.borrowed_tokens == 1)
    await trio.sleep(0.5)
    assert server.slots.borrowed_tokens == 1 and server.pieces_uploaded == 0
    with trio.fail_after(5):
        while (frame := decoder.next_frame()) is None:
            decoder.receive_data(await stream.receive_some(1 << 20))
    assert isinstance(frame.message, PieceData)
    assert bytes(frame.payload) == bytes(MiB)
    await until(lambda: server.pieces_uploaded == 1 and server.slots.borrowed_tokens == 0)


async def test_a_requester_that_stops_reading_a_piece_the_kernel_holds_is_cut_off(
    nursery: trio.Nursery,
) -> None:
    """A piece the socket's buffer holds whole still has its deadline: a requester that
    reads none of it loses the connection and the slot when it passes, and the close
    resets the connection (the piece is not kept in the kernel for no one)."""
    server = FakePieceServer(slots=1, limiter=RateLimiter(None))
    server.size = MiB
    server.min_piece_send, server.min_send_rate = 0.5, 1e12  # the deadline: 0.5 s
    address = await start_upload_server(nursery, server)
    stream = await raw_connect(address, receive_buffer=4096)
    await raw_hello(stream, "reader")
    await stream.send_all(encode(peer_request()))
    await until(lambda: server.slots.borrowed_tokens == 1)
    started = trio.current_time()
    await until(lambda: server.limit.statistics().open == 0, seconds=10)
    assert trio.current_time() - started >= 0.3
    assert server.slots.borrowed_tokens == 0 and server.pieces_uploaded == 0
    with pytest.raises(trio.BrokenResourceError):  # reset: what was unread is gone
        with trio.fail_after(5):
            while await stream.receive_some(1 << 20):
                pass


async def test_a_requester_that_never_reads_is_cut_off_by_the_cdn(
    origin: FakeOrigin, supernode: RunningSupernode, fetch: Fetch
) -> None:
    task_id = await fetched_task(origin, supernode, fetch, 12 * MiB)
    server = supernode.node.server
    server.min_piece_send, server.min_send_rate = 0.5, 1e12
    await until(lambda: server.limit.statistics().open == 0)  # dfget's connections are gone
    stream = await raw_connect(supernode.address, receive_buffer=4096)
    decoder = await raw_hello(stream, "reader")
    requests = [cdn_request(supernode, task_id, i, "reader") for i in range(12)]
    await stream.send_all(b"".join(encode(r) for r in requests))
    await until(lambda: server.limit.statistics().open == 0, seconds=5)
    try:
        got = await until_closed(stream, 5, decoder)
    except RemoteProtoError:  # the piece being sent was cut short: so much the better
        got = []
    assert len(got) < 12


async def test_the_cdn_holds_its_upload_until_the_piece_is_nearly_on_the_wire(
    origin: FakeOrigin, supernode: RunningSupernode, fetch: Fetch
) -> None:
    """The CDN's pieces go into the kernel whole, as a peer's do, but its upload (and
    the CDN's slot at the scheduler, which stands for time on its link) ends only once
    all but a few KiB of the piece have left the kernel: not while the requester has
    read none of it."""
    task_id = await fetched_task(origin, supernode, fetch, 2 * MiB)
    cdn = supernode.node.cdn
    served = cdn.bytes_served
    stream = await raw_connect(supernode.address, receive_buffer=4096)
    decoder = await raw_hello(stream, "reader")
    await stream.send_all(encode(cdn_request(supernode, task_id, 0, "reader")))
    await trio.sleep(0.5)
    assert cdn.bytes_served == served  # nothing read: the upload goes on
    with trio.fail_after(5):
        while (frame := decoder.next_frame()) is None:
            decoder.receive_data(await stream.receive_some(1 << 20))
    assert isinstance(frame.message, PieceData)
    await until(lambda: cdn.bytes_served == served + len(frame.payload))


async def test_a_frame_the_peer_does_not_take_in_time_ends_sending(autojump_clock: object) -> None:
    ours, _theirs = trio.testing.lockstep_stream_pair()  # a peer that never reads
    framed = FramedStream(ours, Session(Side.SERVER), send_timeout=30)
    started = trio.current_time()
    with pytest.raises(ConnectionLost, match="within 30s"):
        await framed.send(ErrorReply(code="busy", message="x"))
    assert trio.current_time() - started == pytest.approx(30)
    with pytest.raises(ConnectionLost, match="within 30s"):  # nothing may follow a cut frame
        await framed.send(ErrorReply(code="busy", message="y"), within=1000)


async def test_frames_sent_together_of_which_one_cannot_go_end_sending() -> None:
    """`send_together` encodes every frame before the write: one the encoder refuses
    (a validator over the wire's bound) leaves the frames before it encoded, numbered
    in a sealed session, and never sent, so no frame may follow (found by review)."""
    from proto.errors import ProtoError
    from proto.messages import TaskDone

    ours, _theirs = trio.testing.memory_stream_pair()
    framed = FramedStream(ours, Session(Side.SERVER), send_timeout=30)
    too_long = TaskDone(task_id="a" * 64, generation=1, length=1, piece_count=1, etag="e" * 2000)
    with pytest.raises(ProtoError):
        await framed.send_together([ErrorReply(code="busy", message="x"), too_long])
    with pytest.raises(ConnectionLost, match="encoded and not sent"):
        await framed.send(ErrorReply(code="busy", message="y"))


# -- 6. memory: a handful of 60-byte frames ------------------------------------------------


def rss(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmRSS:\s+(\d+) kB", status)
    assert match is not None
    return int(match.group(1)) * 1024


async def send_hostile_frames(
    address: str, count: int
) -> list[tuple[trio.SocketStream, FrameDecoder]]:
    """`count` connections, each with one small frame naming a 64 MiB payload: a Hello, or
    after a real Hello a Register or a PieceRequest."""
    opened = []
    for i in range(count):
        stream = await raw_connect(address)
        kind = i % 3
        if kind == 0:
            decoder = FrameDecoder()
            await stream.send_all(raw_frame({**hello_header(), "_n": HUGE}))
        else:
            decoder = await raw_hello(stream)
            header = register_header() if kind == 1 else request_header()
            await stream.send_all(raw_frame({**header, "_n": HUGE}))
        opened.append((stream, decoder))
    return opened


async def test_frames_naming_huge_payloads_cost_the_supernode_process_nothing(
    tmp_path: Path,
) -> None:
    async with supernode_process(tmp_path / "sn", "--admin-listen", "off") as supernode:
        address, pid = supernode.ready["peer"], supernode.ready["pid"]
        for _ in range(3):  # warm up: first connections, imports done
            await (await raw_connect(address)).send_all(raw_frame(hello_header()))
        await trio.sleep(0.5)
        before = rss(pid)
        opened = await send_hostile_frames(address, 30)  # they name 1.9 GiB in all
        await trio.sleep(1.0)
        grown = rss(pid) - before
        assert grown < 32 * MiB, f"RSS grew by {grown / MiB:.0f} MiB"
        for stream, decoder in opened:  # each got its error and was closed at once
            [reply] = await until_closed(stream, 2, decoder)
            assert isinstance(reply, ErrorReply) and reply.code == "bad_request"
            assert "payload" in reply.message


async def test_frames_naming_huge_payloads_cost_an_upload_server_nothing(
    nursery: trio.Nursery,
) -> None:
    server = FakePieceServer(slots=2, limiter=RateLimiter(None))
    address = await start_upload_server(nursery, server)
    async with traced() as peak:
        opened = await send_hostile_frames(address, 30)
        for stream, decoder in opened:
            [reply] = await until_closed(stream, 2, decoder)
            assert isinstance(reply, ErrorReply) and reply.code == "bad_request"
        assert peak() < 32 * MiB, f"{peak() / MiB:.0f} MiB allocated"


def done_reports(node: RunningSupernode) -> int:
    return node.node.scheduler.statistics().decisions_by_outcome.get("done", 0)


async def test_admitted_seeding_sessions_leave_the_connection_caps(
    origin: FakeOrigin, start_supernode: StartSupernode, fetch: Fetch, nursery: trio.Nursery
) -> None:
    """Found by review: a dfdaemon keeps a control session for every blob it seeds, so
    the per-address share (512 by default) refused P2P to a host with more cached
    blobs. Sessions admitted with the cluster token leave the caps once registered;
    strangers still count (an open cluster has no admitted peers: everyone counts)."""
    token = b"cluster-secret-token"
    node = await start_supernode(token=token, max_connections=3)  # 3 per address too
    for i in range(5):  # more seeding sessions than the cap holds, one after another
        origin.add(f"/f{i}.bin", os.urandom(MiB))
        peer = PeerOptions(listen=("127.0.0.1", 0), token=token, seed_for=60)
        nursery.start_soon(partial(fetch, origin.url(f"/f{i}.bin"), node, peer=peer))
        await until_equal(lambda: len(node.node.swarm.peers), i + 1)
        # Its piece is in (its connection for it may open after it registered) ...
        await until_equal(lambda: done_reports(node), i + 1)
        # ... and that connection closed: only the seeding control sessions stay.
        await until(lambda: node.node.server.limit.statistics().open == 0)
    assert node.node.server.limit.statistics().open == 0  # 5 seeding, none counted
    strangers = [await raw_connect(node.address) for _ in range(4)]  # still capped
    for stranger in strangers[:3]:
        await raw_hello(stranger)
    assert node.node.server.limit.statistics().open == 3
    assert await until_closed(strangers[3], 5) == []  # the fourth: no room


@pytest.mark.parametrize("change", ["edited", "truncated"])
async def test_a_piece_changed_on_disk_is_refused_not_sealed_again(
    nursery: trio.Nursery, tmp_path: Path, change: str
) -> None:
    """A seeding peer's file edited on disk: the changed piece would have been sealed
    under the task key and its index's nonce a second time, with other bytes (two
    plaintexts under one nonce give away their XOR and the tag key). It is refused as
    not held, now and later; the others are served."""
    pieces = [bytes([n]) * 1000 for n in range(3)]
    path = tmp_path / "out.bin"
    path.write_bytes(b"".join(pieces))
    sealer = PieceSealer(bytes(32), TID)
    server = PieceServer(slots=2, limiter=RateLimiter(None))
    shared = SharedTask(
        task_id=TID,
        generation=1,
        uploader="seeder",
        sealer=sealer,
        piece_size=1000,
        tickets=TicketVerifier(TICKET_KEY.public_key()),
        holds=lambda index: True,
        length_of=lambda index: 1000,
        fd=os.open(path, os.O_RDONLY),
        digest_of=[piece_digest(piece) for piece in pieces].__getitem__,
    )
    server.share(shared)
    port = await nursery.start(server.serve, "127.0.0.1", 0)
    with path.open("r+b") as file:  # the user edits the middle piece, or cuts the file
        if change == "edited":
            file.seek(1500)
            file.write(b"edited")
        else:
            file.truncate(1500)
    stream = await raw_connect(f"127.0.0.1:{port}")
    decoder = await raw_hello(stream, "reader")
    answers = []
    for index in (1, 0, 1):
        await stream.send_all(encode(peer_request(index)))
        with trio.fail_after(10):
            answers.append(await next_message(stream, decoder))
    first, good, again = answers
    assert isinstance(first, PieceRefused) and first.code == "not_held", first
    assert isinstance(good, PieceData) and good.index == 0
    assert isinstance(again, PieceRefused) and again.code == "not_held"
    assert server.pieces_uploaded == 1 and shared.changed == {1}
    await stream.aclose()
