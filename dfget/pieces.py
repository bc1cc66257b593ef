"""Piece bookkeeping of one download: what is known, written, and from where.

No I/O: the engine feeds it the supernode's news (`add_ready`, `set_done`) and the
outcome of each transfer (how a failed one ends is `dfget.outcomes`); the scheduler on
the supernode decides what to fetch next.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import trio

from dfget.results import SourceCounts
from proto.messages import Outcome
from proto.pieces import piece_length


@dataclass
class PieceBook:
    task_id: str
    generation: int
    piece_size: int
    length: int | None
    digests: list[bytes] = field(default_factory=list)  # index → plaintext blake3
    piece_count: int | None = None  # known once the CDN is done
    written: dict[int, int] = field(default_factory=dict)  # index → plaintext length
    attempts: dict[int, int] = field(default_factory=dict)
    sources: dict[str, SourceCounts] = field(default_factory=dict)
    bytes_written: int = 0
    validators: tuple[str, str] = ("", "")  # the origin's ETag and Last-Modified, once done

    def __post_init__(self) -> None:
        self._changed = trio.Event()

    # -- news from the supernode -------------------------------------------------------

    def add_ready(self, start: int, digests: tuple[bytes, ...]) -> None:
        if start != len(self.digests):
            raise ValueError(f"pieces announced out of order: {start} after {len(self.digests)}")
        self.digests.extend(digests)
        self._notify()

    def set_done(
        self, length: int, piece_count: int, validators: tuple[str, str] = ("", "")
    ) -> None:
        if piece_count != len(self.digests):
            raise ValueError(f"task done with {len(self.digests)} of {piece_count} digests")
        self.length, self.piece_count, self.validators = length, piece_count, validators
        self._notify()

    # -- choosing and completing pieces -------------------------------------------------

    @property
    def complete(self) -> bool:
        return self.piece_count is not None and len(self.written) == self.piece_count

    def size_of(self, index: int) -> int:
        if self.length is None:
            return self.piece_size
        return piece_length(index, self.length, self.piece_size)

    def holds(self, index: int) -> bool:
        return index in self.written

    def length_of(self, index: int) -> int:
        """Plaintext length of a written piece."""
        return self.written[index]

    def piece_written(self, index: int, source: str, size: int) -> None:
        self.written[index] = size
        self.bytes_written += size
        counts = self.sources.setdefault(source, SourceCounts())
        counts.bytes += size
        counts.pieces += 1
        self._notify()

    def failures_of(self, index: int) -> int:
        """How often transfers of piece `index` have failed (busy aside)."""
        return self.attempts.get(index, 0)

    def piece_failed(
        self, index: int, source: str, outcome: Outcome, *, counts_as_attempt: bool = True
    ) -> int:
        """Count a failed transfer of a piece; returns how often that piece has failed."""
        self.sources.setdefault(source, SourceCounts()).tally(outcome)
        if counts_as_attempt:
            self.attempts[index] = self.attempts.get(index, 0) + 1
        self._notify()
        return self.failures_of(index)

    # -- waiting ---------------------------------------------------------------------------

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_changed(self) -> None:
        await self._changed.wait()
