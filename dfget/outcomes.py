"""How a piece transfer that failed ends: the outcome to report, whether it counts
against the piece, and whether the download must leave this swarm.

Pure: the transfer's error and the piece's failures so far in, a `TransferEnd` out. The
async side (`dfget.transfers`) tallies it in the piece book, reports it, and raises
`leave` if there is one.
"""

from __future__ import annotations

from dataclasses import dataclass

import trio

from dfget.errors import DfgetError, IntegrityError, SupernodeUnavailable, TaskChanged
from dfget.sources import PieceRefusedError, SourceLost
from proto.errors import ErrorCode, PieceCorrupted
from proto.messages import Outcome

MAX_PIECE_FAILURES = 8  # one piece failing this often (busy aside): give up on this swarm

TransferError = PieceRefusedError | PieceCorrupted | SourceLost | trio.TooSlowError
"""What a transfer may fail with: a typed refusal, a piece that does not verify, a
connection lost, or the transfer's deadline."""
TRANSFER_ERRORS = (PieceRefusedError, PieceCorrupted, SourceLost, trio.TooSlowError)


@dataclass(frozen=True, slots=True)
class TransferEnd:
    outcome: Outcome
    counts_as_attempt: bool = True  # toward MAX_PIECE_FAILURES for this piece
    leave: DfgetError | None = None  # after reporting, raise this from the transfer's error


def transfer_end(
    error: TransferError, *, from_cdn: bool, failures: int, index: int, address: str
) -> TransferEnd:
    """How a transfer of piece `index` that failed with `error` ends, the piece having
    failed `failures` times before (busy aside) in the swarm of supernode `address`.

    Raises TaskChanged when the CDN says the file changed upstream (`stale`): the
    download starts over, and this transfer ends `cancelled`.
    """
    if isinstance(error, PieceRefusedError):
        if error.code == ErrorCode.STALE and from_cdn:
            raise TaskChanged(f"the file changed upstream during the download: {error}") from error
        if error.code == ErrorCode.BUSY:  # a normal answer in a busy swarm: not a failure
            return TransferEnd(Outcome.BUSY, counts_as_attempt=False)
        outcome = Outcome.REFUSED
    elif isinstance(error, PieceCorrupted):
        if failures + 1 < MAX_PIECE_FAILURES:
            return TransferEnd(Outcome.CORRUPT)
        if from_cdn:  # the supernode's own copy is damaged (its disk)
            leave = IntegrityError(f"piece {index} failed verification {failures + 1} times")
            return TransferEnd(Outcome.CORRUPT, leave=leave)
        # From peers: lying ones, whom peer ids that cost nothing keep coming back as,
        # cannot make the download fail where an unreachable swarm would not.
        return TransferEnd(
            Outcome.CORRUPT, leave=_give_up_after(failures + 1, index, address, error)
        )
    elif isinstance(error, SourceLost):
        outcome = Outcome.FAILED
    else:
        outcome = Outcome.TIMEOUT
    return TransferEnd(outcome, leave=_give_up_after(failures + 1, index, address, error))


def _give_up_after(
    failures: int, index: int, address: str, last: Exception
) -> SupernodeUnavailable | None:
    """One piece failing this often means this swarm cannot deliver it: move on to the
    next supernode or the origin (as when the supernode is unreachable)."""
    if failures < MAX_PIECE_FAILURES:
        return None
    return SupernodeUnavailable(
        f"piece {index} failed {failures} times through supernode {address} "
        f"(last: {str(last) or type(last).__name__})"
    )


__all__ = ["MAX_PIECE_FAILURES", "TRANSFER_ERRORS", "TransferEnd", "TransferError", "transfer_end"]
