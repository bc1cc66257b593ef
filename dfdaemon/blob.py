"""A blob of the daemon's cache: the record of its download (running or complete), the
reads of it going on (counted: GC leaves a blob being read alone), and its bytes, read
in order as its file fills in.

A blob is named by its sha256 or, for a URL download of the forward proxy, by the
URL's task id. While it downloads its bytes are in a temp file that readers follow as
its start fills in; once complete they are in its file of the cache (`cache.py`).
"""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio

from dfdaemon.validators import Validators
from dfget.output import AtomicOutput
from dfget.results import Content, DownloadResult
from proto.digests import Hasher
from proto.messages import S3Access

READ_CHUNK = 1024 * 1024


class BlobUnavailable(Exception):
    """The blob could not be downloaded (the cause is chained)."""


def file_key(stat: os.stat_result) -> tuple[int, int, int]:
    """What must not change for a verified file to stay verified."""
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


@dataclass
class Blob:
    hex: str  # the sha256 of a blob, or the task id of a URL (forward proxy)
    path: Path
    digest: str | None = None  # "sha256:HEX" for blobs; None for URLs
    length: int | None = None  # from its download or its file, never from a client's HEAD
    # The first requester's URL and headers (what the download was started with), and
    # the upstream host it names (`host:port`, its provenance once complete).
    url: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    s3: S3Access | None = None  # the first requester's, for an S3 object (never logged)
    origin: str | None = None
    # What the origin answered the first requester about a URL download, asked the
    # first time another client wants to join it (`sharing.py`).
    validators: Validators | None = None
    out: AtomicOutput | None = None  # while downloading
    complete: bool = False
    error: BaseException | None = None
    result: DownloadResult | None = None
    # Every byte written and verified, the file not yet committed to the cache (its
    # fsyncs and rename): a client streaming it has the rest, and its account, now.
    whole: DownloadResult | None = None
    # A complete URL download: what its pieces and the origin's validators were, and
    # the file (inode, size, mtime) when its pieces last matched them (`kept.py`).
    content: Content | None = None
    content_key: tuple[int, int, int] | None = None
    fell_back: bool = False
    # A URL download whose file holds an earlier, complete download of it: checked
    # piece by piece against the supernode's digests for this requester before
    # anything is fetched (`downloads.py`).
    recheck: bool = False
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)  # its download
    readers: Counter[str] | None = None  # the store's count of readers, by blob (GC)
    verified: dict[str, tuple[int, int, int]] | None = None  # the store's good files
    _changed: trio.Event = field(default_factory=trio.Event)
    _until: list[tuple[Callable[[], bool], trio.Event]] = field(default_factory=list)

    def notify(self) -> None:
        """Its record changed: wake every `wait_changed`, and each `wait_until` whose
        condition now holds."""
        self._changed.set()
        self._changed = trio.Event()
        if self._until:
            waiting, self._until = self._until, []
            for entry in waiting:
                try:
                    holds = entry[0]()
                except Exception:  # (not one of ours: woken, to find out for itself)
                    holds = True
                if holds:
                    entry[1].set()
                else:
                    self._until.append(entry)

    async def wait_changed(self) -> None:
        await self._changed.wait()

    async def wait_until(self, holds: Callable[[], bool]) -> None:
        """Wait until `holds()` (a plain test of the record that cannot raise), checked
        at each change: a waiter wakes only once it holds, not for every change on the
        way (a small file's piece landing before the file is complete)."""
        if holds():
            await trio.lowlevel.checkpoint()
            return
        entry = (holds, trio.Event())
        self._until.append(entry)
        try:
            await entry[1].wait()
        finally:
            if entry in self._until:
                self._until.remove(entry)

    @property
    def filled(self) -> int:
        if self.complete:
            return self.length or 0
        return self.out.filled if self.out is not None else 0

    def open(self) -> int:
        """A read-only descriptor of the blob's bytes, valid across the final rename;
        BlobUnavailable if its file is gone (evicted, removed by hand)."""
        if self.complete:
            try:
                return os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as exc:
                raise BlobUnavailable(f"blob {self.hex[:12]}: {exc}") from exc
        if self.out is None:  # its download failed meanwhile (its file may be gone)
            self.raise_if_failed()
            raise BlobUnavailable(f"blob {self.hex[:12]}: not written")
        return os.dup(self.out.fd)

    @property
    def verified_whole(self) -> bool:
        """Every byte is written and verified: committed to the cache, or not yet and
        not failed since (the commit failing: a disk that lost them)."""
        return self.complete or (self.whole is not None and self.error is None)

    def raise_if_failed(self) -> None:
        """BlobUnavailable (the cause chained) once its download has failed."""
        if self.error is not None:
            raise BlobUnavailable(f"blob {self.hex[:12]}: {self.error}") from self.error


