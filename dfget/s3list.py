"""The objects below an S3 prefix (`dfget -r s3://BUCKET/PREFIX/`): ListObjectsV2.

Pages of at most `max_keys` keys, followed by their continuation tokens, each request
signed by dfget with the user's credentials (`dfget.s3`); at most `max_entries` keys
and `max_page` bytes a page (`ListLimits`), so a runaway or hostile listing ends with a clear error.
Each object is a `dfget.tree.entries.Entry`, as the HTTP index lister's (`path`: the
key below the prefix split on `/`, checked by `dfget.tree.paths` before anything is
written; `url`: its path-style URL; `size`; `validator`: its ETag and size), so
`dfget -r` treats both alike.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any
from urllib.parse import quote
from xml.etree import ElementTree
from xml.parsers import expat

import httpx
import trio

from common.io.capped import BodyTooLarge, EncodedBody, identity_headers, read_capped
from common.s3sign import signed_headers
from common.urls import display_url
from dfget.errors import OriginFailed
from dfget.s3 import S3Target, parse_s3_url, resolve
from dfget.tls import tls_context
from dfget.tree.entries import Entry, KeptHeads, ListingError, ListLimits, TreeTooLarge
from dfget.tree.index import utf8_size

if TYPE_CHECKING:
    from dfget.results import DownloadResult

log = logging.getLogger("dfget")

_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
MAX_KEY = 1024  # bytes of an S3 object key (UTF-8): what the stores allow
MAX_TOKEN = 8192  # bytes of a continuation token (AWS sends a few hundred)
MAX_ETAG = 1024  # bytes of an ETag (S3's, an MD5 and a part count, are under 100)
TIMEOUT = httpx.Timeout(60.0, connect=10.0)
WARNED_OUTSIDE = 10  # keys listed outside the prefix warned of, a listing (the rest quietly)


class S3PrefixLister(KeptHeads):
    """Every object whose key starts with `prefix` in `bucket` (the prefix ends with
    `/`, or is empty: the whole bucket). Folder markers (keys ending in `/`) are left
    out."""

    def __init__(
        self,
        target: S3Target,
        bucket: str,
        prefix: str,
        *,
        max_keys: int = 1000,
        limits: ListLimits | None = None,
        insecure: bool = False,
    ) -> None:
        self.target = target
        self.bucket = bucket
        self.prefix = prefix
        self.max_keys = max(1, min(max_keys, 1000))
        self.limits = limits or ListLimits()
        self.insecure = insecure
        self.pages = 0  # asked for, by the last `entries()`
        self._outside = 0  # keys listed outside the prefix, by the last listing

    def _client(self) -> httpx.AsyncClient:
        options: dict[str, Any] = {"follow_redirects": False, "timeout": TIMEOUT}
        return httpx.AsyncClient(verify=tls_context(self.insecure), **options)

    def _signed(self, method: str, url: str) -> list[tuple[str, str]]:
        access = self.target.access
        return [] if access is None else signed_headers(method, url, [], access)

    async def entries(self) -> AsyncIterator[Entry]:
        # The whole listing first (bounded by max_entries), then the entries: nothing
        # is yielded while the client is open.
        for entry in await self.list_all():
            yield entry

    async def validator(self, entry: Entry) -> str | None:
        """The object's ETag and length now (a signed HEAD); None if it says neither."""
        try:
            answer = await self._head(entry.url, self._signed("HEAD", entry.url))
        except httpx.HTTPError as exc:
            raise OriginFailed(f"{display_url(entry.url)}: {exc}") from exc
        if answer.status_code >= 400:
            raise OriginFailed(
                f"{display_url(entry.url)}: the store answered {answer.status_code}",
                answer.status_code,
            )
        etag, length = answer.headers.get("etag"), answer.headers.get("content-length")
        return None if etag is None else f"{etag} {length}"

    def validator_of(self, result: DownloadResult) -> str | None:
        etag = result.validators[0] if result.validators else ""
        return f"{etag} {result.bytes}" if etag else None

    async def list_all(self) -> list[Entry]:
        """Every object under the prefix, page by page, within the limits an HTTP index
        has: entries, bytes of names, time (a store answering a byte a minute)."""
        with trio.move_on_after(self.limits.max_seconds):
            return await self._list_all()
        raise TreeTooLarge(
            f"s3://{self.bucket}/{self.prefix} takes more than {self.limits.max_seconds:g}s to list"
        )

    async def _list_all(self) -> list[Entry]:
        found: list[Entry] = []
        token: str | None = None
        tokens: set[bytes] = set()
        self.pages = seen = names = 0
        self._outside = 0
        async with self._client() as client:
            while True:
                keys, token = await self._page(client, token)
                self.pages += 1
                # Folder markers and empty pages count too: a store that says "truncated"
                # forever, listing nothing we keep, must not be listed forever.
                seen += max(1, len(keys))
                if seen > self.limits.max_entries:
                    raise TreeTooLarge(
                        f"s3://{self.bucket}/{self.prefix} holds more than "
                        f"{self.limits.max_entries} objects"
                    )
                for key in keys:
                    if self._wanted(key[0]):
                        entry = self._entry(*key)
                        names += utf8_size(key[0]) + utf8_size(entry.url)
                        names += utf8_size(entry.validator or "")  # (kept too: budgeted)
                        if names > self.limits.max_names:
                            raise TreeTooLarge(
                                f"s3://{self.bucket}/{self.prefix} lists more than "
                                f"{self.limits.max_names} bytes of names and URLs"
                            )
                        found.append(entry)
                if token is None:
                    return found
                seen_token = hashlib.blake2b(token.encode("utf-8", "surrogatepass")).digest()
                if seen_token in tokens:  # (it would list the same pages again, forever)
                    raise ListingError(
                        f"listing s3://{self.bucket}/{self.prefix}: the store gave a "
                        "continuation token it gave before"
                    )
                tokens.add(seen_token)  # (its hash: 100,000 tokens of 8 KiB kept whole, 800 MB)

    def _wanted(self, key: str) -> bool:
        """An object of the tree: under the prefix (a store that lists others lies: they
        are left out, said once each), not a folder marker; TreeTooLarge if deeper than
        the limits allow, as for an HTTP index."""
        if not key.startswith(self.prefix):
            self._outside += 1
            if self._outside <= WARNED_OUTSIDE:
                log.warning(
                    "s3://%s/%s: ignoring %r, listed outside it%s",
                    self.bucket,
                    self.prefix,
                    key[:200],
                    " (the last such warning)" if self._outside == WARNED_OUTSIDE else "",
                )
            return False
        if key.endswith("/"):  # a folder marker
            return False
        if key.count("/", len(self.prefix)) > self.limits.max_depth:
            raise TreeTooLarge(
                f"s3://{self.bucket}/{self.prefix} is more than "
                f"{self.limits.max_depth} folders deep"
            )
        return True

    def _entry(self, key: str, size: int | None, etag: str | None) -> Entry:
        relative = key[len(self.prefix) :]
        validator = None if etag is None else f"{etag} {size}"
        return Entry(
            tuple(relative.split("/")), self.target.url_of(self.bucket, key), size, validator
        )

    def _page_url(self, token: str | None) -> str:
        query = [("list-type", "2"), ("max-keys", str(self.max_keys)), ("prefix", self.prefix)]
        if token is not None:
            query.append(("continuation-token", token))
        encoded = "&".join(f"{k}={quote(v, safe='-_.~')}" for k, v in sorted(query))
        return f"{self.target.endpoint}/{self.bucket}?{encoded}"

    async def _page(
        self, client: httpx.AsyncClient, token: str | None
    ) -> tuple[list[tuple[str, int | None, str | None]], str | None]:
        """One page: (key, size, ETag) of each object, and the next page's token."""
        url = self._page_url(token)
        where = f"s3://{self.bucket}/{self.prefix}"
        try:
            asked = identity_headers(self._signed("GET", url))
            async with client.stream("GET", url, headers=asked) as answer:
                if answer.status_code != 200:  # (a 301 to another region's endpoint too)
                    raise ListingError(
                        f"listing {where} at {display_url(self.target.endpoint)}: "
                        f"the store answered {answer.status_code}",
                        answer.status_code,
                    )
                body = await read_capped(answer, self.limits.max_page)
        except BodyTooLarge as exc:
            too_large = f"listing {where}: a page over {self.limits.max_page} bytes"
            raise TreeTooLarge(too_large) from exc
        except EncodedBody as exc:
            raise ListingError(f"listing {where}: {exc}") from exc
        except (httpx.HTTPError, httpx.InvalidURL, UnicodeError) as exc:  # (a URL past 64 KiB)
            raise ListingError(f"listing {where}: {exc}") from exc
        return _parse_page(body, where)


