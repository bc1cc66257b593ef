"""The small parsers fuzzed (Hypothesis): Range headers, digests, task ids, URLs, sizes
and listen addresses, with random and adversarial strings (any Unicode, control
characters, IPv6 literals, user info, percent-encoding, huge ports, empty parts).

Each raises nothing but its documented error (ValueError, or None for the mirror's
Range), and what it returns keeps its promise: a span inside the file, 64 lower-case
hex task ids, URLs for logs without credentials or query values, canonical URLs that
do not change when canonicalised again.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import re
from fractions import Fraction
from urllib.parse import parse_qsl, unquote, urlsplit

import blake3
import pytest
from fuzz_strategies import FUZZ, fuzz_settings
from hypothesis import example, given
from hypothesis import strategies as st

from common.addresses import parse_listen
from common.units import _UNITS, format_size, parse_rate, parse_size
from common.urls import display_url, move_credentials
from proto.digests import digest_matches, new_hasher
from proto.ranges import parse_range, requested_span
from proto.taskid import (
    DEFAULT_FILTER,
    canonical_url,
    check_digest,
    check_task_id,
    task_id_for,
)

# Text as an attacker would send it: every code point but lone surrogates, weighted
# towards the characters parsers care about.
SPECIAL = "/?#@:[]%\\ \t\r\n\x00\x7f=&;+,.-_~!$'()*"
any_text = st.text(st.sampled_from(SPECIAL) | st.characters(exclude_categories=["Cs"]), max_size=30)
digits = st.integers(0, 10**25).map(str)
unicode_digits = st.text(st.characters(categories=("Nd", "No")), min_size=1, max_size=4)


# -- Range ------------------------------------------------------------------------------

range_headers = st.one_of(
    any_text,
    st.builds(lambda a, b: f"bytes={a}-{b}", digits | any_text, digits | st.just("") | any_text),
    st.builds(lambda n: f"bytes=-{n}", digits | any_text),
    st.builds(
        lambda unit, spec, more: f"{unit}={spec}{more}",
        st.sampled_from(["bytes", "BYTES", " bytes ", "items", ""]),
        st.builds(lambda a, b: f"{a}-{b}", digits | st.just(""), digits | st.just("")),
        st.sampled_from(["", ",0-1", ", 5-", ",-3", " "]),
    ),
    unicode_digits.map(lambda d: f"bytes={d}-"),
)
lengths = st.integers(0, 1000) | st.integers(0, 1 << 64)


@FUZZ
@given(header=range_headers)
@example(header="bytes=٣-")  # Arabic-Indic three
@example(header="bytes=1" + "0" * 5000 + "-")
def test_proto_parse_range(header: str) -> None:
    try:
        first, last = parse_range(header)
    except ValueError:
        return
    assert first >= 0 and (last is None or last >= first)
    digits_only = re.fullmatch(r"bytes=([0-9]+)-([0-9]*)", header.strip().replace(" ", ""))
    assert digits_only is not None, f"{header!r} accepted"
    assert (first, last) == (int(digits_only[1]), int(digits_only[2]) if digits_only[2] else None)


@FUZZ
@given(first=st.integers(0, 1 << 70), count=st.none() | st.integers(0, 1 << 70))
def test_proto_parse_range_reads_what_it_is_given(first: int, count: int | None) -> None:
    last = None if count is None else first + count
    header = f"bytes={first}-{'' if last is None else last}"
    assert parse_range(header) == (first, last)


def test_proto_parse_range_takes_ascii_digits_only() -> None:
    for header in ("bytes=٣-", "bytes=0-٩", "bytes=１-2"):
        with pytest.raises(ValueError):
            parse_range(header)


@FUZZ
@given(header=range_headers, length=lengths)
@example(header="bytes=-0", length=10)
@example(header="bytes=5-4", length=10)
@example(header="bytes=10-", length=10)
@example(header="bytes=-5", length=0)
@example(header="bytes=0--1", length=10)
@example(header="bytes=1" + "0" * 5000 + "-", length=10)
def test_mirror_parse_range_stays_inside_the_blob(header: str, length: int) -> None:
    span = requested_span(header, length)  # no exception at all: None if unusable
    if span is not None:
        start, end = span
        assert 0 <= start < end <= length


@FUZZ
@given(length=st.integers(1, 1 << 50), first=st.integers(0, 1 << 51), last=st.integers(0, 1 << 51))
def test_mirror_parse_range_serves_what_was_asked(length: int, first: int, last: int) -> None:
    span = requested_span(f"bytes={first}-{last}", length)
    if first < length and last >= first:
        assert span == (first, min(last + 1, length))
    else:
        assert span is None
    assert requested_span(f"bytes=-{last}", length) == (
        (max(0, length - last), length) if last > 0 else None
    )


# -- digests and task ids -----------------------------------------------------------------

HEX = "0123456789abcdef"
algos = st.sampled_from(["sha256", "sha512", "blake3", "md5", "SHA256", "sha256 ", ""])
digest_texts = st.one_of(
    any_text,
    st.builds(
        lambda algo, hexits: f"{algo}:{hexits}",
        algos,
        st.text(HEX + "ABCDEFg", min_size=60, max_size=130) | any_text,
    ),
)
WANT_LENGTH = {"sha256": 64, "sha512": 128, "blake3": 64}


@FUZZ
@given(digest=digest_texts | st.integers() | st.none() | st.binary())
def test_check_digest(digest: object) -> None:
    try:
        assert check_digest(digest) == digest  # type: ignore[arg-type]  # any type, on purpose
    except ValueError:
        return
    assert isinstance(digest, str)
    algo, hexits = digest.split(":")
    assert len(hexits) == WANT_LENGTH[algo] and set(hexits) <= set(HEX)


@FUZZ
@given(digest=digest_texts, data=st.binary(max_size=100))
def test_hashers_and_matching(digest: str, data: bytes) -> None:
    assert digest_matches(digest, blake3.blake3(data)) in (True, False)  # never raises
    try:
        hasher = new_hasher(digest)
    except ValueError:
        return
    hasher.update(data)
    algo = digest.split(":")[0]
    real = blake3.blake3(data) if algo == "blake3" else hashlib.new(algo, data)
    assert digest_matches(f"{algo}:{real.hexdigest()}", hasher)
    assert digest_matches(digest, hasher) == (digest == f"{algo}:{real.hexdigest()}")


def test_a_malformed_digest_matches_nothing() -> None:
    assert not digest_matches("sha256", hashlib.sha256())  # was an IndexError


@FUZZ
@given(task_id=st.text(HEX + "ABCDEF", min_size=62, max_size=66) | any_text | st.integers())
def test_check_task_id(task_id: object) -> None:
    try:
        assert check_task_id(task_id) == task_id  # type: ignore[arg-type]  # any type, on purpose
    except ValueError:
        return
    assert isinstance(task_id, str) and len(task_id) == 64 and set(task_id) <= set(HEX)


# -- URLs ---------------------------------------------------------------------------------

USER, PASSWORD, SECRET = "uSeRmArK", "pAsSmArK", "qUeRyMaRk"
# User info as a user writes it: no raw delimiters (they would be %-encoded).
userinfo_text = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters="/?#@\\[]:"), max_size=6
)
hosts = st.one_of(
    st.from_regex(r"[A-Za-z0-9-]{1,12}(\.[A-Za-z0-9-]{1,8}){0,2}\.?", fullmatch=True),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(lambda a: f"[{a}]"),
    st.sampled_from(
        ["[fe80::1%25eth0]", "[::1]x", "[v1.x]", "[", "]", "[]", "a[b]", "xn--bcher-kva"]
    ),
    any_text,
)
ports = st.one_of(
    st.none(),
    st.integers(0, 70000).map(str),
    st.integers(0, 10**30).map(str),
    st.sampled_from(["", "+80", "-1", "0x50", " 80", "80 ", "٨٠", "８０"]),
)
separators = st.sampled_from(["://", "://", "://", ":", ":/", ":///", ":////", ":\\\\", "//", ""])


@st.composite
def adversarial_urls(draw: st.DrawFn) -> tuple[str, bool]:
    """A URL, and whether it carries the user info and query markers."""
    scheme = draw(st.sampled_from(["http", "https", "HTTP", "hTTpS", "ftp", "", "x-y"]))
    marked = draw(st.booleans())
    userinfo = ""
    if marked:
        user = USER + draw(userinfo_text)
        password = draw(st.none() | userinfo_text.map(lambda t: PASSWORD + t))
        userinfo = (user if password is None else f"{user}:{password}") + "@"
    port = draw(ports)
    path = draw(st.sampled_from(["", "/"]) | any_text.map(lambda p: "/" + p.replace("?", "")))
    query = ""
    if draw(st.booleans()):
        query = "?" + draw(st.sampled_from(["sig", "a", "X-Amz-Signature", "ns"])) + "=" + SECRET
    fragment = draw(st.sampled_from(["", "#frag", "#" + SECRET]))
    junk = draw(st.sampled_from(["", " ", "\t", "\x00", "\u3000"]))
    url = f"{junk}{scheme}{draw(separators)}{userinfo}{draw(hosts)}"
    url += ("" if port is None else f":{port}") + path + query + fragment
    return url, marked


url_cases = adversarial_urls() | any_text.map(lambda t: (t, False))


@fuzz_settings(500)
@given(case=url_cases)
@example(case=("http:////uSeRmArK:pAsSmArK@h/x", True))
@example(case=("http:uSeRmArK:pAsSmArK@h/x", True))
@example(case=("http:\\\\uSeRmArK:pAsSmArK@h/x?a=qUeRyMaRk", True))
@example(case=("uSeRmArK:pAsSmArK@h/x", True))
def test_display_url_never_shows_secrets(case: tuple[str, bool]) -> None:
    url, _ = case
    shown = display_url(url)  # never raises
    for secret in (USER, PASSWORD, SECRET):
        assert secret.lower() not in shown.lower(), f"{url!r} shown as {shown!r}"


@fuzz_settings(500)
@given(case=url_cases, extra_filter=st.lists(st.sampled_from(["a", "sig", "b"]), max_size=2))
@example(case=("http://[::1]x:81/", False), extra_filter=[])
@example(case=("http://[v1.x]/", False), extra_filter=[])
def test_canonical_url(case: tuple[str, bool], extra_filter: list[str]) -> None:
    url, _ = case
    try:
        canonical = canonical_url(url, extra_filter)
    except ValueError:
        return
    assert canonical_url(canonical, extra_filter) == canonical  # idempotent
    parts, given_parts = urlsplit(canonical), urlsplit(url)
    assert parts.scheme in ("http", "https") and parts.hostname == given_parts.hostname
    assert parts.username is None and parts.password is None and not parts.fragment
    default = {"http": 80, "https": 443}[parts.scheme]
    assert parts.port == (None if given_parts.port in (None, default) else given_parts.port)
    dropped = DEFAULT_FILTER | {k.lower() for k in extra_filter}
    assert not {k.lower() for k, _ in parse_qsl(parts.query, keep_blank_values=True)} & dropped


def test_canonical_url_refuses_junk_after_an_ip_literal() -> None:
    with pytest.raises(ValueError):
        canonical_url("http://[::1]x:81/")  # urlsplit: host ::1, port 81
    assert canonical_url("http://[v1.x]:81/") == "http://[v1.x]:81/"  # stays a literal


@FUZZ
@given(case=url_cases, auth=st.booleans())
def test_move_credentials(case: tuple[str, bool], auth: bool) -> None:
    url, _ = case
    given_headers = (("Authorization", "Bearer x"),) if auth else (("Accept", "*/*"),)
    try:
        bare, headers = move_credentials(url, given_headers)
        parts = urlsplit(url)
    except ValueError:
        return
    assert urlsplit(bare).username is None and urlsplit(bare).password is None
    if parts.username is None and parts.password is None:
        assert (bare, headers) == (url, given_headers)
    elif auth:
        assert headers == given_headers
    else:
        name, value = headers[-1]
        credentials = base64.b64decode(value.removeprefix("Basic ")).decode()
        assert name == "Authorization"
        assert credentials == f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"


task_urls = url_cases.map(lambda case: case[0]) | st.builds(
    lambda host, path, query: f"https://{host}/{path}?{query}",
    st.from_regex(r"[a-z0-9.-]{1,20}", fullmatch=True),
    any_text,
    any_text,
)


@FUZZ
@given(
    url=task_urls,
    digest=st.none() | digest_texts,
    tag=any_text,
    filter_keys=st.lists(any_text, max_size=3),
    range_header=st.none() | range_headers,
)
def test_task_id_for(
    url: str, digest: str | None, tag: str, filter_keys: list[str], range_header: str | None
) -> None:
    try:
        task_id = task_id_for(
            url, digest=digest, tag=tag, filter_keys=filter_keys, range_header=range_header
        )
    except ValueError:  # what TaskSpec.create documents (the supernode answers bad_request)
        return
    assert check_task_id(task_id) == task_id
    if digest is not None:  # the digest names the bytes: the URL and tag do not count
        assert task_id == task_id_for(
            "http://other.example/", digest=digest, range_header=range_header
        )
    else:
        canonical = canonical_url(url, filter_keys)
        assert task_id == task_id_for(
            canonical, tag=tag, filter_keys=filter_keys, range_header=range_header
        )


# -- sizes and addresses ------------------------------------------------------------------

size_texts = st.one_of(
    any_text,
    st.builds(
        lambda number, space, unit: f"{number}{space}{unit}",
        digits | st.decimals(0, 10**6, places=3).map(str) | st.just("9" * 400) | unicode_digits,
        st.sampled_from(["", " ", "\t"]),
        st.sampled_from(sorted(_UNITS)) | st.sampled_from(["MIB", "kB", "x", "/s", "MiB/s", "e3"]),
    ),
)


@FUZZ
@given(text=size_texts)
@example(text="9" * 400)  # float('9' * 400) is inf: was an OverflowError
@example(text="1e400")
@example(text="٣MiB")
def test_parse_size_and_rate(text: str) -> None:
    try:
        size = parse_size(text)
    except ValueError:
        pass
    else:
        parts = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", text)
        assert parts is not None  # parse_size took it: it has this shape
        number, unit = parts.groups()
        assert size == int(Fraction(number) * _UNITS[unit.lower()]) >= 0
    with contextlib.suppress(ValueError):
        assert parse_rate(text) > 0


@FUZZ
@given(count=st.floats(allow_nan=False) | st.integers(-(1 << 80), 1 << 80))
def test_format_size_never_raises(count: float) -> None:
    assert isinstance(format_size(count), str)


address_texts = st.one_of(
    any_text,
    st.builds(
        lambda host, port: f"{host}:{port}" if port is not None else host,
        hosts | st.just("") | st.ip_addresses(v=6).map(str),
        ports,
    ),
)


@FUZZ
@given(text=address_texts, default_port=st.none() | st.integers(0, 65535))
@example(text="::1", default_port=8000)  # was (":", 1)
@example(text="x:٨٠", default_port=None)  # was port 80
@example(text="x:²", default_port=None)
def test_parse_listen(text: str, default_port: int | None) -> None:
    try:
        host, port = parse_listen(text, default_port)
    except ValueError:
        return
    assert 0 <= port <= 65535 and "[" not in host and "]" not in host
    if ":" in host:  # an IPv6 address: it was given in brackets
        assert f"[{host}]" in text
    assert str(port) in text or port == default_port


@FUZZ
@given(
    host=st.ip_addresses().map(str) | st.from_regex(r"[a-z0-9.-]{1,30}", fullmatch=True),
    port=st.integers(0, 65535),
)
def test_parse_listen_reads_what_it_is_given(host: str, port: int) -> None:
    written = f"[{host}]" if ":" in host else host
    assert parse_listen(f"{written}:{port}") == (host, port)
    assert parse_listen(written, default_port=port) == (host, port)
