"""A daemon's downloads pass their idle piece connections on to each other
(`dfget.sources.PiecePool`): the next task of the same source, peer id and piece size
skips the connect and the handshake; a connection that still owes an answer, broke, or
rested too long is closed instead, and the pool keeps a bounded number."""

from __future__ import annotations

import contextlib
import gc
import os
from functools import partial

import pytest
import trio
import trio.testing
from conftest import Fetch, RunningSupernode, until
from test_attack_wire import cdn_request

import dfget.sources
from dfget.sources import PieceConnections, PiecePool, PieceRefusedError, SourceLost
from proto.errors import ConnectionLost
from proto.frames import Frame
from proto.io import FramedStream, server_handshake
from proto.messages import PieceRequest
from proto.pieces import MiB
from proto.session import Session, Side
from testkit.origin import FakeOrigin


async def cdn_tasks(origin: FakeOrigin, node: RunningSupernode, fetch: Fetch, n: int) -> list[str]:
    """`n` tasks of 2 MiB each, complete on the CDN; their ids."""
    ids = []
    for i in range(n):
        origin.add(f"/t{i}.bin", os.urandom(2 * MiB))
        ids.append(str((await fetch(origin.url(f"/t{i}.bin"), node)).task_id))
    return ids


def accepted(node: RunningSupernode) -> int:
    return node.node.server.limit.statistics().open


async def test_the_next_task_of_a_source_and_peer_id_takes_the_connection_left_idle(
    origin: FakeOrigin, supernode: RunningSupernode, fetch: Fetch, nursery: trio.Nursery
) -> None:
    one, two = await cdn_tasks(origin, supernode, fetch, 2)
    pool = PiecePool(nursery)
    first = PieceConnections(peer_id="reader", piece_size=MiB, pool=pool)
    connection = await first.get(supernode.address, nursery=nursery)
    frame = await connection.fetch(cdn_request(supernode, one, 0, "reader"))
    assert len(frame.payload) == MiB + 16
    first.release()
    assert pool.count() == 1
    second = PieceConnections(peer_id="reader", piece_size=MiB, pool=pool)
    assert await second.get(supernode.address, nursery=nursery) is connection
    assert pool.count() == 0
    frame = await connection.fetch(cdn_request(supernode, two, 1, "reader"))  # another task
    assert len(frame.payload) == MiB + 16
    # Another peer id, another piece size: connections of their own (the uploader knows
    # a connection's peer id from its handshake; its payload limit is one piece).
    other = PieceConnections(peer_id="another", piece_size=MiB, pool=pool)
    assert await other.get(supernode.address, nursery=nursery) is not connection
    larger = PieceConnections(peer_id="reader", piece_size=2 * MiB, pool=pool)
    second.release()
    assert await larger.get(supernode.address, nursery=nursery) is not connection
    assert pool.count() == 1  # (still kept for a 1 MiB task of "reader")


