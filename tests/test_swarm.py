"""The piece mesh on 127.0.0.1: peers fetch from each other, the CDN sends little."""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import trio
import trio.testing
from conftest import PYTHON, Fetch, RunningSupernode, StartSupernode, beside, cli_env, until

from common.io import piecework, threads
from common.io.threads import run_sync
from common.units import format_size
from dfget import outcomes
from dfget.errors import NotAdmitted, SupernodeNotProven
from dfget.options import PeerOptions
from dfget.outcomes import MAX_PIECE_FAILURES
from dfget.results import DownloadResult
from dfget.uploads import SharedTask
from proto import ErrorReply, PieceRefused, PieceRequest
from proto.errors import ErrorCode
from proto.io import open_session
from proto.pieces import MiB
from supernode.cdn.uploads import CdnUploads
from testkit.origin import FakeOrigin
from testkit.peers import CorruptingPieceServer, SlowPieceServer, TwoFacedPieceServer

if TYPE_CHECKING:
    from supernode.peers.swarm import Swarm

LOCAL = ("127.0.0.1", 0)


async def swarm(
    fetch: Fetch,
    url: str,
    node: RunningSupernode,
    peers: int,
    digest: str | None = None,
    **options: Any,
) -> list[DownloadResult]:
    """`peers` dfget downloads at once, each an uploading peer; their results."""
    results: list[DownloadResult] = []

    async def one(i: int) -> None:
        peer = PeerOptions(listen=LOCAL, **options)
        results.append(await fetch(url, node, name=f"peer{i}", peer=peer, digest=digest))

    async with trio.open_nursery() as nursery:
        for i in range(peers):
            nursery.start_soon(one, i)
    return results


@pytest.mark.parametrize(
    ("mode", "hashed"),
    [("inline", False), ("threads", False), ("inline", True)],
    ids=["on-the-loop", "in-threads", "hashed-whole"],
)
async def test_eight_peers_share_pieces_and_all_verify(
    origin: FakeOrigin,
    start_supernode: StartSupernode,
    fetch: Fetch,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    mode: str,
    hashed: bool,
) -> None:
    # Pieces stored and sealed where `common.io.piecework` puts them: on the event loop
    # (a machine whose CPUs are all busy) or in worker threads; both ways counted. (No
    # valve: a busy machine's waits must not move work off the loop here.)
    monkeypatch.setattr(piecework, "piece_work", piecework.PieceWork(mode))
    monkeypatch.setattr(piecework, "OFF_CPU_BUDGET", float("inf"))
    handed: list[str] = []

    async def counted(work: Callable[..., object], *args: object) -> object:
        handed.append(getattr(work, "__name__", ""))
        return await run_sync(work, *args)

    monkeypatch.setattr(piecework, "run_sync", counted)
    monkeypatch.setattr(threads, "run_sync", counted)
    caplog.set_level(logging.INFO, logger="supernode.peers.swarm")
    data = os.urandom(24 * MiB)
    origin.add("/big.bin", data)
    digest = f"sha256:{hashlib.sha256(data).hexdigest()}" if hashed else None
    # A CDN that uploads one piece at a time at 16 MiB/s: peers must help each other.
    node = await start_supernode(cdn_upload_slots=1, cdn_upload_limit=16 * MiB)
    url = origin.url("/big.bin")
    results = await swarm(fetch, url, node, peers=8, digest=digest, seed_for=0.5)
    assert len(results) == 8
    for result in results:
        assert Path(result.output).read_bytes() == data
        assert result.from_cdn + result.from_peers == len(data)
    from_peers = sum(r.from_peers for r in results)
    from_cdn = sum(r.from_cdn for r in results)
    assert from_peers > from_cdn  # most bytes came from other peers
    assert origin.stats["/big.bin"].from_start == 1
    # Every piece stored, and every piece a peer sent, went to a thread, or none did
    # (at least: a copy that lost a race to another, or was not taken, counts too); a
    # file hashed whole as it lands is stored in threads whatever the mode.
    stored, sealed = handed.count("store_piece"), handed.count("read_sealed")
    pieces = len(data) // MiB  # (1 MiB pieces for 24 MiB)
    assert stored >= 8 * pieces if mode == "threads" or hashed else stored == 0
    assert sealed >= from_peers // MiB if mode == "threads" else sealed == 0
    # Once the last peer has left, the supernode logs who sent the task's bytes.
    await until(lambda: "finished (its last peer left)" in caplog.text)
    line = next(r.getMessage() for r in caplog.records if "finished" in r.getMessage())
    assert f"{format_size(from_cdn)} from the CDN, {format_size(from_peers)} from peers" in line


