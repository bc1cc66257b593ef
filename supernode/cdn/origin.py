"""Back-to-source: HTTP(S) requests to the origin through httpx.

httpx handles TLS (system CAs unless `insecure`), redirects and connection reuse; the
client's own headers (auth, cookies) are passed on except hop-by-hop ones. Every
httpx error is translated here into an `OriginError` (raised `from` it), so the rest
of the supernode never sees an httpx exception.
"""

from __future__ import annotations

import logging
import ssl
import urllib.request
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from urllib.parse import urljoin, urlsplit

import httpcore
import httpx
import trio

from common.io.keptconns import KeptConnections
from common.io.origins import SENSITIVE, checked_client
from common.io.rawheaders import latin_1_header
from common.origins import AddressDenied, OriginPolicy
from common.s3sign import S3Credentials, signed_headers
from common.urls import display_url, move_credentials, unsendable
from supernode.cdn.lean import LeanResponse, lean_get
from supernode.cdn.response import Headers, OriginResponse, Validators, header_bytes
from supernode.errors import (
    BadRedirect,
    BadRequest,
    OriginBroken,
    OriginDenied,
    OriginError,
    OriginStatusError,
    OriginTimeout,
    OriginUnreachable,
)

log = logging.getLogger(__name__)

# httpcore reads HTTP/1.1 bodies 64 KiB at a time; each read costs a trip through
# anyio, h11 and httpx. 1 MiB reads take the CDN's body path from ~0.8 to ~1.1 GB/s
# on loopback (bench/single.py). A class attribute, so guarded: on a version without
# it, nothing changes but speed.
_HTTP11 = getattr(getattr(httpcore, "_async", None), "http11", None)
if _HTTP11 is not None and hasattr(_HTTP11.AsyncHTTP11Connection, "READ_NUM_BYTES"):
    _HTTP11.AsyncHTTP11Connection.READ_NUM_BYTES = 1 << 20

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

REDIRECTS = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 10


