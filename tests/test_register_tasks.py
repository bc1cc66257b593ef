"""A download's first piece-task request with its Register (protocol version 5,
`Register.want`): the tasks the scheduler can give at once come in the Registered's
write, or are held for news as a request would be; it counts as the task's pending
request; an older supernode is never sent a `want`, and an older peer gets what it
always did.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
import trio
from conftest import Fetch, StartSupernode, until
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from test_attack_supernode import RawPeer, next_message, raw_peer, register, register_message

import dfget.resume
import proto.io.framed
import proto.session
import supernode.peers.control as control
from dfget.engine import download
from dfget.options import PeerOptions
from dfget.piecelog import PieceLog
from dfget.pieces import PieceBook
from dfget.request import DownloadRequest
from dfget.resume import ResumableOutput, partial_paths
from dfget.sessions import Sessions
from dfget.transfers import report
from proto.errors import ConnectionLost
from proto.io.framed import FramedStream
from proto.keywrap import raw_public
from proto.messages import (
    ErrorReply,
    KeepAlive,
    Leave,
    Message,
    Outcome,
    PiecesReady,
    PieceTasks,
    PieceTasksRequest,
    Probe,
    Register,
    Registered,
    TaskDone,
)
from proto.pieces import MiB
from proto.taskid import task_id_for
from testkit.origin import FakeOrigin


async def register_wanting(peer: RawPeer, url: str, want: int) -> Registered:
    reply = await register(peer, url, want=want)
    assert isinstance(reply, Registered)
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
        await peer.framed.send(register_message(peer, origin.url("/f.bin"), want=2))
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
    message = Register(
        url="http://o/f", headers=(), digest=None, tag="", filter=(), public_key=b"k" * 32
    )
    with pytest.raises(ValueError, match="want"):
        dataclasses.replace(message, want=257).check()
    dataclasses.replace(message, want=256).check()


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


async def test_a_leave_while_the_answer_to_a_register_wanting_tasks_goes_ends_only_its_task(
    origin: FakeOrigin, start_supernode: StartSupernode, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A daemon's download ends right after its Registered arrives (its line sends
    Leave), while the supernode's write of that Registered is still going (a busy
    session: the stand-in of tests/test_download.py's slow_to_resume). The held first
    request looked up the request the Leave removed: the whole shared session ended as
    an internal error (found by review)."""
    send_together = FramedStream.send_together

    async def slow_to_resume(self: FramedStream, messages: Any, **kw: Any) -> None:
        await send_together(self, messages, **kw)
        if isinstance(messages[0], Registered):
            await trio.sleep(0.3)  # (other tasks of the session run first, as when busy)

    monkeypatch.setattr(FramedStream, "send_together", slow_to_resume)
    gate = trio.Event()
    origin.add("/g.bin", os.urandom(2 * MiB), gate_after=0, gate=gate)  # nothing ready: held
    node = await start_supernode()
    async with raw_peer(node, "daemon-session") as peer:
        await peer.framed.send(register_message(peer, origin.url("/g.bin"), want=8))
        with trio.fail_after(10):
            registered = (await peer.framed.receive()).message
        assert isinstance(registered, Registered)
        await peer.framed.send(Leave(registered.task_id))  # (the download was cancelled)
        await trio.sleep(0.5)
        await peer.framed.send(Probe())  # the session must go on for the other tasks
        with trio.fail_after(5):
            while True:
                message = (await peer.framed.receive()).message
                if not isinstance(message, PiecesReady | TaskDone):
                    break
        assert isinstance(message, KeepAlive), message
    gate.set()


