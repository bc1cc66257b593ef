"""The back-to-source loop of one task generation: origin body → sealed pieces on disk.

Bytes are copied into a piece-sized buffer; each full piece is digested (blake3),
sealed (AES-256-GCM) and written at its offset, then announced, so peers download a
cold file while it is still arriving. A body cut short is resumed with a Range request
(guarded by If-Range) when the origin allows it; otherwise the task fails cleanly.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

import trio

from proto.digests import digest_matches, new_hasher
from proto.io import RateLimiter
from proto.pieces import piece_digest, piece_size_for
from supernode.cdn.origin import OriginClient, OriginResponse
from supernode.cdn.store import Store, TaskMeta, sealed_offset
from supernode.cdn.task import CdnTask
from supernode.errors import (
    BadRequest,
    ContentMismatch,
    OriginBroken,
    StoreError,
    SupernodeError,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FetchPolicy:
    max_resumes: int = 5
    limiter: RateLimiter | None = None


class _Assembler:
    """Cuts a byte stream into pieces and hands each full one to the store."""

    def __init__(self, task: CdnTask, store: Store) -> None:
        self.task = task
        self.store = store
        self.buffer = bytearray(task.piece_size)
        self.filled = 0
        self.received = 0  # bytes of the task's content received so far

    def feed(self, chunk: bytes) -> None:
        view = memoryview(chunk)
        while view.nbytes:
            take = min(view.nbytes, len(self.buffer) - self.filled)
            self.buffer[self.filled : self.filled + take] = view[:take]
            self.filled += take
            self.received += take
            view = view[take:]
            if self.filled == len(self.buffer):
                self.flush()

    def flush(self) -> None:
        """Seal and store the buffered piece (full, or the short last one)."""
        if not self.filled:
            return
        task = self.task
        index = task.ready
        plain = memoryview(self.buffer)[: self.filled]
        sealed = task.sealer.seal(index, plain)
        digest = piece_digest(plain)
        assert task.fd is not None
        try:
            os.pwrite(task.fd, sealed, sealed_offset(index, task.piece_size))
        except OSError as exc:
            raise StoreError(f"cannot write piece {index}: {exc}") from exc
        self.filled = 0
        task.add_piece(digest)


async def fetch_task(
    task: CdnTask, origin: OriginClient, store: Store, policy: FetchPolicy
) -> TaskMeta | None:
    """Fill `task` from its origin. Never raises: failures end in `task.fail()`."""
    started = time.monotonic()
    try:
        meta = await _fetch(task, origin, store, policy)
    except SupernodeError as exc:
        log.warning("cdn: task %s failed: %s", task.task_id[:16], exc)
        task.fail(exc)
        store.remove_generation(task.task_id, task.generation)
        return None
    except trio.Cancelled:
        task.fail(SupernodeError("the supernode is shutting down"))
        raise
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
    hasher = new_hasher(spec.digest) if spec.digest else None
    assembler: _Assembler | None = None
    resumes = 0
    while True:
        resuming = assembler is not None
        offset = assembler.received if assembler else 0
        extra: list[tuple[str, str]] = []
        if spec.range or resuming:
            extra.append(("Range", f"bytes={first + offset}-{'' if last is None else last}"))
        if resuming:
            validator = task.validators.strong_etag or task.validators.last_modified
            if validator:
                extra.append(("If-Range", validator))
        try:
            async with origin.open("GET", spec.url, spec.headers, extra=tuple(extra)) as response:
                if assembler is None:
                    assembler = _start(task, store, response)
                else:
                    _check_resumed(response, first + offset)
                async for chunk in response.chunks(1 << 20):
                    if policy.limiter:
                        await policy.limiter.acquire(len(chunk))
                    if hasher:
                        hasher.update(chunk)
                    assembler.feed(chunk)
                    task.bytes_from_origin += len(chunk)
            if task.length is not None and assembler.received < task.length:
                raise OriginBroken(f"body ended at {assembler.received} of {task.length} bytes")
            break
        except OriginBroken as exc:
            # Without a validator for If-Range, a resumed body could belong to a newer
            # version of the file: better to fail than to mix two versions.
            if assembler is None or not task.validators:
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
    assembler.flush()
    length = assembler.received
    if hasher and spec.digest and not digest_matches(spec.digest, hasher):
        raise ContentMismatch(f"origin content does not match {spec.digest}")
    meta = TaskMeta(
        task_id=task.task_id,
        url=spec.url,
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
    store.save_meta(meta)
    task.finish(length)
    return meta


def _start(task: CdnTask, store: Store, response: OriginResponse) -> _Assembler:
    """First response: fix the task's geometry and open its pieces file."""
    if task.spec.range and response.status != 206:
        raise BadRequest("origin ignored the Range header (answered 200, not 206)")
    length = response.length
    first, last = task.spec.range or (0, None)
    if length is not None and last is not None and length != last - first + 1:
        raise BadRequest(f"origin sent {length} bytes for a range of {last - first + 1}")
    fd = store.create_pieces(task.task_id, task.generation)
    task.begin(length, piece_size_for(length), response.validators, fd)
    return _Assembler(task, store)


def _check_resumed(response: OriginResponse, expected_start: int) -> None:
    if response.status != 206 or not response.content_range:
        raise OriginBroken("origin cannot resume (no 206 answer to the Range request)")
    unit, _, spec = response.content_range.partition(" ")
    start = spec.split("-", 1)[0]
    if unit != "bytes" or not start.isdigit() or int(start) != expected_start:
        raise OriginBroken(f"origin resumed at the wrong place: {response.content_range!r}")
