"""Errors kept to be raised again later, without the frames they came through.

An exception holds its traceback, and the traceback every frame it passed through with
all of their locals: a failed fetch's part buffers, a download's piece buffers, a
request with its requester's keys, a whole session. Kept on something long-lived (a
failed task waits out its retry delay, a broken session ends every line on it, a
failed blob answers its next requests), an error keeps all of that alive; raised again
to each waiter, the one object gathers every waiter's frames as well.

`frameless` copies an exception for keeping: the same type, message, attributes and
chained causes (copied the same way), none of the tracebacks. The keeper stores a copy
and raises a fresh copy of it to each waiter, whose frames then go with its own. What
the error and its causes hold besides frames is copied with them (an httpx error's
request, with its headers): a keeper that needs no causes keeps none (`chain=0`).
"""

from __future__ import annotations

from types import WrapperDescriptorType
from typing import TypeVar, cast

E = TypeVar("E", bound=BaseException)

CHAIN = 8  # causes (or contexts) copied along a chain: the rest is left off
_OS_FIELDS = ("errno", "strerror", "filename", "filename2")


def frameless(exc: E, chain: int = CHAIN) -> E:
    """A copy of `exc` with no traceback, nor any along the chain of its causes (at most
    `chain` of them); `exc` itself is left as it is. Never raises: an exception that
    cannot be made this way (a constructor of its own that `__new__` goes through) is
    given back as it is, frames and all, rather than fail the error path it is on."""
    try:
        copy = _copy(exc)
    except Exception:
        return exc
    if chain > 0:
        if exc.__cause__ is not None:
            copy.__cause__ = frameless(exc.__cause__, chain - 1)
        elif exc.__context__ is not None and not exc.__suppress_context__:
            copy.__context__ = frameless(exc.__context__, chain - 1)
    copy.__suppress_context__ = exc.__suppress_context__
    return copy


def _copy(exc: E) -> E:
    """The exception alone, made without its class's `__init__` (which may want other
    arguments than the `args` it keeps: OriginStatusError's url and status); its
    attributes, in its `__dict__` or in slots (trio's Cancelled), go with it."""
    copy: BaseException
    if isinstance(exc, BaseExceptionGroup):
        copy = exc.derive([frameless(inner) for inner in exc.exceptions])
    else:
        kind: type[BaseException] = type(exc)
        copy = kind.__new__(kind, *exc.args)
        if isinstance(kind.__init__, WrapperDescriptorType):
            # A built-in one keeps fields of its own from its args (StopIteration's
            # value, UnicodeError's positions, SystemExit's code): it sets them here.
            # (Not those it takes by keyword only: ImportError's name and path. One of
            # ours would want its own arguments: what it set is in its dict.)
            kind.__init__(copy, *exc.args)
        copy.args = exc.args
    copy.__dict__.update(vars(exc))
    if "__notes__" in vars(exc):  # (a list: a note added to a copy is the copy's alone)
        copy.__notes__ = list(exc.__notes__)
    for cls in type(exc).__mro__:
        slots = getattr(cls, "__slots__", ())
        for name in (slots,) if isinstance(slots, str) else slots:
            if name not in ("__dict__", "__weakref__") and hasattr(exc, name):
                object.__setattr__(copy, name, getattr(exc, name))  # (frozen or not)
    if isinstance(exc, OSError):  # (kept in fields of their own, not in args)
        for field in _OS_FIELDS:
            if getattr(exc, field) is not None:  # (a None set would read "-> None")
                setattr(copy, field, getattr(exc, field))
    return cast(E, copy)