async def never_answering(nursery: trio.Nursery) -> str:
    """An uploader that takes requests and answers none; its HOST:PORT."""

    async def handle(stream: trio.SocketStream) -> None:
        framed = FramedStream(stream, Session(Side.SERVER))
        await server_handshake(framed, role="peer", agent="silent")
        with contextlib.suppress(ConnectionLost):
            while True:
                await framed.receive()

    listeners = await nursery.start(partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
    return f"127.0.0.1:{listeners[0].socket.getsockname()[1]}"


async def test_a_connection_that_owes_an_answer_is_closed_not_passed_on(
    nursery: trio.Nursery,
) -> None:
    # An endgame loser's request went out and was given up: its answer would come first
    # on the connection, ahead of the next task's, so the connection is not kept.
    address = await never_answering(nursery)
    pool = PiecePool(nursery)
    task = PieceConnections(peer_id="reader", piece_size=MiB, pool=pool)
    connection = await task.get(address, nursery=nursery)
    request = PieceRequest(task_id="a" * 64, generation=1, index=0, ticket=b"t")
    with trio.move_on_after(0.2):
        await connection.fetch(request)
    assert connection.unanswered == 1
    task.release()
    assert pool.count() == 0
    await until(lambda: connection.broken is not None, seconds=5)
    with pytest.raises(SourceLost):
        await connection.fetch(request)


async def test_a_connection_idle_too_long_or_broken_is_not_taken(
    origin: FakeOrigin,
    supernode: RunningSupernode,
    fetch: Fetch,
    nursery: trio.Nursery,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (one,) = await cdn_tasks(origin, supernode, fetch, 1)
    monkeypatch.setattr(dfget.sources, "POOL_REST", 0.2)
    pool = PiecePool(nursery)

    async def left_idle() -> dfget.sources.PieceConnection:
        task = PieceConnections(peer_id="reader", piece_size=MiB, pool=pool)
        connection = await task.get(supernode.address, nursery=nursery)
        await connection.fetch(cdn_request(supernode, one, 0, "reader"))
        task.release()
        return connection

    rested = await left_idle()
    await trio.sleep(0.25)  # past POOL_REST
    again = PieceConnections(peer_id="reader", piece_size=MiB, pool=pool)
    fresh = await again.get(supernode.address, nursery=nursery)
    assert fresh is not rested
    await until(lambda: rested.broken is not None, seconds=5)  # (closed, not leaked)
    await fresh.fetch(cdn_request(supernode, one, 1, "reader"))
    again.release()
    assert pool.count() == 1
    await fresh.close()  # (the uploader, or the network, ended it while it was kept)
    last = PieceConnections(peer_id="reader", piece_size=MiB, pool=pool)
    assert await last.get(supernode.address, nursery=nursery) is not fresh
    assert pool.count() == 0


@pytest.mark.parametrize("pooled", [32, 3])
async def test_the_pool_keeps_a_few_connections_an_uploader_and_closes_the_rest(
    origin: FakeOrigin,
    supernode: RunningSupernode,
    fetch: Fetch,
    nursery: trio.Nursery,
    monkeypatch: pytest.MonkeyPatch,
    pooled: int,
) -> None:
    # Idle connections hold the uploader's connection slots: 4 kept to one address
    # (POOLED_PER_ADDRESS), whatever the peer ids, and POOLED in all.
    (one,) = await cdn_tasks(origin, supernode, fetch, 1)
    monkeypatch.setattr(dfget.sources, "POOLED", pooled)
    pool = PiecePool(nursery)
    before = accepted(supernode)
    tasks = []
    for peer_id in ["a"] * 6 + ["b"] * 2:  # eight downloads at once, two peer ids
        task = PieceConnections(peer_id=peer_id, piece_size=MiB, pool=pool)
        connection = await task.get(supernode.address, nursery=nursery)
        await connection.fetch(cdn_request(supernode, one, 0, peer_id))
        tasks.append(task)
    assert accepted(supernode) == before + 8
    for task in tasks:
        task.release()
    kept = min(pooled, dfget.sources.POOLED_PER_ADDRESS)
    assert pool.count() == kept
    await until(lambda: accepted(supernode) == before + kept, seconds=5)


async def test_a_kept_connection_is_closed_after_a_short_rest(
    origin: FakeOrigin,
    supernode: RunningSupernode,
    fetch: Fetch,
    nursery: trio.Nursery,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (one,) = await cdn_tasks(origin, supernode, fetch, 1)
    monkeypatch.setattr(dfget.sources, "POOL_REST", 0.3)
    pool = PiecePool(nursery)
    before = accepted(supernode)
    task = PieceConnections(peer_id="reader", piece_size=MiB, pool=pool)
    connection = await task.get(supernode.address, nursery=nursery)
    await connection.fetch(cdn_request(supernode, one, 0, "reader"))
    task.release()
    assert pool.count() == 1
    await until(lambda: pool.count() == 0 and connection.broken is not None, seconds=5)
    await until(lambda: accepted(supernode) == before, seconds=5)
    # One never used (its download ended before its first piece) is not kept either:
    # the uploader never counted it as in use.
    unused = PieceConnections(peer_id="reader", piece_size=MiB, pool=pool)
    await unused.get(supernode.address, nursery=nursery)
    unused.release()
    assert pool.count() == 0


async def test_a_refused_ticket_ends_the_connection_for_every_later_task(
    origin: FakeOrigin, supernode: RunningSupernode, fetch: Fetch, nursery: trio.Nursery
) -> None:
    # The uploader ends the session after a bad ticket: the connection is not kept,
    # even if the download ends before its end is read.
    (one,) = await cdn_tasks(origin, supernode, fetch, 1)
    pool = PiecePool(nursery)
    task = PieceConnections(peer_id="reader", piece_size=MiB, pool=pool)
    connection = await task.get(supernode.address, nursery=nursery)
    await connection.fetch(cdn_request(supernode, one, 0, "reader"))
    forged = PieceRequest(task_id=one, generation=1, index=1, ticket=b"forged")
    with pytest.raises(PieceRefusedError, match="bad_ticket"):
        await connection.fetch(forged)
    assert connection.broken is not None
    task.release()
    assert pool.count() == 0


def open_deleted_piece_files() -> list[str]:
    """Piece files of this process (the supernode runs in it) deleted but still open."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.endswith("(deleted)") and ".pieces" in target:
                found.append(target)
    return found


async def test_a_kept_cdn_connection_holds_no_evicted_piece_file(
    origin: FakeOrigin, supernode: RunningSupernode, fetch: Fetch, nursery: trio.Nursery
) -> None:
    # A CDN piece session keeps the piece files it used last open; one a daemon's
    # downloads pass on lives long, and the CDN's GC must still free what it evicts.
    ids = await cdn_tasks(origin, supernode, fetch, 5)
    pool = PiecePool(nursery)
    used = None
    for task_id in ids:  # five downloads of a daemon, one after another
        task = PieceConnections(peer_id="reader", piece_size=MiB, pool=pool)
        connection = await task.get(supernode.address, nursery=nursery)
        assert used is None or connection is used
        used = connection
        await connection.fetch(cdn_request(supernode, task_id, 0, "reader"))
        task.release()
    for task_id in ids[:4]:
        assert supernode.node.cdn.evict(task_id)
    task = PieceConnections(peer_id="reader", piece_size=MiB, pool=pool)
    assert await task.get(supernode.address, nursery=nursery) is used
    await used.fetch(cdn_request(supernode, ids[4], 1, "reader"))
    task.release()
    assert open_deleted_piece_files() == []


async def test_a_connection_kept_idle_holds_no_piece(
    origin: FakeOrigin, supernode: RunningSupernode, fetch: Fetch, nursery: trio.Nursery
) -> None:
    # A pool keeps up to POOLED connections for POOL_REST seconds: were each to hold its
    # last piece (the reader's, or a payload kept for reuse), up to 32 of them (64 MiB
    # each for a file over 8 GiB) would be held for nothing.
    (task,) = await cdn_tasks(origin, supernode, fetch, 1)
    pool = PiecePool(nursery)
    connections = PieceConnections(peer_id="reader", piece_size=MiB, pool=pool)
    connection = await connections.get(supernode.address, nursery=nursery)
    for index in (0, 1):
        frame = await connection.fetch(cdn_request(supernode, task, index, "reader"))
        connection.recycle(frame.payload)  # (as a transfer does once it is stored)
    last = frame.payload
    del frame
    connections.release()
    assert pool.count() == 1
    await trio.testing.wait_all_tasks_blocked()
    gc.collect()
    assert [o for o in gc.get_referrers(last) if isinstance(o, Frame)] == []
