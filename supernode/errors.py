"""Errors of the supernode, split by who is at fault, each mapping to a wire code."""

from __future__ import annotations

from common.urls import display_url
from proto.errors import ErrorCode


class SupernodeError(Exception):
    """Root of the supernode's errors; `code` is what a peer is told."""

    code: ErrorCode = ErrorCode.INTERNAL
    status: int | None = None


class StoreUnavailable(SupernodeError):
    """A store the members share (the cluster's Redis) did not answer: try again."""


class BadRequest(SupernodeError):
    """A peer asked for something malformed (URL, digest, range)."""

    code = ErrorCode.BAD_REQUEST


class OriginError(SupernodeError):
    """The origin could not give us the bytes."""


class OriginStatusError(OriginError):
    """The origin answered an HTTP error status (kept in `status` for the peer)."""

    code = ErrorCode.ORIGIN_STATUS

    def __init__(self, url: str, status: int, reason: str = "") -> None:
        super().__init__(
            f"origin answered {status} {reason} for {display_url(url)}".replace("  ", " ")
        )
        self.status = status


class OriginUnreachable(OriginError):
    code = ErrorCode.ORIGIN_UNREACHABLE


class BadRedirect(OriginUnreachable):
    """The origin redirected to a URL no client can send (a host or port that is none):
    its answer, the same each time it is asked."""


class OriginTimeout(OriginError):
    code = ErrorCode.ORIGIN_TIMEOUT


class OriginBroken(OriginError):
    """The body was cut short and could not be resumed."""

    code = ErrorCode.ORIGIN_BROKEN


class OriginDenied(OriginError):
    """The origin's address is one the operator's policy refuses (`--origin-allow`,
    `--origin-deny`; link-local and cloud metadata by default): nothing was sent."""

    code = ErrorCode.ORIGIN_DENIED


class ContentMismatch(SupernodeError):
    """The body did not match the digest the task is named by."""

    code = ErrorCode.DIGEST_MISMATCH


class StoreError(SupernodeError):
    """The piece store could not write or read (disk full, permissions)."""

    code = ErrorCode.STORE


class TaskSuperseded(SupernodeError):
    """The content changed upstream: a newer generation of the task replaced this one."""

    code = ErrorCode.STALE


class ShuttingDown(SupernodeError):
    """The supernode stopped while the task was being fetched."""

    code = ErrorCode.SHUTDOWN


class TooManyFetches(SupernodeError):
    """The supernode runs as many origin fetches as it may (--max-fetches): retry later."""

    code = ErrorCode.BUSY


class TaskTooLarge(SupernodeError):
    """The task is larger than the supernode carries (--max-task-size)."""

    code = ErrorCode.TOO_LARGE


class StoreFull(SupernodeError):
    """The store quota has no room for the task now (--store-quota): retry later."""

    code = ErrorCode.STORE_FULL