def _parse_page(
    body: bytes, where: str
) -> tuple[list[tuple[str, int | None, str | None]], str | None]:
    _refuse_dtd(body, where)
    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError as exc:
        raise ListingError(f"listing {where}: not a ListObjectsV2 answer: {exc}") from exc
    if root.tag != f"{_NS}ListBucketResult":  # (an Error sent as a 200, a gateway's page)
        named = root.tag.rpartition("}")[2][:60]
        raise ListingError(f"listing {where}: not a ListObjectsV2 answer (<{named}>)")
    keys = []
    for item in root.iter(f"{_NS}Contents"):
        key = item.findtext(f"{_NS}Key")
        if key is None:
            continue
        if utf8_size(key) > MAX_KEY:
            raise ListingError(f"listing {where}: a key over {MAX_KEY} bytes (not S3's)")
        size_text = item.findtext(f"{_NS}Size") or ""
        # ASCII digits, at most 20 (`int` takes other digits, and refuses 4300 of them)
        plain = size_text.isascii() and size_text.isdigit() and len(size_text) <= 20
        size = int(size_text) if plain else None
        etag = item.findtext(f"{_NS}ETag")
        if etag is not None and utf8_size(etag) > MAX_ETAG:
            raise ListingError(f"listing {where}: an ETag over {MAX_ETAG} bytes (not S3's)")
        keys.append((key, size, etag))
    truncated = (root.findtext(f"{_NS}IsTruncated") or "").lower() == "true"
    token = root.findtext(f"{_NS}NextContinuationToken") if truncated else None
    if truncated and not token:
        raise ListingError(f"listing {where}: a truncated page without a continuation token")
    if token is not None and utf8_size(token) > MAX_TOKEN:  # (each goes into a URL)
        raise ListingError(f"listing {where}: a continuation token over {MAX_TOKEN} bytes")
    return keys, token


