"""Byte ranges: the one reader of `Range: bytes=...` headers.

`read_range` reads a header into a `ByteRange`. It has two callers, which read the same
grammar with two tempers, and each keeps its own (a task id is computed from the one;
clients depend on the other's answers):

- A task's identity (`parse_range`: `task_id_for`, the CDN) is strict: exactly one
  `bytes=FIRST-[LAST]` of ASCII digits, spaces anywhere ignored. Anything else (a
  suffix range, several ranges, another unit) is a ValueError: what names a task is
  never guessed at.
- A client asking for part of a blob of known length (`requested_span`: the mirror) is
  read leniently: the unit in any case, spaces around the parts, the first of several
  ranges, a suffix range (`bytes=-N`, the last N bytes), numbers as Python's `int`
  reads them. What cannot be served is None.
"""

from __future__ import annotations

import re
from typing import NamedTuple

_DIGITS = re.compile(r"[0-9]+")  # ASCII digits (`\d` and `int` take any script's)


class ByteRange(NamedTuple):
    """One range of a `bytes=` header: bytes `first` to `last` included (`last` None:
    to the end), or, with `first` None, a suffix range: the last `last` bytes."""

    first: int | None
    last: int | None

    def span(self, length: int) -> tuple[int, int] | None:
        """[start, end) of these bytes among `length` bytes; None if none of them exist
        (a suffix of 0 bytes, a start at or past the end)."""
        if self.first is None:
            count = self.last or 0
            return (max(0, length - count), length) if count > 0 and length else None
        end = min(length if self.last is None else self.last + 1, length)
        if self.first >= length or end <= self.first:
            return None
        return self.first, end


def read_range(header: str, *, lenient: bool = False) -> ByteRange:
    """The range a `bytes=` Range header names, strictly (a task's identity) or, with
    `lenient`, as an HTTP server reads a client's (see the module's docstring).
    ValueError if it names none; never a negative number, nor a `last` before `first`."""
    if lenient:
        unit, _, ranges = header.partition("=")
        unit, spec = unit.strip().lower(), ranges.split(",")[0].strip()
    else:
        unit, _, spec = header.strip().replace(" ", "").partition("=")
    low, dash, high = spec.partition("-")
    strict_syntax = _DIGITS.fullmatch(low) and (not high or _DIGITS.fullmatch(high))
    if unit != "bytes" or not dash or not (lenient or strict_syntax):
        raise ValueError(f"only one 'bytes=first-[last]' range is supported, not {header!r}")
    if not low:  # a suffix range (lenient only: the strict syntax wants a first byte)
        count = int(high)
        if count < 0:
            raise ValueError(f"a suffix range of {count} bytes: {header!r}")
        return ByteRange(None, count)
    first = int(low)  # never negative: `low` holds no "-"
    last = int(high) if high else None
    if last is not None and last < first:
        raise ValueError(f"range ends before it starts: {header!r}")
    return ByteRange(first, last)


def parse_range(value: str) -> tuple[int, int | None]:
    """A task's Range, `bytes=FIRST-[LAST]`: (first, last or None). ValueError for
    anything else."""
    first, last = read_range(value)
    assert first is not None  # the strict syntax has no suffix range
    return first, last


def requested_span(header: str, length: int) -> tuple[int, int] | None:
    """[start, end) of a client's Range among `length` bytes (the first range of
    several), None if it cannot be read or satisfied."""
    try:
        return read_range(header, lenient=True).span(length)
    except ValueError:
        return None