async def test_a_corrupt_peer_is_caught_blacklisted_and_the_rest_finish(
    origin: FakeOrigin, start_supernode: StartSupernode, fetch: Fetch, nursery: trio.Nursery
) -> None:
    data = os.urandom(16 * MiB)
    origin.add("/f.bin", data)
    node = await start_supernode(cdn_upload_slots=1, cdn_upload_limit=8 * MiB)

    async def liar() -> None:
        bad = PeerOptions(listen=LOCAL, seed_for=30, server_factory=CorruptingPieceServer)
        await fetch(origin.url("/f.bin"), node, name="liar", peer=bad)

    nursery.start_soon(liar)
    await until(lambda: node.node.swarm.peers)  # the liar registered, alone so far
    [liar_id] = node.node.swarm.peers
    results = await swarm(fetch, origin.url("/f.bin"), node, peers=5)
    for result in results:
        assert Path(result.output).read_bytes() == data
    corrupt = sum(c.corrupt for r in results for c in r.sources.values())
    assert corrupt >= 1  # the liar was asked, and caught...
    # ...and it is the one the supernode blacklisted, no other (the honest peers share
    # one host: their failures alone can never blacklist one of them).
    [task_id] = node.node.cdn.tasks
    stats = node.node.scheduler.task_statistics(task_id)
    assert stats is not None and stats.blacklisted == (liar_id,)


async def test_admission_needs_the_cluster_token(
    origin: FakeOrigin, start_supernode: StartSupernode, fetch: Fetch
) -> None:
    origin.add("/f.bin", b"members only")
    node = await start_supernode(token=b"correct horse battery")
    with pytest.raises(NotAdmitted):
        await fetch(origin.url("/f.bin"), node, name="none")
    # With another token, dfget finds the supernode does not prove its own: it sends
    # nothing there and goes on without it (exit 9 if it cannot).
    with pytest.raises(SupernodeNotProven):
        await fetch(
            origin.url("/f.bin"),
            node,
            name="wrong",
            peer=PeerOptions(listen=LOCAL, token=b"wrong horse battery"),
            back_source=False,
        )
    ok = await fetch(
        origin.url("/f.bin"),
        node,
        name="member",
        peer=PeerOptions(listen=LOCAL, token=b"correct horse battery"),
    )
    assert Path(ok.output).read_bytes() == b"members only"


async def test_a_peer_refuses_requests_without_a_valid_ticket(
    origin: FakeOrigin, supernode: RunningSupernode, fetch: Fetch, nursery: trio.Nursery
) -> None:
    data = os.urandom(2 * MiB)
    origin.add("/f.bin", data)
    result: list[DownloadResult] = []

    async def seeder() -> None:
        result.append(
            await fetch(
                origin.url("/f.bin"),
                supernode,
                name="seed",
                peer=PeerOptions(listen=LOCAL, seed_for=30),
            )
        )

    nursery.start_soon(seeder)
    await until(lambda: supernode.node.swarm.peers and supernode.node.cdn.tasks)
    record = next(iter(supernode.node.swarm.peers.values()))
    task_id = next(iter(supernode.node.cdn.tasks))
    await until(lambda: supernode.node.scheduler.has(task_id, record.peer_id, 0))
    forged = supernode.node.swarm.ticket(task_id, "someone-else", record.peer_id)
    for ticket, peer_id in ((b"", "intruder"), (b"x" * 100, "intruder"), (forged, "intruder")):
        stream = await trio.open_tcp_stream(record.host, record.port)
        async with open_session(stream, role="peer", peer_id=peer_id) as framed:
            await framed.send(PieceRequest(task_id=task_id, generation=1, index=0, ticket=ticket))
            reply = (await framed.receive()).message
        assert isinstance(reply, PieceRefused | ErrorReply)
        assert reply.code == "bad_ticket"
    good = supernode.node.swarm.ticket(task_id, "friend", record.peer_id)
    stream = await trio.open_tcp_stream(record.host, record.port)
    async with open_session(stream, role="peer", peer_id="friend") as framed:
        await framed.send(PieceRequest(task_id=task_id, generation=1, index=0, ticket=good))
        frame = await framed.receive()
    assert frame.message.TAG == "piece_data" and len(frame.payload) == MiB + 16


