"""The back-to-source loop of one task generation: origin body → sealed pieces on disk.

Bytes are copied into a piece-sized buffer; each full piece is digested (blake3),
sealed (AES-256-GCM) and written at its offset, then announced, so peers download a
cold file while it is still arriving. A body cut short is resumed with a Range request
(guarded by If-Range) when the origin allows it; otherwise the task fails cleanly.

With `FetchPolicy.streams` above 1, the first GET asks for the file's first chunk and
a large file's rest comes over several connections at once, put back in order before
it is cut into pieces (`streams.py`).

The store's limits (`budget.py`) are applied as the body comes: a known length is
reserved at the first response, an unknown one is stopped when it passes them.

A fetch a shutdown stopped goes on in a new generation with a new key (`resume.py`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import trio

from common.io import RateLimiter, unwrap_group
from common.urls import display_url
from proto.digests import Hasher, digest_matches, new_hasher
from proto.pieces import TAG_SIZE, piece_length, piece_size_for
from supernode.cdn import adopt, resume, streams
from supernode.cdn.budget import StoreBudget
from supernode.cdn.origin import OriginClient, OriginResponse
from supernode.cdn.piecefile import PART, PieceWriter, file_size
from supernode.cdn.response import check_resumed, check_span
from supernode.cdn.revalidate import check_first_requester
from supernode.cdn.store import Store, TaskMeta
from supernode.cdn.task import CdnTask
from supernode.errors import (
    BadRequest,
    ContentMismatch,
    OriginBroken,
    OriginError,
    ShuttingDown,
    StoreError,
    SupernodeError,
    TaskSuperseded,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FetchPolicy:
    max_resumes: int = 5
    limiter: RateLimiter | None = None
    budget: StoreBudget | None = None  # the store's limits (none: unbounded)
    # The pieces of a task its peers hold (a bitset): an adopted task fetches the
    # others first (adopt.py). The default: as if no peer held any.
    held_by_peers: Callable[[str], int] = lambda task_id: 0
    streams: int = 1  # connections a large file comes over at once (streams.py)


class _Assembler:
    """Cuts the body into pieces, each in parts of at most PART bytes: each part is
    digested, sealed and written in a worker thread while the next one fills, and a
    piece is announced once its last part is on disk. A few buffers of a part each, so a
    fetch holds at most four parts in memory, whatever the piece size."""

    BUFFERS = 3

    def __init__(self, task: CdnTask, hasher: Hasher | None, budget: StoreBudget | None) -> None:
        self.task = task
        self.hasher = hasher
        # Limits to apply as the body grows: only a body of unknown length needs them.
        self.budget = budget if task.length is None else None
        # (a piece of a body of unknown length is one part: its length seals it)
        self.part = task.piece_size if task.length is None else min(task.piece_size, PART)
        self.buffer = bytearray(self.part)
        self.filled = 0
        # A resumed fetch starts after the pieces it already has: all full pieces but,
        # for an adopted file complete already, the last (the length is its end).
        self.received = task.ready * task.piece_size  # bytes of the content so far
        if task.length is not None:
            self.received = min(self.received, task.length)
        self._allocated = 1
        self._index = task.ready  # the piece being filled
        self._at = 0  # where in it the buffer starts
        self._jobs_send, self._jobs_recv = trio.open_memory_channel[
            tuple[int, int, bytearray, int, bool]
        ](self.BUFFERS - 1)
        self._free_send, self._free_recv = trio.open_memory_channel[bytearray](self.BUFFERS)
        self._sealed = bytearray(self.part + TAG_SIZE)  # the sealer's own, reused
        self._writer: PieceWriter | None = None  # the sealer's piece in progress
        self._probe = bytearray(1)  # whether a body goes on past what was asked

    async def fill_from(
        self, response: OriginResponse, limiter: RateLimiter | None, limit: int | None = None
    ) -> None:
        """Read the body straight into piece buffers until it ends; WrongChunk if it goes
        on past byte `limit` of the content (the length asked for)."""
        while True:
            view = memoryview(self.buffer)[self.filled :]
            if limit is not None:
                view = view[: limit - self.received]
                if not view:  # all that was asked for: the body must end here
                    if await response.read_into(memoryview(self._probe)):
                        raise streams.WrongChunk(f"origin sent more than the {limit} bytes asked")
                    return
            count = await response.read_into(view)
            if count == 0:
                return
            if limiter:
                await limiter.acquire(count)
            self.task.bytes_from_origin += count
            await self._filled(count)

    async def feed(self, data: memoryview) -> None:
        """Copy bytes that came by another way (streams.py) into piece buffers."""
        while data:
            count = min(len(self.buffer) - self.filled, data.nbytes)
            self.buffer[self.filled : self.filled + count] = data[:count]
            data = data[count:]
            await self._filled(count)

    async def _filled(self, count: int) -> None:
        self.filled += count
        self.received += count
        if self.budget is not None:
            self.budget.check_received(self.received)
        if self.filled == len(self.buffer):  # (a part: its piece's end, or on the way)
            await self._submit(last=self._at + self.filled == self.task.piece_size)

    async def finish(self) -> None:
        """Submit the short last piece's last part, if any, and let the sealer drain."""
        if self.filled or self._at:
            await self._submit(last=True)
        await self._jobs_send.aclose()

    async def _submit(self, *, last: bool) -> None:
        if self.budget is not None:  # this piece must fit in the store before it is written
            self.budget.check_growth(self.task, self.received + TAG_SIZE * (self._index + 1))
        await self._jobs_send.send((self._index, self._at, self.buffer, self.filled, last))
        self._index, self._at = (
            (self._index + 1, 0) if last else (self._index, self._at + self.filled)
        )
        self.filled = 0
        if self._allocated < self.BUFFERS:
            self._allocated += 1
            self.buffer = bytearray(self.part)
        else:
            self.buffer = await self._free_recv.receive()

    async def run_sealer(self) -> None:
        """Store submitted parts in order; announce each piece once it is on disk."""
        async with self._jobs_recv:
            async for index, at, buffer, length, last in self._jobs_recv:
                digest = await trio.to_thread.run_sync(self._store, index, at, buffer, length, last)
                if digest is not None:
                    self.task.add_piece(digest, at + length)
                self._free_send.send_nowait(buffer)

    def _store(
        self, index: int, at: int, buffer: bytearray, length: int, last: bool
    ) -> bytes | None:
        """Part of piece `index` from byte `at` on sealed and written; the piece's digest
        after its last part."""
        task = self.task
        part = memoryview(buffer)[:length]
        if self.hasher is not None:
            self.hasher.update(part)
        if at == 0:
            size = length
            if not last:  # (a piece of unknown length is one part)
                assert task.length is not None
                size = piece_length(index, task.length, task.piece_size)
            assert task.pieces is not None
            self._writer = PieceWriter(task.pieces, task.sealer, index, size, self._sealed)
        assert self._writer is not None and self._writer.index == index
        self._writer.write(part)
        return self._writer.end() if last else None


