"""Errors of dfget; each carries the process exit code the CLI returns for it.
`reply_error` turns a supernode's typed error code into the one a user should see.

Exit codes (documented in `dfget --help` and docs/dfget.md):
  0 success            3 origin error          6 timeout
  1 other failure      4 integrity error       7 output error
  2 usage error        5 no supernode          8 supernode protocol error
                                               9 not admitted (cluster token)
  141 stdout closed early (-o -: StdoutClosed)
"""

from __future__ import annotations

from proto.errors import ErrorCode


class DfgetError(Exception):
    exit_code = 1


class UsageError(DfgetError):
    """Bad arguments: URL, digest, header, rate."""

    exit_code = 2


class OriginFailed(DfgetError):
    """The origin refused or failed; `status` is its HTTP status if it answered."""

    exit_code = 3

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class IntegrityError(DfgetError):
    """Bytes did not match: a piece that would not verify, or the whole-file digest."""

    exit_code = 4


class SupernodeUnavailable(DfgetError):
    """No supernode could serve it: unreachable, or it refused the task for now or for
    good (busy, store full, too large); back-to-source was not allowed."""

    exit_code = 5


class DownloadTimeout(DfgetError):
    exit_code = 6


class OutputError(DfgetError):
    """The output file could not be written or renamed."""

    exit_code = 7


class SupernodeFailed(DfgetError):
    """The supernode broke the protocol or failed internally."""

    exit_code = 8


class NotAdmitted(SupernodeFailed):
    """The supernode refused this peer: missing or wrong cluster token."""

    exit_code = 9


class SupernodeNotProven(SupernodeUnavailable):
    """With a cluster token, what answered at a supernode's address did not prove that
    it knows the token: nothing (no credentials, no request) is sent to it, and the
    download goes on as without that supernode (the next one, or the origin); exit 9 if
    it cannot."""

    exit_code = 9


class TaskChanged(SupernodeFailed):
    """The file changed upstream during the download (a new task generation)."""


_ORIGIN_CODES = {
    ErrorCode.ORIGIN_STATUS,
    ErrorCode.ORIGIN_UNREACHABLE,
    ErrorCode.ORIGIN_TIMEOUT,
    ErrorCode.ORIGIN_BROKEN,
    ErrorCode.ORIGIN_DENIED,  # refused by the supernode's policy: never back to source
}
# The supernode cannot take this task now (it runs its most origin fetches, its store
# is full) or at all (larger than it carries): nothing is wrong with the file or this
# peer, so on to the next supernode or the origin, as when it is unreachable.
_UNAVAILABLE_CODES = {ErrorCode.BUSY, ErrorCode.STORE_FULL, ErrorCode.TOO_LARGE}


class StdoutClosed(DfgetError):
    """The reader closed the pipe before the end (`dfget … -o - | head`)."""

    exit_code = 141  # 128 + SIGPIPE, what a shell reports for a writer killed by it


def reply_error(code: str, message: str, status: int | None) -> DfgetError:
    """A supernode's typed error as the dfget error a user should see."""
    if code in _ORIGIN_CODES:
        return OriginFailed(message, status)
    if code == ErrorCode.DIGEST_MISMATCH:
        return IntegrityError(message)
    if code == ErrorCode.BAD_REQUEST:
        return UsageError(message)
    if code == ErrorCode.STALE:
        return TaskChanged(f"the file changed upstream during the download ({message})")
    if code == ErrorCode.FORBIDDEN:
        return NotAdmitted(message)
    if code in _UNAVAILABLE_CODES:
        return SupernodeUnavailable(f"the supernode cannot serve it ({code}): {message}")
    return SupernodeFailed(f"{code}: {message}")
