"""Errors of the wire layer, split by who broke the rules.

`LocalProtoError`: this side tried to do something the protocol forbids (a bug here).
`RemoteProtoError`: the other side sent bytes or messages that break the protocol.
`RemoteFailure`: the other side answered with a well-formed, typed error (a refusal,
an origin failure); nothing is wrong with the wire.
"""

from __future__ import annotations

import reprlib
from enum import StrEnum

_SHORT = reprlib.Repr()  # (keyword arguments only from Python 3.12 on)
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother = 3, 60, 60
_SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxdict = 6


def is_text(value: object) -> bool:
    """A string that is encodable UTF-8: JSON, TOML and Python strings may hold lone
    surrogates, which msgpack, headers and files refuse."""
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def short_repr(value: object, limit: int = 80) -> str:
    """`repr(value)` for a message about remote input: nesting, lengths and the whole
    bounded (a value nested a thousand deep would make plain repr() raise
    RecursionError)."""
    return _SHORT.repr(value)[:limit]


class ErrorCode(StrEnum):
    """Typed error codes carried by `ErrorReply`, `PieceRefused` and `TaskFailed`."""

    BAD_REQUEST = "bad_request"  # a message that broke the protocol
    VERSION = "version"  # no protocol version in common
    FORBIDDEN = "forbidden"  # not admitted (cluster token)
    UNKNOWN_TASK = "unknown_task"
    STALE = "stale"  # the task moved to a new generation
    NOT_HELD = "not_held"  # the uploader does not hold that piece
    BUSY = "busy"  # upload slots full, or the supernode runs its most origin fetches: retry
    BAD_TICKET = "bad_ticket"
    ORIGIN_STATUS = "origin_status"  # the origin answered an HTTP error; `status` says which
    ORIGIN_UNREACHABLE = "origin_unreachable"  # refused, DNS, TLS
    ORIGIN_TIMEOUT = "origin_timeout"
    ORIGIN_BROKEN = "origin_broken"  # body cut short and could not be resumed
    ORIGIN_DENIED = "origin_denied"  # the operator's origin policy refuses that address
    DIGEST_MISMATCH = "digest_mismatch"  # content did not match the digest the task names
    STORE = "store"  # the supernode could not store the task
    TOO_LARGE = "too_large"  # the task is larger than the supernode carries (--max-task-size)
    STORE_FULL = "store_full"  # the store quota has no room for it now (--store-quota): retry
    INTERNAL = "internal"
    SHUTDOWN = "shutdown"


class ProtoError(Exception):
    """Root of every error raised by `proto`."""


class LocalProtoError(ProtoError):
    """We tried to send something the protocol does not allow."""


class TooLargeToSend(LocalProtoError):
    """A frame (or a Register's sealed part) we would send is over the wire's bound."""


class RemoteProtoError(ProtoError):
    """The peer sent something the protocol does not allow."""

    code: ErrorCode = ErrorCode.BAD_REQUEST


class FrameTooLarge(RemoteProtoError):
    """A frame announced a header or payload over the connection's limit."""

    def __init__(self, what: str, size: int, limit: int) -> None:
        super().__init__(f"{what} of {size} bytes exceeds the limit of {limit}")
        self.what = what
        self.size = size
        self.limit = limit


class MalformedFrame(RemoteProtoError):
    """The bytes do not decode to a frame header (bad msgpack, not a map, ...)."""


class UnknownMessage(RemoteProtoError):
    """The header names a message type this version does not know."""

    def __init__(self, tag: object) -> None:
        super().__init__(f"unknown message type {short_repr(tag)}")
        self.tag = tag


class BadField(RemoteProtoError):
    """A known message carried a missing, extra or ill-typed field."""

    def __init__(self, message_type: str, field: str, problem: str) -> None:
        super().__init__(f"{message_type}.{field}: {problem}")
        self.message_type = message_type
        self.field = field
        self.problem = problem


class UnexpectedMessage(RemoteProtoError):
    """A valid message arrived where the session's state does not allow it."""


class VersionMismatch(RemoteProtoError):
    """The two sides share no protocol version."""

    code = ErrorCode.VERSION


class PieceCorrupted(RemoteProtoError):
    """A sealed piece failed to open (GCM tag) or its plaintext failed its digest."""

    def __init__(self, task_id: str, index: int, reason: str) -> None:
        super().__init__(f"piece {index} of task {task_id[:16]}…: {reason}")
        self.task_id = task_id
        self.index = index
        self.reason = reason


class BadTicket(RemoteProtoError):
    """A piece request carried no ticket, a forged one, an expired one or someone else's."""

    code = ErrorCode.BAD_TICKET


class ConnectionLost(ProtoError):
    """The other side closed the connection or it broke (`clean`: between two frames)."""

    def __init__(self, message: str, *, clean: bool) -> None:
        super().__init__(message)
        self.clean = clean


class RemoteFailure(ProtoError):
    """The peer answered with a typed error: nothing wrong with the wire itself."""

    def __init__(self, code: ErrorCode | str, message: str, status: int | None = None) -> None:
        super().__init__(f"{code}: {message}" + (f" (HTTP {status})" if status else ""))
        self.code = code if isinstance(code, ErrorCode) else _code_or_internal(code)
        self.message = message
        self.status = status


def _code_or_internal(code: str) -> ErrorCode:
    try:
        return ErrorCode(code)
    except ValueError:
        return ErrorCode.INTERNAL
