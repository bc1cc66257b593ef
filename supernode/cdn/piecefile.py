"""One generation's sealed pieces in one file: piece *i* at `i * (piece_size + 16)`.

Pieces are stored exactly as they go on the wire, so serving one is a single
`sendfile` from the page cache. Blocking calls: the fetcher writes from a worker thread.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from proto.pieces import TAG_SIZE
from supernode.errors import StoreError


def file_size(length: int, piece_size: int) -> int:
    """Size of a complete pieces file for a task of `length` bytes."""
    return length + TAG_SIZE * -(-length // piece_size)


class PiecesFile:
    def __init__(
        self, path: Path, piece_size: int, *, create: bool, writable: bool = False
    ) -> None:
        self.path = path
        self.piece_size = piece_size
        self.slot = piece_size + TAG_SIZE
        if create:
            mode = os.O_RDWR | os.O_CREAT | os.O_TRUNC
        else:  # an existing file: read it, or go on writing it (a resumed fetch)
            mode = os.O_RDWR if writable else os.O_RDONLY
        flags = os.O_CLOEXEC | mode
        try:
            self.fd = os.open(path, flags, 0o600)
        except OSError as exc:
            raise StoreError(f"cannot open {path}: {exc}") from exc

    def offset(self, index: int) -> int:
        return index * self.slot

    def write(self, index: int, sealed: memoryview) -> None:
        offset = self.offset(index)
        try:
            while sealed.nbytes:
                written = os.pwrite(self.fd, sealed, offset)
                sealed, offset = sealed[written:], offset + written
        except OSError as exc:
            raise StoreError(f"cannot write piece {index} to {self.path}: {exc}") from exc

    def read(self, index: int) -> bytes:
        """The sealed piece `index` (a full piece: only resumed fetches read back)."""
        try:
            return os.pread(self.fd, self.slot, self.offset(index))
        except OSError as exc:
            raise StoreError(f"cannot read piece {index} of {self.path}: {exc}") from exc

    def sync(self) -> None:
        """Flush the pieces to disk (before meta.json names them complete)."""
        try:
            os.fsync(self.fd)
        except OSError as exc:
            raise StoreError(f"cannot flush {self.path}: {exc}") from exc

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)