async def test_a_resumed_download_holds_no_cdn_slot_while_it_checks_its_pieces(
    origin: FakeOrigin,
    start_supernode: StartSupernode,
    fetch: Fetch,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Its first request went with the Register: the scheduler gave it the CDN's slots
    # for the file's pieces while it checked the six it had (found by review). It asks
    # once they are checked, as before version 5.
    data = os.urandom(8 * MiB)
    origin.add("/r.bin", data)
    node = await start_supernode()
    await fetch(origin.url("/r.bin"), node)  # on the CDN
    ledger = node.node.scheduler._ledger
    outcomes_before = dict(ledger.outcomes)

    target = tmp_path / "resumed" / "r.bin"
    target.parent.mkdir()
    partial, record = partial_paths(target)
    partial.write_bytes(data[: 6 * MiB])  # an earlier run had pieces 0..5
    log = PieceLog(record)
    log.start(MiB, len(data))
    for index in range(6):
        log.add(index)
    log.close()

    check = dfget.resume._check
    seen: list[int] = []
    checking = threading.Event()

    def slow_check(*args: Any) -> Any:
        checking.set()
        time.sleep(1.0)  # (a large file, a cold disk)
        result = check(*args)
        checking.clear()
        return result

    monkeypatch.setattr(dfget.resume, "_check", slow_check)

    async def watch() -> None:  # (the CDN's slots while the check runs)
        while True:
            if checking.is_set():
                seen.append(ledger.cdn_uploads)
            await trio.sleep(0.05)

    request = DownloadRequest(
        url=origin.url("/r.bin"),
        output=target,
        supernodes=(node.address,),
        peer=PeerOptions(listen=("127.0.0.1", 0)),
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        with ResumableOutput(target) as out:
            await download(request, output=out)
        nursery.cancel_scope.cancel()
    assert target.read_bytes() == data
    assert max(seen) == 0, f"CDN slots held while the peer checked its own pieces: {max(seen)}"
    done = ledger.outcomes[Outcome.DONE] - outcomes_before.get(Outcome.DONE, 0)
    assert done == 2  # the two pieces it did not have


async def test_a_report_slow_to_go_does_not_end_the_other_downloads_of_a_shared_session(
    origin: FakeOrigin, start_supernode: StartSupernode, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A report's 5 s bound cut the frame as a send deadline: the whole shared session
    # ended, every download on it (found by review). It waits as any frame does.
    stalled = trio.Event()
    resume = trio.Event()

    async def stalled_probe(self: Any) -> None:  # the supernode's loop stops reading
        sock = self.framed.stream.socket
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.set()
        await resume.wait()

    monkeypatch.setattr(control.ControlSession, "_answer_probe", stalled_probe)
    for name in ("a", "b"):
        origin.add(f"/{name}.bin", os.urandom(MiB))
    node = await start_supernode()

    async with trio.open_nursery() as nursery:
        sessions = Sessions(nursery)
        books = {}
        async with contextlib.AsyncExitStack() as stack:
            got = {}
            for name in ("a", "b"):
                line = got[name] = await stack.enter_async_context(
                    sessions.line(node.address, task_id_for(origin.url(f"/{name}.bin")))
                )
                key = X25519PrivateKey.generate()
                await line.send(
                    Register(
                        url=origin.url(f"/{name}.bin"),
                        headers=(),
                        digest=None,
                        tag="",
                        filter=(),
                        public_key=raw_public(key),
                    )
                )
                with trio.fail_after(10):
                    reply = (await line.receive()).message
                assert isinstance(reply, Registered), reply
                books[name] = SimpleNamespace(task_id=reply.task_id, generation=reply.generation)
            a, b = got["a"], got["b"]
            assert a.session is b.session
            stream = a.session.framed.stream
            assert isinstance(stream, trio.SocketStream)
            stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            await a.send(Probe())
            await stalled.wait()

            book = cast(PieceBook, books["a"])

            async def reports() -> None:
                for _ in range(100000):
                    await report(a, book, 0, "cdn", Outcome.CANCELLED, 0, 0.0)
                    if a.session.broken is not None:
                        return

            nursery.start_soon(reports)
            await trio.sleep(8)  # a supernode held up 8 s (a pause, a lossy link)
            broken = b.session.broken
            resume.set()
            assert broken is None, f"b's download ended with the session: {broken}"
            nursery.cancel_scope.cancel()
