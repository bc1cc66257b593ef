"""A small file's download in few passes through the scheduler (issue 17): a one-piece
file is fetched in the download's own task once the answer to its Register's want is
in (any other answer, or a failed first transfer, goes the general way); its last
piece is stored and the file published in one worker thread (`common.io.threads`);
the daemon's answer waits for the file with a condition (`Blob.wait_until`) and
passes the descriptor at once when the socket takes it; a line's news already in is
taken without a pass, yet others still run.
"""

from __future__ import annotations

import array
import contextvars
import gc
import hashlib
import os
import socket
import threading
import time
import weakref
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
import trio
from conftest import Fetch, RunningSupernode, StartSupernode, beside, until

import dfget.peer
import dfget.sources
import dfget.transfers
from common.io import threads
from dfdaemon.blob import Blob
from dfdaemon.bodies import finished_small, length_known
from dfdaemon.httpconn import _sendmsg_now
from dfget.engine import download
from dfget.errors import IntegrityError, SupernodeUnavailable
from dfget.options import PeerOptions
from dfget.output import AtomicOutput
from dfget.request import DownloadRequest
from dfget.sessions import TaskLine, _Session
from dfget.sources import SourceLost
from dfget.writer import PieceWriter
from proto.io.eager import RUN_ON
from proto.messages import KeepAlive, PieceRequest
from proto.pieces import MiB, PieceSealer, piece_digest
from supernode.peers.control import LONG_POLL
from testkit.origin import FakeOrigin

GENERAL_WAY = ("Attempt._follow", "Attempt._fetch", "Transfers._transfer")  # tasks spawned


class Spawned(trio.abc.Instrument):
    def __init__(self) -> None:
        self.names: list[str] = []

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        self.names.append(task.name)

    def general(self) -> set[str]:
        return {way for way in GENERAL_WAY if any(name.endswith(way) for name in self.names)}


async def fetch_counting(fetch: Fetch, url: str, node: Any) -> tuple[Any, Spawned]:
    spawned = Spawned()
    trio.lowlevel.add_instrument(spawned)
    try:
        with trio.fail_after(20):
            result = await fetch(url, node)
    finally:
        trio.lowlevel.remove_instrument(spawned)
    return result, spawned


async def stored(
    origin: FakeOrigin, start_supernode: StartSupernode, fetch: Fetch, name: str, data: bytes
) -> RunningSupernode:
    """A supernode whose CDN holds `data`, served at `name` (fetched once through it)."""
    origin.add(name, data)
    node = await start_supernode()
    await fetch(origin.url(name), node)
    return node


async def test_a_one_piece_file_is_fetched_in_the_downloads_own_task(
    origin: FakeOrigin, start_supernode: StartSupernode, fetch: Fetch
) -> None:
    small, large = os.urandom(MiB), os.urandom(3 * MiB)
    origin.add("/small.bin", small)
    origin.add("/large.bin", large)
    node = await start_supernode()
    for name in ("small", "large"):  # (on the CDN: their tasks come with the answer)
        await fetch(origin.url(f"/{name}.bin"), node)

    result, spawned = await fetch_counting(fetch, origin.url("/small.bin"), node)
    assert Path(result.output).read_bytes() == small
    assert result.pieces == 1 and result.from_cdn == MiB
    assert spawned.general() == set(), spawned.names

    # Three pieces: the general way, as before.
    result, spawned = await fetch_counting(fetch, origin.url("/large.bin"), node)
    assert Path(result.output).read_bytes() == large
    assert spawned.general() == set(GENERAL_WAY)


