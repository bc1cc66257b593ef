"""A download that survives its process: the partial file and the record of its pieces
stay on disk when it is stopped or killed, and the next download of the same task
starts from the pieces it verified.

`ResumableOutput` is an `AtomicOutput` whose temp file has a fixed name beside its
target (`.NAME.partial`), with its record (`.NAME.pieces`, `dfget.piecelog`). It keeps
both when the download is cancelled (the daemon stopping), fails (the supernode away,
say) and, of course, when the process dies; it removes both when the whole file turns
out wrong (`IntegrityError`), and the record once the file is in place. A fallback
that starts the file over (`reset`) empties the record.

`take_local` is the attempt's first step when the record names pieces: once the
supernode's digests for them are in, each is read back and checked (blake3, in a
worker thread), the good ones are counted as written ("local") and claimed to the
scheduler (`PiecesHeld`), so that only the rest is fetched. A piece whose bytes do not
match (never synced, damaged, another generation's) is simply fetched again.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from types import TracebackType

import trio

from dfget.connect import ControlStream
from dfget.errors import IntegrityError
from dfget.output import AtomicOutput
from dfget.piecelog import PieceLog
from dfget.pieces import PieceBook
from dfget.progress import Progress
from dfget.writer import PieceWriter
from proto.errors import ProtoError
from proto.messages import PiecesHeld
from proto.pieces import piece_digest

log = logging.getLogger("dfget.peer")

CHECK_BATCH = 64  # pieces checked in one worker-thread call (64 MiB of 1 MiB pieces)
PARTIAL_SUFFIX = ".partial"
RECORD_SUFFIX = ".pieces"


def partial_paths(target: Path) -> tuple[Path, Path]:
    """Where the partial file of `target`, and its record of pieces, are kept."""
    return (
        target.parent / f".{target.name}{PARTIAL_SUFFIX}",
        target.parent / f".{target.name}{RECORD_SUFFIX}",
    )


def _keeps(exc: BaseException | None) -> bool:
    """Whether what was written outlives a download that ended with `exc`: yes, unless
    its bytes turned out wrong (the whole-file digest)."""
    if isinstance(exc, BaseExceptionGroup):
        return exc.subgroup(IntegrityError) is None
    return not isinstance(exc, IntegrityError)


class ResumableOutput(AtomicOutput):
    """See the module docstring."""

    def __init__(self, target: Path, *, durable: bool = False) -> None:
        super().__init__(target, durable=durable)
        self.temp, record = partial_paths(target)
        self.record = PieceLog(record)

    def __enter__(self) -> ResumableOutput:
        super().__enter__()
        return self

    def _open_temp(self) -> int:
        return self._open(self.temp, 0)  # an earlier run's partial file is kept

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if kind is not None and _keeps(exc):
            self._close()
            self.record.close()
            return
        self.record.remove()
        super().__exit__(kind, exc, tb)

    def may_resume(self) -> bool:
        """Also when an earlier run left a record of pieces."""
        if super().may_resume():
            return True
        try:
            return os.stat(self.record.path).st_size > 0
        except OSError:
            return False

    def resume_from(self, piece_size: int, length: int | None) -> list[int]:
        super().resume_from(piece_size, length)  # (what readers may count on, per layout)
        if length is not None and length <= piece_size:
            # One piece (or none): nothing to resume that is not the whole file, and a
            # record would cost a file created and removed (most of a small file's
            # time on the disk). One an earlier run left goes when the file is in place.
            self.record.close()
            return []
        return self.record.start(piece_size, length)

    def piece_stored(self, index: int) -> None:
        self.record.add(index)

    def reset(self) -> None:
        self.record.clear()
        super().reset()

    def publish(self) -> None:
        super().publish()
        self.record.remove()  # (the file is whole: nothing to resume)


async def take_local(
    control: ControlStream,
    book: PieceBook,
    writer: PieceWriter,
    held: list[int],
    progress: Progress | None,
) -> None:
    """Check the pieces `held` (from the record) against the supernode's digests once
    they are in, count the good ones as written and claim them; see the module
    docstring."""
    while len(book.digests) <= held[-1] and book.piece_count is None:
        await book.wait_changed()
    known = [i for i in held if i < len(book.digests)]
    started, good = trio.current_time(), []
    for at in range(0, len(known), CHECK_BATCH):  # a stop waits for one batch at most
        batch = known[at : at + CHECK_BATCH]
        good += await trio.to_thread.run_sync(_check, book, writer, batch)
    if len(good) < len(known):
        # Pieces of another version (a supernode holding another one, the same length):
        # rewritten where readers may have taken them. They start over; the good ones
        # count again.
        writer.output.forget_filled()
        for index, size in good:
            offset = index * book.piece_size
            writer.output.note_written(offset, offset + size)
    log.info(
        "resumed %d of %d recorded pieces (%d bytes) in %.2fs",
        len(good),
        len(held),
        sum(size for _, size in good),
        trio.current_time() - started,
    )
    if not good:
        return
    claim = PiecesHeld.of(book.task_id, book.generation, [index for index, _ in good])
    with trio.move_on_after(5), contextlib.suppress(ProtoError):  # (a broken session is
        await control.send(claim)  # the session reader's to notice)
    for index, size in good:
        book.piece_written(index, "local", size)
    if progress is not None:
        progress(book.bytes_written, book.length)


def _check(book: PieceBook, writer: PieceWriter, indexes: list[int]) -> list[tuple[int, int]]:
    """The pieces of `indexes` whose bytes on disk match their digest, with their
    lengths (in a worker thread); each is fed to the writer's whole-file hash."""
    good = []
    for index in indexes:
        size = book.size_of(index)
        offset = index * book.piece_size
        plain = writer.output.read_at(offset, size)
        if len(plain) != size or piece_digest(plain) != book.digests[index]:
            log.info("recorded piece %d does not match its digest: fetched again", index)
            continue
        writer.stored_locally(index, plain)
        good.append((index, size))
    return good


__all__ = ["ResumableOutput", "partial_paths", "take_local"]
