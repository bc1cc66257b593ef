"""Back-to-source: HTTP(S) requests to the origin through httpx.

httpx handles TLS (system CAs unless `insecure`), redirects and connection reuse; the
client's own headers (auth, cookies) are passed on except hop-by-hop ones. Every
httpx error is translated here into an `OriginError` (raised `from` it), so the rest
of the supernode never sees an httpx exception.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
import trio

from supernode.errors import (
    OriginBroken,
    OriginError,
    OriginStatusError,
    OriginTimeout,
    OriginUnreachable,
)

log = logging.getLogger(__name__)

# Never passed on: they describe the dfget → supernode hop, not the request for the
# bytes, or would change the bytes (we store the body exactly as the origin sends it).
HOP_BY_HOP = frozenset(
    {
        "host",
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "accept-encoding",
        "range",
        "if-range",
        "if-none-match",
        "if-modified-since",
    }
)

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


class OriginResponse:
    """An open response: status, the headers we care about, and the raw body."""

    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self.status = response.status_code
        self.url = str(response.url)
        headers = response.headers
        self.validators = Validators(headers.get("etag"), headers.get("last-modified"))
        self.accepts_ranges = headers.get("accept-ranges", "").lower() == "bytes"
        self.content_range = headers.get("content-range")
        length = headers.get("content-length")
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        self.length = int(length) if length and length.isdigit() and not chunked else None

    async def chunks(self, size: int) -> AsyncIterator[bytes]:
        """The raw body (no content decoding) in chunks; OriginBroken if it is cut short."""
        try:
            async for chunk in self._response.aiter_raw(size):
                yield chunk
        except httpx.TimeoutException as exc:
            raise OriginBroken(f"origin stalled mid-body: {exc!r}") from exc
        except httpx.HTTPError as exc:  # dropped connection, bad chunking, short body
            raise OriginBroken(f"origin body cut short: {exc!r}") from exc


class OriginClient:
    """One httpx client shared by every fetch of the supernode."""

    def __init__(self, *, insecure: bool = False, timeout: float = 30.0) -> None:
        verify: ssl.SSLContext | bool = False if insecure else ssl.create_default_context()
        self._client = httpx.AsyncClient(
            verify=verify,
            follow_redirects=True,
            max_redirects=10,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=32),
            headers={"user-agent": "dragonfly-py-supernode/0.1", "accept-encoding": "identity"},
        )

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            await self._client.aclose()

    @asynccontextmanager
    async def open(
        self,
        method: str,
        url: str,
        headers: Headers,
        *,
        extra: Headers = (),
        ok: frozenset[int] = frozenset({200, 206}),
    ) -> AsyncIterator[OriginResponse]:
        """Send a request; yield the response if its status is in `ok`, else raise."""
        sent = [(k, v) for k, v in headers if k.lower() not in HOP_BY_HOP] + list(extra)
        request = self._client.build_request(method, url, headers=sent)
        try:
            response = await self._client.send(request, stream=True)
        except httpx.TimeoutException as exc:
            raise OriginTimeout(f"origin timed out: {url}") from exc
        except httpx.TooManyRedirects as exc:
            raise OriginUnreachable(f"too many redirects from {url}") from exc
        except (httpx.ConnectError, httpx.UnsupportedProtocol, httpx.ProxyError) as exc:
            raise OriginUnreachable(f"cannot reach origin {url}: {exc}") from exc
        except httpx.HTTPError as exc:
            raise OriginUnreachable(f"request to {url} failed: {exc!r}") from exc
        try:
            if response.status_code not in ok:
                raise OriginStatusError(url, response.status_code, response.reason_phrase)
            yield OriginResponse(response)
        finally:
            with trio.CancelScope(shield=True):
                await response.aclose()


__all__ = ["OriginClient", "OriginError", "OriginResponse", "Validators"]
