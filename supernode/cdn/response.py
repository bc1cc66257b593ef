"""What the CDN needs from an origin's answer, whichever HTTP client fetched it."""

from __future__ import annotations

from dataclasses import dataclass

from common.units import header_int
from supernode.errors import OriginBroken, TaskSuperseded

CHANGED = "the content changed upstream during the fetch"

Headers = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Validators:
    """What identifies one version of the origin's content."""

    etag: str | None
    last_modified: str | None

    @property
    def strong_etag(self) -> str | None:
        return self.etag if self.etag and not self.etag.startswith("W/") else None

    def __bool__(self) -> bool:
        return bool(self.etag or self.last_modified)

    @property
    def if_range(self) -> str:
        """The If-Range value guarding a resume ('' if none can): a strong ETag, or the
        Last-Modified of an answer with no ETag. A weak ETag cannot, nor the date beside
        it (RFC 9110 13.1.5: a date only when there is no entity tag)."""
        if self.etag:
            return self.strong_etag or ""
        return self.last_modified or ""

    def other_version(self, now: Validators) -> bool:
        """Whether an answer's validators `now` name another version than these (an
        origin that ignores If-Range): another ETag where both name one; else another
        Last-Modified where both name one. (An ETag decides alone: origins behind a load
        balancer may date one file differently on each backend, the ETag alike.)"""
        if self.etag and now.etag:
            return self.etag != now.etag
        dates = (self.last_modified, now.last_modified)
        return all(dates) and dates[0] != dates[1]


class OriginResponse:
    """An open response: status, headers, and the raw body read into caller buffers."""

    status: int
    reason: str
    url: str

    def header(self, name: str) -> str | None:
        """The first value of header `name` (lower-case), if any."""
        raise NotImplementedError

    async def read_into(self, view: memoryview) -> int:
        """Fill part of `view` with raw body bytes; 0 at the end; OriginBroken if cut."""
        raise NotImplementedError

    async def aclose(self) -> None:
        raise NotImplementedError

    @property
    def validators(self) -> Validators:
        return Validators(self.header("etag"), self.header("last-modified"))

    @property
    def content_range(self) -> str | None:
        return self.header("content-range")

    @property
    def span(self) -> tuple[int | None, int | None, int | None] | None:
        """A 206's `Content-Range: bytes FIRST-LAST/TOTAL` as numbers (each None where
        it is not plain ASCII digits, `*` for one); None if it names another unit, no
        span, or none."""
        unit, _, spec = (self.content_range or "").partition(" ")
        span, _, total = spec.partition("/")
        first, dash, last = span.partition("-")
        if unit != "bytes" or not dash:
            return None
        return header_int(first), header_int(last), header_int(total)

    @property
    def length(self) -> int | None:
        """The body length, if the origin named one (not for chunked bodies)."""
        if "chunked" in (self.header("transfer-encoding") or "").lower():
            return None
        value = self.header("content-length") or ""
        if value.isascii() and value.isdigit() and header_int(value) is None:
            return 10**19  # more digits than any length: past every bound, refused as such
        return header_int(value)


def check_resumed(response: OriginResponse, expected_start: int, first: Validators) -> None:
    """A Range request's answer must be a 206 starting where it was asked to (its
    Content-Range's numbers, where known, agreeing: FIRST <= LAST < TOTAL), of the
    version the `first` answer was: an origin that ignores If-Range and sends another
    version's bytes ends the fetch (TaskSuperseded), never spliced onto the first's."""
    if response.status != 206 or not response.content_range:
        raise OriginBroken("origin cannot resume (no 206 answer to the Range request)")
    check_span(response, expected_start)
    if first.other_version(response.validators):
        raise TaskSuperseded(CHANGED)


def check_span(response: OriginResponse, expected_start: int) -> None:
    """A 206 must start where it was asked to, its Content-Range's numbers agreeing
    where known (FIRST <= LAST < TOTAL); OriginBroken if not."""
    span = response.span
    if span is None or span[0] != expected_start or not _inside(*span):
        raise OriginBroken(f"origin answered the wrong span: {response.content_range!r}")


def _inside(first: int | None, last: int | None, total: int | None) -> bool:
    """Whether a span's known numbers agree: FIRST <= LAST < TOTAL."""
    if first is None:
        return False
    return (last is None or first <= last) and (total is None or max(first, last or 0) < total)


def passing(status: int | None) -> bool:
    """An error status worth asking again after a pause: 5xx, 429 (S3's SlowDown is 503)."""
    return status is not None and (status >= 500 or status == 429)


def header_bytes(value: str) -> bytes:
    """A header value as it goes on the wire: its Latin-1 bytes (how both origin paths
    read values: an ETag past ASCII goes back as it came); past Latin-1 (a validator
    stored from httpx's UTF-8 reading, before values were read so), its UTF-8 bytes,
    the very bytes that reading took."""
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogateescape")
