"""What a lister yields: the files of a tree, each with its relative path and URL.

A lister is anything with `entries()`, an async iterator of `Entry`, and
`validator(entry)`, what identifies the file's current version upstream (and
`validator_of(result)`, the same read from a finished download). The HTTP
index lister (`dfget.tree.httpindex`) is one; an object-store prefix lister plugs in
the same way (`dfget.tree.listers.lister_for` picks one by URL scheme).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from dfget.errors import DfgetError, OriginFailed

if TYPE_CHECKING:
    import httpx

    from dfget.results import DownloadResult

MiB = 1 << 20
HEAD_SECONDS = 30.0  # a re-run's HEAD of one file, its whole answer


@dataclass(frozen=True, slots=True)
class Entry:
    """One file of the tree.

    `path`: its path relative to the tree's root, one decoded name a part
    (`("sub", "a b.txt")`), as the listing gives it: NOT checked; `dfget.tree.paths`
    refuses unsafe ones before anything is written. `url`: where to download it.
    `size`: bytes, if the listing says. `validator`: an opaque string that changes
    when the file does (nginx JSON's mtime and size, an S3 ETag), if the listing says;
    None: `Lister.validator` is asked when it matters.
    """

    path: tuple[str, ...]
    url: str
    size: int | None = None
    validator: str | None = None

    @property
    def name(self) -> str:
        """The relative path with `/`, as --include/--exclude and reports see it."""
        return "/".join(self.path)


class Lister(Protocol):
    """A tree of files somewhere (an HTTP index, an object-store prefix)."""

    def entries(self) -> AsyncIterator[Entry]:
        """Every file of the tree (an `async def ... yield` generator). Bounded by
        `ListLimits`; raises ListingError or TreeTooLarge."""
        ...

    async def validator(self, entry: Entry) -> str | None:
        """What identifies `entry`'s current version upstream (ETag, Last-Modified and
        length of a HEAD), None if nothing does: such a file is never skipped."""
        ...

    def validator_of(self, result: DownloadResult) -> str | None:
        """`validator`'s answer for the bytes `result` wrote, from the origin's
        validators the download carried (None if it carried none): a file the
        manifest cannot vouch for is downloaded without asking `validator` first."""
        ...

    async def aclose(self) -> None:
        """Close what the lister keeps open for `validator` (the tree is done)."""
        ...


class Listed:
    """Files already listed (by the daemon, `dfget.tree.handed`) as a lister: what
    their versions are (`validator`, `validator_of`) is `lister`'s to say."""

    def __init__(self, entries: list[Entry], lister: Lister) -> None:
        self.listed, self.lister = entries, lister

    async def entries(self) -> AsyncIterator[Entry]:
        for entry in self.listed:
            yield entry

    async def validator(self, entry: Entry) -> str | None:
        return await self.lister.validator(entry)

    def validator_of(self, result: DownloadResult) -> str | None:
        return self.lister.validator_of(result)

    async def aclose(self) -> None:
        await self.lister.aclose()


class KeptHeads:
    """A lister's one HTTP client for its HEADs (`validator`), opened at the first and
    closed with the tree (`aclose`): a tree of small files asks a HEAD a file, and a
    client and a connection each time cost more than the download through a daemon."""

    _heads: httpx.AsyncClient | None = None

    def _client(self) -> httpx.AsyncClient:
        raise NotImplementedError

    def _head_client(self) -> httpx.AsyncClient:
        if self._heads is None:
            self._heads = self._client()
        return self._heads

    async def _head(self, url: str, headers: list[tuple[str, str]]) -> httpx.Response:
        """HEAD `url`, its whole answer within HEAD_SECONDS (httpx's timeouts bound each
        read: an origin that drips its answer would hold the tree, outside every file's
        deadline); past it, httpx.ReadTimeout."""
        import httpx  # (this module loads without them: dfget hands trees to a daemon)
        import trio

        with trio.move_on_after(HEAD_SECONDS):
            return await self._head_client().head(url, headers=headers)
        raise httpx.ReadTimeout(f"HEAD: no answer within {HEAD_SECONDS:g}s")

    async def aclose(self) -> None:
        heads, self._heads = self._heads, None
        if heads is not None:
            await heads.aclose()


@dataclass(frozen=True, slots=True)
class ListLimits:
    """What a listing may hold: a hostile or runaway index ends with a clear error."""

    max_depth: int = 32  # folders below the root
    max_entries: int = 100_000  # files and folders, all pages together
    max_page: int = 4 * MiB  # bytes of one index page
    # UTF-8 bytes of the files' and folders' URLs, names, paths and validators, in all
    max_names: int = 32 * MiB
    max_seconds: float = 240.0  # to list the whole tree


def http_validator(etag: str | None, modified: str | None, length: str | None) -> str | None:
    """What `dfget -r` records of an HTTP file's version: its ETag, Last-Modified and
    length (a HEAD's, or those of the download), None without the first two."""
    if not etag and not modified:
        return None
    return f"etag={etag};last-modified={modified};length={length}"


def http_validator_of(result: DownloadResult) -> str | None:
    """`http_validator` of the bytes a download wrote, from the origin's validators it
    carried (None if it carried none)."""
    if result.validators is None:
        return None
    etag, modified = result.validators
    return http_validator(etag or None, modified or None, str(result.bytes))


class ListingError(OriginFailed):
    """An index page could not be fetched or read (exit code 3, an origin error)."""


class TreeTooLarge(DfgetError):
    """The tree is deeper or larger than ListLimits allow."""


__all__ = [
    "Entry",
    "KeptHeads",
    "ListLimits",
    "Listed",
    "Lister",
    "ListingError",
    "TreeTooLarge",
    "http_validator",
    "http_validator_of",
]
