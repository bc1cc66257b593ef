"""Follow-ups (protocol version 6): a downloader whose transfer from a peer is about to
end asks for the next piece from that peer and requests it on the same connection, so
that neither end's slot waits for the report, the decision and the request in between.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import cast

import pytest
import trio
from conftest import Fetch, RunningSupernode, StartSupernode, until
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from test_attack_supernode import RawPeer, ask, next_message, raw_peer, register, report

from common.io import RateLimiter
from dfget import transfers
from dfget.options import PeerOptions
from dfget.pieces import PieceBook
from dfget.sources import Answer, PieceConnections
from dfget.writer import PieceWriter
from proto.errors import ConnectionLost
from proto.frames import Frame
from proto.io import FramedStream, server_handshake
from proto.io import framed as framed_io
from proto.messages import (
    ErrorReply,
    KeepAlive,
    Message,
    PieceData,
    PieceFollowUp,
    PieceFollowUpRequest,
    PieceRequest,
    PieceResult,
    PieceTasks,
    PieceTasksRequest,
    Probe,
    Registered,
    Welcome,
)
from proto.pieces import MiB
from proto.session import Session, Side
from proto.tickets import CDN_UPLOADER, TicketVerifier
from supernode.peers.control import PROBE_ANSWER_EVERY
from supernode.scheduler import Assignment
from testkit.origin import FakeOrigin

LOCAL = ("127.0.0.1", 0)


def test_a_follow_up_request_and_its_answer_are_checked() -> None:
    task_id = "a" * 64
    PieceFollowUpRequest(task_id, 1, index=0, source="peer").check()
    for index, source in ((-1, "peer"), (0, ""), (0, "p" * 129)):
        with pytest.raises(ValueError):
            PieceFollowUpRequest(task_id, 1, index=index, source=source).check()
    task = (3, "peer", "127.0.0.1", 4000, b"ticket")
    PieceFollowUp(task_id, 1, index=2, tasks=(task,)).check()
    for index, tasks in ((2, ()), (2, (task, task)), (2, ((3, "", "h", 1, b"t"),)), (-1, (task,))):
        with pytest.raises(ValueError):
            PieceFollowUp(task_id, 1, index=index, tasks=tasks).check()


async def _seeding_peers(
    fetch: Fetch,
    url: str,
    node: RunningSupernode,
    nursery: trio.Nursery,
    outputs: list[Path],
    slots: int = 8,
) -> None:
    """dfget downloads of `url` at once into `outputs` (`fetch`'s folder) that seed on
    (and so ask for follow-ups: one that leaves at its end is given none), until all
    are in place."""
    for output in outputs:
        peer = PeerOptions(listen=LOCAL, seed_for=60, upload_slots=slots)
        nursery.start_soon(partial(fetch, url, node, name=output.name, peer=peer))
    await until(lambda: all(path.exists() for path in outputs), seconds=60)


async def _seeded(
    origin: FakeOrigin, node: RunningSupernode, fetch: Fetch, nursery: trio.Nursery, tmp_path: Path
) -> str:
    """A 16 MiB file on the CDN and on a dfget peer seeding it with 2 upload slots:
    its url."""
    data = os.urandom(16 * MiB)
    origin.add("/f.bin", data)
    url = origin.url("/f.bin")
    output = tmp_path / "downloads" / "seeder"
    await _seeding_peers(fetch, url, node, nursery, [output], slots=2)
    scheduler = node.node.scheduler
    await until(lambda: output.read_bytes() == data)
    await until(lambda: scheduler.statistics().assignments_in_flight == 0)
    return url


async def _synced(peer: RawPeer) -> list[Message]:
    """What the supernode sent before it answered a Probe (it answers in order, one
    Probe in PROBE_ANSWER_EVERY: a wait first)."""
    await trio.sleep(PROBE_ANSWER_EVERY)
    await peer.framed.send(Probe())
    seen = []
    while not isinstance(message := await next_message(peer), KeepAlive):
        seen.append(message)
    return seen


async def test_a_follow_up_is_the_next_piece_from_the_same_peer_with_its_ticket(
    origin: FakeOrigin,
    start_supernode: StartSupernode,
    fetch: Fetch,
    nursery: trio.Nursery,
    tmp_path: Path,
) -> None:
    """Asked for a transfer from a peer in flight, the supernode names one more piece
    from that peer, with a ticket for it, beyond the peer's slots until the transfer
    ahead is reported; asked again for the same transfer, for another while that one
    waits, for one not in flight, for the CDN's or a stale generation, it answers
    nothing and hands nothing out."""
    node = await start_supernode()
    url = await _seeded(origin, node, fetch, nursery, tmp_path)
    scheduler = node.node.scheduler
    async with raw_peer(node, "downloader") as peer:
        registered = await register(peer, url)
        assert isinstance(registered, Registered)
        task_id, generation = registered.task_id, registered.generation
        tasks = (await ask(peer, 2)).tasks
        seeder = tasks[0][1]
        assert seeder != CDN_UPLOADER and all(task[1] == seeder for task in tasks)
        stats = scheduler.peer_statistics(seeder)
        assert stats is not None and stats.uploads_in_flight == 2  # its slots, all taken
        ahead = tasks[0][0]
        stale = PieceFollowUpRequest(task_id, generation + 1, ahead, seeder)
        await peer.framed.send(stale)  # (of a generation it is not in: nothing, not even asked)
        assert await _synced(peer) == []
        await peer.framed.send(PieceFollowUpRequest(task_id, generation, ahead, seeder))
        answer = await next_message(peer)
        assert isinstance(answer, PieceFollowUp) and answer.index == ahead
        [(index, source, host, port, ticket)] = answer.tasks
        assert source == seeder and (host, port) == (tasks[0][2], tasks[0][3])
        assert index not in [task[0] for task in tasks]
        verifier = TicketVerifier(Ed25519PublicKey.from_public_bytes(registered.ticket_key))
        verifier.verify(
            ticket, task_id=task_id, requester="downloader", uploader=seeder, now=time.time()
        )
        stats = scheduler.peer_statistics(seeder)
        assert stats is not None and stats.uploads_in_flight == 3
        fetching = {index, *(task[0] for task in tasks)}
        not_in_flight = next(i for i in range(16) if i not in fetching)
        for again in (
            PieceFollowUpRequest(task_id, generation, ahead, seeder),  # asked already
            PieceFollowUpRequest(task_id, generation, tasks[1][0], seeder),  # one waits
            PieceFollowUpRequest(task_id, generation, not_in_flight, seeder),
            PieceFollowUpRequest(task_id, generation, tasks[1][0], CDN_UPLOADER),
            PieceFollowUpRequest(task_id, generation, 2**62, seeder),  # no such piece
            PieceFollowUpRequest(task_id, generation, ahead, "p" * 128),  # no such peer
            # A flood of them costs a lookup each, and brings nothing to hold or send (the
            # follow-up's own ask left out: it may have one, once).
            *[
                PieceFollowUpRequest(task_id, generation, i % 64, seeder)
                for i in range(500)
                if i % 64 != index
            ],
        ):
            await peer.framed.send(again)
        assert await _synced(peer) == []
        stats = scheduler.peer_statistics(seeder)
        assert stats is not None and stats.uploads_in_flight == 3
        for piece, source, *_ in (*tasks, *answer.tasks):
            await report(peer, piece, source, "cancelled")
        await until(lambda: scheduler.statistics().assignments_in_flight == 0)


async def test_a_follow_up_request_before_version_6_closes_the_session(
    origin: FakeOrigin,
    start_supernode: StartSupernode,
    fetch: Fetch,
    nursery: trio.Nursery,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    node = await start_supernode()
    url = await _seeded(origin, node, fetch, nursery, tmp_path)
    monkeypatch.setattr(framed_io, "PROTOCOL_VERSIONS", (1, 2, 3, 4, 5))
    async with raw_peer(node, "old") as peer:
        assert peer.framed.welcome is not None and peer.framed.welcome.version == 5
        registered = await register(peer, url)
        assert isinstance(registered, Registered)
        [(index, source, *_)] = (await ask(peer, 1)).tasks
        request = PieceFollowUpRequest(registered.task_id, registered.generation, index, source)
        await peer.framed.send(request)
        reply = await next_message(peer)
        assert isinstance(reply, ErrorReply) and reply.code == "bad_request"
        assert "before protocol version 6" in reply.message
        with pytest.raises(ConnectionLost):
            await next_message(peer)
    scheduler = node.node.scheduler
    await until(lambda: scheduler.statistics().assignments_in_flight == 0)  # left with it


async def test_peers_fetch_follow_ups_and_every_file_verifies(
    origin: FakeOrigin,
    start_supernode: StartSupernode,
    fetch: Fetch,
    nursery: trio.Nursery,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """dfget peers fetching from seeders ask for follow-ups and fetch them behind the
    pieces they follow; every file verifies and nothing stays in flight afterwards.
    With `DF_FOLLOW_UPS=0` none is asked for."""
    data = os.urandom(24 * MiB)
    origin.add("/big.bin", data)
    url = origin.url("/big.bin")
    node = await start_supernode()
    scheduler = node.node.scheduler
    folder = tmp_path / "downloads"
    await _seeding_peers(fetch, url, node, nursery, [folder / f"seeder{i}" for i in range(3)])
    await until(lambda: scheduler.statistics().assignments_in_flight == 0)
    asked: list[int] = []
    given: list[Assignment] = []
    follow = scheduler.follow

    def counted(
        task_id: str, peer_id: str, index: int, source: str, now: float
    ) -> Assignment | None:
        asked.append(index)
        assignment = follow(task_id, peer_id, index, source, now)
        if assignment is not None:
            given.append(assignment)
        return assignment

    monkeypatch.setattr(scheduler, "follow", counted)
    started: list[bool] = []
    followed = transfers.Transfers.followed

    def start(self: transfers.Transfers, answer: PieceFollowUp) -> bool:
        started.append(followed(self, answer))
        return started[-1]

    monkeypatch.setattr(transfers.Transfers, "followed", start)
    outputs = [folder / f"peer{i}" for i in range(4)]
    await _seeding_peers(fetch, url, node, nursery, outputs)
    assert all(path.read_bytes() == data for path in outputs)
    assert given and all(a.source != CDN_UPLOADER for a in given)
    assert any(started)  # fetched behind the pieces they follow (and every file verifies)
    await until(lambda: scheduler.statistics().assignments_in_flight == 0)

    monkeypatch.setattr(transfers, "FOLLOW_UPS_ON", False)
    asked.clear()
    outputs = [folder / f"late{i}" for i in range(4)]
    await _seeding_peers(fetch, url, node, nursery, outputs)
    assert all(path.read_bytes() == data for path in outputs)
    assert asked == []


async def test_a_piece_behind_another_is_timed_from_when_it_begins_to_come(
    nursery: trio.Nursery,
) -> None:
    """Two requests on one piece connection, answered in order 0.3 s apart: the second
    piece began to come when the first was in (not at its request), and its `soon`
    call (a follow-up's ask) is timed from then too."""

    async def uploader(stream: trio.SocketStream) -> None:
        framed = FramedStream(stream, Session(Side.SERVER))
        try:
            await server_handshake(framed, role="peer")
            while True:
                request = (await framed.receive()).message
                assert isinstance(request, PieceRequest)
                await trio.sleep(0.3)
                answer = PieceData(task_id=request.task_id, generation=1, index=request.index)
                await framed.send(answer, bytes(100))
        finally:
            await framed.aclose()

    listeners = await nursery.start(partial(trio.serve_tcp, uploader, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    connection = await PieceConnections(peer_id="d", piece_size=MiB).get(
        f"127.0.0.1:{port}", nursery=nursery
    )
    answers: dict[int, Answer] = {}
    called: list[float] = []

    async def ask() -> None:
        called.append(trio.current_time())

    async def one(index: int, soon: tuple[float, Callable[[], Awaitable[None]]] | None) -> None:
        request = PieceRequest(task_id="ab" * 32, generation=1, index=index, ticket=b"t")
        answers[index] = await connection.fetch_timed(request, soon=soon)

    sent = trio.current_time()
    async with trio.open_nursery() as both:
        both.start_soon(one, 0, None)
        await trio.sleep(0.05)
        both.start_soon(one, 1, (0.1, ask))
    first, second = answers[0], answers[1]
    assert first.began == pytest.approx(sent, abs=0.02)
    assert first.arrived - first.began == pytest.approx(0.3, abs=0.1)
    assert second.began == first.arrived  # (not its request's send, 0.05 s after the first)
    assert second.arrived - second.began == pytest.approx(0.3, abs=0.1)
    [at] = called
    assert at - first.arrived == pytest.approx(0.1, abs=0.05)


class _Control:
    """A control session that records what goes out (`ControlStream`'s side dfget's
    transfers use)."""

    def __init__(self, version: int) -> None:
        self.welcome = Welcome(version=version, role="supernode")
        self.hello_key = b""
        self.sent: list[Message] = []

    async def send(self, message: Message, payload: object = None, **how: object) -> None:
        self.sent.append(message)

    async def receive(self) -> Frame:
        await trio.sleep_forever()
        raise AssertionError  # (never)


async def test_only_follow_ups_asked_for_and_not_held_or_fetched_already_are_started() -> None:
    """`Transfers.followed` starts a follow-up only while its transfers run, only one
    it asked for (from the source it asked), and not for a piece the download holds or
    fetches already (the supernode decided before that came in): the others the caller
    reports cancelled. One started is reported once."""
    control = _Control(6)
    book = PieceBook(task_id="ab" * 32, generation=1, piece_size=MiB, length=None)
    _, answers = trio.open_memory_channel[PieceTasks](1)
    transfers_ = transfers.Transfers(
        control,
        book,
        cast("PieceWriter", None),  # (nothing is written: no piece comes)
        answers=answers,
        address="127.0.0.1:9",
        peer_id="d",
        limiter=RateLimiter(None),
        progress=None,
    )

    def follow_up(ahead: int, index: int, source: str = "u") -> PieceFollowUp:
        task = (index, source, "127.0.0.1", 9, b"t")
        return PieceFollowUp("ab" * 32, 1, index=ahead, tasks=(task,))

    async def ask(ahead: int) -> None:
        await transfers_._ask_follow_up(ahead, "u")  # (as a transfer from "u" would)

    await ask(0)
    assert not transfers_.followed(follow_up(0, 3))  # (its transfers do not run yet)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(transfers_.run, readers=nursery))
        await until(lambda: any(isinstance(m, PieceTasksRequest) for m in control.sent))
        assert not transfers_.followed(follow_up(1, 3))  # not asked for
        await ask(1)
        assert not transfers_.followed(follow_up(1, 3, source="v"))  # another source
        assert not transfers_.followed(follow_up(1, 3))  # (the ask was taken)
        await ask(2)
        book.piece_written(3, "peers", MiB)
        assert not transfers_.followed(follow_up(2, 3))  # held
        await ask(4)
        assert transfers_.followed(follow_up(4, 5))  # started (it waits for its digest)
        await ask(6)
        assert not transfers_.followed(follow_up(6, 5))  # fetched already
        nursery.cancel_scope.cancel()
    await ask(7)
    assert not transfers_.followed(follow_up(7, 8))  # (its transfers ended)
    asked = [(m.index, m.source) for m in control.sent if isinstance(m, PieceFollowUpRequest)]
    assert asked == [(0, "u"), (1, "u"), (2, "u"), (4, "u"), (6, "u"), (7, "u")]
    results = [(m.index, m.outcome) for m in control.sent if isinstance(m, PieceResult)]
    assert results == [(5, "cancelled")]
