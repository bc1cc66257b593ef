"""A daemon's downloads share control sessions (protocol version 2, `dfget.sessions`),
and a peer leaves one task of a session without ending it (`Leave`)."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import signal
import socket
import time
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import pytest
import trio
from conftest import (
    Fetch,
    RunningSupernode,
    RunningSupernodeAddress,
    StartDaemon,
    StartSupernode,
    metric,
    supernode_process,
    until,
)
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from test_attack_supernode import MiniOrigin, RawPeer, ask, next_message, raw_peer, register

import dfget.sessions
import proto.io.framed
import proto.session
import supernode.cdn.uploads
from common.io import RateLimiter
from dfdaemon.app import Daemon
from dfget.errors import OriginFailed, SupernodeFailed, SupernodeUnavailable
from dfget.sessions import INBOX_LIMIT, PROBE_AFTER, PROBE_TIMEOUT, Sessions, TaskLine
from dfget.uploads import TICKET_KEYS, PieceServer
from proto.errors import ConnectionLost, ErrorCode, LocalProtoError
from proto.io import FramedStream, open_session, server_handshake
from proto.keywrap import raw_public
from proto.messages import (
    ErrorReply,
    KeepAlive,
    Leave,
    Message,
    PieceData,
    PieceRequest,
    PiecesHeld,
    PiecesReady,
    PieceTasks,
    PieceTasksRequest,
    Probe,
    Register,
    Registered,
    TaskDone,
    TaskFailed,
)
from proto.pieces import MiB
from proto.session import Session, Side
from proto.taskid import task_id_for
from supernode.cdn.task import TaskState
from supernode.peers.control import PROBE_ANSWER_EVERY, REGISTERS_AT_ONCE
from testkit.origin import FakeOrigin


def daemon_peers(node: RunningSupernode) -> dict[str, set[str]]:
    """The supernode's peers (each a control session) and the tasks each is in."""
    return {peer_id: set(record.tasks) for peer_id, record in node.node.swarm.peers.items()}


async def fetch_all(fetch: Fetch, daemon: Daemon, urls: list[str]) -> list[Path]:
    outputs = []
    for i, url in enumerate(urls):
        result = await fetch(url, None, daemon_socket=daemon.socket_path, name=f"f{i}")
        assert result.daemon == str(daemon.socket_path)  # (not dfget on its own)
        outputs.append(Path(result.output))
    return outputs


@contextlib.asynccontextmanager
async def beside_a_big_download(
    origin: FakeOrigin, start_supernode: StartSupernode, start_daemon: StartDaemon, fetch: Fetch
) -> AsyncIterator[Daemon]:
    """A daemon (no back-to-source) whose one session carries an 8 MiB download under
    way (its origin sends 4 MiB/s) while the body runs; after it, that download is
    whole and the daemon held one session all along."""
    data = os.urandom(8 * MiB)
    origin.add("/big.bin", data, rate=4 * MiB)  # (two seconds: under way meanwhile)
    node = await start_supernode()
    daemon = await start_daemon("host1", "http://127.0.0.1:1", node, back_source=False)
    results: list[Path] = []
    async with trio.open_nursery() as nursery:

        async def big() -> None:
            results.extend(await fetch_all(fetch, daemon, [origin.url("/big.bin")]))

        nursery.start_soon(big)
        await until(lambda: len(daemon_peers(node)) == 1)
        yield daemon
    assert results[0].read_bytes() == data
    assert len(daemon_peers(node)) == 1  # (one session all along)


async def test_a_daemon_holds_one_session_for_the_files_it_seeds(
    origin: FakeOrigin, start_supernode: StartSupernode, start_daemon: StartDaemon, fetch: Fetch
) -> None:
    # Room for 6 connections at the supernode: with a session a file, the daemon's
    # seventh file was refused (and every later one, while it seeded the first six).
    files = {f"/f{i}.bin": os.urandom(MiB + i) for i in range(10)}
    for path, data in files.items():
        origin.add(path, data)
    node = await start_supernode(max_connections=6)
    daemon = await start_daemon("host1", "http://127.0.0.1:1", node, back_source=False)
    outputs = await fetch_all(fetch, daemon, [origin.url(path) for path in files])
    assert [out.read_bytes() for out in outputs] == list(files.values())
    # One peer (the daemon's one session) in all ten tasks, each seeded.
    peers = daemon_peers(node)
    assert len(peers) == 1
    assert next(iter(peers.values())) == {task_id_for(origin.url(p)) for p in files}
    # The session, and the one piece connection to the CDN that the downloads, one
    # after another, passed on to each other (`PiecePool`).
    assert node.node.server.limit.statistics().open == 2
    assert metric(daemon, "dfdaemon_supernode_sessions") == 1
    # And one verifier of the supernode's tickets for all ten (its memory of tickets
    # bounded once, not once a file: `PieceServer.verifier`).
    seeded = daemon.upload.tasks.values()
    assert len(seeded) == 10 and len({id(task.tickets) for task in seeded}) == 1


def test_an_upload_server_keeps_a_verifier_for_a_few_supernode_keys() -> None:
    server = PieceServer(slots=1, limiter=RateLimiter(None))
    keys = [Ed25519PrivateKey.generate().public_key().public_bytes_raw() for _ in range(9)]
    assert TICKET_KEYS == 8
    made = [server.verifier(key) for key in keys[:8]]
    assert len({id(verifier) for verifier in made}) == 8
    assert server.verifier(keys[0]) is made[0]  # (used again: now the latest)
    server.verifier(keys[8])  # a ninth: the one used least lately (keys[1]'s) goes
    assert server.verifier(keys[0]) is made[0] and server.verifier(keys[2]) is made[2]
    assert server.verifier(keys[1]) is not made[1]


