"""Piece bookkeeping of one download: what is known, wanted, in flight and written.

Pure state, no I/O: the engine feeds it the supernode's news (`add_ready`,
`set_done`) and the outcome of each transfer, and asks it which piece to fetch next.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import trio

from proto.pieces import piece_length


@dataclass
class SourceCounts:
    """Per-source tallies for the summary."""

    bytes: int = 0
    pieces: int = 0
    refused: int = 0
    failed: int = 0
    corrupt: int = 0


@dataclass
class PieceBook:
    task_id: str
    generation: int
    piece_size: int
    length: int | None
    digests: list[bytes] = field(default_factory=list)  # index → plaintext blake3
    piece_count: int | None = None  # known once the CDN is done
    written: set[int] = field(default_factory=set)
    in_flight: set[int] = field(default_factory=set)
    attempts: dict[int, int] = field(default_factory=dict)
    sources: dict[str, SourceCounts] = field(default_factory=dict)
    bytes_written: int = 0

    def __post_init__(self) -> None:
        self._changed = trio.Event()
        self._next = 0  # lowest index that may still be unfetched

    # -- news from the supernode -------------------------------------------------------

    def add_ready(self, start: int, digests: tuple[bytes, ...]) -> None:
        if start != len(self.digests):
            raise ValueError(f"pieces announced out of order: {start} after {len(self.digests)}")
        self.digests.extend(digests)
        self._notify()

    def set_done(self, length: int, piece_count: int) -> None:
        if piece_count != len(self.digests):
            raise ValueError(f"task done with {len(self.digests)} of {piece_count} digests")
        self.length, self.piece_count = length, piece_count
        self._notify()

    # -- choosing and completing pieces -------------------------------------------------

    @property
    def complete(self) -> bool:
        return self.piece_count is not None and len(self.written) == self.piece_count

    def next_piece(self) -> int | None:
        """Lowest announced piece not written nor in flight, or None for now."""
        index = self._next
        while index < len(self.digests) and (index in self.written or index in self.in_flight):
            index += 1
        if index >= len(self.digests):
            return None
        self.in_flight.add(index)
        return index

    def size_of(self, index: int) -> int:
        if self.length is None:
            return self.piece_size
        return piece_length(index, self.length, self.piece_size)

    def piece_written(self, index: int, source: str, size: int) -> None:
        self.in_flight.discard(index)
        self.written.add(index)
        self.bytes_written += size
        counts = self.sources.setdefault(source, SourceCounts())
        counts.bytes += size
        counts.pieces += 1
        while self._next in self.written:
            self._next += 1
        self._notify()

    def piece_failed(self, index: int, source: str, kind: str) -> int:
        """Put a piece back to be fetched again; returns how often it has failed."""
        self.in_flight.discard(index)
        counts = self.sources.setdefault(source, SourceCounts())
        setattr(counts, kind, getattr(counts, kind) + 1)
        self.attempts[index] = self.attempts.get(index, 0) + 1
        self._notify()
        return self.attempts[index]

    # -- waiting ---------------------------------------------------------------------------

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_changed(self) -> None:
        await self._changed.wait()