async def fetch_task(
    task: CdnTask, origin: OriginClient, store: Store, policy: FetchPolicy
) -> TaskMeta | None:
    """Fill `task` from its origin. Never raises: failures end in `task.fail()`."""
    started = time.monotonic()
    try:
        meta = await _fetch(task, origin, store, policy)
    except Exception as exc:
        if isinstance(exc, SupernodeError):
            log.warning("cdn: task %s failed: %s", task.task_id[:16], exc)
        else:  # a bug of ours: fail this task, keep the CDN running
            log.exception("cdn: task %s failed: internal error", task.task_id[:16])
            exc = SupernodeError(f"internal error: {exc!r}")
        task.fail(exc)
        store.remove_generation(task.task_id, task.generation, partial=not task.resume_kept)
        if task.resume_from is not None and not task.resume_kept:  # failed taking them over
            store.remove_generation(task.task_id, task.resume_from.generation)
        return None
    finally:
        if not task.settled:  # cancelled: a newer generation took over, or a shutdown
            if task.superseded:
                task.fail(TaskSuperseded("the content changed upstream: a new generation"))
                store.remove_generation(task.task_id, task.generation)
            else:
                with trio.CancelScope(shield=True):  # (its fsync runs in a thread)
                    kept = await resume.keep_for_resume(task, store)
                task.fail(ShuttingDown("the supernode is shutting down"))
                if not kept:
                    store.remove_generation(task.task_id, task.generation)
    seconds = time.monotonic() - started
    log.info(
        "cdn: task %s done: %d bytes in %d pieces from origin in %.2fs (%.0f MiB/s)",
        task.task_id[:16],
        meta.length,
        len(meta.digests),
        seconds,
        meta.length / max(seconds, 1e-9) / (1 << 20),
    )
    return meta