async def test_a_peer_killed_mid_transfer_does_not_stop_the_others(
    origin: FakeOrigin, start_supernode: StartSupernode, fetch: Fetch, tmp_path: Path
) -> None:
    data = os.urandom(24 * MiB)
    origin.add("/f.bin", data)
    node = await start_supernode(cdn_upload_slots=1, cdn_upload_limit=8 * MiB)
    swarm_state, scheduler = node.node.swarm, node.node.scheduler
    argv = [PYTHON, "-m", "dfget", origin.url("/f.bin"), "-o", str(tmp_path / "victim")]
    argv += ["--supernode", node.address, "--peer-listen", "127.0.0.1:0", "--seed-for", "60"]
    async with trio.open_nursery() as nursery:
        victim = await nursery.start(
            partial(trio.run_process, argv, env=cli_env(), check=False, stderr=subprocess.DEVNULL)
        )
        # (the peer joins the swarm as its Register is read, the CDN's task follows)
        await until(lambda: swarm_state.peers and node.node.cdn.tasks)
        victim_id = next(iter(swarm_state.peers))
        task_id = next(iter(node.node.cdn.tasks))
        await until(lambda: sum(scheduler.has(task_id, victim_id, i) for i in range(24)) >= 4)
        results: list[DownloadResult] = []

        async def others() -> None:
            results.extend(await swarm(fetch, origin.url("/f.bin"), node, peers=4))

        nursery.start_soon(others)

        def victim_uploading() -> bool:
            stats = scheduler.peer_statistics(victim_id)
            return stats is not None and stats.uploads_in_flight > 0

        await until(victim_uploading)
        victim.kill()  # SIGKILL, mid-upload: the kernel closes its sockets
        await victim.wait()
        await until(lambda: victim_id not in swarm_state.peers)  # its pieces left at once
        assert scheduler.peer_statistics(victim_id) is None
    assert len(results) == 4
    for result in results:
        assert Path(result.output).read_bytes() == data
    assert origin.stats["/f.bin"].from_start == 1


class CountingSlowServer(SlowPieceServer):
    delay = 30.0  # far longer than the whole download takes from anyone else
    asked = 0

    async def piece_bytes(self, task: SharedTask, index: int) -> bytes | memoryview:
        CountingSlowServer.asked += 1
        return await super().piece_bytes(task, index)


async def test_work_moves_away_from_a_slow_peer(
    origin: FakeOrigin, start_supernode: StartSupernode, fetch: Fetch, nursery: trio.Nursery
) -> None:
    data = os.urandom(16 * MiB)
    origin.add("/f.bin", data)
    node = await start_supernode(cdn_upload_slots=4)
    scheduler = node.node.scheduler

    async def slow() -> None:
        peer = PeerOptions(listen=LOCAL, seed_for=60, server_factory=CountingSlowServer)
        await fetch(origin.url("/f.bin"), node, name="slow", peer=peer)

    nursery.start_soon(slow)
    await until(lambda: node.node.swarm.peers and node.node.cdn.tasks)
    slow_id = next(iter(node.node.swarm.peers))
    task_id = next(iter(node.node.cdn.tasks))
    await until(lambda: all(scheduler.has(task_id, slow_id, i) for i in range(16)))
    started = trio.current_time()
    results = await swarm(fetch, origin.url("/f.bin"), node, peers=4)
    elapsed = trio.current_time() - started
    for result in results:
        assert Path(result.output).read_bytes() == data
    # Pieces handed to the slow peer were fetched elsewhere (endgame) long before it
    # answered (waiting for it takes its whole delay), and once its slots were taken
    # nothing more was sent its way.
    assert elapsed < CountingSlowServer.delay
    assert 0 < CountingSlowServer.asked <= 4  # never more than its upload slots


