"""Reading one index page: nginx `autoindex` in either format, pure (bytes in, links out).

HTML (`autoindex_format html`, the default): every `<a href>` is a candidate; folders
end with `/`. JSON (`autoindex_format json`): `[{"name", "type", "size", "mtime"}]`.
Only direct children of the page are kept: a link that leaves the page's folder
(`../`, an absolute URL to another host, a sort link `?C=N;O=D`, a path two levels
down) is dropped, with the reason, so a hostile index cannot point the tree anywhere
else. Names are percent-decoded (UTF-8); whether a name is safe on disk is
`dfget.tree.paths`' question, not this module's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from html.parser import HTMLParser
from urllib.parse import quote, unquote, urljoin, urlsplit

from proto.errors import is_text


@dataclass(frozen=True, slots=True)
class Link:
    """A child of the page: a file or a folder (`is_dir`)."""

    name: str  # decoded
    url: str
    is_dir: bool
    size: int | None = None
    validator: str | None = None  # JSON pages: mtime and size


class PageTooLarge(ValueError):
    """The page names more links, or links holding more bytes (`names`), than the
    listing has left."""

    def __init__(self, message: str, *, names: bool) -> None:
        super().__init__(message)
        self.names = names


EXAMPLES = 10  # dropped links kept, of each kind, to be named in a warning


@dataclass
class Page:
    links: list[Link] = field(default_factory=list)
    size: int = 0  # UTF-8 bytes of the links' URLs, names and validators
    dropped: list[tuple[str, str]] = field(default_factory=list)  # (href, why), the first few
    hostile: list[tuple[str, str]] = field(default_factory=list)  # dropped, worth a warning
    hostile_count: int = 0  # (all of them: `hostile` keeps EXAMPLES)


def is_json(content_type: str, body: bytes) -> bool:
    """JSON by its Content-Type, or by its first character when that says nothing."""
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind == "application/json" or kind.endswith("+json"):
        return True
    return kind in ("", "text/plain", "application/octet-stream") and body.lstrip()[:1] == b"["


def parse_page(
    body: bytes,
    content_type: str,
    page_url: str,
    max_size: int | None = None,
    max_links: int | None = None,
) -> Page:
    """The children that `body`, the index page at `page_url` (ending in `/`), lists.
    ValueError if it is not an index page at all; PageTooLarge as soon as it names
    more than `max_links` links (kept or dropped: each costs its parse), or its links
    hold more than `max_size` bytes (a page's links repeat its URL: a small page deep
    in a tree of long names would make a great deal of them)."""
    page = Page()
    budget = _Budget(page, max_size, max_links)
    if is_json(content_type, body):
        _parse_json(body, page_url, budget)
    else:
        _parse_html(body, page_url, budget)
    return page


class _Budget:
    def __init__(self, page: Page, max_size: int | None, max_links: int | None) -> None:
        self.page, self.max_size, self.max_links = page, max_size, max_links
        self.seen = 0

    def count(self) -> None:
        """One more link named by the page, before it is looked at."""
        self.seen += 1
        if self.max_links is not None and self.seen > self.max_links:
            raise PageTooLarge(f"more than {self.max_links} links", names=False)

    def add(self, link: Link) -> None:
        self.page.links.append(link)
        self.page.size += (
            utf8_size(link.url) + utf8_size(link.name) + utf8_size(link.validator or "")
        )
        if self.max_size is not None and self.page.size > self.max_size:
            raise PageTooLarge(f"more than {self.max_size} bytes of names", names=True)

    def drop(self, href: str, why: str, hostile: bool) -> None:
        page = self.page
        kept = page.hostile if hostile else page.dropped
        if len(kept) < EXAMPLES:
            kept.append((href, why))
        page.hostile_count += hostile


def utf8_size(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def _parse_json(body: bytes, page_url: str, budget: _Budget) -> None:
    try:
        items = json.loads(body)
    except (ValueError, RecursionError) as exc:  # (a hostile page nested deep: the latter)
        raise ValueError(f"bad JSON index: {exc}") from exc
    if not isinstance(items, list):
        raise ValueError("a JSON index is a list of entries")
    for item in items:
        budget.count()
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise ValueError("a JSON index entry has a name")
        name, kind = item["name"], item.get("type")
        if kind not in ("file", "directory"):
            budget.drop(name, f"type {kind!r}", False)
            continue
        is_dir = kind == "directory"
        # The name as is, one path segment: a `/` in it stays `%2F` (and the name is
        # then refused by dfget.tree.paths, never joined into a path).
        url = page_url + quote(name, safe="") + ("/" if is_dir else "")
        size = item.get("size")
        size = size if isinstance(size, int) and not isinstance(size, bool) and size >= 0 else None
        mtime = item.get("mtime")
        validator = None
        # (an mtime of lone surrogates is no text: no manifest could record it)
        if not is_dir and is_text(mtime) and size is not None:
            validator = f"mtime={mtime};size={size}"
        budget.add(Link(name, url, is_dir, size if not is_dir else None, validator))


class _Anchors(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            for key, value in attrs:
                if key == "href" and value is not None:
                    self.hrefs.append(value)


def _parse_html(body: bytes, page_url: str, budget: _Budget) -> None:
    parser = _Anchors()
    # Fed, never closed: all close() would add is what follows a tag, comment or
    # declaration the page never ends (an index ends each one), and Python 3.11's
    # close() reads that again from each later `<`: hours for a 4 MiB page of `<a `.
    try:
        parser.feed(body.decode("utf-8", errors="replace"))
    except AssertionError as exc:  # (how html.parser refuses a declaration it cannot read)
        raise ValueError(f"bad HTML index: {exc}") from exc
    for href in parser.hrefs:
        budget.count()
        child = _child(page_url, href)
        if isinstance(child, Link):
            budget.add(child)
        elif child is not None:
            budget.drop(href, *child)


def _child(page_url: str, href: str) -> Link | tuple[str, bool] | None:
    """The link as a child of the page, or why not (and whether that looks hostile);
    None for the parent-folder link every index has."""
    if "?" in href or "#" in href:
        return ("a query or fragment (a sort link)", False)
    try:
        target = urljoin(page_url, href)
    except ValueError:  # ("Invalid IPv6 URL": no link of this page's host)
        return ("not a URL", True)
    page, there = urlsplit(page_url), urlsplit(target)
    if (there.scheme, there.netloc) != (page.scheme, page.netloc):
        return ("another host or scheme", True)
    if page.path.startswith(there.path) and there.path.endswith("/"):
        return None  # the parent folder (or the page itself)
    if not there.path.startswith(page.path):
        return ("outside the folder", True)
    rest = there.path[len(page.path) :]
    is_dir = rest.endswith("/")
    segment = rest[:-1] if is_dir else rest
    if "/" in segment:
        return ("not a direct child", True)
    try:
        name = unquote(segment, errors="strict")
    except UnicodeDecodeError:
        return ("a name that is not UTF-8", True)
    return Link(name, target, is_dir)


__all__ = ["Link", "Page", "PageTooLarge", "is_json", "parse_page", "utf8_size"]
