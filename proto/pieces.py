"""Pieces: how a task is cut, and how each piece is digested and sealed.

Sealing is AES-256-GCM with a per-task (per-generation) random key; piece *i* uses
nonce = 4 zero bytes ‖ u64 *i* and AAD = task id ‖ u64 *i* ‖ u64 length. Because the
nonce is fixed by the index, a (key, index) pair must only ever seal one plaintext:
a refetch whose content cannot be proven identical gets a new key (generation).
The determinism lets a peer re-seal a verified piece and produce the CDN's bytes.

A piece can also be sealed (or opened) part by part as its bytes come (`PieceSealer.
sealing`, `opening`): the same bytes as in one call, without holding the piece whole
(a large file's pieces are 64 MiB; the CDN fetches and re-seals them in parts).
"""

from __future__ import annotations

import struct

import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from proto.errors import PieceCorrupted

MiB = 1 << 20
MIN_PIECE_SIZE = 1 * MiB
MAX_PIECE_SIZE = 64 * MiB
# Pick the smallest size that keeps a task at or under this many pieces. Each piece a
# peer downloads is one report and about one assignment for the supernode's scheduler:
# at 10,000 peers, 128 pieces a GiB keep one scheduler process in real time where 256
# saturated it (docs/benchmarks.md, "10,000 peers").
MAX_PIECES_TARGET = 128
UNKNOWN_LENGTH_PIECE_SIZE = 4 * MiB  # chunked bodies: the size must be fixed up front
TAG_SIZE = 16
KEY_SIZE = 32

_U64 = struct.Struct(">Q")


def piece_size_for(length: int | None) -> int:
    """The smallest power of two in [1 MiB, 64 MiB] that cuts `length` into at most
    128 pieces: 64 MiB-1 GiB files get 64-128 pieces of 1-8 MiB, smaller files fewer
    1 MiB pieces, files over 8 GiB more than 128 pieces of 64 MiB."""
    if length is None:
        return UNKNOWN_LENGTH_PIECE_SIZE
    size = MIN_PIECE_SIZE
    while size * MAX_PIECES_TARGET < length and size < MAX_PIECE_SIZE:
        size *= 2
    return size