async def test_a_daemon_leaves_one_task_and_keeps_its_session(
    origin: FakeOrigin, start_supernode: StartSupernode, start_daemon: StartDaemon, fetch: Fetch
) -> None:
    origin.add("/a.bin", os.urandom(MiB))
    origin.add("/b.bin", os.urandom(MiB))
    node = await start_supernode()
    daemon = await start_daemon("host1", "http://127.0.0.1:1", node, reseed_delay=3600.0)
    await fetch_all(fetch, daemon, [origin.url("/a.bin"), origin.url("/b.bin")])
    a, b = task_id_for(origin.url("/a.bin")), task_id_for(origin.url("/b.bin"))
    assert list(daemon_peers(node).values()) == [{a, b}]
    assert daemon.blobs is not None
    daemon.blobs.running_urls[a].scope.cancel()  # its seeding stops (as a drop does)
    await until(lambda: list(daemon_peers(node).values()) == [{b}])
    assert node.node.swarm.scheduler.task_statistics(a) is None  # its last peer left
    # The session goes on (with the piece connection kept for the next download).
    assert node.node.server.limit.statistics().open == 2


async def test_a_failed_register_answers_its_own_download_on_a_shared_session(
    origin: FakeOrigin, start_supernode: StartSupernode, start_daemon: StartDaemon, fetch: Fetch
) -> None:
    # An ErrorReply names no task: it answers the one Register in flight. A download
    # of a missing file fails with the origin's answer while another, on the same
    # session, goes on.
    async with beside_a_big_download(origin, start_supernode, start_daemon, fetch) as daemon:
        with pytest.raises(OriginFailed, match="404"):
            await fetch(origin.url("/missing.bin"), None, daemon_socket=daemon.socket_path)


@pytest.mark.parametrize(
    "body",
    [
        {"url": "http://127.0.0.1:9/" + "a" * 9000},
        {"url": "http://127.0.0.1:9/x", "headers": [["X Y", "1"]]},
        {"url": "http://127.0.0.1:9/x", "headers": [["X", "a\r\nInjected: 1"]]},
        {"url": "http://127.0.0.1:9/x", "headers": [["X", "caf\u00e9"]]},
        {"url": "http://127.0.0.1:9/?\u0000"},
        b"[" * 60_000,
    ],
    ids=["url-too-long", "space-in-a-name", "crlf-in-a-value", "not-ascii", "nul", "deep"],
)
async def test_a_request_no_supernode_would_take_breaks_no_shared_session(
    origin: FakeOrigin,
    start_supernode: StartSupernode,
    start_daemon: StartDaemon,
    fetch: Fetch,
    body: dict[str, object] | bytes,
) -> None:
    # Any local user may post to the control socket. A url or header a Register may not
    # carry is refused there (400, a usage error): sent on, the frame the codec refuses
    # ended the session every download of the host shares, their readers broken off
    # (and what no HTTP client can send, or JSON nested past the parser, was a 500).
    async with beside_a_big_download(origin, start_supernode, start_daemon, fetch) as daemon:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        head = f"POST /v1/downloads HTTP/1.0\r\nContent-Length: {len(raw)}\r\n\r\n"
        answer = await trio.to_thread.run_sync(post_raw, daemon.socket_path, head.encode() + raw)
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["exit"] == 2


