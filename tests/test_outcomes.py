"""How a failed piece transfer ends (`dfget.outcomes`): synchronous, no event loop."""

from __future__ import annotations

import pytest
import trio

from dfget.errors import IntegrityError, SupernodeUnavailable, TaskChanged
from dfget.outcomes import MAX_PIECE_FAILURES, TransferEnd, TransferError, transfer_end
from dfget.pieces import PieceBook
from dfget.results import SourceCounts
from dfget.sources import PieceRefusedError, SourceLost
from proto.errors import ErrorCode, PieceCorrupted
from proto.messages import Outcome

TASK = "0" * 64
SUPERNODE = "198.18.0.5:8002"


def end(error: TransferError, *, from_cdn: bool = False, failures: int = 0) -> TransferEnd:
    return transfer_end(error, from_cdn=from_cdn, failures=failures, index=3, address=SUPERNODE)


def refused(code: ErrorCode) -> PieceRefusedError:
    return PieceRefusedError(code, "no")


def corrupt() -> PieceCorrupted:
    return PieceCorrupted(TASK, 3, "GCM tag")


def test_no_event_loop_is_needed() -> None:
    with pytest.raises(RuntimeError):
        trio.current_time()  # (outside trio.run: there is no loop, and none is needed)
    assert end(SourceLost("gone")).outcome is Outcome.FAILED


@pytest.mark.parametrize("from_cdn", [False, True])
def test_busy_is_no_failure_even_at_the_limit(from_cdn: bool) -> None:
    busy = end(refused(ErrorCode.BUSY), from_cdn=from_cdn, failures=MAX_PIECE_FAILURES + 5)
    assert busy == TransferEnd(Outcome.BUSY, counts_as_attempt=False)


def test_stale_from_the_cdn_means_the_file_changed() -> None:
    error = refused(ErrorCode.STALE)
    with pytest.raises(TaskChanged, match="changed upstream") as caught:
        end(error, from_cdn=True)
    assert caught.value.__cause__ is error


def test_stale_from_a_peer_is_a_refusal() -> None:
    assert end(refused(ErrorCode.STALE)) == TransferEnd(Outcome.REFUSED)


@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        (refused(ErrorCode.NOT_HELD), Outcome.REFUSED),
        (refused(ErrorCode.BAD_TICKET), Outcome.REFUSED),
        (corrupt(), Outcome.CORRUPT),
        (SourceLost("198.18.0.7:40000: connection reset"), Outcome.FAILED),
        (trio.TooSlowError(), Outcome.TIMEOUT),
    ],
)
def test_failures_count_against_the_piece(error: TransferError, outcome: Outcome) -> None:
    assert end(error, failures=MAX_PIECE_FAILURES - 2) == TransferEnd(outcome)


@pytest.mark.parametrize(
    ("error", "last"),
    [
        (refused(ErrorCode.NOT_HELD), "not_held: no"),
        (SourceLost("connection reset"), "connection reset"),
        (trio.TooSlowError(), "TooSlowError"),  # no message: its type names it
    ],
)
def test_the_last_failure_allowed_leaves_the_swarm(error: TransferError, last: str) -> None:
    ended = end(error, failures=MAX_PIECE_FAILURES - 1)
    assert ended.counts_as_attempt
    assert isinstance(ended.leave, SupernodeUnavailable)
    assert str(ended.leave) == (
        f"piece 3 failed {MAX_PIECE_FAILURES} times through supernode {SUPERNODE} (last: {last})"
    )


def test_the_last_corrupt_copy_from_the_cdn_is_an_integrity_error() -> None:
    ended = end(corrupt(), failures=MAX_PIECE_FAILURES - 1, from_cdn=True)
    assert ended.outcome is Outcome.CORRUPT
    assert isinstance(ended.leave, IntegrityError)
    assert str(ended.leave) == f"piece 3 failed verification {MAX_PIECE_FAILURES} times"


def test_the_last_corrupt_copy_from_a_peer_leaves_the_swarm() -> None:
    """Lying peers cannot fail a download where an unreachable swarm would not: dfget
    goes on to the next supernode or the origin."""
    ended = end(corrupt(), failures=MAX_PIECE_FAILURES - 1, from_cdn=False)
    assert ended.outcome is Outcome.CORRUPT
    assert isinstance(ended.leave, SupernodeUnavailable)
    assert f"piece 3 failed {MAX_PIECE_FAILURES} times" in str(ended.leave)


def test_a_ladder_of_failures_through_the_book() -> None:
    """What `dfget.transfers` does with each end: tally it, then leave if told to."""
    book = PieceBook(task_id=TASK, generation=1, piece_size=1024, length=4096)
    errors: list[TransferError] = [refused(ErrorCode.BUSY), corrupt(), trio.TooSlowError()]
    errors += [SourceLost("reset")] * (MAX_PIECE_FAILURES - 3) + [refused(ErrorCode.NOT_HELD)]
    ends = []
    for error in errors:
        ended = end(error, failures=book.failures_of(3))
        book.piece_failed(3, "peers", ended.outcome, counts_as_attempt=ended.counts_as_attempt)
        ends.append(ended)
    assert [e.leave is None for e in ends] == [True] * (len(errors) - 1) + [False]
    assert book.failures_of(3) == MAX_PIECE_FAILURES
    assert book.sources["peers"] == SourceCounts(
        refused=2, failed=MAX_PIECE_FAILURES - 2, corrupt=1
    )


@pytest.mark.parametrize(
    ("outcome", "counts"),
    [
        (Outcome.BUSY, SourceCounts(refused=1)),
        (Outcome.REFUSED, SourceCounts(refused=1)),
        (Outcome.FAILED, SourceCounts(failed=1)),
        (Outcome.TIMEOUT, SourceCounts(failed=1)),
        (Outcome.CORRUPT, SourceCounts(corrupt=1)),
    ],
)
def test_each_failure_is_tallied_once(outcome: Outcome, counts: SourceCounts) -> None:
    tally = SourceCounts()
    tally.tally(outcome)
    assert tally == counts


@pytest.mark.parametrize("outcome", [Outcome.DONE, Outcome.CANCELLED])
def test_only_failures_are_tallied(outcome: Outcome) -> None:
    with pytest.raises(ValueError):
        SourceCounts().tally(outcome)
