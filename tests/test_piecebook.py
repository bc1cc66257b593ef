"""dfget's piece bookkeeping: what counts as an attempt at a piece, by source."""

from __future__ import annotations

from dfget.pieces import PieceBook
from proto.messages import Outcome


def book() -> PieceBook:
    return PieceBook(task_id="0" * 64, generation=1, piece_size=1024, length=4096)


def test_busy_is_tallied_but_not_an_attempt() -> None:
    pieces = book()
    assert pieces.piece_failed(3, "peers", Outcome.REFUSED, counts_as_attempt=False) == 0
    assert pieces.piece_failed(3, "peers", Outcome.REFUSED, counts_as_attempt=False) == 0
    assert pieces.sources["peers"].refused == 2
    assert pieces.attempts == {}


def test_failures_of_one_piece_add_up_over_sources() -> None:
    pieces = book()
    assert pieces.piece_failed(2, "cdn", Outcome.FAILED) == 1
    assert pieces.piece_failed(2, "peers", Outcome.CORRUPT) == 2
    assert pieces.piece_failed(1, "peers", Outcome.REFUSED) == 1
    assert pieces.piece_failed(2, "peers", Outcome.REFUSED, counts_as_attempt=False) == 2
    assert pieces.sources["cdn"].failed == 1
    assert (pieces.sources["peers"].corrupt, pieces.sources["peers"].refused) == (1, 2)
