"""The record of which pieces a partial file holds, kept beside it so that a download
stopped (or killed) part-way can start again from them (`dfget.resume`).

The record is a 16-byte header (magic, piece size, length) and then one 4-byte index
(little-endian) a piece, appended as each verified piece is written. It is never
trusted on its own: appends are not fsynced, so after a crash it may name a piece whose
bytes never reached the disk, or a torn last entry. Every piece it names is checked
again against the supernode's digests before it counts (`dfget.resume.take_local`);
what the record gets wrong costs that piece, nothing more.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
from pathlib import Path

log = logging.getLogger(__name__)

MAGIC = b"DFP1"
_HEADER = struct.Struct("<4sIQ")  # magic, piece size, length
_ENTRY = struct.Struct("<I")
# Read at most this many entries a piece (a piece stored twice in an endgame, a refetch
# after a failed check): a damaged or hostile record costs a bounded read.
_ENTRIES_PER_PIECE = 4


class PieceLog:
    """The record at `path`: opened by `start`, appended to by `add`, closed by
    `close`. Appends come from worker threads: one `os.write` of 4 bytes to a file
    opened with O_APPEND each, which the kernel keeps whole."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = -1

    def start(self, piece_size: int, length: int | None) -> list[int]:
        """Open the record for a download of `length` bytes in pieces of `piece_size`:
        the pieces it names (distinct, in range, in order) if it was kept for that same
        layout; otherwise (none, damaged, another layout) it starts empty."""
        self.close()
        held: list[int] = []
        if length is not None and piece_size > 0:
            held = self.read(piece_size, length)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        try:
            self._fd = os.open(self.path, flags, 0o600)
            if not held:
                os.ftruncate(self._fd, 0)
                if length is not None:
                    os.write(self._fd, _HEADER.pack(MAGIC, piece_size, length))
        except OSError as exc:  # no record: the download goes on, it just cannot resume
            log.warning("cannot keep a record of pieces in %s: %s", self.path, exc)
            self.close()
        return held

    def read(self, piece_size: int, length: int) -> list[int]:
        """The pieces the record names for that layout (distinct, in range, in order);
        none if it was kept for another, or is damaged or missing."""
        count = -(-length // piece_size)
        limit = _HEADER.size + _ENTRY.size * _ENTRIES_PER_PIECE * max(count, 1)
        try:
            with open(self.path, "rb") as file:  # (read(n) takes n bytes of memory first)
                data = file.read(min(limit, os.fstat(file.fileno()).st_size))
        except OSError:
            return []
        if len(data) < _HEADER.size or _HEADER.unpack_from(data) != (MAGIC, piece_size, length):
            return []
        body = data[_HEADER.size :]
        whole = len(body) - len(body) % _ENTRY.size  # a torn last entry is left out
        return sorted({i for (i,) in _ENTRY.iter_unpack(body[:whole]) if i < count})

    def add(self, index: int) -> None:
        """Piece `index` is written (thread-safe); a failure only loses the record."""
        if self._fd < 0:
            return
        try:
            os.write(self._fd, _ENTRY.pack(index))
        except OSError as exc:
            log.warning("cannot add to %s: %s", self.path, exc)
            self.close()

    def clear(self) -> None:
        """Forget every piece (the file is starting over): an empty record."""
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
        self.close()

    def close(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1

    def remove(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)
