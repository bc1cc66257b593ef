"""Adopting a task whose owner died, from the state it kept in the cluster's Redis.

The old owner wrote the task's geometry, validators and piece digests there
(supernode/cluster/taskstate.py reads them back as an `Adoption`). The new owner's
`CdnTask` knows those digests at once, so peers check and claim the pieces they had
(`PiecesHeld`) the moment they register again, but holds none of those pieces on its
disk (`CdnTask.on_disk`). Its fetch (fetch.py) then runs in three steps:

1. at once, the rest of the file, from the first piece the old owner never fetched:
   the usual loop, with Range and If-Range; alongside (`repair`), at once the old
   owner's pieces that no peer held (its record of their pieces), after `GRACE`
   seconds for the peers to come back and claim theirs those that no peer holds, and
   from then on any that loses its last holder (`fill`, Range requests);
2. the rest fetched, the pieces no peer holds then; the task is done for its peers;
3. then the pieces peers held, so that this copy ends whole and survives a restart
   (the peers no longer wait for it).

Every piece fetched again is checked against the digest the old owner recorded, and
every Range request is guarded by If-Range: a mismatch means the content changed
upstream (or the state in Redis lies), and the task fails as superseded, so its peers
start over once, on a fresh fetch. Pieces are sealed under this generation's own key;
the old key never left the old owner.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import trio

from common.io import RateLimiter
from proto.digests import digest_matches, new_hasher
from proto.pieces import TAG_SIZE, piece_count, piece_length, piece_size_for
from supernode.cdn.origin import OriginClient
from supernode.cdn.piecefile import PART, PieceWriter
from supernode.cdn.response import OriginResponse, Validators, check_resumed, passing
from supernode.cdn.task import CdnTask, TaskSpec
from supernode.errors import (
    BadRedirect,
    ContentMismatch,
    OriginBroken,
    OriginStatusError,
    OriginTimeout,
    OriginUnreachable,
    SupernodeError,
    TaskSuperseded,
)

log = logging.getLogger(__name__)

GRACE = 1.0  # seconds the peers of a dead owner have to register again and claim
REPAIR_EVERY = 0.25  # seconds between two looks for pieces that lost every holder
REPAIR_RETRIES = 5  # times a run of pieces cut short or refused for a while is asked again
CHANGED = "the content changed upstream since the task's previous owner fetched it"


@dataclass(frozen=True)
class Adoption:
    """What a task's dead owner left: its generation, the file's length and piece size,
    its validators, the digests of the pieces it had fetched (the first
    `len(digests)`), and the pieces its peers held (a bitset: a hint)."""

    owner: str
    generation: int
    length: int
    piece_size: int
    validators: Validators
    digests: tuple[bytes, ...]
    held: int = 0


class Adopter(Protocol):
    """Who knows the state dead owners left (the cluster)."""

    async def adoptable(self, task_id: str) -> Adoption | None: ...

    def adopted(self, task_id: str, adoption: Adoption) -> None:
        """The CDN went on from `adoption` (counted, logged)."""


def can_adopt(adoption: Adoption, spec: TaskSpec) -> bool:
    """Whether this task can go on from `adoption`: a whole file (not a Range) of the
    geometry the supernode would pick, with digests to go on from, and a way to resume
    safely (a strong validator for If-Range, or content named by its digest)."""
    return (
        spec.range is None
        and adoption.length > 0
        and adoption.piece_size == piece_size_for(adoption.length)
        and 0 < len(adoption.digests) <= piece_count(adoption.length, adoption.piece_size)
        and bool(adoption.validators.if_range or spec.digest)
    )


def adopted_task(spec: TaskSpec, adoption: Adoption, generation: int) -> CdnTask:
    """A new generation that knows the adopted digests and holds none of those pieces
    (the fetcher opens its pieces file and `begin`s it)."""
    task = CdnTask(spec, generation)
    task.adoption = adoption
    task.on_disk = 0
    task.length, task.piece_size = adoption.length, adoption.piece_size
    task.validators = adoption.validators
    task.digests = list(adoption.digests)
    task.lengths = [
        piece_length(i, adoption.length, adoption.piece_size) for i in range(len(task.digests))
    ]
    return task


def missing(task: CdnTask, held_by_peers: int) -> int:
    """The adopted pieces neither on disk nor held by a peer (a bitset)."""
    known = (1 << len(task.adoption.digests if task.adoption else ())) - 1
    return known & ~(task.on_disk or 0) & ~held_by_peers


async def fill(
    task: CdnTask, origin: OriginClient, limiter: RateLimiter | None, pieces: int
) -> None:
    """Fetch the known pieces of the bitset `pieces` from the origin (one Range request
    per run of consecutive pieces), check each against its digest, store it sealed. A
    run cut short, or refused for a while (5xx, 429), is asked again from its first
    piece not stored, after a pause, at most REPAIR_RETRIES times."""
    for first, last in _runs(pieces):
        retries = 0
        while True:
            try:
                await _fetch_run(task, origin, limiter, first, last)
                break
            except BadRedirect:
                raise  # the origin's answer, the same each time
            except (OriginBroken, OriginTimeout, OriginUnreachable, OriginStatusError) as exc:
                if isinstance(exc, OriginStatusError) and not passing(exc.status):
                    raise  # the origin's answer, not a hiccup
                if retries >= REPAIR_RETRIES:
                    raise
                retries += 1
                while first < last and task.holds(first):
                    first += 1
                log.info(
                    "cdn: task %s: repair: %s; again from piece %d", task.task_id[:16], exc, first
                )
                await trio.sleep(min(5.0, 0.2 * 2 ** (retries - 1)))
            if first >= last:
                break


def _runs(bits: int) -> list[tuple[int, int]]:
    """The runs of set bits, as [first, last) index pairs, lowest first."""
    runs, index = [], 0
    while bits:
        skip = (bits & -bits).bit_length() - 1
        bits >>= skip
        index += skip
        length = (~bits & (bits + 1)).bit_length() - 1
        runs.append((index, index + length))
        bits >>= length
        index += length
    return runs


async def _fetch_run(
    task: CdnTask, origin: OriginClient, limiter: RateLimiter | None, first: int, last: int
) -> None:
    assert task.length is not None
    size, length = task.piece_size, task.length
    start, end = first * size, min(last * size, length) - 1
    extra = [("Range", f"bytes={start}-{end}")]
    if task.validators.if_range:
        extra.append(("If-Range", task.validators.if_range))
    part = bytearray(min(size, PART))
    sealed = bytearray(len(part) + TAG_SIZE)
    spec = task.spec
    async with origin.open(
        "GET", spec.url, spec.headers, extra=tuple(extra), s3=spec.s3
    ) as response:
        check_not_changed(task, response)
        check_resumed(response, start, task.validators)
        for index in range(first, last):
            plain = piece_length(index, length, size)
            # (a piece another fill stored meanwhile is read past, not written again)
            writer = None if task.holds(index) else _writer(task, index, plain, sealed)
            for at in range(0, plain, len(part)):
                view = memoryview(part)[: min(len(part), plain - at)]
                await _read_exactly(response, view, limiter, task, index)
                if writer is not None:
                    end = at + len(view) == plain
                    await trio.to_thread.run_sync(_store, task, writer, view, end)
            if writer is not None:
                task.piece_stored(index, plain)


async def _read_exactly(
    response: OriginResponse,
    view: memoryview,
    limiter: RateLimiter | None,
    task: CdnTask,
    index: int,
) -> None:
    filled = 0
    while filled < len(view):
        count = await response.read_into(view[filled:])
        if count == 0:
            raise OriginBroken(f"body ended at piece {index} of an adopted task")
        if limiter:
            await limiter.acquire(count)
        task.bytes_from_origin += count
        filled += count


def _writer(task: CdnTask, index: int, length: int, sealed: bytearray) -> PieceWriter:
    assert task.pieces is not None
    return PieceWriter(task.pieces, task.sealer, index, length, sealed)


def check_not_changed(task: CdnTask, response: OriginResponse) -> None:
    """An adopted task's Range request answered 200: If-Range did not hold, the content
    changed since its previous owner's fetch (the task is superseded)."""
    if task.adoption is not None and response.status == 200 and task.validators.if_range:
        raise TaskSuperseded(CHANGED)


