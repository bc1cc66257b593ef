"""Attacks on the supernode by admitted peers and lying origins (issue 12, items 5, 6, 8).

Each test plays the attacker the way one would: a peer speaking raw frames on a socket
(`open_session`), an origin that never ends its body or answers HEAD with 405, a fake
upload server that denies holding what it claimed. Each failed on the base commit
(563d6bf): see the report of the `bounds` branch.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import h11
import pytest
import trio
from conftest import Fetch, RunningSupernode, StartSupernode, until, until_equal
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from common.eviction import GcPolicy
from dfget.errors import DfgetError, OriginFailed, SupernodeUnavailable
from dfget.options import PeerOptions
from proto.errors import ConnectionLost
from proto.io import FramedStream, open_session, server_handshake
from proto.keywrap import raw_public, unwrap_key, wrap_context
from proto.messages import (
    ErrorReply,
    Message,
    PieceData,
    PieceRefused,
    PieceRequest,
    PieceResult,
    PiecesReady,
    PieceTasks,
    PieceTasksRequest,
    Register,
    Registered,
    TaskDone,
    TaskFailed,
)
from proto.pieces import MiB, PieceSealer, piece_digest
from proto.session import Session, Side
from testkit.origin import FakeOrigin
from testkit.scripted import Answer, ScriptedOrigin, Seen

LOCAL = ("127.0.0.1", 0)

# -- the attacker's tools -------------------------------------------------------------


@dataclasses.dataclass
class RawPeer:
    framed: FramedStream
    key: X25519PrivateKey
    registered: Registered | None = None


@asynccontextmanager
async def raw_peer(node: RunningSupernode, peer_id: str) -> AsyncIterator[RawPeer]:
    """A peer that speaks frames by hand, under any peer id it likes."""
    host, port = node.address.rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    async with open_session(stream, role="peer", peer_id=peer_id) as framed:
        yield RawPeer(framed, X25519PrivateKey.generate())


def register_message(
    peer: RawPeer, url: str, *, upload_port: int = 0, upload_slots: int = 0, want: int = 0
) -> Register:
    """A plain Register of `url` by `peer`."""
    return Register(
        url=url,
        headers=(),
        digest=None,
        tag="",
        filter=(),
        public_key=raw_public(peer.key),
        upload_port=upload_port,
        upload_slots=upload_slots,
        want=want,
    )


async def register(
    peer: RawPeer, url: str, *, upload_port: int = 0, upload_slots: int = 0, want: int = 0
) -> Message:
    """Send a Register; the answer (Registered or ErrorReply)."""
    message = register_message(
        peer, url, upload_port=upload_port, upload_slots=upload_slots, want=want
    )
    await peer.framed.send(message)
    reply = await next_message(peer)
    if isinstance(reply, Registered):
        peer.registered = reply
    return reply


async def next_message(peer: RawPeer, seconds: float = 10.0) -> Message:
    """The next message that is not progress news (PiecesReady, TaskDone)."""
    with trio.fail_after(seconds):
        while True:
            message = (await peer.framed.receive()).message
            if not isinstance(message, PiecesReady | TaskDone):
                return message


async def ask(peer: RawPeer, want: int) -> PieceTasks:
    assert peer.registered is not None
    task_id, generation = peer.registered.task_id, peer.registered.generation
    await peer.framed.send(PieceTasksRequest(task_id=task_id, generation=generation, want=want))
    answer = await next_message(peer)
    assert isinstance(answer, PieceTasks), answer
    return answer


async def report(peer: RawPeer, index: int, source: str, outcome: str) -> None:
    assert peer.registered is not None
    await peer.framed.send(
        PieceResult(
            task_id=peer.registered.task_id,
            generation=peer.registered.generation,
            index=index,
            source=source,
            outcome=outcome,
        )
    )


Respond = Callable[[str, dict[str, str]], Awaitable[tuple[int, list[tuple[str, str]], object]]]


class MiniOrigin:
    """An HTTP/1.1 origin whose every answer the test writes: `respond(method, headers)`
    returns (status, headers, body), the body bytes or an async iterator of chunks."""

    def __init__(self, respond: Respond) -> None:
        self.respond = respond
        self.port = 0
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.body_bytes = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            request = None
            while not isinstance(event := conn.next_event(), h11.EndOfMessage):
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    conn.receive_data(data)
                elif isinstance(event, h11.Request):
                    request = event
            assert request is not None
            method = request.method.decode()
            headers = {k.decode().lower(): v.decode() for k, v in request.headers}
            self.requests.append((method, headers))
            status, answer_headers, body = await self.respond(method, headers)
            answer_headers = [*answer_headers, ("Connection", "close")]
            await stream.send_all(
                conn.send(h11.Response(status_code=status, headers=answer_headers))
            )
            if method != "HEAD":
                chunks = [body] if isinstance(body, bytes) else body
                async for chunk in _chunks(chunks):
                    self.body_bytes += len(chunk)
                    await stream.send_all(conn.send(h11.Data(data=chunk)))
            await stream.send_all(conn.send(h11.EndOfMessage()))
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            pass
        finally:
            await stream.aclose()


async def _chunks(body: object) -> AsyncIterator[bytes]:
    if isinstance(body, list):
        for chunk in body:
            yield chunk
    else:
        assert hasattr(body, "__aiter__")
        async for chunk in body:
            yield chunk


async def endless_body() -> AsyncIterator[bytes]:
    """Zeros for ever, at about 16 MiB/s (a test on the base commit must not fill the disk)."""
    chunk = bytes(256 * 1024)
    while True:
        yield chunk
        await trio.sleep(1 / 64)


async def endless(
    method: str, headers: dict[str, str]
) -> tuple[int, list[tuple[str, str]], object]:
    return 200, [("Transfer-Encoding", "chunked")], endless_body()


# -- item 5: bounded cost for admitted peers ------------------------------------------------


async def test_past_max_fetches_a_new_fetch_is_refused_busy(
    origin: FakeOrigin, start_supernode: StartSupernode, fetch: Fetch
) -> None:
    gate = trio.Event()
    origin.add("/a.bin", os.urandom(4 * MiB), gate_after=MiB, gate=gate)  # a fetch that runs
    data = os.urandom(MiB)
    origin.add("/b.bin", data)
    node = await start_supernode(max_fetches=1)
    async with raw_peer(node, "hostile") as peer:
        assert isinstance(await register(peer, origin.url("/a.bin")), Registered)
        reply = await register(peer, origin.url("/b.bin"))
    assert isinstance(reply, TaskFailed) and reply.code == "busy"
    assert "1 origin fetches (--max-fetches)" in reply.message
    assert origin.stats["/b.bin"].requests == []  # the origin was never asked
    # dfget takes it as an unavailable supernode: the origin itself, or exit 5.
    with pytest.raises(SupernodeUnavailable, match="max-fetches"):
        await fetch(origin.url("/b.bin"), node, back_source=False)
    result = await fetch(origin.url("/b.bin"), node)
    assert result.supernode is None and result.from_source == len(data)
    gate.set()  # the running fetch ends: room again
    await until(lambda: node.node.cdn.active_fetches == 0)
    result = await fetch(origin.url("/b.bin"), node)
    assert result.supernode == node.address and Path(result.output).read_bytes() == data


async def test_an_endless_chunked_body_is_stopped_at_the_task_size_limit(
    start_supernode: StartSupernode, nursery: trio.Nursery
) -> None:
    origin = MiniOrigin(endless)
    await nursery.start(origin.serve)
    node = await start_supernode(max_task_size=6 * MiB)
    async with raw_peer(node, "p1") as one, raw_peer(node, "p2") as two:
        assert isinstance(await register(one, origin.url("/endless")), Registered)
        # The second requester of a body of unknown length without validators is
        # revalidated once it ends (only its whole length tells it from a login page):
        # here, once it failed, it is told as the first is.
        for peer, answer in ((one, None), (two, await register(two, origin.url("/endless")))):
            failed = answer or await next_message(peer, seconds=15)
            assert isinstance(failed, TaskFailed) and failed.code == "too_large"
            assert "--max-task-size" in failed.message
            task_id = failed.task_id
    assert not list(node.node.store.task_dir(task_id).glob("g*.pieces"))
    stopped = origin.body_bytes
    assert stopped < 8 * MiB
    await trio.sleep(0.5)
    assert origin.body_bytes - stopped <= MiB  # the connection was dropped


async def test_an_endless_chunked_body_is_stopped_at_the_store_quota(
    origin: FakeOrigin, start_supernode: StartSupernode, nursery: trio.Nursery
) -> None:
    endless_origin = MiniOrigin(endless)
    await nursery.start(endless_origin.serve)
    origin.add("/kept.bin", os.urandom(5 * MiB))
    node = await start_supernode(gc=GcPolicy(quota=10 * MiB), gc_interval=3600)
    async with raw_peer(node, "reader") as reader, raw_peer(node, "p1") as peer:
        # 5 MiB in use (its peer is in the swarm): the GC cannot make room.
        assert isinstance(await register(reader, origin.url("/kept.bin")), Registered)
        await until(lambda: all(t.settled for t in node.node.cdn.tasks.values()))
        assert isinstance(await register(peer, endless_origin.url("/endless")), Registered)
        failed = await next_message(peer, seconds=15)
    assert isinstance(failed, TaskFailed) and failed.code == "store_full"
    assert "--store-quota" in failed.message and "try again later" in failed.message
    assert not list(node.node.store.task_dir(failed.task_id).glob("g*.pieces"))
    assert node.node.cdn.usage() <= 10 * MiB
    disk = sum(p.stat().st_size for p in node.node.store.tasks_root.rglob("*.pieces"))
    assert disk <= 10 * MiB  # back under the quota, on disk too


async def test_a_known_length_is_refused_at_its_first_response_when_it_cannot_fit(
    origin: FakeOrigin, start_supernode: StartSupernode, fetch: Fetch
) -> None:
    big = os.urandom(12 * MiB)
    origin.add("/big.bin", big)
    gate = trio.Event()
    origin.add("/a.bin", os.urandom(6 * MiB), gate_after=MiB, gate=gate)
    origin.add("/b.bin", os.urandom(6 * MiB))
    node = await start_supernode(gc=GcPolicy(quota=10 * MiB), gc_interval=3600)
    async with raw_peer(node, "hostile") as peer:
        # Larger than the whole store: never (and dfget fetches it from the origin itself).
        reply = await register(peer, origin.url("/big.bin"))
        assert isinstance(reply, TaskFailed) and reply.code == "too_large", reply
        assert "--store-quota" in reply.message or "--max-task-size" in reply.message
        # A running fetch reserved 6 MiB: another 6 MiB do not fit now, try again later.
        assert isinstance(await register(peer, origin.url("/a.bin")), Registered)
        reply = await register(peer, origin.url("/b.bin"))
        assert isinstance(reply, TaskFailed) and reply.code == "store_full", reply
        assert "--store-quota" in reply.message and "try again later" in reply.message
    assert node.node.cdn.usage() <= 10 * MiB
    result = await fetch(origin.url("/big.bin"), node)
    assert result.supernode is None and Path(result.output).read_bytes() == big
    gate.set()
    await until(lambda: all(t.settled for t in node.node.cdn.tasks.values()))
    await until(lambda: not node.node.swarm.peers)
    # The first is idle now: it is evicted to make room, as the GC would.
    result = await fetch(origin.url("/b.bin"), node)
    assert result.supernode == node.address
    assert node.node.cdn.usage() <= 10 * MiB


async def test_failed_tasks_are_forgotten_and_their_generations_never_reused(
    origin: FakeOrigin,
    start_supernode: StartSupernode,
    fetch: Fetch,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("supernode.cdn.service.KEPT_GENERATIONS", 3)
    node = await start_supernode(failed_task_ttl=0.2)
    cdn = node.node.cdn
    for i in range(6):
        origin.add(f"/gone{i}.bin", b"x", status=404)
        with pytest.raises(OriginFailed):
            await fetch(origin.url(f"/gone{i}.bin"), node)
    await until(lambda: not cdn.tasks, seconds=5)  # forgotten, headers and all
    assert len(cdn._retired) <= 3  # what it remembers of them is bounded too
    # A forgotten id comes back: never on a generation number it had before.
    origin.add("/gone5.bin", b"back", status=None)  # remembered: generation 2
    origin.add("/gone0.bin", b"back", status=None)  # dropped: above any number handed out
    first = await fetch(origin.url("/gone5.bin"), node)
    assert cdn.tasks[first.task_id].generation == 2
    again = await fetch(origin.url("/gone0.bin"), node)
    assert cdn.tasks[again.task_id].generation == 3


async def test_a_file_changed_upstream_leaves_no_old_pieces_behind(
    start_supernode: StartSupernode, fetch: Fetch
) -> None:
    """An origin whose file changes (another ETag) and then fails every GET: the new
    generation fails, and the old one's pieces, which no peer can be handed any more,
    stayed on disk uncounted by the quota for the supernode's life (an admitted peer
    with an origin of its own could fill the disk past --store-quota that way)."""
    node = await start_supernode(failed_task_ttl=0.2)
    cdn = node.node.cdn
    data = os.urandom(2 * MiB + 7)
    changed = False

    def answer(seen: Seen) -> Answer:
        if not changed:
            return Answer(200, [("etag", '"v1"')], data)
        if "range" in seen.headers and "if-none-match" in seen.headers:  # a revalidation
            return Answer(206, [("etag", '"v2"'), ("content-range", f"bytes 0-0/{len(data)}")])
        return Answer(500)

    server = ScriptedOrigin(answer)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        url = server.url("/f.bin")
        first = await fetch(url, node)
        task_dir = cdn.store.task_dir(first.task_id)
        assert [path.name for path in task_dir.glob("g*.pieces")] == ["g1.pieces"]
        changed = True
        with pytest.raises(DfgetError):
            await fetch(url, node, back_source=False)
        nursery.cancel_scope.cancel()
    await until(lambda: first.task_id not in cdn.tasks, seconds=5)  # failed, forgotten
    assert not task_dir.exists() or not any(task_dir.iterdir())
    assert cdn.usage() == 0


async def test_peers_registering_a_changed_file_at_once_share_one_new_generation(
    origin: FakeOrigin, start_supernode: StartSupernode, fetch: Fetch, tmp_path: Path
) -> None:
    """Each of several Registers revalidating a changed file at once started a fetch of
    its own, all numbered generation 2, each with its own key, all writing one pieces
    file: the peers held keys that did not open what the CDN served (normal traffic
    during a rollout). They now share the one new generation."""
    node = await start_supernode()
    origin.add("/f.bin", os.urandom(4 * MiB))
    url = origin.url("/f.bin")
    await fetch(url, node, name="first")
    new = os.urandom(4 * MiB)
    origin.add("/f.bin", new)  # changed upstream: another ETag
    keys: dict[str, tuple[int, bytes]] = {}

    async def one(name: str) -> None:
        async with raw_peer(node, name) as peer:
            answer = await register(peer, url)
            assert isinstance(answer, Registered), answer
            context = wrap_context(answer.task_id, answer.generation)
            keys[name] = (answer.generation, unwrap_key(peer.key, answer.wrapped_key, context))

    async with trio.open_nursery() as nursery:
        for i in range(4):
            nursery.start_soon(one, f"peer-{i}")
    assert len(set(keys.values())) == 1 and next(iter(keys.values()))[0] == 2
    result = await fetch(url, node, name="fresh", back_source=False)
    assert Path(result.output).read_bytes() == new


async def test_a_slow_yes_about_the_old_generation_does_not_bring_it_back(
    nursery: trio.Nursery, start_supernode: StartSupernode
) -> None:
    """A revalidation that said 'still valid' (a slow backend with the old file) after
    another requester had started generation 2 of the changed file handed out
    generation 1 again, put it back in the swarm, and every peer of generation 2 was
    told stale (a second start over fails the download): it gets generation 2."""
    etag, body = ['"v1"'], [os.urandom(4 * MiB)]  # (what the origin has now)
    slow_once: list[bool] = []

    def answer(seen: Seen) -> Answer:
        if seen.headers.get("if-none-match") == '"v1"' and not slow_once:
            slow_once.append(True)
            return Answer(304, [("etag", '"v1"')], delay=1.0)  # the old backend, slow
        if seen.headers.get("if-none-match") == etag[0]:
            return Answer(304, [("etag", etag[0])])
        if "range" in seen.headers:
            headers = [("etag", etag[0]), ("content-range", f"bytes 0-0/{len(body[0])}")]
            return Answer(206, headers, body[0][:1])
        return Answer(200, [("etag", etag[0])], body[0])

    server = ScriptedOrigin(answer)
    await nursery.start(server.serve)
    node = await start_supernode()
    url = server.url("/f.bin")
    async with raw_peer(node, "first") as first:
        registered = await register(first, url)
        assert isinstance(registered, Registered)
    task_id = registered.task_id
    await until(lambda: node.node.cdn.tasks[task_id].settled)
    answers: dict[str, Message] = {}

    async def slow_one() -> None:
        async with raw_peer(node, "slow") as peer:
            answers["slow"] = await register(peer, url)

    async with raw_peer(node, "fresh") as fresh:
        nursery.start_soon(slow_one)
        await until(lambda: bool(slow_once))  # its revalidation is on its way
        etag[0], body[0] = '"v2"', os.urandom(4 * MiB)
        second = await register(fresh, url)
        assert isinstance(second, Registered) and second.generation == 2, second
        fresh.registered = second
        await until(lambda: "slow" in answers)
        slow = answers["slow"]
        assert isinstance(slow, Registered) and slow.generation == 2, slow
        assert node.node.swarm.generations[task_id] == 2
        await until(lambda: node.node.cdn.tasks[task_id].settled)
        assert (await ask(fresh, 4)).tasks


async def test_a_request_held_from_an_older_generation_leaves_the_new_one_alone(
    origin: FakeOrigin, start_supernode: StartSupernode
) -> None:
    """A piece-task request of generation 1 held for news, woken when generation 2 of
    the changed file entered the swarm: it wrote generation 1's CDN progress (12
    pieces of 12) into the scheduler's entry for the task id, generation 2's now, and
    every later request of generation 2 (20 pieces) was an internal error that ended
    its session. The old request is told its task is stale."""
    node = await start_supernode()
    origin.add("/f.bin", os.urandom(12 * MiB))
    url = origin.url("/f.bin")
    async with raw_peer(node, "peer-a") as a:
        first = await register(a, url)
        assert isinstance(first, Registered)
        a.registered = first
        while (await ask(a, 256)).tasks:  # its CDN slots taken
            pass
        held = PieceTasksRequest(task_id=first.task_id, generation=first.generation, want=256)
        await a.framed.send(held)  # held: nothing more for it now
        origin.add("/f.bin", os.urandom(20 * MiB))  # changed upstream, another length
        async with raw_peer(node, "peer-b") as b:
            second = await register(b, url)
            assert isinstance(second, Registered) and second.generation == 2
            b.registered = second
            stale = await next_message(a)
            assert isinstance(stale, TaskFailed) and stale.code == "stale", stale
            await until(lambda: node.node.cdn.tasks[second.task_id].settled)
            answer = await ask(b, 4)  # (an ErrorReply fails the assertion in `ask`)
            assert answer.generation == 2 and answer.tasks


async def test_a_peer_id_belongs_to_its_session_even_from_the_same_address(
    origin: FakeOrigin, start_supernode: StartSupernode
) -> None:
    """A second session from the victim's host that names its peer id and upload port
    (both learnt as its uploader or downloader) was taken for the same peer: it could
    take its tickets and, closing, took it out of the swarm with every task it had."""
    node = await start_supernode()
    origin.add("/v.bin", os.urandom(4 * MiB))
    origin.add("/other.bin", os.urandom(MiB))
    swarm = node.node.swarm
    async with raw_peer(node, "victim-id") as victim:
        first = await register(victim, origin.url("/v.bin"), upload_port=40001, upload_slots=4)
        assert isinstance(first, Registered)
        victim.registered = first
        async with raw_peer(node, "victim-id") as impostor:
            answer = await register(
                impostor, origin.url("/other.bin"), upload_port=40001, upload_slots=4
            )
            assert isinstance(answer, ErrorReply) and answer.code == "forbidden", answer
        await until(lambda: not any(t.settled is False for t in node.node.cdn.tasks.values()))
        assert "victim-id" in swarm.peers
        stats = swarm.scheduler.task_statistics(first.task_id)
        assert stats is not None and stats.peers == 1
        assert (await ask(victim, 4)).tasks


async def test_a_second_piece_task_request_while_one_is_pending_closes_the_session(
    origin: FakeOrigin, start_supernode: StartSupernode, fetch: Fetch
) -> None:
    gate = trio.Event()
    origin.add("/f.bin", os.urandom(2 * MiB), gate_after=0, gate=gate)  # nothing on the CDN
    node = await start_supernode()
    async with raw_peer(node, "hostile") as peer:
        assert isinstance(await register(peer, origin.url("/f.bin")), Registered)
        assert peer.registered is not None
        request = PieceTasksRequest(task_id=peer.registered.task_id, generation=1, want=4)
        await peer.framed.send(request)  # held: nothing to hand out yet (long poll)
        await peer.framed.send(request)  # and again, without waiting
        reply = await next_message(peer)  # not the long poll's answer: the refusal
        assert isinstance(reply, ErrorReply) and reply.code == "bad_request"
        assert "second piece-task request" in reply.message
        with pytest.raises(ConnectionLost):  # closed: no more answers
            await next_message(peer)
    gate.set()
    result = await fetch(origin.url("/f.bin"), node)  # dfget waits for each answer
    assert result.supernode == node.address


async def test_registering_one_task_twice_on_a_session_closes_it(
    origin: FakeOrigin, start_supernode: StartSupernode
) -> None:
    """Found by review: every Register, a repeat included, started a task pushing the
    task's progress that lived as long as the task: 20,000 pipelined Registers on one
    session took 66 MiB and 11,705 tasks from the supernode."""
    gate = trio.Event()
    origin.add("/f.bin", os.urandom(2 * MiB), gate_after=0, gate=gate)  # a running task
    node = await start_supernode()
    async with raw_peer(node, "hostile") as peer:
        assert isinstance(await register(peer, origin.url("/f.bin")), Registered)
        reply = await register(peer, origin.url("/f.bin"))
        assert isinstance(reply, ErrorReply) and reply.code == "bad_request"
        assert "second Register" in reply.message
        with pytest.raises(ConnectionLost):  # closed: no more answers
            await next_message(peer)
    gate.set()


# -- item 6: the scheduler needs corroboration ------------------------------------------------


async def seeded(
    origin: FakeOrigin, start_supernode: StartSupernode, fetch: Fetch, nursery: trio.Nursery
) -> tuple[RunningSupernode, str, str, bytes]:
    """A supernode and an honest dfget seeding all 8 pieces of /f.bin: (node, url,
    seeder's peer id, data)."""
    data = os.urandom(8 * MiB)
    origin.add("/f.bin", data)
    node = await start_supernode()
    url = origin.url("/f.bin")

    async def seeder() -> None:
        await fetch(url, node, name="seeder", peer=PeerOptions(listen=LOCAL, seed_for=60))

    nursery.start_soon(seeder)
    await until(lambda: bool(node.node.swarm.peers and node.node.cdn.tasks))
    seeder_id = next(iter(node.node.swarm.peers))
    task_id = next(iter(node.node.cdn.tasks))
    await until(lambda: all(node.node.scheduler.has(task_id, seeder_id, i) for i in range(8)))
    return node, url, seeder_id, data


async def blame(peer: RawPeer, uploader: str, outcome: str) -> int:
    """Get an assignment from `uploader` and report `outcome` for it; its piece."""
    for _ in range(20):
        for index, source, _, _, _ in (await ask(peer, 1)).tasks:
            if source == uploader:
                await report(peer, index, source, outcome)
                return index
            await report(peer, index, source, "cancelled")
    raise AssertionError(f"never assigned {uploader}")


async def test_one_hostile_downloader_cannot_blacklist_an_honest_uploader(
    origin: FakeOrigin, start_supernode: StartSupernode, fetch: Fetch, nursery: trio.Nursery
) -> None:
    node, url, seeder_id, data = await seeded(origin, start_supernode, fetch, nursery)
    swarm, scheduler = node.node.swarm, node.node.scheduler
    task_id = next(iter(node.node.cdn.tasks))

    # It says the honest seeder sent it a corrupt piece, then again under other ids of
    # its own; the supernode checks each time, and finds the piece intact.
    def reported() -> int:
        return scheduler.statistics().decisions_by_outcome["corrupt"]

    for n in range(3):
        async with raw_peer(node, f"hostile-{n}") as peer:
            assert isinstance(await register(peer, url), Registered)
            await blame(peer, seeder_id, "corrupt")
            await until_equal(reported, n + 1)  # the report is in
            stats = scheduler.task_statistics(task_id)
            assert stats is not None and stats.blacklisted == ()
            await until_equal(lambda: swarm.verdicts["clean"], n + 1)
    # Failures, three each from three ids of its one host: one witness. (A source that
    # failed a downloader is not its again before the back-off: shortened here.)
    scheduler.config = replace(scheduler.config, busy_backoff_seconds=0.05)
    for n in range(3):
        async with raw_peer(node, f"striker-{n}") as peer:
            assert isinstance(await register(peer, url), Registered)
            for _ in range(3):
                await blame(peer, seeder_id, "failed")
                await trio.sleep(0.06)
    stats = scheduler.task_statistics(task_id)
    assert stats is not None and stats.blacklisted == ()
    assert swarm.verdicts["corrupt"] == 0
    assert scheduler.statistics().blacklisted_sources == 0
    # The seeder still serves the honest.
    result = await fetch(url, node, name="honest")
    assert Path(result.output).read_bytes() == data and result.from_peers > 0


async def test_a_done_for_no_assignment_adds_no_holding(
    origin: FakeOrigin, start_supernode: StartSupernode, fetch: Fetch
) -> None:
    origin.add("/f.bin", os.urandom(4 * MiB))
    node = await start_supernode()
    result = await fetch(origin.url("/f.bin"), node)  # on the CDN, nobody in the swarm
    async with raw_peer(node, "liar") as peer:
        assert isinstance(
            await register(peer, origin.url("/f.bin"), upload_port=9, upload_slots=4), Registered
        )
        for index in range(4):
            await report(peer, index, "cdn", "done")
            await report(peer, index, "liar", "done")
        await trio.sleep(0.2)
        assert not any(node.node.scheduler.has(result.task_id, "liar", i) for i in range(4))
        stats = node.node.scheduler.task_statistics(result.task_id)
        assert stats is not None and stats.holders_min == 0


async def test_a_false_claim_of_pieces_is_caught_by_the_supernode_check(
    origin: FakeOrigin, start_supernode: StartSupernode, fetch: Fetch, nursery: trio.Nursery
) -> None:
    from proto.messages import PiecesHeld  # (new: a claim instead of unmatched DONEs)

    async def denies(stream: trio.SocketStream) -> None:  # "not held", whatever is asked
        framed = FramedStream(stream, Session(Side.SERVER))
        try:
            await server_handshake(framed, role="peer")
            request = (await framed.receive()).message
            assert isinstance(request, PieceRequest)
            reply = PieceRefused(task_id=request.task_id, index=request.index, code="not_held")
            await framed.send(reply)
        finally:
            await framed.aclose()

    listeners = await nursery.start(trio.serve_tcp, denies, 0)
    port = listeners[0].socket.getsockname()[1]
    origin.add("/f.bin", os.urandom(4 * MiB))
    node = await start_supernode()
    result = await fetch(origin.url("/f.bin"), node)
    async with raw_peer(node, "liar") as peer:
        reply = await register(peer, origin.url("/f.bin"), upload_port=port, upload_slots=4)
        assert isinstance(reply, Registered)
        await peer.framed.send(PiecesHeld.of(reply.task_id, reply.generation, [0, 1, 2, 3]))

        def caught() -> bool:
            stats = node.node.scheduler.task_statistics(result.task_id)
            return stats is not None and stats.blacklisted == ("liar",)

        await until(caught, seconds=10)
        assert node.node.swarm.verdicts["corrupt"] == 1


async def test_cdn_slots_are_capped_per_requester_and_freed_when_sent(
    origin: FakeOrigin, start_supernode: StartSupernode, fetch: Fetch
) -> None:
    origin.add("/f.bin", os.urandom(8 * MiB))
    node = await start_supernode(cdn_upload_slots=4)
    scheduler = node.node.scheduler
    result = await fetch(origin.url("/f.bin"), node)  # on the CDN; that peer left
    if "cdn_request_deadline" in {f.name for f in dataclasses.fields(scheduler.config)}:
        # 1 s instead of 10 s for a CDN piece nobody asks for (the base had 60 s flat)
        scheduler.config = dataclasses.replace(scheduler.config, cdn_request_deadline=1.0)
    async with raw_peer(node, "greedy") as greedy, raw_peer(node, "other") as other:
        assert isinstance(await register(greedy, origin.url("/f.bin")), Registered)
        assert isinstance(await register(other, origin.url("/f.bin")), Registered)
        taken = (await ask(greedy, 8)).tasks  # it never reports: half the CDN at most
        assert len(taken) == 2 and {t[1] for t in taken} == {"cdn"}
        assert len((await ask(other, 8)).tasks) == 2
        assert scheduler.statistics().cdn_uploads_in_flight == 4
        # greedy fetches one of its pieces and never reports it: the slot is free once
        # the CDN has sent it.
        assert greedy.registered is not None
        host, port = node.address.rsplit(":", 1)
        stream = await trio.open_tcp_stream(host, int(port))
        async with open_session(stream, role="peer", peer_id="greedy") as pieces:
            index = taken[0][0]
            request = PieceRequest(
                task_id=result.task_id,
                generation=greedy.registered.generation,
                index=index,
                ticket=greedy.registered.cdn_ticket,
            )
            await pieces.send(request)
            frame = await pieces.receive()
        assert isinstance(frame.message, PieceData)
        key = unwrap_key(
            greedy.key,
            greedy.registered.wrapped_key,
            wrap_context(result.task_id, greedy.registered.generation),
        )
        plain = PieceSealer(key, result.task_id).open(index, frame.payload)
        assert len(plain) == MiB
        await until(lambda: scheduler.statistics().cdn_uploads_in_flight == 3, seconds=2)
        assert scheduler.statistics().assignments_in_flight == 4  # its report is owed
        # The others were never asked for: free after the short deadline, not a minute.
        await trio.sleep(1.2)
        async with raw_peer(node, "late") as late:
            assert isinstance(await register(late, origin.url("/f.bin")), Registered)
            # Its share: the 4 slots among the 3 peers that miss pieces, all free again.
            assert len((await ask(late, 8)).tasks) == 1
            assert scheduler.statistics().cdn_uploads_in_flight == 1  # late's own


# -- item 8: a resumed fetch never reuses a (key, nonce) ------------------------------------


async def test_a_resumed_fetch_seals_under_a_new_key(
    nursery: trio.Nursery, start_supernode: StartSupernode, fetch: Fetch, tmp_path: Path
) -> None:
    slow = FakeOrigin(rate_limit=2 * MiB)
    await nursery.start(slow.serve)
    data = os.urandom(10 * MiB)
    slow.add("/f.bin", data, etag=True)
    node = await start_supernode(data_dir=tmp_path / "store")

    async def first() -> None:
        with pytest.raises(Exception):  # noqa: B017  # its supernode goes away
            await fetch(slow.url("/f.bin"), node, name="first", back_source=False)

    nursery.start_soon(first)
    await until(lambda: any(t.ready >= 3 for t in node.node.cdn.tasks.values()))
    (task_id,) = node.node.cdn.tasks
    await node.stop()
    partial = json.loads((node.node.store.task_dir(task_id) / "partial.json").read_text())
    kept = len(partial["digests"])
    # What the origin sends after the restart may differ, whatever its validators say:
    # the key that sealed the kept pieces must never seal anything else.
    again = await start_supernode(data_dir=tmp_path / "store")
    result = await fetch(slow.url("/f.bin"), again, name="second")
    assert Path(result.output).read_bytes() == data
    task = again.node.cdn.tasks[task_id]
    assert task.key.hex() != partial["key"] and task.generation > partial["generation"]
    store = again.node.store
    assert not store.pieces_path(task_id, partial["generation"]).exists()
    with open(store.pieces_path(task_id, task.generation), "rb") as pieces:
        for index in range(kept):  # the kept pieces, sealed again under the new key
            pieces.seek(index * (task.piece_size + 16))
            sealed = pieces.read(task.piece_size + 16)
            plain = task.sealer.open(index, sealed)
            assert piece_digest(plain) == bytes.fromhex(partial["digests"][index])
            assert plain == data[index * task.piece_size : (index + 1) * task.piece_size]


# -- revalidation: HEAD answered 405 ----------------------------------------------------------


async def test_an_origin_without_head_still_refuses_a_requester_without_credentials(
    start_supernode: StartSupernode, fetch: Fetch, nursery: trio.Nursery
) -> None:
    data = os.urandom(2 * MiB + 5)
    full_gets = []

    async def private(
        method: str, headers: dict[str, str]
    ) -> tuple[int, list[tuple[str, str]], object]:
        if method == "HEAD":
            return 405, [("Allow", "GET"), ("Content-Length", "0")], b""
        if headers.get("authorization") != "Bearer good":
            return 401, [("Content-Length", "0")], b""
        if headers.get("range") == "bytes=0-0":
            return (
                206,
                [("Content-Range", f"bytes 0-0/{len(data)}"), ("Content-Length", "1")],
                data[:1],
            )
        full_gets.append(1)
        return 200, [("Content-Length", str(len(data)))], data  # no validators at all

    origin = MiniOrigin(private)
    await nursery.start(origin.serve)
    node = await start_supernode()
    url = origin.url("/private.bin")
    auth = (("Authorization", "Bearer good"),)
    first = await fetch(url, node, headers=auth, name="owner")
    assert Path(first.output).read_bytes() == data
    with pytest.raises(OriginFailed) as refused:
        await fetch(url, node, name="stranger", back_source=False)
    assert refused.value.status == 401
    second = await fetch(url, node, headers=auth, name="owner-again")  # one byte asked
    assert Path(second.output).read_bytes() == data and second.supernode == node.address
    assert len(full_gets) == 1
    assert [m for m, _ in origin.requests].count("HEAD") == 2


# -- a result and the request right behind it: one scheduler call ---------------------------


async def result_and_request(peer: RawPeer, index: int, source: str, outcome: str) -> None:
    """A PieceResult and a PieceTasksRequest in one write: the supernode reads both at once."""
    assert peer.registered is not None
    task_id, generation = peer.registered.task_id, peer.registered.generation
    session = peer.framed.session
    data = session.send(PieceResult(task_id, generation, index, source, outcome), 0)
    data += session.send(PieceTasksRequest(task_id=task_id, generation=generation, want=1), 0)
    await peer.framed.stream.send_all(data)


async def test_a_result_with_a_request_behind_it_is_decided_in_one_call(
    origin: FakeOrigin, start_supernode: StartSupernode, fetch: Fetch
) -> None:
    origin.add("/f.bin", os.urandom(8 * MiB))
    node = await start_supernode()
    swarm, scheduler = node.node.swarm, node.node.scheduler
    result = await fetch(origin.url("/f.bin"), node)  # on the CDN; that peer left
    # (that download's own results and requests may have gone together too)
    before = swarm.decisions_with_reports
    async with raw_peer(node, "downloader") as peer:
        assert isinstance(await register(peer, origin.url("/f.bin")), Registered)
        [(index, source, _, _, _)] = (await ask(peer, 1)).tasks
        await result_and_request(peer, index, source, "done")
        answer = await next_message(peer)
        assert isinstance(answer, PieceTasks) and len(answer.tasks) == 1
        assert answer.tasks[0][0] != index
        assert swarm.decisions_with_reports == before + 1
        assert scheduler.has(result.task_id, "downloader", index)
        # A result for nothing assigned, with a request behind it: the request is
        # answered, the result changes nothing.
        missing = next(i for i in range(8) if i not in (index, answer.tasks[0][0]))
        await result_and_request(peer, missing, "cdn", "done")
        answer = await next_message(peer)
        assert isinstance(answer, PieceTasks) and len(answer.tasks) == 1
        assert swarm.decisions_with_reports == before + 2
        assert not scheduler.has(result.task_id, "downloader", missing)
        # A request already pending: the one behind the result is refused, as alone.
        gate = trio.Event()
        origin.add("/g.bin", os.urandom(2 * MiB), gate_after=0, gate=gate)
    async with raw_peer(node, "hostile") as hostile:
        assert isinstance(await register(hostile, origin.url("/g.bin")), Registered)
        assert hostile.registered is not None
        request = PieceTasksRequest(
            task_id=hostile.registered.task_id, generation=hostile.registered.generation, want=1
        )
        await hostile.framed.send(request)  # held: nothing on the CDN yet (long poll)
        await result_and_request(hostile, 0, "cdn", "done")
        reply = await next_message(hostile)
        assert isinstance(reply, ErrorReply) and "second piece-task request" in reply.message
        with pytest.raises(ConnectionLost):
            await next_message(hostile)
    assert swarm.decisions_with_reports == before + 2
    gate.set()


async def test_a_result_is_decided_alone_while_requests_are_held(
    origin: FakeOrigin, start_supernode: StartSupernode
) -> None:
    """Held requests take the slot a result frees first: its request behind it is then
    decided after them, as if it came alone (not in one call with the result)."""
    gate = trio.Event()
    origin.add("/h.bin", os.urandom(2 * MiB), gate_after=0, gate=gate)
    node = await start_supernode()
    swarm = node.node.swarm
    async with raw_peer(node, "waiting") as waiting, raw_peer(node, "reporter") as reporter:
        for peer in (waiting, reporter):
            assert isinstance(await register(peer, origin.url("/h.bin")), Registered)
        assert waiting.registered is not None
        task_id, generation = waiting.registered.task_id, waiting.registered.generation
        await waiting.framed.send(PieceTasksRequest(task_id, generation, want=1))
        await until(lambda: swarm.held(task_id), 5)  # nothing on the CDN yet: held
        await result_and_request(reporter, 0, "cdn", "done")
        await until(lambda: swarm.decisions >= 2, 5)  # the reporter's request, decided alone
        assert swarm.decisions_with_reports == 0
        gate.set()
        for peer in (waiting, reporter):
            answer = await next_message(peer)
            assert isinstance(answer, PieceTasks) and len(answer.tasks) == 1
    assert swarm.decisions_with_reports == 0
