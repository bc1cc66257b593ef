"""One generation's sealed pieces in one file: piece *i* at `i * (piece_size + 16)`.

Pieces are stored exactly as they go on the wire, so serving one is a single
`sendfile` from the page cache. Blocking calls: the fetcher writes from a worker thread.

A piece is written in parts of at most `PART` bytes (`PieceWriter`): pieces are up to
64 MiB, and a supernode runs `--max-fetches` fetches, each with a few buffers; with
parts those buffers are 4 MiB whatever the piece size.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import blake3

from proto.pieces import TAG_SIZE, MiB, PieceSealer
from supernode.errors import StoreError

PART = 4 * MiB  # the most of a piece held in one buffer (a power of two: it cuts pieces)


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

    def write(self, index: int, sealed: memoryview, at: int = 0) -> None:
        """Sealed bytes of piece `index`, from byte `at` of its slot on."""
        offset = self.offset(index) + at
        try:
            while sealed.nbytes:
                written = os.pwrite(self.fd, sealed, offset)
                sealed, offset = sealed[written:], offset + written
        except OSError as exc:
            raise StoreError(f"cannot write piece {index} to {self.path}: {exc}") from exc

    def read(self, index: int, at: int = 0, length: int | None = None) -> bytes:
        """`length` bytes (the slot's rest: a full piece) of the sealed piece `index`
        from byte `at` on; fewer at the file's end (only resumed fetches read back)."""
        if length is None:
            length = self.slot - at
        try:
            return os.pread(self.fd, length, self.offset(index) + at)
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


class PieceWriter:
    """Piece `index` sealed into its slot part by part, in order, from a worker thread:
    its plaintext's digest once all of it and the tag are written. `out` takes one
    sealed part (the largest part + 16 bytes)."""

    __slots__ = ("_at", "_hash", "_out", "_pieces", "_sealing", "index")

    def __init__(
        self, pieces: PiecesFile, sealer: PieceSealer, index: int, length: int, out: bytearray
    ) -> None:
        self._pieces, self.index, self._out = pieces, index, out
        self._sealing = sealer.sealing(index, length)
        self._hash = blake3.blake3()
        self._at = 0

    def write(self, part: memoryview) -> None:
        self._hash.update(part)
        self._pieces.write(self.index, self._sealing.seal_into(part, self._out), self._at)
        self._at += part.nbytes

    def digest(self) -> bytes:
        """The blake3 digest of the plaintext written so far."""
        return self._hash.digest()

    def end(self) -> bytes:
        """Write the tag (ValueError if bytes of the piece are missing); the digest."""
        self._pieces.write(self.index, memoryview(self._sealing.tag()), self._at)
        return self._hash.digest()