def post_raw(sock_path: Path, request: bytes) -> bytes:
    """One request on the control socket (blocking); the whole answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(sock_path))
        sock.sendall(request)
        answer = b""
        while data := sock.recv(1 << 16):
            answer += data
        return answer


async def test_a_daemon_gives_a_version_1_supernode_a_session_a_file(
    origin: FakeOrigin,
    start_supernode: StartSupernode,
    start_daemon: StartDaemon,
    fetch: Fetch,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # An older supernode cannot take a Leave: the daemon shares nothing with it.
    monkeypatch.setattr(proto.session, "PROTOCOL_VERSIONS", (1,))  # (the server's side)
    files = {f"/f{i}.bin": os.urandom(MiB + i) for i in range(3)}
    for path, data in files.items():
        origin.add(path, data)
    node = await start_supernode()
    daemon = await start_daemon("host1", "http://127.0.0.1:1", node)
    outputs = await fetch_all(fetch, daemon, [origin.url(path) for path in files])
    assert [out.read_bytes() for out in outputs] == list(files.values())
    peers = daemon_peers(node)
    assert len(peers) == 3 and all(len(tasks) == 1 for tasks in peers.values())


# -- the supernode's side, spoken by hand ------------------------------------------------


async def test_a_peer_leaves_one_task_and_the_session_goes_on(
    origin: FakeOrigin, start_supernode: StartSupernode
) -> None:
    origin.add("/a.bin", os.urandom(3 * MiB))
    origin.add("/b.bin", os.urandom(3 * MiB))
    node = await start_supernode()
    async with raw_peer(node, "leaver") as peer:
        assert isinstance(await register(peer, origin.url("/a.bin")), Registered)
        a = peer.registered
        assert isinstance(await register(peer, origin.url("/b.bin")), Registered)
        b = peer.registered
        assert a is not None and b is not None
        assert daemon_peers(node) == {"leaver": {a.task_id, b.task_id}}
        await peer.framed.send(Leave(a.task_id))
        await until(lambda: daemon_peers(node) == {"leaver": {b.task_id}})
        # The task left is no longer this peer's: asked for, it fails by name (an
        # ErrorReply would not say which task), and the session goes on.
        await peer.framed.send(
            PieceTasksRequest(task_id=a.task_id, generation=a.generation, want=1)
        )
        failed = await next_message(peer)
        assert isinstance(failed, TaskFailed) and failed.task_id == a.task_id
        assert failed.code == ErrorCode.STALE
        assert (await ask(peer, 1)).tasks  # the other task still gets pieces


async def test_leaves_of_tasks_not_held_change_nothing_and_a_task_left_may_come_back(
    origin: FakeOrigin, start_supernode: StartSupernode
) -> None:
    origin.add("/a.bin", os.urandom(3 * MiB), rate=2 * MiB)  # (still coming in meanwhile)
    node = await start_supernode()
    async with raw_peer(node, "leaver") as peer:
        assert isinstance(await register(peer, origin.url("/a.bin")), Registered)
        assert peer.registered is not None
        task_id = peer.registered.task_id
        await peer.framed.send(Leave(task_id_for(origin.url("/never.bin"))))
        await peer.framed.send(Leave(task_id))
        await peer.framed.send(Leave(task_id))  # (twice: nothing more)
        await until(lambda: daemon_peers(node) == {"leaver": set()})
        # Registered again on the same session (a second Register of a task it holds
        # would end the session): its progress comes once, from one pusher, not also
        # from the first registration's.
        await peer.framed.send(register_message(peer, origin.url("/a.bin")))
        starts: list[int] = []
        again = False
        with trio.fail_after(10):
            while True:
                message = (await peer.framed.receive()).message
                again = again or isinstance(message, Registered)
                if again and isinstance(message, PiecesReady):
                    starts += range(message.start, message.start + len(message.digests))
                if again and isinstance(message, TaskDone):
                    break
        assert starts == list(range(3))
        assert daemon_peers(node) == {"leaver": {task_id}}


def register_message(peer: RawPeer, url: str) -> Register:
    return Register(
        url=url,
        headers=(),
        digest=None,
        tag="",
        filter=(),
        public_key=raw_public(peer.key),
        upload_port=0,
        upload_slots=0,
    )


def register_for(task_id: str) -> Register:
    """A Register as a scripted supernode takes it (it reads no field)."""
    return Register(
        url=f"http://127.0.0.1:9/{task_id[:8]}",
        headers=(),
        digest=None,
        tag="",
        filter=(),
        public_key=b"\x09" * 32,
    )


async def gated_origin(nursery: trio.Nursery, data: bytes) -> tuple[MiniOrigin, trio.Event]:
    """An origin that answers every request with `data` once the event is set."""
    answer = trio.Event()

    async def slow(
        method: str, headers: dict[str, str]
    ) -> tuple[int, list[tuple[str, str]], object]:
        await answer.wait()
        return 200, [("Content-Length", str(len(data)))], data

    origin = MiniOrigin(slow)
    await nursery.start(origin.serve)
    return origin, answer


async def test_a_register_waiting_for_its_origin_holds_up_no_other_task(
    origin: FakeOrigin, start_supernode: StartSupernode, nursery: trio.Nursery
) -> None:
    # The supernode answers a Register once the origin's first answer is in: on a
    # session of many tasks the others' requests go on meanwhile.
    origin.add("/a.bin", os.urandom(2 * MiB))
    late, answer = await gated_origin(nursery, os.urandom(MiB))
    node = await start_supernode()
    async with raw_peer(node, "two-tasks") as peer:
        assert isinstance(await register(peer, origin.url("/a.bin")), Registered)
        a = peer.registered
        assert a is not None
        await peer.framed.send(register_message(peer, late.url("/b.bin")))
        await until(lambda: len(late.requests) == 1)  # B's Register waits for it now
        await peer.framed.send(PieceTasksRequest(task_id=a.task_id, generation=1, want=1))
        tasks = await next_message(peer, seconds=5)
        assert isinstance(tasks, PieceTasks) and tasks.task_id == a.task_id and tasks.tasks
        answer.set()
        b = await next_message(peer)
        assert isinstance(b, Registered) and b.task_id == task_id_for(late.url("/b.bin"))


async def test_a_peer_gets_a_few_registers_answered_at_once_not_all_it_sends(
    start_supernode: StartSupernode, nursery: trio.Nursery
) -> None:
    # Registers are answered from tasks of their own: a peer that sends many (and
    # need not read the answers) has REGISTERS_AT_ONCE of them waiting for origins,
    # and the session reads nothing more until one is answered.
    late, answer = await gated_origin(nursery, b"x" * 1000)
    node = await start_supernode()
    async with raw_peer(node, "eager") as peer:
        for i in range(30):
            await peer.framed.send(register_message(peer, late.url(f"/f{i}")))
        await until(lambda: len(late.requests) == REGISTERS_AT_ONCE)
        await trio.sleep(0.5)
        assert len(late.requests) == REGISTERS_AT_ONCE
        answer.set()
        registered_ids: set[str] = set()
        with trio.fail_after(20):
            while len(registered_ids) < 30:
                message = (await peer.framed.receive()).message
                if isinstance(message, Registered):
                    registered_ids.add(message.task_id)


@pytest.mark.parametrize("version", [1, 2])
async def test_a_refused_register_names_its_task_from_version_2(
    origin: FakeOrigin,
    start_supernode: StartSupernode,
    monkeypatch: pytest.MonkeyPatch,
    version: int,
) -> None:
    # On a session of many tasks an ErrorReply could also be the end of the session:
    # version 2 answers a refused Register with a TaskFailed that names its task; a
    # version 1 peer gets the ErrorReply it expects.
    monkeypatch.setattr(proto.io.framed, "PROTOCOL_VERSIONS", tuple(range(1, version + 1)))
    node = await start_supernode()
    async with raw_peer(node, "asker") as peer:
        reply = await register(peer, origin.url("/missing.bin"))
        if version == 1:
            assert isinstance(reply, ErrorReply) and reply.status == 404
        else:
            assert isinstance(reply, TaskFailed) and reply.status == 404
            assert reply.task_id == task_id_for(origin.url("/missing.bin"))
        origin.add("/there.bin", os.urandom(MiB))
        assert isinstance(await register(peer, origin.url("/there.bin")), Registered)


async def test_a_piece_session_keeps_a_few_piece_files_open(
    origin: FakeOrigin, start_supernode: StartSupernode, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A daemon's session asks the CDN for piece after piece of many tasks: a piece
    # session holds open only the files of the tasks it asked for last.
    monkeypatch.setattr(supernode.cdn.uploads, "MAX_OPEN_FILES", 4)
    node = await start_supernode()
    tasks: list[Registered] = []
    async with raw_peer(node, "many") as peer:
        for i in range(10):
            origin.add(f"/f{i}.bin", os.urandom(1000 + i))
            assert isinstance(await register(peer, origin.url(f"/f{i}.bin")), Registered)
            assert peer.registered is not None
            tasks.append(peer.registered)
        cdn = node.node.cdn

        def all_done() -> bool:
            return all(
                (task := cdn.current(t.task_id)) is not None and task.state is TaskState.DONE
                for t in tasks
            )

        await until(all_done)
        store = node.node.store
        paths = {str(store.pieces_path(t.task_id, t.generation)) for t in tasks}

        def open_files() -> int:
            fds = Path("/proc/self/fd")
            return sum(os.path.realpath(fd) in paths for fd in fds.iterdir())

        host, port = node.address.rsplit(":", 1)
        stream = await trio.open_tcp_stream(host, int(port))
        async with open_session(stream, role="peer", peer_id="many") as pieces:
            for t in tasks:
                ticket = t.cdn_ticket
                asked = PieceRequest(
                    task_id=t.task_id, generation=t.generation, index=0, ticket=ticket
                )
                await pieces.send(asked)
                assert isinstance((await pieces.receive()).message, PieceData)
                assert open_files() <= 4


# -- the daemon's side against a supernode scripted by hand ------------------------------

A, B, C = ("a" * 64, "b" * 64, "c" * 64)


def registered(task_id: str) -> Registered:
    return Registered(
        task_id=task_id,
        generation=1,
        length=MiB,
        piece_size=MiB,
        wrapped_key=b"",
        ticket_key=b"k" * 32,
        cdn_ticket=b"",
    )


def ready(task_id: str) -> PiecesReady:
    return PiecesReady(task_id=task_id, generation=1, start=0, digests=(b"d" * 32,))


def asking(task_id: str) -> PieceTasksRequest:
    return PieceTasksRequest(task_id=task_id, generation=1, want=1)


class Scripted:
    """A supernode that speaks version 2 and leaves every connection, once handshaken,
    to the test (`accepted`)."""

    def __init__(self) -> None:
        self.connections_in, self.accepted = trio.open_memory_channel[FramedStream](8)
        self.address = ""
        self.welcome_after = 0.0  # seconds before it answers a Hello

    async def start(self, nursery: trio.Nursery) -> None:
        async def handle(stream: trio.SocketStream) -> None:
            framed = FramedStream(stream, Session(Side.SERVER))
            await trio.sleep(self.welcome_after)
            await server_handshake(framed, role="supernode", agent="scripted")
            await self.connections_in.send(framed)
            await trio.sleep_forever()  # (the test answers on it)

        serve = partial(trio.serve_tcp, handle, 0, host="127.0.0.1")
        listeners = await nursery.start(serve)
        self.address = f"127.0.0.1:{listeners[0].socket.getsockname()[1]}"


@pytest.fixture
async def scripted(nursery: trio.Nursery) -> Scripted:
    server = Scripted()
    await server.start(nursery)
    return server


async def received(framed: FramedStream) -> Message:
    with trio.fail_after(10):
        return (await framed.receive()).message


async def answered(line: TaskLine, server: FramedStream) -> None:
    """`line` registers its task, and the scripted supernode answers Registered."""
    await line.send(register_for(line.task_id))
    assert await received(server) == register_for(line.task_id)
    await server.send(registered(line.task_id))
    assert isinstance(await taken(line), Registered)


async def taken(line: TaskLine) -> Message:
    with trio.fail_after(10):
        return (await line.receive()).message


async def test_answers_and_news_reach_the_line_of_their_task(
    scripted: Scripted, nursery: trio.Nursery
) -> None:
    stack = contextlib.AsyncExitStack()
    sessions = Sessions(nursery)
    async with sessions.line(scripted.address, A) as a:
        server = await scripted.accepted.receive()
        await a.send(register_for(A))
        assert isinstance(await received(server), Register)
        await server.send(registered(A))
        assert isinstance(await taken(a), Registered)
        b = await stack.enter_async_context(sessions.line(scripted.address, B))
        assert a.peer_id == b.peer_id  # one session, one peer id
        # An ErrorReply names no task: it is the answer to the Register in flight.
        await b.send(register_for(B))
        assert isinstance(await received(server), Register)
        await server.send(ErrorReply(code="not_found", message="no such file", status=404))
        await server.send(ready(A))
        await server.send(TaskDone(task_id=C, generation=1, length=1, piece_count=1))  # (nobody's)
        assert isinstance(await taken(b), ErrorReply)
        assert await taken(a) == ready(A)
        await stack.aclose()
    # The last line closed the session without a Leave (its end leaves every task).
    with pytest.raises(ConnectionLost):
        await received(server)
    assert sessions.open_count(scripted.address) == 0


async def test_a_line_that_ends_leaves_its_task_and_the_others_go_on(
    scripted: Scripted, nursery: trio.Nursery
) -> None:
    sessions = Sessions(nursery)
    async with sessions.line(scripted.address, A) as a:
        server = await scripted.accepted.receive()
        await answered(a, server)
        async with sessions.line(scripted.address, B) as b:
            await answered(b, server)
        assert await received(server) == Leave(B)
        await server.send(ready(A))
        assert await taken(a) == ready(A)
        await a.send(asking(A))
        assert await received(server) == asking(A)
    assert sessions.open_count(scripted.address) == 0


async def test_a_line_ended_before_its_answer_leaves_once_the_answer_is_in(
    scripted: Scripted, nursery: trio.Nursery
) -> None:
    sessions = Sessions(nursery)
    async with sessions.line(scripted.address, A) as a:
        server = await scripted.accepted.receive()
        await answered(a, server)
        async with sessions.line(scripted.address, B) as b:
            assert b.peer_id == a.peer_id
            await b.send(register_for(B))
            await received(server)
        # B's download ended while its Register was in flight: the session takes no
        # task until that answer is in (an ErrorReply now would be B's), then B leaves.
        async with sessions.line(scripted.address, C) as c:
            assert c.peer_id != a.peer_id  # (a session of its own)
            await scripted.accepted.receive()
        await server.send(registered(B))
        assert await received(server) == Leave(B)
        async with sessions.line(scripted.address, C) as c:
            assert c.peer_id == a.peer_id


async def test_downloads_that_register_at_once_open_sessions_of_their_own(
    scripted: Scripted, nursery: trio.Nursery
) -> None:
    # A Register may wait for the origin's first answer: one in flight on a session
    # makes the next download open another session, rather than wait behind it.
    sessions = Sessions(nursery)
    async with sessions.line(scripted.address, A) as a, sessions.line(scripted.address, B) as b:
        assert a.peer_id != b.peer_id
        first, second = await scripted.accepted.receive(), await scripted.accepted.receive()
        await b.send(register_for(B))
        await a.send(register_for(A))  # (does not wait for B's answer)
        assert isinstance(await received(first), Register)
        assert isinstance(await received(second), Register)
        await first.send(registered(A))
        await second.send(registered(B))
        assert isinstance(await taken(a), Registered)
        assert isinstance(await taken(b), Registered)
        # Both answered: the next download shares one of them.
        async with sessions.line(scripted.address, C) as c:
            assert c.peer_id in (a.peer_id, b.peer_id)
    assert sessions.open_count(scripted.address) == 0


async def test_a_download_that_uploads_nothing_registers_on_a_session_of_its_own(
    scripted: Scripted, nursery: trio.Nursery
) -> None:
    # A session is one peer with one upload address: a daemon's check of a copy it
    # keeps (no upload port) must not join the session of the blobs it seeds (the
    # supernode refuses a peer id whose upload address changes, and ends the session).
    sessions = Sessions(nursery)
    async with sessions.line(scripted.address, A, (4000, 8)) as seeding:
        server = await scripted.accepted.receive()
        await answered(seeding, server)
        async with sessions.line(scripted.address, B, (0, 0)) as check:
            assert check.peer_id != seeding.peer_id
            await scripted.accepted.receive()
        async with sessions.line(scripted.address, B, (4000, 8)) as other:
            assert other.peer_id == seeding.peer_id


async def test_past_its_sessions_a_register_waits_for_its_turn(
    scripted: Scripted, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dfget.sessions, "SESSIONS_PER_SUPERNODE", 1)
    sessions = Sessions(nursery)
    async with sessions.line(scripted.address, A) as a, sessions.line(scripted.address, B) as b:
        assert a.peer_id == b.peer_id  # (no second session)
        server = await scripted.accepted.receive()
        await a.send(register_for(A))
        registering = trio.Event()

        async def register_b() -> None:
            await b.send(register_for(B))
            registering.set()

        nursery.start_soon(register_b)
        assert await received(server) == register_for(A)
        await trio.sleep(0.2)
        assert not registering.is_set()  # B's waits: an ErrorReply now would be A's
        await server.send(ErrorReply(code="not_found", message="no such file", status=404))
        assert isinstance(await taken(a), ErrorReply)
        assert await received(server) == register_for(B)
        await server.send(registered(B))
        assert isinstance(await taken(b), Registered)


async def test_a_restarted_daemon_announces_its_cache_over_a_few_sessions(
    origin: FakeOrigin,
    start_supernode: StartSupernode,
    start_daemon: StartDaemon,
    fetch: Fetch,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # At start every cached blob registers at once: they share SESSIONS_PER_SUPERNODE
    # sessions (2 here), not one each.
    monkeypatch.setattr(dfget.sessions, "SESSIONS_PER_SUPERNODE", 2)
    blobs = [os.urandom(MiB + i) for i in range(8)]
    node = await start_supernode()
    registry = f"{origin.host}:{origin.port}"  # (its word is taken for the blobs)
    first = await start_daemon("host1", "http://127.0.0.1:1", node, allow_registries=(registry,))
    urls = []
    for data in blobs:
        digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
        origin.add(f"/v2/files/blobs/{digest}", data)
        urls.append(origin.url(f"/v2/files/blobs/{digest}"))
    for i, url in enumerate(urls):
        digest = url.rsplit("/", 1)[1]
        await fetch(url, None, daemon_socket=first.socket_path, digest=digest, name=f"f{i}")
    await start_daemon.stop(first)
    await until(lambda: not daemon_peers(node))
    await start_daemon("host1", "http://127.0.0.1:1", node, allow_registries=(registry,))
    await until(lambda: sum(len(tasks) for tasks in daemon_peers(node).values()) == len(blobs))
    assert len(daemon_peers(node)) <= 2


async def test_an_error_reply_that_answers_nothing_ends_every_line(
    scripted: Scripted, nursery: trio.Nursery
) -> None:
    sessions = Sessions(nursery)
    with pytest.raises(SupernodeUnavailable):
        async with sessions.line(scripted.address, A) as a:
            server = await scripted.accepted.receive()
            await answered(a, server)
            await server.send(ErrorReply(code="internal", message="going away"))
            assert isinstance(await taken(a), ErrorReply)  # (the peer raises its error)
            await taken(a)
    # The next download opens a new session.
    async with sessions.line(scripted.address, B):
        await scripted.accepted.receive()


async def test_a_broken_session_raises_to_each_line_an_error_of_its_own(
    scripted: Scripted, nursery: trio.Nursery
) -> None:
    # The session keeps why it ended, and each line raises it: one object raised by
    # every line would gather every line's frames (each download's buffers), so each
    # gets a copy, and the session's holds no frames (`common.frameless`).
    sessions = Sessions(nursery)
    raised: list[BaseException] = []
    async with sessions.line(scripted.address, A) as a:
        server = await scripted.accepted.receive()
        await answered(a, server)
        async with sessions.line(scripted.address, B) as b:
            await answered(b, server)
            await server.stream.aclose()
            for line in (a, b, a):
                with pytest.raises(ConnectionLost) as lost:
                    await taken(line)
                raised.append(lost.value)
            broken = a.session.broken
    assert len({id(exc) for exc in raised}) == 3
    assert {str(exc) for exc in raised} == {str(broken)}
    assert broken is not None and broken.__traceback__ is None


async def test_frames_right_behind_the_end_of_a_session_crash_nothing(
    scripted: Scripted, nursery: trio.Nursery
) -> None:
    # An ErrorReply that answers nothing ends the session; news read in the same go
    # must not be put to lines already ended (that raised into the daemon's nursery).
    sessions = Sessions(nursery)
    with pytest.raises(SupernodeUnavailable):
        async with sessions.line(scripted.address, A) as a:
            server = await scripted.accepted.receive()
            await answered(a, server)
            ending = server.session.send(ErrorReply(code="internal", message="going away"))
            await server.stream.send_all(ending + server.session.send(ready(A)) * 3)
            assert isinstance(await taken(a), ErrorReply)
            await taken(a)
    async with sessions.line(scripted.address, B):  # (the pool goes on)
        await scripted.accepted.receive()


async def test_a_frame_that_could_not_go_ends_the_session(
    scripted: Scripted, nursery: trio.Nursery
) -> None:
    # The supernode stops reading: a frame that does not go within its deadline leaves
    # the stream unable to send, so the session ends (else every later download on it
    # would fail at its first frame).
    sessions = Sessions(nursery)
    async with sessions.line(scripted.address, B) as b:
        server = await scripted.accepted.receive()
        await answered(b, server)
        with pytest.raises(SupernodeUnavailable):
            async with sessions.line(scripted.address, A) as a:
                await answered(a, server)
                claim = PiecesHeld(task_id=A, generation=1, start=0, bitfield=b"\xff" * 8192)
                while True:  # until the socket's buffers are full
                    await a.send(claim, within=0.5)
        assert sessions.open_count(scripted.address) == 0  # (B's line still open)
        async with sessions.line(scripted.address, C):
            await scripted.accepted.receive()  # a new session


async def test_a_frame_the_codec_refuses_fails_its_task_not_the_session(
    scripted: Scripted, nursery: trio.Nursery
) -> None:
    # Refused before a byte of it went: the session's other tasks go on.
    sessions = Sessions(nursery)
    async with sessions.line(scripted.address, A) as a:
        server = await scripted.accepted.receive()
        await answered(a, server)
        async with sessions.line(scripted.address, B) as b:
            bad = dataclasses.replace(register_for(B), url="http://h/" + "a" * 9000)
            with pytest.raises(LocalProtoError):
                await b.send(bad)
            await answered(b, server)  # (its turn is free again, its task may register)
        await server.send(ready(A))
        assert await taken(a) == ready(A)
        assert a.session.broken is None
        assert sessions.open_count(scripted.address) == 1


async def test_a_task_left_goes_to_another_session_and_its_old_news_to_nobody(
    scripted: Scripted, nursery: trio.Nursery
) -> None:
    # A session never takes a task it left again: a new download of it goes to another
    # session, under another peer id, as it always did (its standing in the task, a
    # blacklisting there, stays with the download that earned it); and what the
    # supernode sent of the task before it read the Leave reaches nobody.
    sessions = Sessions(nursery)
    async with sessions.line(scripted.address, B) as b:
        server = await scripted.accepted.receive()
        await answered(b, server)
        async with sessions.line(scripted.address, A) as a:
            await answered(a, server)
        assert await received(server) == Leave(A)
        await server.send(ready(A))  # (sent before the Leave was read)
        async with sessions.line(scripted.address, A) as again:
            assert again.peer_id != b.peer_id
            other = await scripted.accepted.receive()
            await answered(again, other)
            await other.send(ready(A))
            assert await taken(again) == ready(A)
        await server.send(ready(B))
        assert await taken(b) == ready(B)  # the first session goes on


async def test_downloads_behind_a_silent_supernode_fail_over_together(
    nursery: trio.Nursery,
) -> None:
    # A supernode that accepts but never answers the handshake: each download waits
    # for the one connecting before it at most its own connect deadline, not all of
    # theirs one after another (six of them took six deadlines).
    async def silent(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    listeners = await nursery.start(partial(trio.serve_tcp, silent, 0, host="127.0.0.1"))
    address = f"127.0.0.1:{listeners[0].socket.getsockname()[1]}"
    sessions = Sessions(nursery)
    failed: list[float] = []
    started = trio.current_time()

    async def download(task_id: str) -> None:
        with pytest.raises(SupernodeUnavailable):
            async with sessions.line(address, task_id, within=1.0):
                pass
        failed.append(trio.current_time() - started)

    async with trio.open_nursery() as downloads:
        for i in range(6):
            downloads.start_soon(download, f"{i:064x}")
    assert len(failed) == 6 and max(failed) < 4.0  # (2 deadlines, not 6)


async def test_a_line_ended_with_its_answer_unread_leaves_and_frees_the_turn(
    scripted: Scripted, nursery: trio.Nursery
) -> None:
    # The answer came, the download ended before it read it (a drop, an eviction): the
    # session's Register turn goes on, and the task is left.
    sessions = Sessions(nursery)
    async with sessions.line(scripted.address, A) as a:
        server = await scripted.accepted.receive()
        await answered(a, server)
        async with sessions.line(scripted.address, B) as b:
            await b.send(register_for(B))
            await received(server)
            await server.send(registered(B))
            await until(lambda: b.registered)
        assert await received(server) == Leave(B)
        async with sessions.line(scripted.address, C) as c:
            assert c.peer_id == a.peer_id
            with trio.fail_after(5):
                await c.send(register_for(C))
            assert await received(server) == register_for(C)


async def test_a_session_that_breaks_with_a_register_in_flight_fails_the_one_waiting(
    scripted: Scripted, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dfget.sessions, "SESSIONS_PER_SUPERNODE", 1)
    sessions = Sessions(nursery)
    waited: list[BaseException] = []

    async def register_b() -> None:
        try:
            async with sessions.line(scripted.address, B) as b:
                await b.send(register_for(B))
        except SupernodeUnavailable as exc:
            waited.append(exc)

    with pytest.raises(SupernodeUnavailable):
        async with sessions.line(scripted.address, A) as a:
            server = await scripted.accepted.receive()
            await a.send(register_for(A))
            await received(server)
            nursery.start_soon(register_b)
            await trio.sleep(0.2)  # (B waits for A's answer)
            await server.stream.aclose()  # the supernode goes away
            await taken(a)
    await until(lambda: waited, seconds=5)


async def test_downloads_behind_a_slow_supernode_each_get_a_session(
    scripted: Scripted, nursery: trio.Nursery
) -> None:
    # Each handshake takes 0.4 s of the 0.5 s allowed: downloads that start together
    # wait for the one connecting at most 0.5 s, then connect on their own; none fails
    # over (which would put a working supernode in back-off).
    scripted.welcome_after = 0.4
    sessions = Sessions(nursery)
    lines: list[str] = []

    async def download(task_id: str) -> None:
        async with sessions.line(scripted.address, task_id, within=0.5) as line:
            lines.append(line.peer_id)

    async with trio.open_nursery() as downloads:
        for i in range(6):
            downloads.start_soon(download, f"{i:064x}")
    assert len(lines) == 6


async def test_a_register_never_answered_ends_the_session(
    scripted: Scripted, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A supernode that hangs after the handshake: its session ends once a Register has
    # waited ANSWER_TIMEOUT, the download waiting its turn fails too (both fail over),
    # and the next download connects anew (and would meet the handshake's deadline).
    monkeypatch.setattr(dfget.sessions, "ANSWER_TIMEOUT", 0.5)
    monkeypatch.setattr(dfget.sessions, "WATCH_EVERY", 0.1)
    monkeypatch.setattr(dfget.sessions, "SESSIONS_PER_SUPERNODE", 1)
    sessions = Sessions(nursery)
    failed: list[str] = []

    async def download(task_id: str) -> None:
        try:
            async with sessions.line(scripted.address, task_id) as line:
                await line.send(register_for(task_id))
                await taken(line)
        except SupernodeUnavailable:
            failed.append(task_id)

    async with trio.open_nursery() as downloads:
        downloads.start_soon(download, A)
        server = await scripted.accepted.receive()
        await received(server)  # A's Register, never answered
        downloads.start_soon(download, B)  # (its turn comes after A's answer)
    assert sorted(failed) == [A, B]
    async with sessions.line(scripted.address, C):
        await scripted.accepted.receive()  # a new connection


@pytest.mark.parametrize("news", ["unasked", "flood"])
async def test_a_supernode_that_breaks_the_rules_ends_the_session(
    scripted: Scripted, nursery: trio.Nursery, news: str
) -> None:
    sessions = Sessions(nursery)
    with pytest.raises(SupernodeFailed):
        async with sessions.line(scripted.address, A) as a:
            server = await scripted.accepted.receive()
            await answered(a, server)
            if news == "unasked":
                await server.send(registered(B))  # (B never asked)
            else:  # more news of one task than it can have unread
                for _ in range(INBOX_LIMIT + 1):
                    await server.send(ready(A))
                await trio.sleep(0.5)
            while True:
                await taken(a)


async def test_a_cancelled_download_does_not_cut_a_frame_on_the_shared_session(
    scripted: Scripted, nursery: trio.Nursery
) -> None:
    sessions = Sessions(nursery)
    async with sessions.line(scripted.address, A) as a:
        server = await scripted.accepted.receive()
        await answered(a, server)
        with trio.CancelScope() as scope:
            scope.cancel()
            await a.send(asking(A))  # goes whole: the session is every task's
        assert await received(server) == asking(A)
        await server.send(ready(A))
        assert await taken(a) == ready(A)


# -- a supernode that keeps its connections and answers nothing (version 3: Probe) -------


@pytest.fixture
def quick_probes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dfget.sessions, "PROBE_AFTER", 0.2)
    monkeypatch.setattr(dfget.sessions, "PROBE_TIMEOUT", 0.5)
    monkeypatch.setattr(dfget.sessions, "WATCH_EVERY", 0.05)


async def test_a_frozen_supernode_fails_the_register_it_left_unanswered_and_no_other(
    scripted: Scripted,
    nursery: trio.Nursery,
    quick_probes: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # It took the handshake and a first task, then stopped answering (SIGSTOP, a wedged
    # loop, a few seconds of a lossy link): the next download's Register is probed,
    # the Probe goes unanswered, and that download fails over in well under a second
    # (not after ANSWER_TIMEOUT, 120 s), with the one waiting for its turn. The session
    # takes no new task; the task it seeds goes on, and is not announced again.
    monkeypatch.setattr(dfget.sessions, "SESSIONS_PER_SUPERNODE", 1)  # (C waits its turn)
    sessions = Sessions(nursery)
    D, E = "d" * 64, "e" * 64
    async with sessions.line(scripted.address, A) as a:
        server = await scripted.accepted.receive()
        await answered(a, server)
        failed: dict[str, float] = {}
        started = trio.current_time()

        async def download(task_id: str) -> None:
            with pytest.raises(SupernodeUnavailable, match="answered no Probe"):
                async with sessions.line(scripted.address, task_id) as line:
                    await line.send(register_for(task_id))
                    await taken(line)
            failed[task_id] = trio.current_time() - started

        async with trio.open_nursery() as downloads:
            downloads.start_soon(download, B)
            assert await received(server) == register_for(B)
            downloads.start_soon(download, C)
            assert await received(server) == Probe()  # (unanswered)
        assert sorted(failed) == [B, C] and max(failed.values()) < 3.0
        await server.send(ready(A))
        assert await taken(a) == ready(A)  # A goes on
        async with sessions.line(scripted.address, D) as d:
            await scripted.accepted.receive()  # a new session for a new task
            assert d.peer_id != a.peer_id
            await server.send(registered(B))  # the supernode is back: B's late answer
            assert await received(server) == Leave(B)  # (its download is gone)
            async with sessions.line(scripted.address, E) as e:
                assert e.peer_id == a.peer_id  # the first session takes tasks again


async def test_a_supernode_that_answers_probes_may_take_its_time_to_register(
    scripted: Scripted, nursery: trio.Nursery, quick_probes: None
) -> None:
    # Its origin is slow to give the first answer (a Register may wait for it), but the
    # supernode answers every Probe: the session stays, however long that takes.
    sessions = Sessions(nursery)
    async with sessions.line(scripted.address, A) as a:
        server = await scripted.accepted.receive()
        await a.send(register_for(A))
        assert await received(server) == register_for(A)
        probes = 0
        with trio.move_on_after(2.0):  # four Probe deadlines
            while True:
                assert await received(server) == Probe()
                probes += 1
                await server.send(KeepAlive())
        assert probes >= 3
        await server.send(registered(A))
        assert isinstance(await taken(a), Registered)
        assert a.session.broken is None and a.session.retired is None


async def test_a_version_2_supernode_is_never_probed(
    scripted: Scripted,
    nursery: trio.Nursery,
    quick_probes: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(proto.session, "PROTOCOL_VERSIONS", (1, 2))  # (the server's side)
    sessions = Sessions(nursery)
    async with sessions.line(scripted.address, A) as a:
        server = await scripted.accepted.receive()
        await a.send(register_for(A))
        assert await received(server) == register_for(A)
        with trio.move_on_after(1.5):
            message = await received(server)
            pytest.fail(f"a version 2 supernode was sent {message}")
        await server.send(registered(A))
        assert isinstance(await taken(a), Registered)


def test_the_supernode_answers_probes_more_often_than_a_daemon_sends_them() -> None:
    # A daemon sends a Probe after PROBE_AFTER of silence at the least: were the
    # supernode's limit longer, an answer could be skipped and a session retired for
    # nothing.
    assert PROBE_ANSWER_EVERY < PROBE_AFTER


async def test_the_supernode_answers_a_probe_twice_a_second_at_most(
    origin: FakeOrigin, start_supernode: StartSupernode
) -> None:
    origin.add("/a.bin", os.urandom(MiB))
    node = await start_supernode()
    async with raw_peer(node, "probing") as peer:
        assert isinstance(await register(peer, origin.url("/a.bin")), Registered)
        for _ in range(50):  # a peer that probes without end gets one answer
            await peer.framed.send(Probe())
        assert await next_message(peer) == KeepAlive()
        with trio.move_on_after(0.3):
            message = await next_message(peer)
            pytest.fail(f"a second answer within the half second: {message}")
        await trio.sleep(PROBE_ANSWER_EVERY)
        await peer.framed.send(Probe())
        assert await next_message(peer) == KeepAlive()


async def test_a_daemon_behind_a_frozen_supernode_goes_to_the_origin_within_seconds(
    origin: FakeOrigin, start_daemon: StartDaemon, fetch: Fetch, tmp_path: Path
) -> None:
    # A real supernode process, SIGSTOPped after the daemon's first download: the
    # connection stays up (the kernel keeps it), nothing answers. The daemon's next
    # download meets no handshake on its shared session; its Probe goes unanswered and
    # it fetches from the origin in seconds (after ANSWER_TIMEOUT, 120 s, before).
    first, second = os.urandom(MiB), os.urandom(2 * MiB)
    origin.add("/first.bin", first)
    origin.add("/second.bin", second)
    async with supernode_process(tmp_path / "sn") as server:
        node = RunningSupernodeAddress(server.ready["peer"])
        daemon = await start_daemon("host1", "http://127.0.0.1:1", node)
        done = await fetch(origin.url("/first.bin"), None, daemon_socket=daemon.socket_path)
        assert done.from_cdn == len(first)
        server.proc.send_signal(signal.SIGSTOP)
        try:
            started = trio.current_time()
            with trio.fail_after(30):
                result = await fetch(
                    origin.url("/second.bin"), None, daemon_socket=daemon.socket_path
                )
            took = trio.current_time() - started
        finally:
            server.proc.send_signal(signal.SIGCONT)
    assert Path(result.output).read_bytes() == second and result.from_source == len(second)
    assert took < PROBE_AFTER + PROBE_TIMEOUT + 5.0


async def test_a_daemon_held_up_itself_does_not_take_its_pause_for_the_supernodes(
    scripted: Scripted, nursery: trio.Nursery, quick_probes: None
) -> None:
    # The answer to the Probe came while the daemon's own loop stood still for longer
    # than the Probe's deadline (a swapped-out or starved process): when it runs again,
    # the answer is read before the deadline counts, and the session goes on.
    sessions = Sessions(nursery)
    async with sessions.line(scripted.address, A) as a:
        server = await scripted.accepted.receive()
        await a.send(register_for(A))
        assert await received(server) == register_for(A)
        stream = server.stream
        assert isinstance(stream, trio.SocketStream)
        for _ in range(5):
            assert await received(server) == Probe()
            # The answer goes by hand, so that no task runs between it and the pause.
            os.write(stream.socket.fileno(), server.session.send(KeepAlive()))
            time.sleep(2 * dfget.sessions.PROBE_TIMEOUT)  # (the whole loop stands still)
        await server.send(registered(A))
        assert isinstance(await taken(a), Registered)
        assert a.session.broken is None and a.session.retired is None


async def test_a_probe_from_a_stranger_gets_nothing_but_a_refusal(
    start_supernode: StartSupernode,
) -> None:
    # A Probe is answered only inside a registered (admitted) control session: as the
    # first request of a connection it is refused, and the connection closed.
    node = await start_supernode()
    async with raw_peer(node, "stranger") as peer:
        await peer.framed.send(Probe())
        reply = await next_message(peer)
        assert isinstance(reply, ErrorReply) and reply.code == "bad_request"
        with pytest.raises(ConnectionLost):
            await next_message(peer)