def _refuse_dtd(body: bytes, where: str) -> None:
    """ListingError if the page declares a document type: S3 never sends one, and its
    entities would expand a 4 MiB page a hundredfold in memory (a lying endpoint).
    Scanned by expat alone, which stops at the declaration, before any expansion."""

    def refuse(*_: object) -> None:
        raise ListingError(f"listing {where}: a document type declaration: not S3's answer")

    scanner = expat.ParserCreate()
    scanner.StartDoctypeDeclHandler = refuse
    scanner.EntityDeclHandler = refuse
    try:
        scanner.Parse(body, True)
    except (expat.ExpatError, ValueError, LookupError) as exc:  # (an encoding expat lacks)
        raise ListingError(f"listing {where}: not a ListObjectsV2 answer: {exc}") from exc


def prefix_lister(
    url: str,
    endpoint: str | None = None,
    region: str | None = None,
    *,
    max_keys: int = 1000,
    insecure: bool = False,
) -> S3PrefixLister:
    """The lister of `s3://BUCKET/PREFIX` (a `/` is added to a prefix without one),
    with this user's endpoint, region and credentials (`dfget.s3.resolve`)."""
    wanted = parse_s3_url(url)
    prefix = wanted.key if not wanted.key or wanted.key.endswith("/") else wanted.key + "/"
    target = resolve(endpoint, region)
    return S3PrefixLister(target, wanted.bucket, prefix, max_keys=max_keys, insecure=insecure)


__all__ = ["S3PrefixLister", "prefix_lister"]