def _store(task: CdnTask, writer: PieceWriter, part: memoryview, end: bool) -> None:
    """A part of a piece sealed and written; at its end, the piece checked against the
    adopted digest before its tag goes (a worker thread). A piece that does not match
    was sealed under this generation's key and never announced: the generation fails."""
    writer.write(part)
    if end and writer.digest() != task.digests[writer.index]:
        raise TaskSuperseded(f"{CHANGED} (piece {writer.index} does not match its recorded digest)")
    if end:
        writer.end()


async def repair(
    task: CdnTask,
    origin: OriginClient,
    limiter: RateLimiter | None,
    held_by_peers: Callable[[str], int],
    scope: trio.CancelScope,
) -> None:
    """Step 1, alongside the rest of the file until `scope` is cancelled: at once, the
    adopted pieces no peer held before the failure; after the grace, and then every
    `REPAIR_EVERY` seconds, those no peer holds now (a peer that leaves takes its
    pieces with it: they must not be lost to the swarm)."""
    with scope:
        # What no peer held before the failure (the old owner's word in Redis) is
        # missing for sure: at once. Then, the grace past, what no peer came back with.
        await fill(task, origin, limiter, missing(task, task.adoption.held if task.adoption else 0))
        await trio.sleep(GRACE)
        lost = missing(task, held_by_peers(task.task_id))
        log.info(
            "cdn: task %s adopted (generation %d after %d): %d pieces known, %d held by no peer",
            task.task_id[:16],
            task.generation,
            task.adoption.generation if task.adoption else 0,
            task.ready,
            lost.bit_count(),
        )
        while True:
            if lost:
                await fill(task, origin, limiter, lost)
            await trio.sleep(REPAIR_EVERY)
            lost = missing(task, held_by_peers(task.task_id))


