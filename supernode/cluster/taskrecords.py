"""What the owner of a task keeps in Redis so that another member can adopt it, and
reading it back (data from the network: bounded, checked, never a crash).

- `dragonfly-py:task:ID`: JSON, `{"generation", "owner", "length", "piece_size",
  "etag", "last_modified", "pieces"}`: the geometry and validators of the owner's
  generation, and how many piece digests it wrote;
- `dragonfly-py:task:ID:digests`: the piece digests, 32 bytes each in piece order,
  written with SETRANGE as the pieces come (a write never resends the ones before);
- `dragonfly-py:task:ID:held`: which pieces the owner's peers hold, a bitfield (piece
  *i* is bit *i* of the big-endian integer), the union over its peers.

Never the sealing key, nor the URL or the peers' headers (credentials): a reader of
Redis learns the file's size, its piece digests and its validators, not its bytes. An
adopter seals under a key of its own (a new generation). The keys live `STATE_TTL`
after the last write.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from proto.pieces import MAX_PIECE_SIZE, MIN_PIECE_SIZE, piece_count
from proto.taskid import check_task_id
from supernode.cluster.records import PREFIX, valid_id

DIGEST_SIZE = 32
MAX_META = 4096  # bytes of the JSON
MAX_PIECES = 1 << 20  # pieces of one task we read (32 MiB of digests at most)
STATE_TTL = 24 * 3600.0  # seconds the state lives after its last write


def task_key(task_id: str) -> str:
    return f"{PREFIX}:task:{task_id}"


def digests_key(task_id: str) -> str:
    return f"{PREFIX}:task:{task_id}:digests"


def held_key(task_id: str) -> str:
    return f"{PREFIX}:task:{task_id}:held"


@dataclass(frozen=True)
class TaskRecord:
    """A task's state as its owner last wrote it (`digests`: the first `len(digests)`
    pieces'; `held`: the pieces its peers held, a bitset)."""

    task_id: str
    generation: int
    owner: str
    length: int
    piece_size: int
    etag: str | None
    last_modified: str | None
    digests: tuple[bytes, ...]
    held: int = 0

    @property
    def piece_count(self) -> int:
        return piece_count(self.length, self.piece_size)

    def meta(self) -> bytes:
        return json.dumps(
            {
                "generation": self.generation,
                "owner": self.owner,
                "length": self.length,
                "piece_size": self.piece_size,
                "etag": self.etag,
                "last_modified": self.last_modified,
                "pieces": len(self.digests),
            },
            separators=(",", ":"),
        ).encode()


def decode_task(
    task_id: str, meta: bytes | None, digests: bytes | None, held: bytes | None
) -> TaskRecord | None:
    """The record read back, or None if there is none or it is not one of ours: the
    digests it names must be there (only whole ones count), within the file's pieces."""
    if meta is None or len(meta) > MAX_META or not _task_id(task_id):
        return None
    try:
        fields = json.loads(meta)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(fields, dict):
        return None
    generation, length = _int(fields.get("generation")), _int(fields.get("length"))
    piece_size, pieces = _int(fields.get("piece_size")), _int(fields.get("pieces"))
    owner = fields.get("owner")
    etag, modified = fields.get("etag"), fields.get("last_modified")
    if generation is None or generation < 1 or length is None or pieces is None:
        return None
    if piece_size is None or not _valid_piece_size(piece_size):
        return None
    if not isinstance(owner, str) or not valid_id(owner):
        return None
    if not all(v is None or (isinstance(v, str) and 0 < len(v) <= 256) for v in (etag, modified)):
        return None
    count = piece_count(length, piece_size)
    # (a length of 2^61 would make the bitset of its pieces a 256 GiB integer)
    if count > MAX_PIECES or not 0 <= pieces <= count or digests is None:
        return None
    if len(digests) < pieces * DIGEST_SIZE:
        return None
    bits = int.from_bytes(held[: -(-count // 8)], "big") if held else 0
    return TaskRecord(
        task_id,
        generation,
        owner,
        length,
        piece_size,
        etag,
        modified,
        tuple(digests[i * DIGEST_SIZE : (i + 1) * DIGEST_SIZE] for i in range(pieces)),
        bits & ((1 << count) - 1),
    )


def named_pieces(meta: bytes) -> int | None:
    """How many digests a record names (all of it is checked again by decode_task)."""
    if len(meta) > MAX_META:
        return None
    try:
        fields = json.loads(meta)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    pieces = _int(fields.get("pieces")) if isinstance(fields, dict) else None
    return pieces if pieces is not None and pieces <= MAX_PIECES else None


def held_bytes(held: int, count: int) -> bytes:
    """The bitfield of `held` for a task of `count` pieces."""
    return held.to_bytes(-(-count // 8), "big") if count else b""


def _task_id(task_id: str) -> bool:
    try:
        check_task_id(task_id)
    except ValueError:
        return False
    return True


def _valid_piece_size(size: int) -> bool:
    return MIN_PIECE_SIZE <= size <= MAX_PIECE_SIZE and size & (size - 1) == 0


def _int(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 62:
        return value
    return None