class HttpxResponse(OriginResponse):
    """An httpx streaming response behind the CDN's interface."""

    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self._chunks = response.aiter_raw()
        self._pending = memoryview(b"")
        self.status = response.status_code
        self.reason = response.reason_phrase
        self.url = str(response.url)

    def header(self, name: str) -> str | None:
        """The first value of header `name`, its bytes read as Latin-1 (as the lean path
        reads them, and sends them back: an ETag past ASCII goes out as it came)."""
        return latin_1_header(self._response, name)

    async def read_into(self, view: memoryview) -> int:
        if not self._pending:
            try:
                self._pending = memoryview(await anext(self._chunks))
            except StopAsyncIteration:
                return 0
            except httpx.TimeoutException as exc:
                raise OriginBroken(f"origin stalled mid-body: {exc!r}") from exc
            except httpx.HTTPError as exc:  # dropped connection, bad chunking, short body
                raise OriginBroken(f"origin body cut short: {exc!r}") from exc
        count = min(view.nbytes, self._pending.nbytes)
        view[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        return count

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            await self._response.aclose()


class OriginClient:
    """One httpx client shared by every fetch of the supernode. Every connection, on
    either path and for every redirect hop, goes to an address `policy` allows
    (`common.io.origins`)."""

    def __init__(
        self,
        *,
        insecure: bool = False,
        timeout: float = 30.0,
        lean: bool = True,
        policy: OriginPolicy | None = None,
        origin_tls: Mapping[str, ssl.SSLContext] | None = None,
    ) -> None:
        verify: ssl.SSLContext | bool = False if insecure else ssl.create_default_context()
        self.timeout = timeout
        self.policy = policy if policy is not None else OriginPolicy()
        # Plain-HTTP GETs take the lean body path unless a proxy is configured (httpx
        # honours the proxy variables; the lean path does not speak to proxies).
        proxies = urllib.request.getproxies()
        self.lean = lean and not (proxies.get("http") or proxies.get("all"))
        self.kept = KeptConnections()  # the lean path's, for small requests (`open(keep=)`)
        self._client = checked_client(
            self.policy,
            verify=verify,
            origin_tls=origin_tls,  # --origin-ca, --origin-client-cert
            follow_redirects=True,
            max_redirects=10,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=32),
            headers={"user-agent": "dragonfly-py-supernode/0.1", "accept-encoding": "identity"},
        )

    async def aclose(self) -> None:
        self.kept.close()
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
        s3: S3Credentials | None = None,
        keep: bool = False,
    ) -> AsyncIterator[OriginResponse]:
        """Send a request (redirects followed); yield the response if its status is in
        `ok`, else raise OriginStatusError. With `s3`, the request is signed (SigV4)
        with those credentials, the requester's, as it leaves (Range and conditions
        included). With `keep` (a request whose answer is small: a revalidation), a
        plain-HTTP GET goes on a kept connection and leaves its own kept after it."""
        url, headers = move_credentials(url, headers)
        sent = [(k, v) for k, v in headers if not _hop_by_hop(k)] + list(extra)
        if s3 is not None:
            sent = signed_headers(method, url, sent, s3)
        response: LeanResponse | HttpxResponse | None = None
        if method == "GET" and self._lean_for(url):
            response, url, sent = await self._lean_get(url, sent, keep)
        if response is None:
            response = await self._httpx_send(method, url, sent)
        try:
            if response.status not in ok:
                raise OriginStatusError(url, response.status, response.reason)
            yield response
        finally:
            await response.aclose()

    def _lean_for(self, url: str) -> bool:
        """Plain HTTP to a host in ASCII: one past it (IDNA) goes by httpx, which encodes
        it (a path past ASCII is quoted on either path)."""
        try:
            parts = urlsplit(url)
            host = parts.hostname or ""
        except ValueError:  # (an unclosed `[`: httpx says what is wrong)
            return False
        return self.lean and parts.scheme == "http" and host.isascii()

    async def _lean_get(
        self, url: str, sent: list[tuple[str, str]], keep: bool = False
    ) -> tuple[LeanResponse | None, str, list[tuple[str, str]]]:
        """GET with redirects on the lean path; (None, url, headers) to go on with httpx
        when a redirect leads somewhere the lean path does not go (https)."""
        for _ in range(MAX_REDIRECTS + 1):
            response = await lean_get(
                url,
                sent,
                policy=self.policy,
                read_timeout=self.timeout,
                connect_timeout=min(self.timeout, 10.0),
                kept=self.kept if keep else None,
            )
            location = response.header("location")
            if response.status not in REDIRECTS or not location:
                return response, url, sent
            await response.aclose()
            target = _redirect_target(url, location)
            if _origin_of(target) != _origin_of(url):
                sent = [(k, v) for k, v in sent if k.lower() not in SENSITIVE]
            url = target
            if not self._lean_for(url):
                return None, url, sent
        raise OriginUnreachable(f"too many redirects from {display_url(url)}")

    async def _httpx_send(
        self, method: str, url: str, sent: list[tuple[str, str]]
    ) -> HttpxResponse:
        """Send, redirects followed by httpx under `checked_client`'s hooks (a hop to
        another origin goes without the SENSITIVE headers)."""
        try:
            raw = [(k.encode("ascii"), header_bytes(v)) for k, v in sent]  # (as came)
            request = self._client.build_request(method, url, headers=raw)
        except (httpx.InvalidURL, ValueError) as exc:  # IDNA errors are ValueErrors
            raise BadRequest(f"cannot request {display_url(url)[:200]!r}: {exc}") from exc
        try:
            return HttpxResponse(await self._client.send(request, stream=True))
        except AddressDenied as exc:  # this URL or a redirect hop: nothing was sent
            raise OriginDenied(f"refused to fetch {display_url(url)}: {exc}") from exc
        except httpx.TimeoutException as exc:
            raise OriginTimeout(f"origin timed out: {display_url(url)}") from exc
        except httpx.TooManyRedirects as exc:
            raise OriginUnreachable(f"too many redirects from {display_url(url)}") from exc
        except (httpx.InvalidURL, ValueError) as exc:  # a redirect's (IDNA: ValueErrors)
            raise BadRedirect(
                f"{display_url(url)} redirected to a URL no client can send: {exc}"
            ) from exc
        except (httpx.ConnectError, httpx.UnsupportedProtocol, httpx.ProxyError) as exc:
            raise OriginUnreachable(f"cannot reach origin {display_url(url)}: {exc}") from exc
        except httpx.HTTPError as exc:
            raise OriginUnreachable(f"request to {display_url(url)} failed: {exc!r}") from exc


def _hop_by_hop(name: str) -> bool:
    """A header never passed on: HOP_BY_HOP, also when spelled with underscores, which
    some servers read as dashes (`Content_Length` as a framing header)."""
    return name.lower().replace("_", "-") in HOP_BY_HOP


def _redirect_target(url: str, location: str) -> str:
    """Where a redirect from `url` leads: BadRedirect if no client can send a request
    there (a host or port that is none)."""
    try:
        target = urljoin(url, location)
    except ValueError as exc:  # ("Invalid IPv6 URL")
        raise BadRedirect(f"{display_url(url)} redirected to a bad URL: {exc}") from exc
    reason = unsendable(target)
    if reason is not None:
        raise BadRedirect(f"{display_url(url)} redirected to a URL no client can send: {reason}")
    return target


def _origin_of(url: str) -> tuple[str, str | None, int | None]:
    """Scheme, host and port: what a redirect must keep for credentials to follow (of a
    URL already sent to, or a `_redirect_target`: its port reads)."""
    parts = urlsplit(url)
    return parts.scheme, parts.hostname, parts.port


__all__ = ["OriginClient", "OriginError", "OriginResponse", "Validators"]
