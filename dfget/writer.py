"""Open, verify and write pieces; check the whole file against the user's digest.

`store_piece` is synchronous and thread-safe: the engine runs it as piece work
(`common.io.piecework`: in a worker thread, so that the event loop keeps receiving while
a piece is decrypted (AES-GCM), digested (blake3) and written at its offset; on the loop
itself while the machine's CPUs are all busy, where the hand-over costs more).
Nothing reaches the file before both checks pass. The whole-file digest is fed in piece
order: the piece at the cursor is hashed from memory, pieces that landed ahead of it
are read back when the cursor gets there.
"""

from __future__ import annotations

import contextlib
import threading

from dfget.errors import IntegrityError, OutputError
from dfget.output import AtomicOutput
from proto.digests import Hasher, digest_matches, new_hasher
from proto.errors import PieceCorrupted
from proto.pieces import PieceSealer, piece_digest


class PieceWriter:
    def __init__(
        self, output: AtomicOutput, sealer: PieceSealer, piece_size: int, digest: str | None
    ) -> None:
        self.output = output
        self.sealer = sealer
        self.piece_size = piece_size
        self.digest = digest
        self._hasher: Hasher | None = new_hasher(digest) if digest else None
        self._lock = threading.Lock()
        self._on_disk: dict[int, int] = {}  # index → length, not hashed yet
        self._cursor = 0

    def store_piece(
        self, index: int, sealed: bytearray, expected: bytes, scratch: bytearray
    ) -> int:
        """Verify piece `index` and write it; returns its plaintext length.

        Raises PieceCorrupted if it does not open or does not match `expected`.
        """
        plain = self.sealer.open_into(index, sealed, scratch)
        if piece_digest(plain) != expected:
            raise PieceCorrupted(self.sealer.task_id, index, "plaintext does not match its digest")
        self.output.write_at(index * self.piece_size, plain)
        self.output.piece_stored(index)
        if self._hasher is not None:
            self._hash_in_order(index, plain)
        return len(plain)

    def store_last_piece(
        self, index: int, sealed: bytearray, expected: bytes, scratch: bytearray
    ) -> int:
        """`store_piece` for the piece that completes the file, which is then published
        (`AtomicOutput.publish`: a durable one fsynced and renamed into place) in the
        same worker thread, if it is whole (the digest named, if any, matches): a small
        file takes one pass through a thread, not two (`Transfers.fetch_alone`: where
        nothing else of the download runs). Published once, should two copies of the
        piece get here."""
        size = self.store_piece(index, sealed, expected, scratch)
        with self._lock:
            if self.output.published or self._on_disk:
                return size
            if self._hasher is not None and not digest_matches(self.digest or "", self._hasher):
                return size  # (`verify_whole` says so, after the download)
            with contextlib.suppress(OutputError):  # (the commit tries again, and says why)
                self.output.publish()
        return size

    @property
    def hashes_whole(self) -> bool:
        """Whether the whole file is hashed as pieces land (a digest was named): then a
        store may read back pieces that landed ahead of the hash's cursor, up to most of
        the file, and waits for another store's doing so (`_lock`): such a writer's
        pieces are stored in worker threads, never on the event loop
        (`common.io.piecework`)."""
        return self._hasher is not None

    def stored_locally(self, index: int, plain: bytes) -> None:
        """Piece `index` was in the file already, and matches its digest (a resumed
        download, `dfget.resume`): readers may have it, and the whole-file hash takes it."""
        offset = index * self.piece_size
        self.output.note_written(offset, offset + len(plain))
        if self._hasher is not None:
            self._hash_in_order(index, memoryview(plain))

    def _hash_in_order(self, index: int, plain: memoryview) -> None:
        with self._lock:
            assert self._hasher is not None
            if index < self._cursor or index in self._on_disk:
                return  # a second copy of a piece (endgame): hashed once already
            if index != self._cursor:
                self._on_disk[index] = len(plain)
                return
            self._hasher.update(plain)
            self._cursor += 1
            while self._cursor in self._on_disk:
                length = self._on_disk.pop(self._cursor)
                offset = self._cursor * self.piece_size
                self._hasher.update(self.output.read_at(offset, length))
                self._cursor += 1

    def verify_whole(self) -> None:
        """After the last piece: raise IntegrityError if the file is not what was named."""
        if self._hasher is None or self.digest is None:
            return
        if self._on_disk:
            raise IntegrityError(f"pieces {sorted(self._on_disk)[:5]} were never hashed in order")
        if not digest_matches(self.digest, self._hasher):
            raise IntegrityError(
                f"downloaded content does not match {self.digest} "
                f"(got {self.digest.split(':')[0]}:{self._hasher.hexdigest()})"
            )
