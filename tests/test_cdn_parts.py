"""The CDN seals pieces in parts: a fetch, an adopted task's repairs, a resumed fetch's
take-over and an adopted task's whole check hold at most `PART` bytes of a piece in a
buffer (pieces are 64 MiB for files over 8 GiB), and store exactly the bytes that
sealing each piece whole gives. `PART` is made small here so that 1 MiB pieces come in
many parts; one test keeps it and checks what a fetch of 64 MiB pieces holds."""

from __future__ import annotations

import gc
import hashlib
import logging
import tracemalloc
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio

from common.origins import OriginPolicy
from proto.pieces import TAG_SIZE, MiB, PieceSealer, piece_digest
from proto.taskid import task_id_for
from supernode.cdn import adopt, fetch, resume
from supernode.cdn.adopt import Adoption, adopted_task
from supernode.cdn.fetch import FetchPolicy, fetch_task
from supernode.cdn.origin import OriginClient
from supernode.cdn.response import Validators
from supernode.cdn.store import PartialMeta, Store
from supernode.cdn.task import CdnTask, TaskSpec
from supernode.errors import ContentMismatch, StoreError, TaskSuperseded
from testkit.origin import FakeOrigin

LOOPBACK = OriginPolicy(allow=["127.0.0.0/8"], deny=["0.0.0.0/0", "::/0"])
SMALL_PART = 64 * 1024
DATA = bytes(range(251)) * (14 * MiB // 4 // 251) + b"tail"  # 3.5 MiB and 4 bytes
SLOT = MiB + TAG_SIZE


@pytest.fixture
def small_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    for module in (fetch, adopt, resume):
        monkeypatch.setattr(module, "PART", SMALL_PART)


def pieces_of(data: bytes) -> list[bytes]:
    return [data[at : at + MiB] for at in range(0, len(data), MiB)]


def sealed_whole(key: bytes, task_id: str, data: bytes) -> bytes:
    sealer = PieceSealer(key, task_id)
    return b"".join(sealer.seal(index, piece) for index, piece in enumerate(pieces_of(data)))


def spec_for(url: str, digest: str | None = None) -> TaskSpec:
    return TaskSpec.from_request(url, (), digest=digest)


def with_origin(
    body: Callable[[FakeOrigin, OriginClient], Awaitable[None]], **fault: object
) -> None:
    async def main() -> None:
        origin = FakeOrigin()
        origin.add("/f.bin", DATA, **fault)
        client = OriginClient(policy=LOOPBACK, timeout=10)
        async with trio.open_nursery() as nursery:
            await nursery.start(origin.serve)
            try:
                with trio.fail_after(30):
                    await body(origin, client)
            finally:
                await client.aclose()
            nursery.cancel_scope.cancel()

    trio.run(main)


@pytest.mark.usefixtures("small_parts")
@pytest.mark.parametrize("cut", [None, MiB + 3 * SMALL_PART + 1000, 2 * MiB])
def test_a_fetch_in_parts_stores_each_piece_as_sealed_whole(
    tmp_path: Path, cut: int | None
) -> None:
    digest = "sha256:" + hashlib.sha256(DATA).hexdigest()
    store = Store(tmp_path / "store")

    async def body(origin: FakeOrigin, client: OriginClient) -> None:
        task = CdnTask(spec_for(origin.url("/f.bin"), digest), 1)
        meta = await fetch_task(task, client, store, FetchPolicy())
        assert meta is not None and meta.length == len(DATA)
        assert task.digests == [piece_digest(piece) for piece in pieces_of(DATA)]
        assert task.lengths == [len(piece) for piece in pieces_of(DATA)]
        written = store.pieces_path(task.task_id, 1).read_bytes()
        assert written == sealed_whole(task.key, task.task_id, DATA)
        gets = [method for method, _ in origin.stats["/f.bin"].requests if method == "GET"]
        assert len(gets) == (1 if cut is None else 2)  # (the cut one resumed)

    with_origin(body, drop_after=cut)


def test_a_fetch_of_64_mib_pieces_holds_parts_not_pieces(tmp_path: Path) -> None:
    size = 9 << 30  # a file over 8 GiB: 64 MiB pieces (sparse: nothing is written)
    big = tmp_path / "big.bin"
    with big.open("wb") as file:
        file.truncate(size)
    store = Store(tmp_path / "store")

    async def main() -> None:
        origin, gate = FakeOrigin(), trio.Event()
        origin.add_file("/big.bin", big, gate_after=24 * MiB, gate=gate)
        client = OriginClient(policy=LOOPBACK, timeout=10)
        async with trio.open_nursery() as nursery:
            await nursery.start(origin.serve)
            task = CdnTask(spec_for(origin.url("/big.bin")), 1)
            tracemalloc.start()
            try:
                nursery.start_soon(fetch_task, task, client, store, FetchPolicy())
                with trio.fail_after(30):
                    while task.bytes_from_origin < 24 * MiB:  # noqa: ASYNC110 (no event)
                        await trio.sleep(0.01)
                    await trio.sleep(0.2)  # (the parts so far sealed and written)
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            assert task.piece_size == 64 * MiB
            # Four parts of 4 MiB at most, where it held four pieces: 256 MiB.
            assert peak < 40 * MiB, f"{peak / MiB:.0f} MiB"
            nursery.cancel_scope.cancel()
        await client.aclose()

    trio.run(main)


@pytest.mark.usefixtures("small_parts")
def test_adopted_pieces_are_checked_whole_before_they_count(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    digests = tuple(piece_digest(piece) for piece in pieces_of(DATA))

    async def body(origin: FakeOrigin, client: OriginClient) -> None:
        url = origin.url("/f.bin")
        validators = Validators(origin.etag("/f.bin"), None)
        adoption = Adoption("old", 1, len(DATA), MiB, validators, digests)
        task = adopted_task(spec_for(url), adoption, 2)
        pieces = store.create_pieces(task.task_id, 2, MiB)
        task.begin(len(DATA), MiB, validators, pieces)
        await adopt.fill(task, client, None, 0b1101)  # pieces 0, 2 and the short 3
        assert task.on_disk == 0b1101
        written = store.pieces_path(task.task_id, 2).read_bytes()
        whole = sealed_whole(task.key, task.task_id, DATA)
        for index in (0, 2, 3):
            assert (
                written[index * SLOT : (index + 1) * SLOT]
                == whole[index * SLOT : (index + 1) * SLOT]
            )
        # A recorded digest that the origin's piece no longer matches: the task is
        # superseded, and the piece never counts (nor gets its tag).
        lying = Adoption("old", 1, len(DATA), MiB, validators, (digests[0], bytes(32)))
        task = adopted_task(spec_for(url), lying, 3)
        pieces = store.create_pieces(task.task_id, 3, MiB)
        task.begin(len(DATA), MiB, validators, pieces)
        with pytest.raises(TaskSuperseded, match="piece 1 does not match"):
            await adopt.fill(task, client, None, 0b10)
        assert task.on_disk == 0
        tag_at = SLOT + MiB
        assert store.pieces_path(task.task_id, 3).read_bytes()[tag_at:] == b""

    with_origin(body)


def kept_for_take_over(
    store: Store, old_key: bytes, sealed: bytes, kept: bytes, digest: str | None = None
) -> tuple[CdnTask, PartialMeta]:
    """A fetch stopped with `kept` (whole pieces) in generation 1, its file `sealed`, and
    generation 2 begun to take them over (its pieces file open: the caller closes it)."""
    task_id = task_id_for("http://127.0.0.1:1/f.bin")
    store.task_dir(task_id).mkdir(parents=True)
    partial = PartialMeta(
        task_id=task_id,
        generation=1,
        key=old_key.hex(),
        piece_size=MiB,
        length=len(DATA),
        digests=[piece_digest(piece).hex() for piece in pieces_of(kept)],
        digest=digest,
        etag='"v1"',
    )
    store.save_partial(partial)
    store.pieces_path(task_id, 1).write_bytes(sealed)
    spec = TaskSpec("http://127.0.0.1:1/f.bin", (), None, "", (), task_id, None)
    task = CdnTask(spec, 2, bytes(range(1, 33)))
    task.begin(len(DATA), MiB, Validators('"v1"', None), store.create_pieces(task_id, 2, MiB))
    return task, partial


@pytest.mark.usefixtures("small_parts")
def test_a_take_over_in_parts_feeds_the_hasher_no_byte_of_a_damaged_piece(
    tmp_path: Path,
) -> None:
    task_id = task_id_for("http://127.0.0.1:1/f.bin")
    old_key = bytes(range(32))
    kept = DATA[: 3 * MiB]
    sealed = bytearray(sealed_whole(old_key, task_id, kept))
    sealed[SLOT + MiB - 10] ^= 1  # piece 1, in its last part
    store = Store(tmp_path / "store")
    digest = "sha256:" + hashlib.sha256(DATA).hexdigest()
    task, partial = kept_for_take_over(store, old_key, bytes(sealed), kept, digest)
    assert task.pieces is not None
    try:
        went_on = trio.run(resume.take_over, task, partial, store, hashlib.sha256())
    finally:
        task.pieces.close()
    assert task.digests == [piece_digest(kept[:MiB])]  # the sound piece, not the damaged one
    assert went_on is not None and went_on.hexdigest() == hashlib.sha256(kept[:MiB]).hexdigest()
    written = store.pieces_path(task_id, 2).read_bytes()
    assert written[:SLOT] == sealed_whole(task.key, task_id, kept[:MiB])


@pytest.mark.usefixtures("small_parts")
def test_a_take_over_whose_new_file_fails_a_write_says_so(tmp_path: Path) -> None:
    """The kept piece is sound; this generation's file refuses the write (a full disk):
    that is the store's error, not "the kept piece is damaged" (which ends the take-over
    quietly and throws the other kept pieces away)."""
    task_id = task_id_for("http://127.0.0.1:1/f.bin")
    old_key = bytes(range(32))
    kept = DATA[: 2 * MiB]
    store = Store(tmp_path / "store")
    task, partial = kept_for_take_over(store, old_key, sealed_whole(old_key, task_id, kept), kept)
    pieces = task.pieces
    assert pieces is not None

    def full(index: int, sealed: memoryview, at: int = 0) -> None:
        raise StoreError("No space left on device")

    pieces.write = full  # type: ignore[method-assign]
    try:
        with pytest.raises(StoreError, match="No space"):
            trio.run(resume.take_over, task, partial, store, None)
    finally:
        pieces.close()


def test_a_failed_fetch_keeps_none_of_its_buffers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A failed task is kept (for its retry delay, by a preheat, by the peers in it) with
    # its error: an error that kept the frames it came through kept the fetch's parts,
    # its sealed buffers and the response (~3 MiB a task), for any digest a peer names.
    store = Store(tmp_path / "store")
    # (pytest's capture keeps each record, and the error logged with it, for the report)
    caplog.set_level(logging.CRITICAL, logger=fetch.__name__)

    async def body(origin: FakeOrigin, client: OriginClient) -> None:
        tasks = []
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for wrong in range(4):
                task = CdnTask(spec_for(origin.url("/f.bin"), "sha256:" + f"{wrong:064x}"), 1)
                assert await fetch_task(task, client, store, FetchPolicy()) is None
                tasks.append(task)
            del task
            gc.collect()
            held = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        for task in tasks:
            assert isinstance(task.error, ContentMismatch)
            assert task.error.__traceback__ is None
        assert held < MiB, held

    with_origin(body)