def piece_count(length: int, piece_size: int) -> int:
    """Number of pieces of a task; an empty task has none."""
    return -(-length // piece_size)


def piece_length(index: int, length: int, piece_size: int) -> int:
    """Plaintext length of piece `index` (the last one may be short)."""
    start = index * piece_size
    if not 0 <= start < length:
        raise IndexError(f"piece {index} outside a task of {length} bytes")
    return min(piece_size, length - start)


def piece_digest(plaintext: bytes | bytearray | memoryview) -> bytes:
    """The 32-byte blake3 digest of a piece's plaintext."""
    return blake3.blake3(plaintext).digest()


def new_task_key() -> bytes:
    return AESGCM.generate_key(bit_length=256)


def _nonce(index: int) -> bytes:
    return b"\0\0\0\0" + _U64.pack(index)


def _aad(task_id: str, index: int, length: int) -> bytes:
    return task_id.encode("ascii") + _U64.pack(index) + _U64.pack(length)


class PieceSealer:
    """Seals and opens the pieces of one task generation (holds its AESGCM context)."""

    __slots__ = ("_aead", "_key", "task_id")

    def __init__(self, key: bytes, task_id: str) -> None:
        if len(key) != KEY_SIZE:
            raise ValueError("a task key is 32 bytes")
        self._aead = AESGCM(key)
        self._key = key
        self.task_id = task_id

    def sealing(self, index: int, length: int) -> PartSealer:
        """Piece `index`, `length` bytes of plaintext, sealed part by part."""
        return PartSealer(self._key, index, _aad(self.task_id, index, length), length)

    def opening(self, index: int, length: int, tag: bytes) -> PartOpener:
        """Piece `index`, `length` bytes of ciphertext ending in `tag`, opened part by
        part: what `PartOpener.open_into` gives is unverified until `verify()` passes."""
        return PartOpener(self._key, self.task_id, index, length, tag)

    def seal(self, index: int, plaintext: bytes | bytearray | memoryview) -> bytes:
        """Ciphertext ‖ 16-byte tag of piece `index`."""
        aad = _aad(self.task_id, index, len(plaintext))
        return self._aead.encrypt(_nonce(index), plaintext, aad)

    def seal_into(
        self, index: int, plaintext: bytes | bytearray | memoryview, out: bytearray | memoryview
    ) -> memoryview:
        """Seal into `out` (at least plaintext + 16 bytes); the sealed view of `out`."""
        view = memoryview(out)[: len(plaintext) + TAG_SIZE]
        aad = _aad(self.task_id, index, len(plaintext))
        self._aead.encrypt_into(_nonce(index), plaintext, aad, view)
        return view

    def open(self, index: int, sealed: bytes | bytearray | memoryview) -> bytes:
        """Plaintext of a sealed piece, or PieceCorrupted if the tag does not verify."""
        if len(sealed) < TAG_SIZE:
            raise PieceCorrupted(self.task_id, index, "shorter than a GCM tag")
        aad = _aad(self.task_id, index, len(sealed) - TAG_SIZE)
        try:
            return self._aead.decrypt(_nonce(index), sealed, aad)
        except InvalidTag:
            raise PieceCorrupted(self.task_id, index, "GCM tag does not verify") from None

    def open_into(
        self, index: int, sealed: bytes | bytearray | memoryview, out: bytearray
    ) -> memoryview:
        """Open a sealed piece into `out` (no allocation); the plaintext view of `out`.

        On failure `out` may hold unverified bytes: the caller must not use them.
        """
        length = len(sealed) - TAG_SIZE
        if length < 0:
            raise PieceCorrupted(self.task_id, index, "shorter than a GCM tag")
        if length > len(out):
            raise PieceCorrupted(self.task_id, index, f"{length} bytes, larger than a piece")
        view = memoryview(out)[:length]
        try:
            self._aead.decrypt_into(_nonce(index), sealed, _aad(self.task_id, index, length), view)
        except InvalidTag:
            raise PieceCorrupted(self.task_id, index, "GCM tag does not verify") from None
        return view

    def open_verified(
        self, index: int, sealed: bytes | bytearray | memoryview, digest: bytes
    ) -> bytes:
        """Open a piece and check its plaintext against the CDN's digest."""
        plaintext = self.open(index, sealed)
        if piece_digest(plaintext) != digest:
            raise PieceCorrupted(self.task_id, index, "plaintext does not match its digest")
        return plaintext


class PartSealer:
    """One piece sealed as its parts come, in order: the ciphertext of each part, then
    the tag once all `length` bytes went through (what `PieceSealer.seal` gives whole)."""

    __slots__ = ("_encryptor", "_left")

    def __init__(self, key: bytes, index: int, aad: bytes, length: int) -> None:
        self._encryptor = Cipher(algorithms.AES(key), modes.GCM(_nonce(index))).encryptor()
        self._encryptor.authenticate_additional_data(aad)
        self._left = length

    def seal_into(self, part: bytes | bytearray | memoryview, out: bytearray) -> memoryview:
        """The next part's ciphertext, in `out` (at least the part's length + 15 bytes)."""
        if len(part) > self._left:
            raise ValueError(f"a part of {len(part)} bytes past the piece's end")
        count = self._encryptor.update_into(part, out)
        self._left -= len(part)
        return memoryview(out)[:count]

    def tag(self) -> bytes:
        """The GCM tag that ends the sealed piece; ValueError before all of it came."""
        if self._left:
            raise ValueError(f"{self._left} bytes of the piece never came")
        self._encryptor.finalize()
        return self._encryptor.tag


class PartOpener:
    """One sealed piece opened as its parts come, in order. The plaintext of a part is
    not verified: nothing may use it for good before `verify()` (PieceCorrupted)."""

    __slots__ = ("_decryptor", "_index", "_left", "_tag", "_task_id")

    def __init__(self, key: bytes, task_id: str, index: int, length: int, tag: bytes) -> None:
        if len(tag) != TAG_SIZE:
            raise PieceCorrupted(task_id, index, "shorter than a GCM tag")
        self._decryptor = Cipher(algorithms.AES(key), modes.GCM(_nonce(index))).decryptor()
        self._decryptor.authenticate_additional_data(_aad(task_id, index, length))
        self._index, self._left, self._tag, self._task_id = index, length, tag, task_id

    def open_into(self, part: bytes | bytearray | memoryview, out: bytearray) -> memoryview:
        """The next part's plaintext, unverified, in `out` (the part's length + 15)."""
        if len(part) > self._left:
            raise PieceCorrupted(self._task_id, self._index, "longer than its piece")
        count = self._decryptor.update_into(part, out)
        self._left -= len(part)
        return memoryview(out)[:count]

    def verify(self) -> None:
        """PieceCorrupted unless every byte came and the tag holds."""
        if self._left:
            raise PieceCorrupted(self._task_id, self._index, f"{self._left} bytes missing")
        try:
            self._decryptor.finalize_with_tag(self._tag)
        except InvalidTag:
            raise PieceCorrupted(self._task_id, self._index, "GCM tag does not verify") from None