async def before_done(
    task: CdnTask,
    origin: OriginClient,
    limiter: RateLimiter | None,
    held_by_peers: Callable[[str], int],
) -> None:
    """Step 2, the rest fetched: the pieces no peer holds now, so that every piece has a
    source when the peers are told the task is done (a failure here fails the task)."""
    await fill(task, origin, limiter, missing(task, held_by_peers(task.task_id)))


async def after_fetch(task: CdnTask, origin: OriginClient, limiter: RateLimiter | None) -> bool:
    """Step 3: the pieces peers held, for a whole copy; False if the origin failed (the
    copy stays partial: it is served as it is and not kept across a restart). A task
    named by a digest is then checked whole, read back from the disk: the CDN never saw
    its first pieces go by."""
    try:
        await fill(task, origin, limiter, missing(task, 0))
    except SupernodeError as exc:
        log.warning("cdn: adopted task %s stays partial: %s", task.task_id[:16], exc)
        return False
    if task.spec.digest and not await trio.to_thread.run_sync(_whole_matches, task):
        task.fail(ContentMismatch(f"origin content does not match {task.spec.digest}"))
        return False
    return True


def _whole_matches(task: CdnTask) -> bool:
    """Whether the pieces on disk, opened and hashed in order, make the task's digest."""
    assert task.spec.digest is not None and task.pieces is not None
    hasher = new_hasher(task.spec.digest)
    pieces, sealer = task.pieces, task.sealer
    plain = bytearray(min(task.piece_size, PART) + TAG_SIZE)
    for index, length in enumerate(task.lengths):
        opening = sealer.opening(index, length, pieces.read(index, length, TAG_SIZE))
        for at in range(0, length, PART):
            part = pieces.read(index, at, min(PART, length - at))
            hasher.update(opening.open_into(part, plain))
        opening.verify()
    return digest_matches(task.spec.digest, hasher)