async def test_a_piece_nobody_can_deliver_sends_dfget_back_to_the_source(
    origin: FakeOrigin,
    supernode: RunningSupernode,
    fetch: Fetch,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A CDN that keeps refusing one piece (as a broken disk would): after 8 failed
    transfers of that piece dfget stops waiting for this swarm and goes to the origin."""
    data = os.urandom(4 * MiB)
    origin.add("/f.bin", data)
    answer = CdnUploads._answer
    refused: list[int] = []

    async def refuse_piece_2(self: CdnUploads, request: PieceRequest) -> None:
        if request.index != 2:
            await answer(self, request)
            return
        refused.append(request.index)
        await self._refuse(request, ErrorCode.NOT_HELD, "cannot read it")

    monkeypatch.setattr(CdnUploads, "_answer", refuse_piece_2)
    with trio.fail_after(30):
        result = await fetch(origin.url("/f.bin"), supernode)
    assert Path(result.output).read_bytes() == data
    assert result.supernode is None and result.from_source == len(data)
    assert len(refused) == MAX_PIECE_FAILURES
    assert "piece 2 failed 8 times" in caplog.text


async def test_peers_that_corrupt_a_piece_for_everyone_send_dfget_to_the_origin(
    origin: FakeOrigin,
    start_supernode: StartSupernode,
    fetch: Fetch,
    nursery: trio.Nursery,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Peers that serve the supernode's check good bytes and everyone else corrupt
    ones (never blacklisted: peer ids cost nothing): a piece that fails verification
    MAX_PIECE_FAILURES times from peers means this swarm cannot deliver it, as for
    any other failure: dfget goes on to the origin, where it ended with exit 4 and,
    for a daemon's download, its partial file dropped."""
    monkeypatch.setattr(outcomes, "MAX_PIECE_FAILURES", 2)
    data = os.urandom(MiB // 2)  # one piece
    origin.add("/f.bin", data)
    node = await start_supernode()
    liars = PeerOptions(listen=LOCAL, seed_for=60, server_factory=TwoFacedPieceServer)
    for name in ("liar1", "liar2"):
        nursery.start_soon(partial(fetch, origin.url("/f.bin"), node, name=name, peer=liars))

    def held_by_both() -> bool:
        stats = [node.node.scheduler.task_statistics(t) for t in node.node.cdn.tasks]
        return bool(stats) and stats[0] is not None and stats[0].holders_min == 2

    await until(held_by_both)
    with trio.fail_after(30):
        result = await fetch(origin.url("/f.bin"), node, name="victim")
    assert Path(result.output).read_bytes() == data
    assert result.supernode is None and result.from_source == len(data)


async def test_a_seeding_peer_outlives_its_supernode(
    origin: FakeOrigin,
    start_supernode: StartSupernode,
    fetch: Fetch,
    nursery: trio.Nursery,
    tmp_path: Path,
) -> None:
    """The download is done: losing the supernode while seeding ends the seeding, not
    in an error."""
    data = os.urandom(2 * MiB)
    origin.add("/f.bin", data)
    node = await start_supernode()
    peer = PeerOptions(listen=LOCAL, seed_for=600)
    seeder = beside(nursery, lambda: fetch(origin.url("/f.bin"), node, name="seed", peer=peer))
    await until((tmp_path / "downloads" / "seed").exists)  # committed: now seeding
    with trio.fail_after(10):
        await node.stop()
        result = await seeder.result()
    assert Path(result.output).read_bytes() == data
    assert result.from_cdn == len(data)


async def test_finished_peers_leave_no_assignment_behind(
    origin: FakeOrigin,
    start_supernode: StartSupernode,
    fetch: Fetch,
    nursery: trio.Nursery,
    tmp_path: Path,
) -> None:
    """Copies still in flight when a download completes (endgame duplicates, late
    answers) are reported cancelled at once, so no upload slot stays taken: with one
    CDN slot, a leaked CDN assignment would stall every later download for a minute."""
    data = os.urandom(16 * MiB)
    origin.add("/f.bin", data)
    node = await start_supernode(cdn_upload_slots=1, cdn_upload_limit=32 * MiB)
    scheduler = node.node.scheduler
    for i in range(6):
        peer = PeerOptions(listen=LOCAL, seed_for=60)
        nursery.start_soon(partial(fetch, origin.url("/f.bin"), node, name=f"p{i}", peer=peer))
    outputs = [tmp_path / "downloads" / f"p{i}" for i in range(6)]
    await until(lambda: all(path.exists() for path in outputs))
    await until(lambda: scheduler.statistics().assignments_in_flight == 0)  # not a minute
    assert scheduler.statistics().cdn_uploads_in_flight == 0
    for path in outputs:
        assert path.read_bytes() == data


def test_reporters_are_grouped_by_host() -> None:
    """Peer ids cost nothing: the scheduler counts a host (an IPv6 /64) as one witness."""
    from supernode.peers.swarm import reporter_group

    assert reporter_group("10.0.0.7") == "10.0.0.7"
    assert reporter_group("::ffff:10.0.0.7") == "10.0.0.7"
    assert reporter_group("2001:db8:1:2::7") == reporter_group("2001:db8:1:2:ffff::1")
    assert reporter_group("2001:db8:1:2::7") == "2001:db8:1:2::/64"
    assert reporter_group("2001:db8:1:3::7") != reporter_group("2001:db8:1:2::7")
    assert reporter_group("") == ""


def test_a_claim_of_pieces_round_trips_as_a_bitfield() -> None:
    from proto.frames import FrameDecoder, encode
    from proto.messages import PiecesHeld

    claim = PiecesHeld.of("0" * 64, 3, [9, 2, 2, 700, 65_536 + 2])  # the last: too far
    assert claim.start == 2 and claim.indexes() == [2, 9, 700]
    decoder = FrameDecoder()
    decoder.receive_data(encode(claim))
    frame = decoder.next_frame()
    assert frame is not None and frame.message == claim
    with pytest.raises(ValueError):
        PiecesHeld("0" * 64, 3, 0, b"").check()


async def test_news_of_a_freed_slot_goes_to_the_oldest_held_request_and_on() -> None:
    """A herd of thousands asking again at every report costs the supernode a core: once
    more than FEW_HELD wait, news of one freed slot wakes the request held longest, and
    one that cannot use it passes it on to the next, NEWS_WAKES requests in all; a
    request that stops waiting leaves the queue; news that may change many answers
    wakes them all."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from supernode.peers.swarm import FEW_HELD, NEWS_WAKES, Swarm
    from supernode.scheduler import Scheduler

    node = Swarm(Scheduler(), Ed25519PrivateKey.generate())
    task_id = "a" * 64
    woken: list[int] = []
    useless: set[int] = set()  # requests the news brings nothing: they pass it on
    gone = trio.CancelScope()

    async def held(i: int, scope: trio.CancelScope | None = None) -> None:
        with scope or trio.CancelScope():
            relay = await node.wait_news(task_id)
            woken.append(i)
            if i in useless:
                node.pass_on(task_id, relay)

    count = FEW_HELD + NEWS_WAKES + 2  # one stops waiting, one takes the first news
    async with trio.open_nursery() as nursery:
        for i in range(count):
            nursery.start_soon(held, i, gone if i == 1 else None)
            await trio.testing.wait_all_tasks_blocked()
        gone.cancel()  # request 1 stops waiting (its long poll ended): it takes no wake-up
        await trio.testing.wait_all_tasks_blocked()
        node.cdn_upload_finished(task_id, "peer", 0)  # one CDN slot is free
        await trio.testing.wait_all_tasks_blocked()
        assert woken == [0]  # the oldest, and it could use it
        woken.clear()
        useless.update(range(count))  # nobody can use the next: it goes on, oldest first
        node.cdn_upload_finished(task_id, "peer", 1)
        await trio.testing.wait_all_tasks_blocked()
        assert woken == list(range(2, 2 + NEWS_WAKES))
        woken.clear()
        node.cdn_upload_finished(task_id, "peer", 2)  # FEW_HELD left: all of them wake
        await trio.testing.wait_all_tasks_blocked()
        assert sorted(woken) == list(range(2 + NEWS_WAKES, count))
        useless.clear()
        for i in range(count):
            nursery.start_soon(held, i)
            await trio.testing.wait_all_tasks_blocked()
        woken.clear()
        node.claim("peer", task_id, [0], now=trio.current_time())  # pieces: wake them all
    assert sorted(woken) == list(range(count))
    assert not node._waiting  # nothing left behind for a task nobody waits on
    assert not node._relays


async def test_a_peer_joining_wakes_as_few_held_requests_as_a_freed_slot() -> None:
    """A peer that joins holds no piece and frees no slot. With thousands joining over a
    window, waking every held request at each join had the scheduler answer millions of
    requests with nothing (bench/simulate.py --join-window 30: 21 M empty assigns, most
    of its time): once more than FEW_HELD wait, a join wakes only the request held
    longest, as news of a freed slot does; while few wait, all of them."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from supernode.cdn.task import CdnTask, TaskSpec
    from supernode.peers.swarm import FEW_HELD, Swarm
    from supernode.scheduler import Scheduler

    node = Swarm(Scheduler(), Ed25519PrivateKey.generate())
    task = CdnTask(TaskSpec.from_request("http://127.0.0.1:9/file", ()), 1)
    woken: list[int] = []
    count = FEW_HELD + 1
    async with trio.open_nursery() as nursery:
        await hold_in_order(nursery, node, task.task_id, range(count), woken)
        node.enter(node.join("joiner-1", "127.0.0.2", 4000, 8), task, trio.current_time())
        await trio.testing.wait_all_tasks_blocked()
        assert woken == [0]  # the oldest, and only it (it may pass the news on)
        woken.clear()
        node.enter(node.join("joiner-2", "127.0.0.3", 4000, 8), task, trio.current_time())
        await trio.testing.wait_all_tasks_blocked()  # FEW_HELD left: all of them wake
        assert sorted(woken) == list(range(1, count))
    assert not node._waiting and not node._relays


async def test_a_piece_landing_on_the_cdn_wakes_as_few_held_requests_as_a_freed_slot() -> None:
    """The CDN sends each piece about once: one request takes a new piece. Every held
    request waited on the CDN task's change as well, and at 10,000 simulated peers each
    of 128 pieces woke them all (a fifth of the assigns that found nothing). Once more
    than FEW_HELD wait, a piece landing wakes the request held longest (which may pass
    it on); the fetch ending wakes them all; a generation the swarm left wakes nobody."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from supernode.cdn.task import CdnTask, TaskSpec
    from supernode.errors import SupernodeError
    from supernode.peers.swarm import FEW_HELD, Swarm
    from supernode.scheduler import Scheduler

    node = Swarm(Scheduler(), Ed25519PrivateKey.generate())
    spec = TaskSpec.from_request("http://127.0.0.1:9/file", ())
    task = CdnTask(spec, 1)
    node.enter(node.join("peer", "127.0.0.2", 4000, 8), task, trio.current_time())
    node.enter(node.join("peer-2", "127.0.0.3", 4000, 8), task, trio.current_time())
    woken: list[int] = []
    count = FEW_HELD + 2
    async with trio.open_nursery() as nursery:
        await hold_in_order(nursery, node, task.task_id, range(count), woken)
        task.add_piece(b"\0" * 32, 1024)
        await trio.testing.wait_all_tasks_blocked()
        assert woken == [0]  # the oldest, and only it
        task.add_piece(b"\1" * 32, 1024)
        await trio.testing.wait_all_tasks_blocked()
        assert woken == [0, 1]
        woken.clear()
        task.finish(2048)  # the end of the fetch may change every answer
        await trio.testing.wait_all_tasks_blocked()
        assert sorted(woken) == list(range(2, count))
        # A newer generation replaces this one: the old one's changes wake nobody.
        newer = CdnTask(spec, 2)
        node.enter(node.join("peer-3", "127.0.0.4", 4000, 8), newer, trio.current_time())
        woken.clear()
        await hold_in_order(nursery, node, task.task_id, [count], woken)
        task.fail(SupernodeError("gone"))
        await trio.testing.wait_all_tasks_blocked()
        assert woken == []
        newer.add_piece(b"\2" * 32, 1024)  # (few held: the piece wakes all of them)
        await trio.testing.wait_all_tasks_blocked()
        assert woken == [count]
    assert not node._waiting and not node._relays


async def hold_in_order(
    nursery: trio.Nursery, node: Swarm, task_id: str, indexes: Iterable[int], woken: list[int]
) -> None:
    """A request held for news of the task for each of `indexes`, oldest first; each
    appends its index to `woken` when news wakes it (`Swarm.wait_news`)."""

    async def held(i: int) -> None:
        await node.wait_news(task_id)
        woken.append(i)

    for i in indexes:
        nursery.start_soon(held, i)
        await trio.testing.wait_all_tasks_blocked()


async def test_more_peers_than_few_held_all_finish_while_the_cdn_still_fetches(
    origin: FakeOrigin, start_supernode: StartSupernode, fetch: Fetch, nursery: trio.Nursery
) -> None:
    """Past FEW_HELD held requests, news (a piece landing on the CDN, a freed slot, a
    join) wakes the request held longest, which passes it on if it cannot use it: with
    more peers than that waiting on a slow origin, every peer still finishes, with the
    origin's file fetched once."""
    from supernode.peers.swarm import FEW_HELD

    data = os.urandom(4 * MiB)
    origin.add("/f.bin", data, rate=2 * MiB)  # the CDN's fetch takes about 2 s
    node = await start_supernode(cdn_upload_slots=2)
    swarm_ = node.node.swarm
    most_held = 0

    async def watch() -> None:
        nonlocal most_held
        while True:
            most_held = max([most_held, *(len(held) for held in swarm_._waiting.values())])
            await trio.sleep(0.005)

    nursery.start_soon(watch)
    peers = FEW_HELD + 16
    results = await swarm(fetch, origin.url("/f.bin"), node, peers=peers, seed_for=0.5)
    assert len(results) == peers
    for result in results:
        assert Path(result.output).read_bytes() == data
    assert most_held > FEW_HELD  # (the path under test was taken)
    assert origin.stats["/f.bin"].from_start == 1


async def test_a_peer_that_seeds_less_than_leaves_soon_is_scheduled_as_leaving(
    origin: FakeOrigin, start_supernode: StartSupernode, fetch: Fetch, nursery: trio.Nursery
) -> None:
    """dfget's Register says whether it leaves at its end (it seeds under LEAVES_SOON
    seconds): the scheduler hands such a peer no rare piece near its end while others
    would keep it (test_scheduler.py)."""
    from proto.messages import LEAVES_SOON

    data = os.urandom(4 * MiB)
    origin.add("/f.bin", data, rate=4 * MiB)  # the download lasts about a second
    node = await start_supernode()
    seen: dict[str, bool] = {}

    async def watch() -> None:
        while True:
            for task in node.node.swarm.scheduler._ledger.tasks.values():
                seen.update((peer_id, m.leaves) for peer_id, m in task.members.items())
            await trio.sleep(0.005)

    nursery.start_soon(watch)
    url = origin.url("/f.bin")
    staying = PeerOptions(listen=LOCAL, seed_for=LEAVES_SOON)  # (seeds on: cancelled at the end)
    nursery.start_soon(partial(fetch, url, node, name="stays", peer=staying))
    result = await fetch(url, node, name="leaves", peer=PeerOptions(listen=LOCAL, seed_for=0))
    assert Path(result.output).read_bytes() == data
    await until(lambda: len(seen) == 2)
    assert sorted(seen.values()) == [False, True]


async def test_a_peer_leaving_wakes_as_few_held_requests_as_a_freed_slot() -> None:
    """In a rollout of plain dfget (--seed-for 0) each peer leaves as it completes; a
    leave frees only the slots of the leaver's own downloads in flight. Waking every
    held request at each leave had the simulated scheduler answer millions of requests
    with nothing (bench/simulate.py --leave-after 0): once more than FEW_HELD wait, a
    leave wakes the request held longest (which may pass it on); while few wait, all."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from supernode.cdn.task import CdnTask, TaskSpec
    from supernode.peers.swarm import FEW_HELD, Swarm
    from supernode.scheduler import Scheduler

    node = Swarm(Scheduler(), Ed25519PrivateKey.generate())
    task = CdnTask(TaskSpec.from_request("http://127.0.0.1:9/file", ()), 1)
    for name in ("stays", "leaves-1", "leaves-2"):
        node.enter(node.join(name, "127.0.0.2", 4000, 8), task, trio.current_time())
    woken: list[int] = []
    count = FEW_HELD + 1
    async with trio.open_nursery() as nursery:
        await hold_in_order(nursery, node, task.task_id, range(count), woken)
        node.leave("leaves-1", trio.current_time())
        await trio.testing.wait_all_tasks_blocked()
        assert woken == [0]  # the oldest, and only it
        node.leave("leaves-2", trio.current_time())  # FEW_HELD left: all of them wake
        await trio.testing.wait_all_tasks_blocked()
        assert sorted(woken) == list(range(count))
    assert "stays" in node.peers and not node._waiting and not node._relays


async def test_a_peer_that_leaves_finishes_its_uploads_in_flight(
    origin: FakeOrigin, start_supernode: StartSupernode, fetch: Fetch
) -> None:
    """dfget without --seed-for leaves the swarm at its last piece, but ends the uploads
    it has in flight before it exits (for at most FINISH_UPLOADS): none is cut off
    half-way, to be fetched again from elsewhere."""
    data = os.urandom(8 * MiB)
    origin.add("/f.bin", data)
    # One CDN slot at 4 MiB/s: the peers fetch much from each other; the leaver's
    # uploads take half a second each, so that some are in flight at its last piece.
    node = await start_supernode(cdn_upload_slots=1, cdn_upload_limit=4 * MiB)
    LeaversServer.servers.clear()
    url = origin.url("/f.bin")
    for _ in range(10):  # (until the leaver had uploads in flight at its end: most runs)
        async with trio.open_nursery() as nursery:
            leaver = PeerOptions(listen=LOCAL, server_factory=LeaversServer)
            nursery.start_soon(partial(fetch, url, node, peer=leaver))
            other = PeerOptions(listen=LOCAL, seed_for=1.0)
            nursery.start_soon(partial(fetch, url, node, peer=other))
        if LeaversServer.servers[-1].in_flight_at_end:
            break
    server = LeaversServer.servers[-1]
    assert server.in_flight_at_end > 0
    assert server.cut == 0  # none was cancelled half-way as the peer exited


class LeaversServer(SlowPieceServer):
    """Uploads at half a second a piece; counts those in flight when its peer, done,
    waits for them, and those cancelled half-way (as the peer exits)."""

    delay = 0.5
    servers: list[LeaversServer] = []

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.in_flight_at_end = 0
        self.cut = 0
        self.servers.append(self)

    async def piece_bytes(self, task: SharedTask, index: int) -> bytes | memoryview:
        try:
            return await super().piece_bytes(task, index)
        except trio.Cancelled:
            self.cut += 1
            raise

    async def wait_idle(self) -> None:
        self.in_flight_at_end = self.uploading
        await super().wait_idle()


def test_an_older_generation_never_enters_the_swarm_again() -> None:
    """A generation handed out while a newer one entered (a requester's revalidation
    that raced another's): back in the swarm, it made every peer of the newer one
    stale. It is refused (the peer registers again)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from supernode.cdn.task import CdnTask, TaskSpec
    from supernode.errors import TaskSuperseded
    from supernode.peers.swarm import Swarm
    from supernode.scheduler import Scheduler

    node = Swarm(Scheduler(), Ed25519PrivateKey.generate())
    spec = TaskSpec.from_request("http://127.0.0.1:9/file", ())
    old, new = CdnTask(spec, 1), CdnTask(spec, 2)
    node.enter(node.join("peer", "127.0.0.2", 4000, 8), new, 0.0)
    with pytest.raises(TaskSuperseded):
        node.enter(node.join("late", "127.0.0.3", 4000, 8), old, 0.0)
    assert node.generations[spec.task_id] == 2 and node.current(new)
    # One the CDN dropped since (failed, evicted) is no reason to refuse what it gives
    # now, whatever its number (forgotten ids may come back numbered lower).
    new.fail(TaskSuperseded("evicted"))
    again = CdnTask(spec, 1)
    node.enter(node.join("later", "127.0.0.4", 4000, 8), again, 0.0)
    assert node.current(again)
