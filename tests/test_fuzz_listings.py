"""What `dfget -r` reads from untrusted places, fuzzed (Hypothesis): nginx autoindex
pages (HTML and JSON), S3 ListObjectsV2 pages, the manifest found in DIR, the listing
dfdaemon hands back, and the checks on local path parts. Inputs are random, and
realistic pages mutated: any Unicode, control characters, `..`, `/`, `\\`,
percent-encoding, absolute URLs to other hosts, huge numbers, deep nesting, DTDs and
entities, truncated documents.

Each raises nothing but its documented error, and what it returns keeps its promise:
an index page's links stay below the page (a link whose name dfget would use is one
plain path segment there, however a server decodes it) and within its budget; an S3
page's keys are what the XML said; a manifest's records are well formed (and can be
saved again); the daemon's entries stay below the tree; parts that pass never leave DIR.
"""

from __future__ import annotations

import html
import json
import os
import tempfile
import time
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import httpx
import pytest
from fuzz_strategies import FUZZ, fuzz_settings
from hypothesis import example, given
from hypothesis import strategies as st

from dfget.s3list import MAX_KEY, MAX_TOKEN, _parse_page, _refuse_dtd
from dfget.tree import manifest
from dfget.tree.entries import Entry, ListingError
from dfget.tree.handed import _entries
from dfget.tree.index import Link, Page, PageTooLarge, parse_page
from dfget.tree.paths import MAX_FILE_NAME, MAX_NAME, UnsafePath, place, unsafe_part, unsafe_path

# -- shared strategies ------------------------------------------------------------------

# What a hostile listing puts in a name or a link, besides any code point.
PIECES = [
    *("..", ".", "/", "\\", "../", "./", "a/", "sub/", "..;", ";", ":", "@", "~"),
    *("%2e", "%2E%2e", "%2f", "%2F", "%5c", "%5C", "%00", "%", "%zz", "%ff", "%c3%28"),
    *("%252e%252e", "%2e%2e%2f", "?", "#", "?C=N;O=D", "&", "&amp;", "&#46;", "&#x2F;"),
    *("\x00", "\t", "\n", "\r", " ", "\x1b]0;t\x07", "\x7f", "\x85", "\x9b", "\u202e"),
    *("\u2028", "\ufeff", "ü", "€", "𝔘", "．．", "ａ", '"', "'", "<", ">"),
    *("http://198.18.0.1/", "//198.18.0.2/d/", "https://127.0.0.1:8080/d/", "file:///etc/"),
    *("http://127.0.0.1:8080/d/", "HTTP://127.0.0.1:8080/d/", "javascript:", "x" * 300),
]
SURROGATES = ["\ud800", "\udcff", "a\udfffb"]
any_char = st.characters(exclude_categories=["Cs"])
hostile_text = st.lists(st.sampled_from(PIECES) | st.text(any_char, max_size=4), max_size=6).map(
    "".join
)

# JSON as a hostile server (or a broken disk) may send it, nested.
json_values: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**30), 10**30)
    | st.floats(allow_nan=True)
    | hostile_text
    | st.sampled_from(SURROGATES),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(hostile_text, inner, max_size=4),
    max_leaves=12,
)

# Bytes a mutation splices in: markup that breaks parsers, and junk.
INSERTS = [
    *(b"<", b">", b"<![a[x]]>", b"<![ ", b"<!DOCTYPE x [", b"<!ENTITY e 'x'>", b"]>"),
    *(b"<!--", b"-->", b"]]>", b"&#x0;", b"&#xd800;", b"&e;", b"&amp", b'"', b"'"),
    *(b'<a href="', b'<a href="../">', b'<a href="http://[x">', b"</a", b"\xff", b"\xc3"),
    *(b"[", b"]", b"{", b"}", b'"name"', b'"type": "file"', b"\\u0000", b"\\ud800", b"1e999"),
    *(b"<Contents>", b"</Contents>", b"<Key>", b"</Key>", b"\x00", b"\r\n"),
]


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[bytes]) -> bytes:
    """`base`'s bytes, cut, spliced, flipped or repeated a few times."""
    body = draw(base)
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["truncate", "insert", "delete", "flip", "repeat"]))
        at = draw(st.integers(0, len(body)))
        if kind == "truncate":
            body = body[:at]
        elif kind == "insert":
            body = body[:at] + draw(st.sampled_from(INSERTS) | st.binary(max_size=8)) + body[at:]
        elif kind == "delete":
            body = body[:at] + body[at + draw(st.integers(1, 16)) :]
        elif kind == "flip" and at < len(body):
            body = body[:at] + bytes([body[at] ^ draw(st.integers(1, 255))]) + body[at + 1 :]
        elif kind == "repeat":
            chunk = body[at : at + draw(st.integers(1, 32))]
            body = body[:at] + chunk * draw(st.integers(2, 40)) + body[at:]
    return body


