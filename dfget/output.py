"""The output file appears atomically: a temp file beside it, renamed on success.

The temp file lives in the target's folder (so the rename is atomic on one file
system) and is named so it cannot be taken for the finished file. On any failure it
is removed, and OUT is never touched: a failed download leaves no file that looks
complete.

dfget's own output is not fsynced (like curl: the rename makes a crash of dfget safe,
not a power loss). A `durable` output (dfdaemon's cache, which serves and seeds what it
names) is: the temp file is fsynced before the rename and its folder after, so a name
in the folder always stands for the whole file. So that the final fsync does not wait
for gigabytes, a durable output also has what it wrote synced every SYNC_EVERY bytes,
by a thread of its own: a writer never waits for a flush, and neither does the event
loop (`publish`, its fsyncs and the rename, runs in a worker thread before `commit`
closes the file: `dfget.engine.commit`).
"""

from __future__ import annotations

import _thread
import os
import secrets
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from dfget.errors import OutputError
from dfget.foldersync import sync_folder
from dfget.progress import Progress

if TYPE_CHECKING:  # (trio is not needed to write a file)
    from common.io import RateLimiter
    from proto.digests import Hasher

SYNC_EVERY = 64 * 1024 * 1024  # durable outputs: written bytes flushed at least this often


class AtomicOutput:
    def __init__(self, target: Path, *, durable: bool = False) -> None:
        self.target = target
        self.temp = target.parent / f".{target.name}.{secrets.token_hex(4)}.dfget-part"
        self.fd = -1
        self.durable = durable
        self._unsynced = 0  # bytes written since the last flush (durable only)
        self._flushing = threading.Lock()  # held while a background flush runs
        # A background flush's error: Linux reports a writeback error once per open
        # file, so the final fsync would not see it again; `sync` raises it.
        self._flush_error: OSError | None = None
        self._dirty = True  # not fsynced since the last write (or ever)
        # What is written, for a reader that streams the file while it is written:
        # `filled` bytes from the start, plus islands further on (start → end).
        self._lock = threading.Lock()
        self._filled = 0
        self._islands: dict[int, int] = {}
        # Verified pieces written, and the layout they are of: a later attempt of the
        # same download (another supernode after a failover) starts from them.
        self._layout: tuple[int, int] | None = None
        self._stored: set[int] = set()
        self._published = False  # renamed onto the target (`publish`)
        self._committed = False  # and closed (`commit`)
        # Times what was written stopped counting (`reset`, another layout): a reader
        # that took bytes before must not take the new ones after them.
        self.resets = 0

    @property
    def filled(self) -> int:
        """How many bytes from the start are written (thread-safe)."""
        with self._lock:
            return self._filled

    def _wrote(self, start: int, end: int) -> None:
        with self._lock:
            if start > self._filled:
                self._islands[start] = max(end, self._islands.get(start, end))
                return
            self._filled = max(self._filled, end)
            for island in sorted(self._islands):  # the ones it reaches now join it
                if island > self._filled:
                    break
                self._filled = max(self._filled, self._islands.pop(island))

    def __enter__(self) -> AtomicOutput:
        if self.target.is_dir():
            raise OutputError(f"{self.target} is a directory")
        if not self.target.parent.is_dir():
            raise OutputError(f"folder {self.target.parent} does not exist")
        self.fd = self._open_temp()
        return self

    def _open_temp(self) -> int:
        return self._open(self.temp, os.O_EXCL)

    def _open(self, path: Path, flags: int) -> int:
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | flags, 0o644)
        except OSError as exc:
            raise OutputError(f"cannot create a file in {self.target.parent}: {exc}") from exc

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._close()
        if kind is not None and self._published and not self._committed:
            # Published with its last piece, then the download failed (cancelled): the
            # output appears whole and committed, or not at all.
            self.target.unlink(missing_ok=True)
        if kind is not None or self.temp.exists():
            # Still here: not committed (an error, a cancel, or the caller forgot).
            self.temp.unlink(missing_ok=True)

    def _close(self) -> None:
        if self.fd >= 0:
            self._wait_for_flush()  # its fd must not be closed (or reused) under it
            os.close(self.fd)
            self.fd = -1

    def may_resume(self) -> bool:
        """Whether an earlier attempt left pieces that `resume_from` may name."""
        with self._lock:
            return bool(self._stored)

    def resume_from(self, piece_size: int, length: int | None) -> list[int]:
        """The pieces of that layout an earlier attempt in this process wrote (to be
        checked again: `dfget.resume.take_local`); another layout starts empty. A file
        kept across processes is `dfget.resume.ResumableOutput`'s."""
        layout = None if length is None else (piece_size, length)
        with self._lock:
            changed = layout is None or layout != self._layout
            if changed:
                self._layout, self._stored = layout, set()
            held = sorted(self._stored)
        if changed:  # (another version's bytes, if any: they will be rewritten)
            self.forget_filled()
        return held

    def forget_filled(self) -> None:
        """What is written stops counting for readers (it will be rewritten, another
        version's bytes): `filled` starts from 0 again, and `resets` says so to a
        reader that took some of them."""
        with self._lock:
            if not (self._filled or self._islands):
                return
            self._filled, self._islands = 0, {}
            self.resets += 1

    def piece_stored(self, index: int) -> None:
        """A verified piece is written (from a worker thread, or the event loop)."""
        with self._lock:
            if self._layout is not None:
                self._stored.add(index)

    def note_written(self, start: int, end: int) -> None:
        """Bytes [start, end) are in the file already (resumed): readers may have them."""
        self._wrote(start, end)

    def reset(self) -> None:
        """Forget everything written (before a fallback starts over)."""
        self.truncate(0)
        with self._lock:
            self._layout, self._stored = None, set()
        self.forget_filled()

    def write_at(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        start = offset
        try:
            view = memoryview(data)
            while view.nbytes:
                written = os.pwrite(self.fd, view, offset)
                view, offset = view[written:], offset + written
        except OSError as exc:
            raise OutputError(f"cannot write {self.temp}: {exc}") from exc
        self._wrote(start, offset)
        if self.durable:
            self._flush_now_and_then(offset - start)

    def copy_in(self, source: int, offset: int, count: int) -> int:
        """Copy up to `count` bytes of the open file `source` at `offset` to the same
        offset here, in the kernel (copy_file_range: no pass through Python); how many,
        0 at the source's end. OSError as the copy raises it (EXDEV, EINVAL...: a file
        system it cannot copy between; the caller reads and writes instead)."""
        copied = os.copy_file_range(source, self.fd, count, offset, offset)
        self._wrote(offset, offset + copied)
        if self.durable:
            self._flush_now_and_then(copied)
        return copied

    def _flush_now_and_then(self, written: int) -> None:
        """Past SYNC_EVERY new bytes, start a flush in a thread of its own (one at a
        time); its errors are the final `sync`'s to report. Started without waiting for
        the thread to run (`threading.Thread.start` waits: on a busy machine tens of ms
        of the event loop's, where pieces are written: `common.io.piecework`)."""
        with self._lock:
            self._dirty = True
            self._unsynced += written
            if self._unsynced < SYNC_EVERY or not self._flushing.acquire(blocking=False):
                return
            self._unsynced = 0
        try:
            _thread.start_new_thread(self._flush, ())
        except RuntimeError:  # (no thread to be had: the final sync flushes it all)
            self._flushing.release()
        except BaseException:
            self._flushing.release()
            raise

    def _flush(self) -> None:
        """The background flush: holds `_flushing` (taken by the thread that started it)."""
        try:
            os.fdatasync(self.fd)
        except OSError as exc:
            self._flush_error = exc  # `sync` and `commit` raise it
        finally:
            self._flushing.release()

    def _wait_for_flush(self) -> None:
        with self._flushing:
            pass

    def raise_flush_error(self) -> None:
        """OutputError if a background flush failed: the disk refused what was written,
        and a reader may no longer get those bytes back as they were (`sync` and
        `publish` raise it too)."""
        if self._flush_error is not None:
            error = self._flush_error
            raise OutputError(f"cannot write {self.temp}: {error}") from error

    def sync(self) -> None:
        """Durable outputs: fsync what is written so far (blocking); `publish` does it
        too, when anything was written since."""
        if not self.durable:
            return
        self._wait_for_flush()
        with self._lock:
            self._dirty = False
        try:
            if self._flush_error is not None:
                raise self._flush_error
            os.fsync(self.fd)
        except OSError as exc:
            raise OutputError(f"cannot write {self.temp}: {exc}") from exc

    def read_at(self, offset: int, length: int) -> bytes:
        try:
            return os.pread(self.fd, length, offset)
        except OSError as exc:
            raise OutputError(f"cannot read back {self.temp}: {exc}") from exc

    def truncate(self, length: int) -> None:
        try:
            os.ftruncate(self.fd, length)
        except OSError as exc:
            raise OutputError(f"cannot size {self.temp}: {exc}") from exc

    def publish(self) -> None:
        """Rename the finished temp file onto the target (durable: fsynced first, and
        the folder after), keeping it open: a reader may still take a descriptor of it
        (`fd`) until `commit` closes it. Blocking: a durable output's runs in a worker
        thread (`dfget.engine.commit`)."""
        try:
            if self.durable:
                self._wait_for_flush()
                if self._flush_error is not None:
                    raise self._flush_error
                if self._dirty:  # not synced since the last write (or never)
                    os.fsync(self.fd)
            os.replace(self.temp, self.target)
            if self.durable:
                sync_folder(self.target.parent)
        except OSError as exc:
            raise OutputError(f"cannot rename onto {self.target}: {exc}") from exc
        self._published = True

    @property
    def published(self) -> bool:
        """Whether it is renamed onto the target (`publish`)."""
        return self._published

    def commit(self) -> None:
        """Publish the file (if not yet done) and close it."""
        if not self._published:
            self.publish()
        self._close()
        self._committed = True


class ExistingOutput(AtomicOutput):
    """A complete file that is already in place, for a download that only checks and
    shares it (`PeerOptions.adopt`): opened read-only, never written, never removed."""

    def __init__(self, target: Path) -> None:
        super().__init__(target)
        self.temp = target  # where the file's bytes are read from

    def __enter__(self) -> ExistingOutput:
        try:
            self.fd = os.open(self.target, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise OutputError(f"cannot open {self.target}: {exc}") from exc
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._close()

    def write_at(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        raise OutputError(f"{self.target} is complete: nothing may be written to it")

    def truncate(self, length: int) -> None:
        if os.fstat(self.fd).st_size != length:
            raise OutputError(f"{self.target} is not {length} bytes long")

    def publish(self) -> None:
        """Nothing to rename: the file is in place."""

    def commit(self) -> None:
        """Nothing to rename: the file is in place."""


async def write_body(
    out: AtomicOutput,
    chunks: AsyncIterator[bytes],
    *,
    length: str | None,
    limiter: RateLimiter,
    hasher: Hasher | None,
    progress: Progress | None,
) -> int:
    """Write an HTTP body to `out` in order, paced by `limiter`, fed to `hasher`;
    `length` is its Content-Length header, if any. The byte count."""
    total = int(length) if length and length.isdigit() else None
    received = 0
    async for chunk in chunks:
        await limiter.acquire(len(chunk))
        out.write_at(received, chunk)
        if hasher:
            hasher.update(chunk)
        received += len(chunk)
        if progress:
            progress(received, total)
    return received
