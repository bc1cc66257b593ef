"""The files below an HTTP folder, from its index pages (nginx autoindex, HTML or JSON).

Breadth first from the given URL, one page at a time, within `ListLimits`: a page
larger than `max_page`, a tree deeper than `max_depth` or with more than
`max_entries` entries ends the listing with a clear error. Redirects are not
followed (a folder's page is asked for with its trailing `/`, so nginx has none to
give). A folder whose name `dfget.tree.paths` would refuse is not entered: it is
yielded as an entry, for the runner to refuse and report.
"""

from __future__ import annotations

import functools
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import httpx
import trio

from common.io.capped import BodyTooLarge, EncodedBody, identity_headers, read_capped
from common.io.rawheaders import latin_1_header
from common.urls import display_url, move_credentials
from dfget.tls import tls_context
from dfget.tree.entries import (
    Entry,
    KeptHeads,
    ListingError,
    ListLimits,
    TreeTooLarge,
    http_validator,
    http_validator_of,
)
from dfget.tree.index import Page, PageTooLarge, parse_page, utf8_size
from dfget.tree.paths import unsafe_part

if TYPE_CHECKING:
    from dfget.results import DownloadResult

log = logging.getLogger(__name__)

TIMEOUT = httpx.Timeout(60.0, connect=10.0)


class HttpIndexLister(KeptHeads):
    def __init__(
        self,
        url: str,
        *,
        headers: tuple[tuple[str, str], ...] = (),
        insecure: bool = False,
        limits: ListLimits | None = None,
        client: Callable[..., httpx.AsyncClient] | None = None,
        parses: trio.CapacityLimiter | None = None,
    ) -> None:
        self.url = url if url.endswith("/") else url + "/"
        self.headers = headers
        self.insecure = insecure
        self.limits = limits or ListLimits()
        # Worker threads its pages are parsed in (None: trio's default places). A parse
        # abandoned by a cancel runs on to its end and keeps its place meanwhile: a
        # server that lists for clients gives them places of their own, so that clients
        # that leave cannot pile up parses beyond them (nor take the default places).
        self.parses = parses
        # `client(**options)`: how to make a client (dfdaemon's connect only where its
        # origin policy allows); by default, dfget's own.
        self.make_client = client

    def _client(self) -> httpx.AsyncClient:
        """A client for a page or a HEAD (the process's one TLS context: `dfget.tls`)."""
        options: dict[str, Any] = {"follow_redirects": False, "timeout": TIMEOUT}
        if self.make_client is not None:
            return self.make_client(**options)
        return httpx.AsyncClient(verify=tls_context(self.insecure), **options)

    def _sent(self, url: str) -> tuple[str, list[tuple[str, str]]]:
        try:
            url, headers = move_credentials(url, self.headers)
        except ValueError as exc:
            raise ListingError(f"bad URL {display_url(url)}: {exc}") from exc
        return url, [(k, v) for k, v in headers if k.lower() not in ("host", "range")]

    async def entries(self) -> AsyncIterator[Entry]:
        # The whole listing first (bounded by max_entries), then the entries: nothing
        # is yielded while the client is open.
        for entry in await self.list_all():
            yield entry

    async def list_all(self) -> list[Entry]:
        """Every file of the tree, breadth first."""
        with trio.move_on_after(self.limits.max_seconds):
            return await self._list_all()
        raise TreeTooLarge(
            f"{display_url(self.url)} takes more than {self.limits.max_seconds:g}s to list"
        )

    async def _list_all(self) -> list[Entry]:
        found: list[Entry] = []
        queue: deque[tuple[tuple[str, ...], str]] = deque([((), self.url)])
        seen = names = 0
        limits = self.limits
        async with self._client() as client:
            while queue:
                parts, url = queue.popleft()
                # (a page may name no more links than a whole tree may hold entries)
                page = await self._page(client, url, limits.max_names - names, limits.max_entries)
                names += page.size
                if page.hostile:  # (one warning a page, naming the first few)
                    named = ", ".join(f"{href!r}: {why}" for href, why in page.hostile)
                    more = page.hostile_count - len(page.hostile)
                    rest = f" (and {more} more)" if more else ""
                    log.warning("%s: ignoring the links %s%s", display_url(url), named, rest)
                for link in page.links:
                    seen += 1
                    if seen > self.limits.max_entries:
                        raise TreeTooLarge(
                            f"{display_url(self.url)} lists more than "
                            f"{self.limits.max_entries} entries"
                        )
                    path = (*parts, link.name)
                    if link.is_dir and unsafe_part(link.name) is None:
                        if len(path) > self.limits.max_depth:
                            raise TreeTooLarge(
                                f"{display_url(link.url)} is more than "
                                f"{self.limits.max_depth} folders deep"
                            )
                        queue.append((path, link.url))
                        continue
                    names += utf8_size("/".join(path))
                    if names > limits.max_names:
                        raise self._too_many_names()
                    found.append(Entry(path, link.url, link.size, link.validator))
        return found

    def _too_many_names(self) -> TreeTooLarge:
        return TreeTooLarge(
            f"{display_url(self.url)} lists more than {self.limits.max_names} bytes of "
            "names and URLs"
        )

    async def _page(
        self, client: httpx.AsyncClient, url: str, max_names: int, max_links: int
    ) -> Page:
        where = display_url(url)
        sent_url, headers = self._sent(url)
        try:
            asked = identity_headers(headers)
            async with client.stream("GET", sent_url, headers=asked) as response:
                if response.status_code != 200:
                    raise ListingError(
                        f"index {where} answered {response.status_code} {response.reason_phrase}",
                        response.status_code,
                    )
                body = await read_capped(response, self.limits.max_page)
                kind = response.headers.get("content-type", "")
        except BodyTooLarge as exc:
            too_large = f"index {where} is larger than {self.limits.max_page} bytes"
            raise ListingError(too_large) from exc
        except EncodedBody as exc:
            raise ListingError(f"index {where}: {exc}") from exc
        except (httpx.HTTPError, httpx.InvalidURL, UnicodeError) as exc:  # (a bad host)
            raise ListingError(f"cannot read the index {where}: {exc}") from exc
        # Off the event loop: a hostile 4 MiB page of links takes seconds to read.
        parse = functools.partial(parse_page, body, kind, url, max_names, max_links)
        try:
            return await trio.to_thread.run_sync(parse, abandon_on_cancel=True, limiter=self.parses)
        except PageTooLarge as exc:
            if exc.names:
                raise self._too_many_names() from exc
            raise TreeTooLarge(
                f"{display_url(self.url)} lists more than {max_links} links on one page"
            ) from exc
        except ValueError as exc:
            raise ListingError(f"{where} is not an index: {exc}") from exc

    async def validator(self, entry: Entry) -> str | None:
        """A HEAD's ETag, Last-Modified and Content-Length; None if it has neither of
        the first two, or fails (the file is then downloaded again)."""
        sent_url, headers = self._sent(entry.url)
        # As a download asks (`fetch_from_origin`, the CDN): a compressed answer's ETag
        # and length are not those of the bytes written.
        try:
            response = await self._head(sent_url, identity_headers(headers))
        except httpx.HTTPError as exc:
            log.debug("HEAD %s: %s", display_url(entry.url), exc)
            return None
        if response.status_code != 200:
            return None
        etag = latin_1_header(response, "etag")  # (as the supernode reads it)
        modified = latin_1_header(response, "last-modified")
        return http_validator(etag, modified, response.headers.get("content-length"))

    def validator_of(self, result: DownloadResult) -> str | None:
        return http_validator_of(result)


__all__ = ["HttpIndexLister"]