async def test_a_seeding_download_holds_no_transfers_nor_their_buffers(
    origin: FakeOrigin,
    start_supernode: StartSupernode,
    fetch: Fetch,
    nursery: trio.Nursery,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A daemon seeds every file it fetched: a download kept alive for that must not keep
    its transfers (a piece-sized plaintext buffer each, and more for a file of many
    pieces), or a daemon that fetched 200 files of 1 MiB holds 200 MiB more."""
    files = {"/one.bin": os.urandom(MiB), "/three.bin": os.urandom(3 * MiB)}
    for name, data in files.items():
        origin.add(name, data)
    node = await start_supernode()
    for name in files:  # (on the CDN: the one-piece file then goes its own way)
        await fetch(origin.url(name), node)
    made: weakref.WeakSet[Any] = weakref.WeakSet()  # (this test's own, and no other's)
    names: list[str] = []
    for kind in (dfget.transfers.Transfers, dfget.peer.Attempt):
        monkeypatch.setattr(kind, "__init__", counted(kind.__init__, made, names))
    seeding = PeerOptions(listen=("127.0.0.1", 0), seed_for=60)

    def whole(path: Path, data: bytes) -> bool:
        return path.exists() and path.read_bytes() == data

    def seed(name: str) -> Callable[[], Awaitable[Any]]:
        return lambda: fetch(origin.url(name), node, name=name[1:], peer=seeding)

    for name, data in files.items():
        out = beside(nursery, seed(name))
        placed = tmp_path / "downloads" / name[1:]
        await until(partial(whole, placed, data))
    assert sorted(names) == ["Attempt", "Attempt", "Transfers", "Transfers"]
    attempts = [each for each in made if isinstance(each, dfget.peer.Attempt)]
    assert len(attempts) == 2  # both downloads done, and seeding
    # (the transfers are dropped as the download's end unwinds: a moment after)
    await until(lambda: all(attempt.transfers is None for attempt in attempts), 5)
    gc.collect()
    assert [type(each).__name__ for each in made] == ["Attempt", "Attempt"]
    assert not out.done.is_set()  # (still seeding)


def counted(
    init: Callable[..., None], made: weakref.WeakSet[Any], names: list[str]
) -> Callable[..., None]:
    """`init`, keeping a weak reference to each object it makes, and its class's name."""

    def counting(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        made.add(self)
        names.append(type(self).__name__)

    return counting


async def test_a_first_transfer_that_fails_goes_on_the_general_way(
    origin: FakeOrigin,
    start_supernode: StartSupernode,
    fetch: Fetch,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = os.urandom(MiB)
    node = await stored(origin, start_supernode, fetch, "/f.bin", data)
    real = dfget.sources.PieceConnection.fetch_timed
    calls = []

    async def lost_once(
        self: dfget.sources.PieceConnection, request: PieceRequest, **how: Any
    ) -> Any:
        calls.append(request.index)
        if len(calls) == 1:
            raise SourceLost("cut (test)")
        return await real(self, request, **how)

    monkeypatch.setattr(dfget.sources.PieceConnection, "fetch_timed", lost_once)
    result, spawned = await fetch_counting(fetch, origin.url("/f.bin"), node)
    assert Path(result.output).read_bytes() == data
    assert calls == [0, 0]
    assert {"Attempt._fetch", "Transfers._transfer"} <= spawned.general()
    # The failure was reported, so the scheduler gave the piece again.
    assert result.sources["cdn"].pieces == 1


# -- the last piece stored and the file published in one thread -------------------------


def slow_after_publish(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """The last piece's thread renames the file, then takes a while (sync_folder on a
    busy disk) before it returns."""
    published = threading.Event()
    real = PieceWriter.store_last_piece

    def store_last_piece(self: PieceWriter, *args: Any) -> int:
        size = real(self, *args)
        if self.output.published:
            published.set()
            time.sleep(0.5)
        return size

    monkeypatch.setattr(PieceWriter, "store_last_piece", store_last_piece)
    return published


def session_lost_when(published: threading.Event, monkeypatch: pytest.MonkeyPatch) -> None:
    """The control session breaks (the supernode restarts) while that thread runs: what
    `_follow` raises then (ConnectionLost, translated)."""
    real = dfget.peer.Attempt._follow
    lost: list[bool] = []

    async def _follow(self: Any, control: Any, book: Any) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(real, self, control, book)
            while not published.is_set() or lost:  # noqa: ASYNC110 (a worker thread's event)
                await trio.sleep(0.001)
            lost.append(True)
            raise SupernodeUnavailable("supernode lost (simulated)")

    monkeypatch.setattr(dfget.peer.Attempt, "_follow", _follow)


def last_piece_slower(monkeypatch: pytest.MonkeyPatch) -> None:
    real_fetch = dfget.sources.PieceConnection.fetch_timed

    async def fetch_piece(self: Any, request: Any, **how: Any) -> Any:
        if request.index == 2:  # the last to land (a slower source)
            await trio.sleep(0.2)
        return await real_fetch(self, request, **how)

    monkeypatch.setattr(dfget.sources.PieceConnection, "fetch_timed", fetch_piece)


@pytest.mark.parametrize("back_source", [False, True])
async def test_a_download_of_many_pieces_publishes_nothing_before_it_succeeds(
    origin: FakeOrigin,
    start_supernode: StartSupernode,
    fetch: Fetch,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    back_source: bool,
) -> None:
    # On the general way another task can fail while the last piece is stored (its
    # session lost): the output must still be a temp file then, or not there at all,
    # never a published file truncated for the fallback (found by review).
    data = os.urandom(3 * MiB)
    node = await stored(origin, start_supernode, fetch, "/f.bin", data)
    published = slow_after_publish(monkeypatch)
    session_lost_when(published, monkeypatch)
    last_piece_slower(monkeypatch)
    target = tmp_path / "cache" / "blob"
    target.parent.mkdir()
    request = DownloadRequest(
        url=origin.url("/f.bin"),
        output=target,
        supernodes=(node.address,),
        back_source=back_source,
        peer=PeerOptions(listen=("127.0.0.1", 0)),
    )
    sizes_seen = []
    error: BaseException | None = None
    with AtomicOutput(target, durable=True) as out:
        real_truncate = out.truncate

        def truncate(length: int) -> None:
            real_truncate(length)
            sizes_seen.append((length, target.exists() and target.stat().st_size))

        out.truncate = truncate  # type: ignore[method-assign]
        try:
            with trio.fail_after(20):
                await download(request, output=out)
        except Exception as exc:
            error = exc
    assert error is None or not target.exists(), "a failed download left its file published"
    assert (0, 0) not in sizes_seen, "the published file was truncated in place"
    if error is None:
        assert target.read_bytes() == data


async def test_a_published_output_whose_download_fails_is_not_left_in_place(
    tmp_path: Path,
) -> None:
    target = tmp_path / "blob"
    with pytest.raises(KeyError), AtomicOutput(target, durable=True) as out:
        out.write_at(0, b"bytes")
        out.publish()
        raise KeyError("cancelled before its commit")
    assert not target.exists() and not out.temp.exists()
    with AtomicOutput(target, durable=True) as out:
        out.write_at(0, b"bytes")
        out.publish()
        out.commit()
    assert target.read_bytes() == b"bytes"


async def test_an_empty_file_does_not_wait_for_the_answer_to_its_want(
    origin: FakeOrigin, start_supernode: StartSupernode, fetch: Fetch
) -> None:
    # Complete at its Registered: the answer to its want is held for news that never
    # comes (LONG_POLL), and the download must not wait for it (found by review).
    origin.add("/empty.bin", b"")
    node = await start_supernode()
    for _ in range(2):  # cold, then stored
        with trio.fail_after(LONG_POLL / 2):
            result = await fetch(origin.url("/empty.bin"), node)
        assert Path(result.output).read_bytes() == b"" and result.pieces == 0


async def test_a_one_piece_file_into_a_durable_output_takes_one_worker_thread(
    origin: FakeOrigin,
    start_supernode: StartSupernode,
    fetch: Fetch,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A daemon's cache (durable: fsynced, then renamed): the piece stored and the file
    # published in one pass through a worker thread, not one each.
    data = os.urandom(MiB)
    node = await stored(origin, start_supernode, fetch, "/f.bin", data)
    started = []
    real = trio.lowlevel.start_thread_soon

    def counted(*args: Any, **kwargs: Any) -> None:
        started.append(args[0])
        real(*args, **kwargs)

    monkeypatch.setattr(trio.lowlevel, "start_thread_soon", counted)
    target = tmp_path / "cache" / "blob"
    target.parent.mkdir()
    request = DownloadRequest(
        url=origin.url("/f.bin"),
        output=target,
        supernodes=(node.address,),
        peer=PeerOptions(listen=("127.0.0.1", 0)),
    )
    with AtomicOutput(target, durable=True) as out, trio.fail_after(20):
        result = await download(request, output=out)
    assert target.read_bytes() == data and result.pieces == 1
    assert len(started) == 1


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def sealed_piece(task_id: str, data: bytes) -> tuple[PieceSealer, bytearray]:
    sealer = PieceSealer(os.urandom(32), task_id)
    return sealer, bytearray(sealer.seal(0, data))


@pytest.mark.parametrize("named", [True, False])
async def test_the_last_piece_is_stored_and_published_in_one_thread(
    tmp_path: Path, named: bool
) -> None:
    data = os.urandom(4096)
    sealer, sealed = sealed_piece("t" * 64, data)
    target = tmp_path / "blob"
    with AtomicOutput(target, durable=True) as out:
        digest = sha256_digest(data) if named else None
        writer = PieceWriter(out, sealer, MiB, digest)
        scratch = bytearray(MiB)
        size = await threads.run_sync(
            writer.store_last_piece, 0, sealed, piece_digest(data), scratch
        )
        assert size == len(data)
        assert out.published and target.read_bytes() == data  # before the commit
        assert not out.temp.exists()
        out.commit()  # (closes it; nothing renamed twice)
    assert target.read_bytes() == data


async def test_a_whole_file_not_the_one_named_is_never_published(tmp_path: Path) -> None:
    data = os.urandom(4096)
    sealer, sealed = sealed_piece("t" * 64, data)
    target = tmp_path / "blob"
    with AtomicOutput(target, durable=True) as out:
        writer = PieceWriter(out, sealer, MiB, sha256_digest(b"other bytes"))
        await threads.run_sync(
            writer.store_last_piece, 0, sealed, piece_digest(data), bytearray(MiB)
        )
        assert not out.published and not target.exists()
        with pytest.raises(IntegrityError):
            writer.verify_whole()
    assert not target.exists() and not out.temp.exists()


async def test_two_copies_of_the_last_piece_publish_the_file_once(tmp_path: Path) -> None:
    # The endgame: two transfers of the last piece both land.
    data = os.urandom(64 * 1024)
    sealer, sealed = sealed_piece("t" * 64, data)
    target = tmp_path / "blob"
    with AtomicOutput(target, durable=True) as out:
        writer = PieceWriter(out, sealer, MiB, None)
        async with trio.open_nursery() as nursery:
            for _ in range(2):
                copy = bytearray(sealed)
                nursery.start_soon(
                    threads.run_sync,
                    writer.store_last_piece,
                    0,
                    copy,
                    piece_digest(data),
                    bytearray(MiB),
                )
        assert out.published
        out.commit()
    assert target.read_bytes() == data


# -- common.io.threads ------------------------------------------------------------------

LABEL: contextvars.ContextVar[str] = contextvars.ContextVar("label", default="none")


async def test_run_sync_returns_raises_and_carries_context_variables() -> None:
    LABEL.set("caller's")
    assert await threads.run_sync(lambda a, b: (a + b, LABEL.get()), 1, 2) == (3, "caller's")

    def fails() -> None:
        raise KeyError("in the thread")

    with pytest.raises(KeyError, match="in the thread"):
        await threads.run_sync(fails)
    assert trio.to_thread.current_default_thread_limiter().borrowed_tokens == 0


async def test_run_sync_takes_a_free_thread_without_a_checkpoint() -> None:
    # The point of it: one pass through the scheduler (the wait for the thread), where
    # trio.to_thread.run_sync makes two. Counted as the steps of the calling task.
    steps = {"ours": 0}
    me = trio.lowlevel.current_task()

    class Steps(trio.abc.Instrument):
        def before_task_step(self, task: trio.lowlevel.Task) -> None:
            if task is me:
                steps["ours"] += 1

    counter = Steps()
    trio.lowlevel.add_instrument(counter)
    try:
        await threads.run_sync(lambda: None)
        ours = steps["ours"]
        steps["ours"] = 0
        await trio.to_thread.run_sync(lambda: None)
        theirs = steps["ours"]
    finally:
        trio.lowlevel.remove_instrument(counter)
    assert ours == 1 and theirs == 2


async def test_run_sync_waits_its_turn_when_every_thread_is_taken() -> None:
    limiter = trio.to_thread.current_default_thread_limiter()
    before = limiter.total_tokens
    limiter.total_tokens = 1
    release = trio.Event()
    token = trio.lowlevel.current_trio_token()
    try:
        async with trio.open_nursery() as nursery:
            # (the first holds the only thread until told from the event loop)
            nursery.start_soon(
                threads.run_sync, lambda: trio.from_thread.run(release.wait, trio_token=token)
            )
            await trio.testing.wait_all_tasks_blocked()
            assert limiter.borrowed_tokens == 1
            second = []

            async def waits() -> None:
                second.append(await threads.run_sync(lambda: "ran"))

            nursery.start_soon(waits)
            await trio.testing.wait_all_tasks_blocked()
            assert second == [] and limiter.statistics().tasks_waiting == 1
            release.set()
        assert second == ["ran"] and limiter.borrowed_tokens == 0
    finally:
        limiter.total_tokens = before


async def test_run_sync_is_cancelled_only_once_its_thread_returns() -> None:
    finished = []

    def slow() -> None:
        time.sleep(0.2)
        finished.append(True)

    returned = False
    with trio.move_on_after(0.05) as scope:
        await threads.run_sync(slow)
        returned = True  # (as trio.to_thread.run_sync's: the next checkpoint raises)
        await trio.lowlevel.checkpoint()
    assert returned and scope.cancelled_caught and finished == [True]
    assert trio.to_thread.current_default_thread_limiter().borrowed_tokens == 0


# -- the daemon's answer waits with a condition --------------------------------------------


def blob(tmp_path: Path) -> Blob:
    return Blob(hex="a" * 64, path=tmp_path / "b")


async def test_a_small_files_answer_wakes_once_at_its_end(tmp_path: Path) -> None:
    one = blob(tmp_path)
    woken = []

    async def waits() -> None:
        woken.append(await finished_small(one, MiB))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waits)
        await trio.testing.wait_all_tasks_blocked()
        one.length = 4096
        one.notify()  # its length: still small, nothing to wake for
        await trio.testing.wait_all_tasks_blocked()
        assert woken == [] and len(one._until) == 1
        one.complete = True
        one.notify()
    assert woken == [True] and one._until == []


async def test_a_file_found_too_long_or_failed_wakes_its_answer(tmp_path: Path) -> None:
    long, failed = blob(tmp_path), blob(tmp_path)
    got: dict[str, object] = {}

    async def waits(name: str, which: Blob) -> None:
        try:
            got[name] = await finished_small(which, MiB)
        except Exception as exc:
            got[name] = exc

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waits, "long", long)
        nursery.start_soon(waits, "failed", failed)
        await trio.testing.wait_all_tasks_blocked()
        long.length = MiB + 1
        long.notify()
        failed.error = OSError("disk full")
        failed.notify()
    assert got["long"] is False
    assert "disk full" in str(got["failed"])


async def test_a_wait_given_up_leaves_no_condition_behind(tmp_path: Path) -> None:
    one = blob(tmp_path)
    with trio.move_on_after(0.01):
        await length_known(one)
    assert one._until == []
    one.length = 10
    await length_known(one)  # (holds already: at once)


# -- the descriptor passed at once -----------------------------------------------------------


def test_a_descriptor_goes_at_once_and_the_socket_stays_ours(tmp_path: Path) -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    passed = tmp_path / "f"
    passed.write_bytes(b"the file")
    fd = os.open(passed, os.O_RDONLY)
    try:
        ours.setblocking(False)
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]).tobytes())]
        assert _sendmsg_now(ours.fileno(), b"head", rights) == 4
        os.fstat(ours.fileno())  # (still open: the stand-in socket was detached)
        data, fds, _, _ = socket.recv_fds(theirs, 100, 1)
        assert data == b"head" and os.read(fds[0], 100) == b"the file"
        os.close(fds[0])
        # A full socket takes nothing: -1, and the caller waits trio's way.
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        with pytest.raises(BlockingIOError):
            while True:
                ours.send(b"x" * 65536)
        assert _sendmsg_now(ours.fileno(), b"head", rights) == -1
        os.fstat(ours.fileno())
        # Never a wait, whatever the process's default timeout (found by review).
        socket.setdefaulttimeout(2)
        try:
            started = time.monotonic()
            assert _sendmsg_now(ours.fileno(), b"head", rights) == -1
            assert time.monotonic() - started < 0.5
        finally:
            socket.setdefaulttimeout(None)
        assert _sendmsg_now(-1, b"head", rights) == -1  # (closed here)
    finally:
        os.close(fd)
        ours.close()
        theirs.close()