async def _fetch(
    task: CdnTask, origin: OriginClient, store: Store, policy: FetchPolicy
) -> TaskMeta:
    spec = task.spec
    first, last = spec.range or (0, None)
    # An adopted task never sees the pieces its old owner fetched: its peers check the
    # whole file's digest, the CDN checks each piece against the recorded digests.
    hasher = new_hasher(spec.digest) if spec.digest and not task.adoption else None
    assembler: _Assembler | None = None
    resumes = 0
    repairs = trio.CancelScope()  # an adopted task's repairs, while the rest comes
    with unwrap_group():
        async with trio.open_nursery() as nursery:
            if task.resume_from is not None or task.adoption is not None:
                # After a restart, or a dead owner: go on from the pieces known, once the
                # origin said yes to the requester they are announced to.
                try:
                    await check_first_requester(origin, task)
                except OriginError:  # this requester's answer: the next may be let in
                    task.resume_kept = task.resume_from is not None
                    raise
                if task.length is not None and policy.budget is not None:
                    size = file_size(task.length, task.piece_size)
                    policy.budget.admit(task, task.length, size)
                if task.resume_from is not None:
                    hasher = await resume.take_over(task, task.resume_from, store, hasher)
                else:  # the pieces no peer holds, alongside (adopt.py)
                    _begin_adopted(task, store)
                    held, limiter = policy.held_by_peers, policy.limiter
                    nursery.start_soon(adopt.repair, task, origin, limiter, held, repairs)
                assembler = _Assembler(task, hasher, policy.budget)
                nursery.start_soon(assembler.run_sealer)
            # Bytes this loop's own GETs bring: the whole file, or its first chunk when
            # the rest comes over several connections (`rest`, streams.py).
            until: int | None = task.length
            split = policy.streams > 1 and not spec.range and assembler is None
            rest: streams.Rest | None = None
            while assembler is None or until is None or assembler.received < until:
                resuming = assembler is not None
                offset = assembler.received if assembler else 0
                extra: list[tuple[str, str]] = []
                if spec.range or resuming:
                    end = "" if last is None else str(last)
                    if rest is not None and until is not None:  # to the first chunk's end
                        end = str(until - 1)
                    extra.append(("Range", f"bytes={first + offset}-{end}"))
                elif split:
                    extra.append(streams.first_range())
                if resuming and task.validators.if_range:  # (an adopted task named by
                    extra.append(("If-Range", task.validators.if_range))  # its digest: none)
                ok = streams.FIRST_OK if split and not resuming else frozenset({200, 206})
                try:
                    async with origin.open(
                        "GET", spec.url, spec.headers, extra=tuple(extra), ok=ok, s3=spec.s3
                    ) as response:
                        if assembler is None:
                            total = streams.split_length(response) if split else None
                            if split and total is None and response.status != 200:
                                split = False  # one plain GET instead
                                continue
                            _start(task, store, response, policy.budget, total)
                            assembler = _Assembler(task, hasher, policy.budget)
                            nursery.start_soon(assembler.run_sealer)
                            until = task.length
                            if total is not None and total > streams.CHUNK:
                                rest = _rest(task, origin, total, policy)
                                nursery.start_soon(rest.run)
                                until = streams.CHUNK
                        else:
                            adopt.check_not_changed(task, response)
                            check_resumed(response, first + offset, task.validators)
                        await assembler.fill_from(response, policy.limiter, until)
                    if until is not None and assembler.received < until:
                        raise OriginBroken(f"body ended at {assembler.received} of {until} bytes")
                    break
                except streams.WrongChunk:
                    raise
                except OriginBroken as exc:
                    # Without a validator for If-Range, a resumed body could belong to a
                    # newer version of the file: better to fail than to mix two versions.
                    if assembler is None or not task.validators.if_range:
                        raise
                    if resumes >= policy.max_resumes:
                        raise OriginBroken(f"{exc} (gave up after {resumes} resumes)") from exc
                    resumes += 1
                    log.info(
                        "cdn: task %s: %s; resuming at byte %d (%d/%d)",
                        task.task_id[:16],
                        exc,
                        assembler.received,
                        resumes,
                        policy.max_resumes,
                    )
            if rest is not None:
                await rest.drain_into(assembler.feed)
            if task.length is not None and assembler.received != task.length:
                raise OriginBroken(f"got {assembler.received} bytes of {task.length}")
            repairs.cancel()  # the rest is done: `after_fetch` takes what is missing
            await assembler.finish()
    length = assembler.received
    if task.adoption is not None:
        await adopt.before_done(task, origin, policy.limiter, policy.held_by_peers)
    if hasher and spec.digest and not digest_matches(spec.digest, hasher):
        raise ContentMismatch(f"origin content does not match {spec.digest}")
    meta = TaskMeta(
        task_id=task.task_id,
        url=display_url(spec.url),  # shown by tools; never the credentials or signature
        generation=task.generation,
        key=task.key.hex(),
        length=length,
        piece_size=task.piece_size,
        digests=[d.hex() for d in task.digests],
        digest=spec.digest,
        etag=task.validators.etag,
        last_modified=task.validators.last_modified,
        created=task.created,
    )
    task.finish(length)  # peers may finish now; what follows only makes it durable
    if task.adoption is not None and not await adopt.after_fetch(task, origin, policy.limiter):
        return meta  # a partial copy: served as it is, never saved
    pieces = task.pieces
    assert pieces is not None

    def persist() -> None:  # fsyncs: in a worker thread, off the event loop
        pieces.sync()
        store.save_meta(meta)
        store.forget_partial(task.task_id)

    with trio.CancelScope(shield=True):  # a shutdown now must not lose a complete task
        try:
            await trio.to_thread.run_sync(persist)
        except StoreError as exc:  # served from here on, but it will not survive a restart
            log.error("cdn: task %s is complete but not saved: %s", task.task_id[:16], exc)
    return meta


