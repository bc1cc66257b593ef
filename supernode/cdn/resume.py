"""A fetch a shutdown stopped, kept and taken over by the next start.

On a shutdown, what a fetch has so far is kept (durable, with partial.json) when a later
start can resume it safely (If-Range needs a strong validator). The next start goes on
in a new generation with a new key: the kept pieces are opened with the old key,
checked, and sealed again with the new one. The old key never seals anything again, so
no (key, nonce) pair can cover two different plaintexts, whatever the origin sends
after the restart.
"""

from __future__ import annotations

import logging

import trio

from proto.digests import Hasher
from proto.errors import PieceCorrupted
from proto.pieces import TAG_SIZE, PieceSealer
from supernode.cdn.piecefile import PART, PiecesFile, PieceWriter
from supernode.cdn.store import PartialMeta, Store
from supernode.cdn.task import CdnTask
from supernode.errors import StoreError

# The fetch's logger: these lines are part of a fetch's story, and keep its name.
log = logging.getLogger("supernode.cdn.fetch")


async def keep_for_resume(task: CdnTask, store: Store) -> bool:
    """On a shutdown: keep what a fetch has so far (durable, with partial.json) if a
    later start can resume it safely (If-Range needs a strong validator)."""
    if task.adoption is not None:  # its first pieces were never on this disk
        return False
    if task.resume_from is not None:
        # Stopped while taking over the pieces of an earlier stop: those stay as they
        # are (with their partial.json), this generation's copy goes.
        store.remove_generation(task.task_id, task.generation, partial=False)
        return True
    if not task.digests or not task.validators.if_range or task.pieces is None:
        return False
    partial = PartialMeta(
        task_id=task.task_id,
        generation=task.generation,
        key=task.key.hex(),
        piece_size=task.piece_size,
        length=task.length,
        digests=[d.hex() for d in task.digests],
        digest=task.spec.digest,
        etag=task.validators.etag,
        last_modified=task.validators.last_modified,
        created=task.created,
    )
    try:
        partial.check()
        await trio.to_thread.run_sync(task.pieces.sync)
        store.save_partial(partial)
    except (StoreError, ValueError) as exc:
        log.warning("cdn: task %s cannot be kept to resume: %s", task.task_id[:16], exc)
        return False
    log.info("cdn: task %s stopped at piece %d: kept to resume", task.task_id[:16], task.ready)
    return True


async def take_over(
    task: CdnTask, partial: PartialMeta, store: Store, hasher: Hasher | None
) -> Hasher | None:
    """Move the pieces a stopped fetch kept into this generation: each is opened with the
    old key and checked against its digest, then sealed with this generation's key and
    announced. A piece that fails its check ends the take-over there (the fetch goes on
    from it, writing that piece's slot anew). The old generation's file and partial.json
    go afterwards. The whole content's hasher to go on with: `hasher` fed the pieces
    taken over (and no byte of a damaged one)."""
    try:
        old = store.open_pieces(task.task_id, partial.generation, partial.piece_size)
    except StoreError as exc:
        log.warning(
            "cdn: task %s: kept pieces unreadable, fetching anew: %s", task.task_id[:16], exc
        )
        old = None
    if old is not None:
        opener = PieceSealer(bytes.fromhex(partial.key), task.task_id)
        plain = bytearray(min(task.piece_size, PART) + TAG_SIZE)
        sealed = bytearray(len(plain))
        try:
            for index, digest in enumerate(bytes.fromhex(d) for d in partial.digests):
                args = (task, old, opener, index, digest, hasher, plain, sealed)
                sound, hasher = await trio.to_thread.run_sync(_reseal, *args)
                if not sound:
                    log.warning("cdn: task %s: kept piece %d is damaged", task.task_id[:16], index)
                    break
                task.add_piece(digest, task.piece_size)
        finally:
            old.close()
    task.resume_from = None
    store.remove_generation(task.task_id, partial.generation)  # and its partial.json
    return hasher


def _reseal(
    task: CdnTask,
    old: PiecesFile,
    opener: PieceSealer,
    index: int,
    digest: bytes,
    hasher: Hasher | None,
    plain: bytearray,
    sealed: bytearray,
) -> tuple[bool, Hasher | None]:
    """Piece `index` from the old generation's file into this one's, part by part (a
    worker thread): whether it was sound, and the hasher to go on with (a copy of
    `hasher` fed with it; `hasher` if it is damaged: its slot here then holds parts
    never announced, which the fetch writes again)."""
    size = task.piece_size
    fed = None if hasher is None else hasher.copy()
    assert task.pieces is not None
    writer = PieceWriter(task.pieces, task.sealer, index, size, sealed)
    # (the old file's faults are the kept piece's; this generation's file's propagate)
    try:
        opening = opener.opening(index, size, old.read(index, size, TAG_SIZE))
    except (PieceCorrupted, StoreError):
        return False, hasher
    for at in range(0, size, PART):
        try:
            view = opening.open_into(old.read(index, at, min(PART, size - at)), plain)
        except (PieceCorrupted, StoreError):
            return False, hasher
        if fed is not None:
            fed.update(view)
        writer.write(view)
    try:
        opening.verify()
    except PieceCorrupted:
        return False, hasher
    if writer.digest() != digest:
        return False, hasher
    writer.end()
    return True, fed