# -- a line's news taken at once, others still running -------------------------------------


async def test_news_already_in_is_taken_at_once_yet_others_run() -> None:
    session = _Session(("sn", (0, 0)), "peer", cast(Any, SimpleNamespace(welcome=None)))
    line = TaskLine(session, "t" * 64)
    count = 5 * RUN_ON
    for _ in range(count):
        line.inbox_in.send_nowait(KeepAlive())
    others = 0

    async def other() -> None:
        nonlocal others
        while True:
            others += 1
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(other)
        await trio.lowlevel.checkpoint()
        start = others
        for _ in range(count):
            await line.receive()
        ran = others - start
        nursery.cancel_scope.cancel()
    # Not once a message (that is the pass it saves), but every RUN_ON of them.
    assert count // RUN_ON - 1 <= ran <= count // RUN_ON + 1, ran


async def test_a_cancelled_receive_with_news_in_raises() -> None:
    # As trio's own receive: a cancelled download takes no more news (a supernode
    # keeping its inbox full would keep it going: found by review).
    session = _Session(("sn", (0, 0)), "peer", cast(Any, SimpleNamespace(welcome=None)))
    line = TaskLine(session, "t" * 64)
    line.inbox_in.send_nowait(KeepAlive())
    took = False
    with trio.CancelScope() as scope:
        scope.cancel()
        await line.receive()
        took = True
    assert not took and scope.cancelled_caught
