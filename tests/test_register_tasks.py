"""A download's first piece-task request with its Register (protocol version 5,
`Register.want`): the tasks the scheduler can give at once come in the Registered's
write, or are held for news as a request would be; it counts as the task's pending
request; an older supernode is never sent a `want`, and an older peer gets what it
always did.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import trio
from conftest import Fetch, StartSupernode, until
from test_attack_supernode import RawPeer, next_message, raw_peer

import proto.io.framed
import proto.session
from proto.errors import ConnectionLost
from proto.keywrap import raw_public
from proto.messages import (
    ErrorReply,
    Message,
    PiecesReady,
    PieceTasks,
    PieceTasksRequest,
    Register,
    Registered,
    TaskDone,
)
from proto.pieces import MiB
from testkit.origin import FakeOrigin


def wanting(peer: RawPeer, url: str, want: int) -> Register:
    return Register(
        url=url,
        headers=(),
        digest=None,
        tag="",
        filter=(),
        public_key=raw_public(peer.key),
        want=want,
    )


async def register_wanting(peer: RawPeer, url: str, want: int) -> Registered:
    await peer.framed.send(wanting(peer, url, want))
    reply = await next_message(peer)
    assert isinstance(reply, Registered)
    peer.registered = reply
    return reply


async def answers_until_tasks(peer: RawPeer) -> list[Message]:
    got = [await next_message(peer)]
    while not isinstance(got[-1], PieceTasks):
        got.append(await next_message(peer))
    return got


async def test_a_register_that_wants_tasks_gets_them_with_its_answer(
    origin: FakeOrigin, start_supernode: StartSupernode, fetch: Fetch
) -> None:
    origin.add("/f.bin", os.urandom(3 * MiB))
    node = await start_supernode()
    await fetch(origin.url("/f.bin"), node)  # on the CDN (that peer left)
    swarm = node.node.swarm
    decided = swarm.decisions
    async with raw_peer(node, "wanting") as peer:
        await peer.framed.send(wanting(peer, origin.url("/f.bin"), 2))
        with trio.fail_after(10):
            registered = (await peer.framed.receive()).message
        # The task's news and its piece tasks came in the same write (no request sent):
        # read already, with the Registered.
        got = [frame.message for frame in iter(peer.framed.buffered, None)]
        assert isinstance(registered, Registered)
        assert [type(m) for m in got] == [PiecesReady, TaskDone, PieceTasks]
        tasks = got[-1]
        assert isinstance(tasks, PieceTasks) and tasks.task_id == registered.task_id
        assert len(tasks.tasks) == 2 and all(t[1] == "cdn" for t in tasks.tasks)
        assert swarm.decisions == decided + 1


async def test_a_register_that_wants_tasks_not_there_yet_is_answered_at_the_news(
    origin: FakeOrigin, start_supernode: StartSupernode
) -> None:
    gate = trio.Event()
    origin.add("/g.bin", os.urandom(2 * MiB), gate_after=0, gate=gate)
    node = await start_supernode()
    async with raw_peer(node, "waiting") as peer:
        registered = await register_wanting(peer, origin.url("/g.bin"), 1)
        await until(
            lambda: node.node.swarm.held(registered.task_id), 5
        )  # nothing on the CDN: held as a request
        with trio.move_on_after(0.2):
            message = await next_message(peer)
            assert not isinstance(message, PieceTasks)
        gate.set()
        with trio.fail_after(10):
            got = await answers_until_tasks(peer)
        tasks = got[-1]
        assert isinstance(tasks, PieceTasks) and len(tasks.tasks) == 1


async def test_a_register_that_wants_tasks_counts_as_the_pending_request(
    origin: FakeOrigin, start_supernode: StartSupernode
) -> None:
    # The first request went with the Register: another before its answer is a second
    # request while one is pending, refused as when sent by itself.
    gate = trio.Event()
    origin.add("/h.bin", os.urandom(2 * MiB), gate_after=0, gate=gate)
    node = await start_supernode()
    async with raw_peer(node, "hostile") as peer:
        registered = await register_wanting(peer, origin.url("/h.bin"), 1)
        await until(lambda: node.node.swarm.held(registered.task_id), 5)
        request = PieceTasksRequest(registered.task_id, registered.generation, want=1)
        await peer.framed.send(request)
        reply = await next_message(peer)
        assert isinstance(reply, ErrorReply) and "second piece-task request" in reply.message
        with pytest.raises(ConnectionLost):
            await next_message(peer)
    gate.set()


async def test_a_register_wanting_more_than_a_frame_of_tasks_is_refused() -> None:
    register = Register(
        url="http://o/f", headers=(), digest=None, tag="", filter=(), public_key=b"k" * 32
    )
    with pytest.raises(ValueError, match="want"):
        dataclasses.replace(register, want=257).check()
    dataclasses.replace(register, want=256).check()


@pytest.mark.parametrize("side", ["supernode", "peer"])
async def test_a_download_between_versions_4_and_5_goes_as_before(
    origin: FakeOrigin,
    start_supernode: StartSupernode,
    fetch: Fetch,
    monkeypatch: pytest.MonkeyPatch,
    side: str,
) -> None:
    # A supernode of version 4 knows no `want` (the peer would wait for an answer that
    # never comes): the peer asks as it always did. A peer of version 4 asks itself.
    where = proto.session if side == "supernode" else proto.io.framed
    monkeypatch.setattr(where, "PROTOCOL_VERSIONS", (1, 2, 3, 4))
    data = os.urandom(3 * MiB)
    origin.add("/v.bin", data)
    node = await start_supernode()
    with trio.fail_after(20):  # (TASKS_TIMEOUT is 120 s)
        result = await fetch(origin.url("/v.bin"), node)
    assert Path(result.output).read_bytes() == data