def _rest(task: CdnTask, origin: OriginClient, total: int, policy: FetchPolicy) -> streams.Rest:
    return streams.Rest(
        task,
        origin,
        start=streams.CHUNK,
        total=total,
        streams=policy.streams,
        lookahead=2 * policy.streams,
        limiter=policy.limiter,
        max_resumes=policy.max_resumes,
    )


def _begin_adopted(task: CdnTask, store: Store) -> None:
    """An adopted task's geometry is known before any response: open its pieces file."""
    assert task.length is not None
    pieces = store.create_pieces(task.task_id, task.generation, task.piece_size)
    task.begin(task.length, task.piece_size, task.validators, pieces)


def _whole(response: OriginResponse) -> int | None:
    """N if a 206 names the whole file (`bytes 0-N-1/N`, and N bytes if it gives a
    length, as some origins answer a plain GET): what a part can never claim."""
    start, end, total = response.span or (None, None, None)
    if start != 0 or end is None or end + 1 != total:
        return None
    return total if response.length in (None, total) else None


def _span_length(response: OriginResponse, first: int, last: int | None) -> int:
    """The length of a ranged answer that starts at `first`: it must end where the range
    asked (or at the file's end, before it), and its body, if it names a length, be
    that long; OriginBroken if not (a chunked 206 of bytes 100-149 for 100-199)."""
    assert response.span is not None
    _, span_last, span_total = response.span
    end = last
    if span_total is not None:
        end = span_total - 1 if end is None else min(end, span_total - 1)
    if span_last is None or (end is not None and span_last != end):
        raise OriginBroken(f"origin answered the wrong span: {response.content_range!r}")
    length = span_last - first + 1
    if response.length is not None and response.length != length:
        raise OriginBroken(f"origin sent {response.length} bytes for a span of {length}")
    return length


def _start(
    task: CdnTask,
    store: Store,
    response: OriginResponse,
    budget: StoreBudget | None,
    total: int | None = None,
) -> None:
    """First response: fix the task's geometry, reserve its room, open its pieces file
    (`total`: the whole file's length when the response is its first chunk)."""
    first, last = task.spec.range or (0, None)
    if task.spec.range:
        if response.status != 206:
            raise OriginBroken("origin ignored the Range header (answered 200, not 206)")
        check_span(response, first)  # (bytes 0-99 for a Range of 100-199 are not those)
        total = _span_length(response, first, last)  # (the body is then held to it)
        task.whole = response.span[2] if response.span else None
    if not task.spec.range and total is None and response.status == 206:
        # A part for all of it (an S3 `?partNumber=`, a query another requester filtered
        # out of the task id) would be stored as the whole file, and every later
        # requester's revalidation would pass on the whole file's ETag.
        total = _whole(response)  # (the body is then held to that length)
        if total is None:
            raise OriginBroken("origin answered 206 (a part of the file) to a request for it all")
    length = response.length if total is None else total
    if length is not None and last is not None and length != last - first + 1:
        raise BadRequest(f"origin sent {length} bytes for a range of {last - first + 1}")
    piece_size = piece_size_for(length)
    if length is not None and budget is not None:
        budget.admit(task, length, file_size(length, piece_size))
    pieces = store.create_pieces(task.task_id, task.generation, piece_size)
    task.begin(length, piece_size, response.validators, pieces)
