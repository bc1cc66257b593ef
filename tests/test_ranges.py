"""proto/ranges.py: the one reader of Range headers, in its two tempers (a task's
identity, strict; a client's request to the mirror, lenient), and the span a range
names in a file of known length. Synchronous: no event loop."""

from __future__ import annotations

import pytest

from proto.ranges import ByteRange, parse_range, read_range, requested_span


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bytes=0-99", ByteRange(0, 99)),
        ("bytes=100-", ByteRange(100, None)),
        ("bytes=7-7", ByteRange(7, 7)),
        (" bytes = 0 - 5 ", ByteRange(0, 5)),  # spaces anywhere are ignored
        ("bytes=1 0-", ByteRange(10, None)),
    ],
)
def test_strict_reads_one_range_of_ascii_digits(header: str, expected: ByteRange) -> None:
    assert read_range(header) == expected


@pytest.mark.parametrize(
    "header",
    [
        "",
        "bytes",
        "bytes=",
        "bytes=-5",  # a suffix range names no first byte
        "bytes=0-1,3-4",  # several ranges
        "BYTES=0-1",  # the unit as it is written in the task's identity
        "items=0-1",
        "bytes=٣-",  # Arabic-Indic three
        "bytes=+1-2",
        "bytes=0-1-2",
        "bytes=0-\t1",
    ],
)
def test_strict_refuses_anything_else(header: str) -> None:
    with pytest.raises(ValueError, match="only one 'bytes=first-\\[last\\]' range"):
        read_range(header)


def test_strict_refuses_a_range_that_ends_before_it_starts() -> None:
    with pytest.raises(ValueError, match="ends before it starts"):
        read_range("bytes=5-4")
    with pytest.raises(ValueError, match="ends before it starts"):
        read_range("bytes=5-4", lenient=True)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bytes=0-99", ByteRange(0, 99)),
        ("BYTES=0-99", ByteRange(0, 99)),
        (" Bytes = 3 - 9 ", ByteRange(3, 9)),
        ("bytes=0-1, 5-", ByteRange(0, 1)),  # the first of several
        ("bytes=-5", ByteRange(None, 5)),  # the last five bytes
        ("bytes=-0", ByteRange(None, 0)),
        ("bytes=٣-", ByteRange(3, None)),  # numbers as `int` reads them
    ],
)
def test_lenient_reads_what_a_client_may_send(header: str, expected: ByteRange) -> None:
    assert read_range(header, lenient=True) == expected


@pytest.mark.parametrize(
    "header",
    ["", "bytes=", "bytes=-", "bytes=5", "items=0-1", "bytes=--1", "bytes=0--1", "bytes=x-"],
)
def test_lenient_refuses_what_names_no_range(header: str) -> None:
    with pytest.raises(ValueError):
        read_range(header, lenient=True)


@pytest.mark.parametrize(
    ("byte_range", "length", "span"),
    [
        (ByteRange(0, 99), 1000, (0, 100)),
        (ByteRange(0, 99), 50, (0, 50)),  # cut at the end
        (ByteRange(10, None), 50, (10, 50)),
        (ByteRange(49, None), 50, (49, 50)),
        (ByteRange(50, None), 50, None),  # starts past the end
        (ByteRange(0, 0), 0, None),
        (ByteRange(None, 10), 50, (40, 50)),
        (ByteRange(None, 100), 50, (0, 50)),  # a suffix longer than the file: all of it
        (ByteRange(None, 0), 50, None),
        (ByteRange(None, 10), 0, None),
    ],
)
def test_span_in_a_file_of_known_length(
    byte_range: ByteRange, length: int, span: tuple[int, int] | None
) -> None:
    assert byte_range.span(length) == span


def test_a_tasks_range_is_a_tuple() -> None:
    assert parse_range("bytes=0-99") == (0, 99)
    assert parse_range("bytes=100-") == (100, None)
    with pytest.raises(ValueError):
        parse_range("bytes=-5")


@pytest.mark.parametrize(
    ("header", "span"),
    [
        ("bytes=1000-1999", (1000, 2000)),
        ("bytes=-10", (4086, 4096)),
        ("bytes=4096-", None),  # unsatisfiable: the mirror answers 416
        ("bytes=5-3", None),
        ("bytes=0-1,9-10", (0, 2)),
        ("words=0-1", None),
        ("bytes=1" + "0" * 5000 + "-", None),  # beyond what `int` reads: None, not an error
    ],
)
def test_a_clients_requested_span(header: str, span: tuple[int, int] | None) -> None:
    assert requested_span(header, 4096) == span