def often(usual: st.SearchStrategy[Any], rare: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """`usual` nine times in ten, `rare` the tenth."""
    return st.integers(0, 9).flatmap(lambda roll: rare if roll == 0 else usual)


def is_text(value: str) -> bool:
    """Real text (what a manifest, a log or a URL can carry), not lone surrogates."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def server_steps(path: str) -> list[str] | None:
    """The path as a server that decodes it once (reading `%2F` and `\\` as `/` too, as
    some do) and resolves dot segments sees it; None if that climbs above `/`."""
    steps: list[str] = []
    for step in unquote(path).replace("\\", "/").split("/"):
        if step == "..":
            if not steps:
                return None
            steps.pop()
        elif step not in ("", "."):
            steps.append(step)
    return steps


def below_for_servers(url: str, folder_url: str) -> bool:
    """`url` never leaves the folder `folder_url` (ending in `/`), for a server decoding
    its path once, and for httpx (the client that asks for it)."""
    there, here = urlsplit(url), urlsplit(folder_url)
    if (there.scheme.lower(), there.netloc.lower()) != (here.scheme.lower(), here.netloc.lower()):
        return False
    steps, folder = server_steps(there.path), server_steps(here.path)
    if steps is None or folder is None or steps[: len(folder)] != folder:
        return False
    try:
        asked, base = httpx.URL(url), httpx.URL(folder_url)
    except httpx.InvalidURL:
        return True  # (httpx will not ask for it at all)
    return (asked.scheme, asked.host, asked.port) == (base.scheme, base.host, base.port) and (
        asked.raw_path.split(b"?")[0].startswith(base.raw_path.split(b"?")[0])
    )


# -- 1. index pages (dfget.tree.index.parse_page) ----------------------------------------

PAGE_URLS = [
    "http://127.0.0.1:8080/d/",
    "https://127.0.0.1/pub/sub/",
    "http://mirror.example/a%20b/",
    "http://198.18.0.1:81/",
    "http://127.0.0.2/d/%C3%BC/",
    "http://u:p@127.0.0.1:8080/d/",
]
CONTENT_TYPES = [
    *("text/html", "TEXT/HTML; charset=latin1", "application/json", "application/json;"),
    *("application/x+json; charset=utf-8", "", "text/plain", "application/octet-stream"),
]
safe_names = st.text(
    st.characters(exclude_categories=["Cs", "Cc"], exclude_characters="/\\"), min_size=1
).filter(lambda n: n not in (".", "..") and unsafe_part(n) is None)
names = safe_names | hostile_text | st.sampled_from(["", ".", "..", "a/b", "../x", "%2e%2e"])


def nginx_html(path: str, rows: list[tuple[str, str, bool]]) -> bytes:
    """An nginx `autoindex` HTML page: (href, shown text, whether the href is escaped)."""
    head = (
        f"<html>\r\n<head><title>Index of {path}</title></head>\r\n<body>\r\n"
        f'<h1>Index of {path}</h1><hr><pre><a href="../">../</a>\r\n'
    )
    lines = [
        f'<a href="{html.escape(href) if escaped else href}">{html.escape(text)}</a>'
        f"{' ' * 20} 01-Jan-2024 00:00 {len(text):>19}\r\n"
        for href, text, escaped in rows
    ]
    return (head + "".join(lines) + "</pre><hr></body>\r\n</html>\r\n").encode()


html_hrefs = st.one_of(
    st.tuples(names, st.booleans()).map(lambda n: quote(n[0]) + ("/" if n[1] else "")),
    hostile_text,
    names,
)
html_pages = st.builds(
    nginx_html,
    st.sampled_from(["/d/", "/pub/sub/", "/"]),
    st.lists(st.tuples(html_hrefs, names, st.booleans()), max_size=8),
)

json_sizes = st.one_of(
    st.integers(0, 10**12),
    st.integers(-(10**40), 10**40),
    st.booleans(),
    st.floats(allow_nan=True),
    hostile_text,
    st.none(),
)
json_items = st.fixed_dictionaries(
    {"name": names | st.sampled_from(SURROGATES)},
    optional={
        "type": st.sampled_from(["file", "directory", "other", "FILE"]) | json_values,
        "size": json_sizes,
        "mtime": st.just("Mon, 01 Jan 2024 00:00:00 GMT")
        | hostile_text
        | st.sampled_from(SURROGATES)
        | json_values,
        "extra": json_values,
    },
)


def json_body(value: object, ascii_only: bool) -> bytes:
    # (not ASCII: lone surrogates go out as the bytes they would be, invalid UTF-8)
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


json_pages = st.builds(
    json_body, st.lists(json_items | json_values, max_size=8) | json_values, st.booleans()
)
index_bodies = st.one_of(
    html_pages, json_pages, mutated(html_pages), mutated(json_pages), st.binary(max_size=200)
)


def check_links(page: Page, page_url: str) -> None:
    base = urlsplit(page_url)
    size = 0
    for link in page.links:
        assert isinstance(link, Link)
        # Real text: a validator or URL with a lone surrogate cannot be logged or saved
        # in the manifest (json.dump raises), whatever the page said.
        assert is_text(link.name) and is_text(link.url)
        assert link.validator is None or (
            isinstance(link.validator, str) and is_text(link.validator)
        )
        size += sum(len(t.encode()) for t in (link.url, link.name, link.validator or ""))
        assert link.size is None or (type(link.size) is int and link.size >= 0)
        if link.is_dir:
            assert link.size is None and link.validator is None
        # A direct child of the page: same scheme and host, the page's path, one segment.
        assert "?" not in link.url and "#" not in link.url
        there = urlsplit(link.url)
        assert (there.scheme, there.netloc) == (base.scheme, base.netloc)
        assert there.path.startswith(base.path)
        rest = there.path[len(base.path) :]
        assert rest.endswith("/") == link.is_dir
        segment = rest[:-1] if link.is_dir else rest
        assert "/" not in segment
        assert unquote(segment, errors="strict") == link.name  # the name, decoded
        if unsafe_part(link.name) is None:
            # A name dfget would use (others are refused by dfget.tree.paths, never asked
            # for): nothing in its URL leaves the page's folder, whoever decodes it.
            assert below_for_servers(link.url, page_url), link
    assert page.size == size


@FUZZ
@given(
    body=index_bodies,
    content_type=st.sampled_from(CONTENT_TYPES),
    page_url=st.sampled_from(PAGE_URLS),
    max_size=st.none() | st.integers(0, 3000),
    max_links=st.none() | st.integers(0, 12),
)
# A marked section HTMLParser does not know raised its AssertionError.
@example(
    body=b'<a href="x">x</a><![a[x]]>',
    content_type="",
    page_url=PAGE_URLS[0],
    max_size=None,
    max_links=None,
)
@example(
    body=b"<![ x ", content_type="text/html", page_url=PAGE_URLS[0], max_size=None, max_links=None
)
# A JSON mtime with a lone surrogate made a validator no manifest could save.
@example(
    body=b'[{"name": "a", "type": "file", "size": 1, "mtime": "\\ud800"}]',
    content_type="application/json",
    page_url=PAGE_URLS[0],
    max_size=None,
    max_links=None,
)
@example(body=b"[" * 100_000, content_type="", page_url=PAGE_URLS[0], max_size=None, max_links=1)
@example(
    body=b'[{"name": "a", "type": "file", "size": 1' + b"0" * 5000 + b"}]",
    content_type="application/json",
    page_url=PAGE_URLS[0],
    max_size=None,
    max_links=None,
)
@example(
    body=b'<a href="//[::1/">a</a><a href="http://[::1">b</a><a href="c">c</a>',
    content_type="text/html",
    page_url=PAGE_URLS[0],
    max_size=None,
    max_links=None,
)
@example(
    body=b'<a href="%2e%2e/">a</a><a href="..%2f..%2fx">b</a><a href="a%5c..%5c..%5cx">c</a>',
    content_type="text/html",
    page_url=PAGE_URLS[1],
    max_size=None,
    max_links=None,
)
def test_index_page_links_stay_below_the_page(
    body: bytes, content_type: str, page_url: str, max_size: int | None, max_links: int | None
) -> None:
    try:
        page = parse_page(body, content_type, page_url, max_size, max_links)
    except PageTooLarge as exc:
        if exc.names:
            assert max_size is not None
        else:
            assert max_links is not None
        try:
            full = parse_page(body, content_type, page_url)
        except PageTooLarge as unlimited:
            raise AssertionError("PageTooLarge without limits") from unlimited
        except ValueError:
            return  # (a later entry is not an index's: the limit came first)
        if exc.names:
            assert max_size is not None and full.size > max_size
        return
    except ValueError:
        return  # documented: not an index page at all
    check_links(page, page_url)
    if max_links is not None:
        assert len(page.links) + page.hostile_count + len(page.dropped) <= max_links
    if max_size is not None:
        assert page.size <= max_size
    if max_size is not None or max_links is not None:
        assert parse_page(body, content_type, page_url).links == page.links


@pytest.mark.parametrize("unit", [b"<a ", b"<a", b'<a href="x', b"<!--", b"</", b"<!", b"<?"])
def test_an_unended_tag_costs_linear_time(unit: bytes) -> None:
    """A page of one tag, comment or declaration it never ends: read in a time linear in
    its size (found reading html.parser: its close() read the rest again from each
    later `<`; 64 KiB of `<a ` took 30 s, a 4 MiB page would take hours)."""
    body = unit * (64 * 1024 // len(unit))
    started = time.monotonic()
    page = parse_page(body, "text/html", PAGE_URLS[0])
    assert time.monotonic() - started < 1.0
    assert page.links == []


@fuzz_settings(100)
@given(
    items=st.lists(
        st.tuples(safe_names, st.sampled_from(["file", "directory"]), st.integers(0, 10**15)),
        max_size=8,
    ),
    page_url=st.sampled_from(PAGE_URLS),
)
def test_index_json_lists_what_it_says(items: list[tuple[str, str, int]], page_url: str) -> None:
    """A JSON page of safe names: each becomes its link, in order, below the page."""
    listed = [{"name": n, "type": t, "size": s, "mtime": "m"} for n, t, s in items]
    page = parse_page(json.dumps(listed).encode(), "application/json", page_url)
    assert [(link.name, link.is_dir) for link in page.links] == [
        (n, t == "directory") for n, t, _ in items
    ]
    assert [link.size for link in page.links] == [
        None if t == "directory" else s for _, t, s in items
    ]
    check_links(page, page_url)


# -- 2. S3 ListObjectsV2 pages (dfget.s3list._parse_page) --------------------------------

S3_NS = "http://s3.amazonaws.com/doc/2006-03-01/"
WHERE = "s3://bucket/p/"


def xml_char(c: str) -> bool:
    """A character XML 1.0 may hold (as text or as a character reference)."""
    n = ord(c)
    return n in (9, 10, 13) or 0x20 <= n <= 0xD7FF or 0xE000 <= n <= 0xFFFD or n >= 0x10000


# (XML 1.0's characters: no C0 control but TAB, LF and CR, no U+FFFE or U+FFFF)
xml_chars = st.characters(
    exclude_categories=["Cs", "Cc"], exclude_characters="\ufffe\uffff"
) | st.sampled_from("\t\n\r\x7f\x85\x9b")
xml_text = st.lists(
    st.sampled_from([p for p in PIECES if all(map(xml_char, p))]) | st.text(xml_chars, max_size=4),
    max_size=6,
).map("".join)
s3_keys = st.one_of(
    xml_text,
    st.integers(MAX_KEY - 3, MAX_KEY + 3).map(lambda n: "k" * n),
    st.integers(MAX_KEY // 2 - 2, MAX_KEY // 2 + 2).map(lambda n: "é" * n),  # 2 bytes each
)
# (text, the size it says): plain numbers, and what is not one
s3_sizes = st.one_of(
    st.integers(0, 10**19).map(lambda n: (str(n), n)),
    st.sampled_from(
        ["", "-1", "1e3", "٣", "１", "0x10", " 1", "1 ", "+5", "1_000", "²", "1" * 21, "9" * 5000]
    ).map(lambda t: (t, None)),
)


def encodes(text: str, encoding: str | None) -> bool:
    try:
        text.encode(encoding or "utf-8")
    except UnicodeEncodeError:
        return False
    return True


def xml_escaped(text: str, style: str, encoding: str | None) -> str:
    """`text` as element content: escaped, as character references, or a CDATA section
    (if `encoding` holds it); a CR always as a reference (a raw one is read as a LF)."""
    if style == "cdata" and "]]>" not in text and "\r" not in text and encodes(text, encoding):
        return f"<![CDATA[{text}]]>"
    if style == "refs":
        return "".join(f"&#x{ord(c):x};" for c in text)
    return html.escape(text, quote=False).replace("\r", "&#13;")


@st.composite
def s3_pages(
    draw: st.DrawFn,
) -> tuple[bytes, str, list[tuple[str, int | None, str | None]], str | None, bool]:
    """A ListObjectsV2 page as a store may send it: (body, namespace, the objects it
    lists, the continuation token it gives, whether it says it is truncated)."""
    style = draw(st.sampled_from(["plain", "refs", "cdata"]))
    ns = draw(st.sampled_from([S3_NS, S3_NS, S3_NS, "", "http://example.com/other"]))
    encoding = draw(st.sampled_from([None, "utf-8", "UTF-8", "utf-16", "iso-8859-1"]))
    out = ["<ListBucketResult" + (f' xmlns="{ns}"' if ns else "") + ">"]
    out.append(
        f"<Name>bucket</Name><Prefix>{xml_escaped(draw(xml_text), style, encoding)}</Prefix>"
    )
    truncated = draw(st.none() | st.sampled_from(["true", "false", "True", "TRUE", "", "1", "yes"]))
    if truncated is not None:
        out.append(f"<IsTruncated>{truncated}</IsTruncated>")
    objects: list[tuple[str, int | None, str | None]] = []
    for _ in range(draw(st.integers(0, 5))):
        key = draw(st.none() | s3_keys)
        size_text, size = draw(st.none() | s3_sizes) or (None, None)
        etag = draw(st.none() | xml_text)
        out.append("<Contents>")
        if draw(st.booleans()):
            out.append("<Owner><ID>x</ID></Owner><StorageClass>STANDARD</StorageClass>")
        if key is not None:
            out.append(f"<Key>{xml_escaped(key, style, encoding)}</Key>")
        if size_text is not None:
            out.append(f"<Size>{size_text}</Size>")
        if etag is not None:
            out.append(f"<ETag>{xml_escaped(etag, style, encoding)}</ETag>")
        out.append("</Contents>")
        if key is not None:
            objects.append((key, size, etag))
    if draw(st.booleans()):
        out.append("<CommonPrefixes><Prefix>sub/</Prefix></CommonPrefixes>")
    token = draw(st.none() | xml_text)
    if token is not None:
        out.append(
            f"<NextContinuationToken>{xml_escaped(token, style, encoding)}</NextContinuationToken>"
        )
    out.append("</ListBucketResult>")
    text = "".join(out)
    if encoding is not None:
        text = f'<?xml version="1.0" encoding="{encoding}"?>\n' + text
    body = text.encode(encoding or "utf-8", "xmlcharrefreplace")
    said_truncated = (truncated or "").lower() == "true"
    return body, ns, objects, token, said_truncated


def check_s3_answer(answer: object) -> None:
    assert isinstance(answer, tuple) and len(answer) == 2
    keys, token = answer
    assert token is None or (isinstance(token, str) and token)
    assert isinstance(keys, list)
    for key, size, etag in keys:
        assert isinstance(key, str) and len(key.encode("utf-8")) <= MAX_KEY
        assert size is None or (type(size) is int and 0 <= size < 10**20)
        assert etag is None or isinstance(etag, str)


@FUZZ
@given(page=s3_pages())
def test_s3_page_keys_are_what_the_xml_said(
    page: tuple[bytes, str, list[tuple[str, int | None, str | None]], str | None, bool],
) -> None:
    body, ns, objects, token, truncated = page
    _refuse_dtd(body, WHERE)  # (no DTD: nothing to refuse)
    if ns != S3_NS:  # not S3's answer: refused, never read as an empty prefix
        with pytest.raises(ListingError, match="not a ListObjectsV2 answer"):
            _parse_page(body, WHERE)
        return
    too_long = any(len(key.encode()) > MAX_KEY for key, _, _ in objects)
    too_long |= truncated and token is not None and len(token.encode()) > MAX_TOKEN
    if too_long or (truncated and not token):
        with pytest.raises(ListingError):
            _parse_page(body, WHERE)
        return
    keys, next_token = _parse_page(body, WHERE)
    assert keys == objects
    assert next_token == (token if truncated else None)


DTDS = [
    b"<!DOCTYPE ListBucketResult>",
    b'<!DOCTYPE r [<!ENTITY e SYSTEM "file:///etc/passwd">]>',
    b'<!DOCTYPE r [<!ENTITY e SYSTEM "http://127.0.0.1:9/x">]>',
    b'<!DOCTYPE r [<!ENTITY % p SYSTEM "http://198.18.0.1/x.dtd"> %p;]>',
    b'<!DOCTYPE r SYSTEM "http://198.18.0.1/x.dtd">',
    b'<!DOCTYPE r [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
    b'<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;"><!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">]>',
    b'<!DOCTYPE r [<!ELEMENT r ANY><!ATTLIST r a CDATA "x">]>',
]


@fuzz_settings(100)
@given(page=s3_pages(), dtd=st.sampled_from(DTDS), uses=st.booleans())
def test_s3_page_with_a_dtd_is_refused(
    page: tuple[bytes, str, list[tuple[str, int | None, str | None]], str | None, bool],
    dtd: bytes,
    uses: bool,
) -> None:
    body = page[0]
    if body.startswith((b"\xff\xfe", b"\xfe\xff")):  # (UTF-16: the DTD in its encoding)
        text = body.decode("utf-16")
        cut = text.index("<ListBucketResult")
        body = (text[:cut] + dtd.decode() + text[cut:]).encode("utf-16")
    else:
        cut = body.index(b"<ListBucketResult")
        body = body[:cut] + dtd + body[cut:]
    if uses:
        body = body.replace(b"<Key>", b"<Key>&e;&d;", 1)
    with pytest.raises(ListingError):
        _refuse_dtd(body, WHERE)
    with pytest.raises(ListingError):
        _parse_page(body, WHERE)


s3_bodies = st.one_of(
    mutated(s3_pages().map(lambda p: p[0])),
    mutated(s3_pages().map(lambda p: p[0]) | st.sampled_from(DTDS)),
    st.binary(max_size=200),
)


@FUZZ
@given(body=s3_bodies)
@example(body=b"<a>" * 50_000)
@example(
    body=b"<r>"
    + b"<a>" * 50_000
    + b"<Contents><Key>k</Key></Contents>"
    + b"</a>" * 50_000
    + b"</r>"
)
@example(body=b'<?xml version="1.0" encoding="utf-7"?><a/>')
@example(body=b'<?xml version="1.0" encoding="no-such"?><a/>')
@example(body=b'<?xml version="1.0" encoding="shift_jis"?><a/>')
@example(body=b"<r xmlns:a=''><a:Key/></r>")
@example(body=b"<r><Key>&xxe;</Key></r>")
def test_s3_page_raises_only_listing_errors(body: bytes) -> None:
    try:
        answer = _parse_page(body, WHERE)
    except ListingError:
        return
    check_s3_answer(answer)


# -- 3. the manifest in DIR (dfget.tree.manifest.load) -----------------------------------

good_fields = st.fixed_dictionaries(
    {
        "url": st.sampled_from(PAGE_URLS).map(lambda u: u + "f.txt"),
        "size": st.integers(0, 10**12),
        "mtime_ns": st.integers(0, 2**63),
        "validator": st.none() | st.just("etag=x;last-modified=None;length=3"),
    },
    optional={
        "sha256": st.none() | st.just("ab" * 32),
        "ctime_ns": st.none() | st.integers(0, 2**63),
        "ino": st.none() | st.integers(0, 2**64),
    },
)


@st.composite
def record_fields(draw: st.DrawFn) -> Any:
    """A record's fields, now and then one replaced by any JSON value or dropped, or
    one more added; once in a while, no fields at all but any JSON value."""
    fields: dict[str, Any] = draw(good_fields)
    for name in list(fields):
        roll = draw(st.integers(0, 59))
        if roll == 0:
            fields[name] = draw(json_values | st.sampled_from(SURROGATES))
        elif roll == 1:
            del fields[name]
    if draw(st.integers(0, 19)) == 0:
        fields[draw(hostile_text)] = draw(json_values)
    return fields if draw(st.integers(0, 29)) else draw(json_values)


manifests = st.builds(
    lambda version, files, ascii_only: json_body({"version": version, "files": files}, ascii_only),
    often(st.just(manifest.VERSION), json_values),
    often(
        st.dictionaries(
            often(names, st.sampled_from(SURROGATES)), record_fields(), min_size=1, max_size=4
        ),
        json_values,
    ),
    st.booleans(),
)
good_manifests = st.builds(
    lambda files: json_body({"version": manifest.VERSION, "files": files}, False),
    st.dictionaries(names, good_fields, min_size=1, max_size=4),
)
manifest_bodies = st.one_of(
    good_manifests,
    good_manifests,
    manifests,
    manifests,
    mutated(good_manifests),
    mutated(manifests),
    json_values.map(lambda v: json_body(v, True)),
    st.binary(),
)


def well_formed(name: str, record: manifest.Record) -> bool:
    def whole(value: object) -> bool:
        return type(value) is int and value >= 0

    return (
        isinstance(name, str)
        and isinstance(record, manifest.Record)
        and isinstance(record.url, str)
        and whole(record.size)
        and type(record.mtime_ns) is int
        and (record.validator is None or isinstance(record.validator, str))
        and (record.sha256 is None or isinstance(record.sha256, str))
        and (record.ctime_ns is None or type(record.ctime_ns) is int)
        and (record.ino is None or whole(record.ino))
        and all(is_text(t) for t in (name, record.url, record.validator or "", record.sha256 or ""))
    )


DEEP = b"[" * 600 + b"]" * 600


@fuzz_settings(150)
@given(body=manifest_bodies)
# Fields of any type came back as records, and a run's manifest.save() at its end then
# raised (not an OSError: a traceback): a name or string with a lone surrogate
# (UnicodeEncodeError), a value nested deep (RecursionError).
@example(
    body=b'{"version": 1, "files": {"\\udc80": {"url": "u", "size": 1, "mtime_ns": 1, '
    b'"validator": null}}}'
)
@example(
    body=b'{"version": 1, "files": {"a": {"url": "u", "size": 1, "mtime_ns": 1, '
    b'"validator": "\\ud800"}}}'
)
@example(
    body=b'{"version": 1, "files": {"a": {"url": 1, "size": "x", "mtime_ns": null, '
    b'"validator": []}}}'
)
@example(
    body=b'{"version": 1, "files": {"a": {"url": "u", "size": 1, "mtime_ns": 1, '
    b'"validator": ' + DEEP + b"}}}"
)
@example(
    body=b'{"version": 1, "files": {"a": {"url": "u", "size": true, "mtime_ns": 1.5, '
    b'"validator": null, "ino": -1}}}'
)
@example(body=b'{"version": 1, "files": ' + b'{"a": ' * 5000 + b"}" * 5001)
@example(body=b'{"version": 1, "files": {"a": {"url": "u", "size": 1' + b"0" * 5000 + b"}}}")
def test_manifest_load_returns_well_formed_records(body: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / manifest.NAME).write_bytes(body)
        records = manifest.load(root)  # callers catch nothing: it must not raise
        assert isinstance(records, dict)
        for name, record in records.items():
            assert well_formed(name, record), (name, record)
        # What a run does with them at its end: save them (it catches OSError only).
        again = root / "again"
        again.mkdir()
        manifest.save(again, records)
        assert manifest.load(again) == records


def _plant(kind: str, path: Path) -> None:
    """Put at `path` what is not a regular manifest file."""
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "folder":
        path.mkdir()
    elif kind == "symlink":
        path.symlink_to(path.parent / "real.json")
    elif kind == "dangling":
        path.symlink_to(path.parent / "nowhere")
    elif kind == "loop":
        path.symlink_to(path)
    else:  # "huge": sparse, over the cap
        with path.open("wb") as file:
            file.truncate(manifest.MAX_SIZE + 2)


@pytest.mark.parametrize("kind", ["fifo", "folder", "symlink", "dangling", "loop", "huge"])
def test_manifest_load_of_what_is_not_a_manifest_file(kind: str) -> None:
    """A FIFO (no wait for a writer), a folder, a symlink (even to a good manifest), a
    file over the cap: {}, never an exception."""
    good = {"version": 1, "files": {"a": {"url": "u", "size": 1, "mtime_ns": 1, "validator": None}}}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "real.json").write_text(json.dumps(good))
        assert manifest.load(root) == {}  # (none yet)
        _plant(kind, root / manifest.NAME)
        assert manifest.load(root) == {}


# -- 4. the listing dfdaemon hands back (dfget.tree.handed._entries) ---------------------

ROOT_URLS = [
    "http://127.0.0.1:8080/d/",
    "http://127.0.0.1:8080/d",
    "https://mirror.example/pub/x/",
    "http://198.18.0.1/",
]


def entry_urls(root_url: str) -> st.SearchStrategy[str]:
    root = root_url if root_url.endswith("/") else root_url + "/"
    here = urlsplit(root)
    below = st.lists(safe_names.map(quote), min_size=1, max_size=3).map(
        lambda p: root + "/".join(p)
    )
    return often(
        below,
        st.one_of(
            hostile_text.map(lambda t: root + t),
            hostile_text.map(lambda t: root + quote(t, safe="/%")),
            st.sampled_from(
                [
                    f"{here.scheme}://{here.netloc.upper()}{here.path}x",
                    f"{here.scheme.upper()}://{here.netloc}{here.path}x",
                    f"{here.scheme}://{here.netloc}:1{here.path}x",
                    f"{here.scheme}://user@{here.netloc}{here.path}x",
                    f"{here.scheme}://{here.netloc}{here.path}",
                    f"{here.scheme}://{here.netloc}{here.path.rstrip('/')}x/y",
                    f"{here.scheme}://{here.netloc}{here.path}a/%2e%2E/../x",
                    f"{here.scheme}://{here.netloc}{here.path}a%2F..%2F..%2Fx",
                    f"{here.scheme}://{here.netloc}{here.path}a%5C..%5C..%5Cx",
                    f"{here.scheme}://{here.netloc}{here.path}.\t./x",
                    f" {here.scheme}://{here.netloc}{here.path}x",
                    f"{here.scheme}://[{here.netloc}{here.path}x",
                    f"{here.scheme}://{here.netloc}{here.path}x?y=../../z#../w",
                    "http://198.19.0.1/d/x",
                    f"//{here.netloc}{here.path}x",
                    f"{here.path}x",
                ]
            ),
            hostile_text,
        ),
    )


@st.composite
def daemon_listings(draw: st.DrawFn) -> tuple[str, list[object]]:
    """(the tree's URL, what the daemon sent for it): mostly entries, some broken."""
    root_url = draw(st.sampled_from(ROOT_URLS))
    entry = st.tuples(
        often(
            st.lists(often(names, st.sampled_from(SURROGATES)), min_size=1, max_size=3), json_values
        ),
        often(entry_urls(root_url), json_values),
        often(st.none() | st.integers(0, 10**12), json_sizes),
        often(st.none() | hostile_text, st.sampled_from(SURROGATES) | json_values),
    ).map(list)
    listed: list[object] = draw(st.lists(often(entry, json_values), max_size=4))
    return root_url, listed


@FUZZ
@given(listing=daemon_listings())
@example(listing=("http://127.0.0.1:8080/d/", [[["a"], "http://127.0.0.1:8080/d/a", 1, "\ud800"]]))
@example(listing=("http://127.0.0.1:8080/d/", [[["a"], "http://127.0.0.1:8080/d/\udcff", 1, None]]))
@example(
    listing=(
        "http://127.0.0.1:8080/d",
        [[["x"], "http://127.0.0.1:8080/d/a%2F..%2F..%2Fx", 1, None]],
    )
)
@example(
    listing=(
        "http://127.0.0.1:8080/d/",
        [[["x"], "http://127.0.0.1:8080/d/a%5C..%5C..%5Cx", 1, None]],
    )
)
def test_daemon_listing_entries_stay_below_the_tree(listing: tuple[str, list[object]]) -> None:
    root_url, listed = listing
    entries = _entries(listed, root_url)
    if entries is None:
        return
    assert isinstance(entries, list) and len(entries) == len(listed)  # all of it, or none
    root = root_url if root_url.endswith("/") else root_url + "/"
    for entry, item in zip(entries, listed, strict=True):
        assert isinstance(entry, Entry) and isinstance(item, list)
        assert [list(entry.path), entry.url, entry.size, entry.validator] == item  # as sent
        assert entry.path and all(isinstance(part, str) for part in entry.path)
        assert isinstance(entry.url, str) and is_text(entry.url)
        assert entry.size is None or (type(entry.size) is int and entry.size >= 0)
        assert entry.validator is None or (
            isinstance(entry.validator, str) and is_text(entry.validator)
        )
        assert below_for_servers(entry.url, root), entry.url
        there = urlsplit(entry.url)
        assert len(there.path) > len(urlsplit(root).path)  # (not the folder's own URL)
        assert "\\" not in there.path


# -- 5. local path parts (dfget.tree.paths.unsafe_part, unsafe_path) ---------------------

parts_text = st.one_of(
    hostile_text,
    safe_names,
    st.sampled_from(["", ".", "..", "...", " ", "a\0b", "\\", "/", "~", "-", *SURROGATES]),
    st.integers(MAX_FILE_NAME - 2, MAX_NAME + 2).map(lambda n: "x" * n),
    st.integers(MAX_NAME // 2 - 2, MAX_NAME // 2 + 2).map(lambda n: "é" * n),
    st.text(st.characters(), max_size=6),  # (surrogates included)
)
ROOT = "/srv/dfget/out"


@FUZZ
@given(parts=st.lists(parts_text, max_size=6).map(tuple))
@example(parts=("..",))
@example(parts=("a", "..", "..", "etc"))
@example(parts=("/etc",))
@example(parts=("a\\..\\..",))
@example(parts=("\udcff",))
def test_safe_parts_never_leave_the_root(parts: tuple[str, ...]) -> None:
    why = unsafe_path(parts)
    assert why is None or (isinstance(why, str) and why)
    for i, part in enumerate(parts):  # (the path is refused if and only if a part is)
        if unsafe_part(part, file=i == len(parts) - 1):
            assert why
    if why is not None:
        return
    assert parts
    for i, part in enumerate(parts):
        size = len(part.encode("utf-8"))  # (real text: it encodes)
        assert 0 < size <= (MAX_FILE_NAME if i == len(parts) - 1 else MAX_NAME)
        assert part not in (".", "..") and not any(c in part for c in "/\\\0")
        assert not any(ord(c) < 32 or 127 <= ord(c) < 160 for c in part)
    joined = os.path.join(ROOT, *parts)
    assert os.path.normpath(joined) == joined
    assert os.path.commonpath([ROOT, joined]) == ROOT
    assert PurePosixPath(joined).relative_to(ROOT).parts == parts
    assert all(len(os.fsencode(p)) <= MAX_NAME for p in PurePosixPath(joined).parts)


@fuzz_settings(60)
@given(parts=st.lists(parts_text, min_size=1, max_size=4).map(tuple))
@example(parts=("a", "..", "x"))
def test_place_writes_only_below_dir(parts: tuple[str, ...]) -> None:
    """What `unsafe_path` lets pass, `place` puts below DIR; what it refuses, `place`
    refuses before making anything."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "out"
        root.mkdir()
        if unsafe_path(parts) is not None:
            with pytest.raises(UnsafePath):
                place(root, parts)
            assert os.listdir(tmp) == ["out"] and os.listdir(root) == []
            return
        with place(root, parts) as target:
            assert target.real == root.joinpath(*parts)
            target.path.write_bytes(b"x")
            assert (root.joinpath(*parts)).read_bytes() == b"x"
        assert os.listdir(tmp) == ["out"]