class Reading:
    """One client's read of a blob: counted while it lasts (GC leaves the blob alone),
    with a descriptor opened at first use and closed at the end."""

    def __init__(self, blob: Blob) -> None:
        self.blob = blob
        self._fd = -1

    def __enter__(self) -> Reading:
        if self.blob.readers is not None:
            self.blob.readers[self.blob.hex] += 1
        return self

    def __exit__(self, *exc_info: object) -> None:
        readers = self.blob.readers
        if readers is not None:  # (no entry kept at zero: one per blob ever read, else)
            readers[self.blob.hex] -= 1
            if readers[self.blob.hex] <= 0:
                del readers[self.blob.hex]
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)

    def fd(self) -> int:
        if self._fd < 0:
            self._fd = self.blob.open()
        return self._fd


class OneSource:
    """The bytes one client takes of a blob come from one source and one version: a
    P2P prefix never meets an upstream suffix, an old version's prefix never meets a
    new one's suffix. `check(taken)` raises BlobUnavailable once the blob's download
    has failed, or has started over after `taken` bytes were taken (read or sent:
    `taken_as` says which, in the error): from the upstream, or on a new version (the
    file changed upstream, or another supernode holds another one)."""

    def __init__(self, blob: Blob, taken_as: str) -> None:
        self.blob, self._taken_as = blob, taken_as
        self._fell_back = blob.fell_back
        self._out = blob.out  # (kept: the blob lets go of it once complete)
        self._resets = self._out.resets if self._out is not None else 0

    def check(self, taken: int) -> None:
        blob = self.blob
        blob.raise_if_failed()
        out = blob.out
        if out is not None and out is not self._out:  # (its download began, or began anew)
            if taken and self._out is not None:
                raise BlobUnavailable(
                    f"blob {blob.hex[:12]}: written anew after {taken} bytes were {self._taken_as}"
                )
            self._out, self._resets = out, out.resets
        resets = self._out.resets if self._out is not None else 0
        if blob.fell_back != self._fell_back or resets != self._resets:
            if taken:
                how = "from the upstream" if blob.fell_back != self._fell_back else "over"
                raise BlobUnavailable(
                    f"blob {blob.hex[:12]}: restarted {how} after {taken} "
                    f"bytes were {self._taken_as}"
                )
            self._fell_back, self._resets = blob.fell_back, resets


def _read(fd: int, count: int, offset: int, hasher: Hasher | None) -> bytes:
    data = os.pread(fd, count, offset)
    if hasher is not None:
        hasher.update(data)  # hashlib drops the GIL for large buffers
    return data


async def read_blob(
    blob: Blob,
    start: int = 0,
    end: int | None = None,
    hasher: Hasher | None = None,
    reading: Reading | None = None,
) -> AsyncGenerator[bytes, None]:
    """The blob's bytes [start, end) in order, as soon as they are written; raises
    BlobUnavailable if its download fails first, or restarts from the upstream once
    bytes were read (a P2P prefix never meets an upstream suffix). With `hasher`,
    every chunk is hashed in the worker thread that reads it, off the event loop.
    `reading`: the caller's own (open, counted) read of the blob."""
    offset, source = start, OneSource(blob, "read")
    with contextlib.nullcontext(reading) if reading is not None else Reading(blob) as read:
        while end is None or offset < end:
            stop = blob.length if end is None else end
            if stop is not None and offset >= stop:
                return
            source.check(offset - start)
            filled = blob.filled
            if filled <= offset:
                if blob.complete:
                    return
                await blob.wait_changed()
                continue
            count = min(READ_CHUNK, filled - offset, (stop or filled) - offset)
            data = await trio.to_thread.run_sync(_read, read.fd(), count, offset, hasher)
            source.check(offset - start)  # what was read may already be the upstream's: never sent
            if not data:
                raise BlobUnavailable(f"blob {blob.hex[:12]} is short on disk")
            offset += len(data)
            yield data
