"""Requests the daemon passes straight to an upstream (registry or origin), and the
answer passed back as it is: status, headers (hop-by-hop ones aside) and body bytes,
undecoded. Repeated headers (several `Accept` lines) travel as they came.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import httpx

from common.io.origins import checked_client, environment_proxies, proxy_for
from common.origins import AddressDenied, OriginPolicy
from common.units import header_int
from common.urls import display_url, unsendable
from dfdaemon.httpserver import Reply, Request
from dfdaemon.probe import Probe, ProbeFailed, ProbeUnreachable
from dfdaemon.trust import origin_of
from dfget.tls import tls_context

log = logging.getLogger(__name__)

SILENT_FOR = 60.0  # seconds a host that could not be reached is not asked optional questions
MAX_SILENT = 1024  # such hosts remembered at once

# Hop-by-hop headers (RFC 9110 7.6.1) belong to one connection, never forwarded; Host is
# set from the upstream URL.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
    }
)
_UNDERSCORED = HOP_BY_HOP | {"content-length"}  # (as names with "_" for "-")
# What httpx adds to every request unless the caller gives them; a pass-through sends
# only what the client sent.
_CLIENT_DEFAULTS = ("accept", "accept-encoding", "user-agent")


def forwardable(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """`headers` without hop-by-hop ones, nor those the Connection header names, nor a
    framing header spelled with underscores (`Transfer_Encoding`, `Content_Length`),
    which some servers read as the dashed one."""
    named = {
        token.strip().lower()
        for name, value in headers
        if name == "connection"
        for token in value.split(",")
    }
    return [
        (k, v)
        for k, v in headers
        if k not in HOP_BY_HOP and k not in named and not _framing_underscored(k)
    ]


def _framing_underscored(name: str) -> bool:
    return "_" in name and name.replace("_", "-") in _UNDERSCORED


class UpstreamError(Exception):
    """The upstream could not be reached or broke off."""


class Unsendable(UpstreamError):
    """No HTTP client can send the request (a URL httpx or the resolver refuses, a port
    0, a header value past Latin-1): nothing was sent; the asker's mistake."""


class UpstreamDenied(UpstreamError):
    """The origin policy (--origin-allow, --origin-deny) refuses the upstream's address:
    nothing was sent to it."""


class Upstream:
    """One shared httpx client for every pass-through request of the daemon."""

    def __init__(
        self,
        *,
        insecure: bool = False,
        timeout: float = 60.0,
        policy: OriginPolicy | None = None,
        origin_tls: Mapping[str, ssl.SSLContext] | None = None,
    ) -> None:
        # Every connection (redirect hops to storage included) goes to an address the
        # origin policy allows: a client must not make the daemon reach cloud metadata.
        # `origin_tls`: registries with their own CA or client certificate (HOST[:PORT]).
        self.policy = policy or OriginPolicy(allow_flag="dfdaemon's --origin-allow")
        self.client = checked_client(
            self.policy,
            verify=not insecure,
            origin_tls=origin_tls,
            follow_redirects=False,
            timeout=httpx.Timeout(timeout, connect=10.0),
        )
        # Clients of their own (`new_client`) share one TLS context, its CAs loaded at
        # its first handshake (`dfget.tls`): a context made per client costs ~25 ms.
        self._tls: dict[str, Any] = {"verify": tls_context(insecure), "origin_tls": origin_tls}
        self._silent: dict[str, float] = {}  # host:port → until when it is not asked
        self.proxies = environment_proxies()  # (as the client read them)
        self.probe = Probe(self.policy, connect_timeout=10.0, timeout=timeout)

    def new_client(self, **options: Any) -> httpx.AsyncClient:
        """An httpx client (`options` as httpx's) whose every connection goes to an
        address the origin policy allows, checked and pinned (`checked_client`), with
        this upstream's TLS settings; its user closes it."""
        return checked_client(self.policy, **self._tls, **options)

    def reachable(self, url: str) -> bool:
        """False for a while after `unreachable(url)`: a question the supernode can
        answer as well (`sharing.check_kept`) does not wait for a silent host again."""
        until = self._silent.get(_host_of(url))
        return until is None or time.monotonic() >= until

    def unreachable(self, url: str) -> None:
        """`url`'s host could not be reached from here just now."""
        if len(self._silent) >= MAX_SILENT:
            self._silent.clear()
        self._silent[_host_of(url)] = time.monotonic() + SILENT_FOR

    async def aclose(self) -> None:
        await self.probe.aclose()
        await self.client.aclose()

    def build(
        self,
        method: str,
        url: str,
        headers: list[tuple[str, str]],
        body: AsyncIterator[bytes] | None = None,
    ) -> httpx.Request:
        """The request as httpx sends it, header values as the client sent them (our
        server reads them as Latin-1: back to those bytes); Unsendable if it cannot go."""
        sent = forwardable(headers)
        try:
            if (why := unsendable(url)) is not None:
                raise ValueError(why)
            raw = [(k.encode("ascii"), v.encode("latin-1")) for k, v in sent]
            request = self.client.build_request(method, url, headers=raw, content=body)
        except (httpx.InvalidURL, ValueError) as exc:  # (IDNA's and encodings' are ValueErrors)
            where = display_url(url)[:200]
            raise Unsendable(f"{method} {where}: a request no client can send: {exc}") from exc
        given = {k for k, _ in sent}
        for name in _CLIENT_DEFAULTS:
            if name not in given and name in request.headers:
                del request.headers[name]
        return request

    async def relay(self, request: Request, url: str, reply: Reply) -> int:
        """Send `request` to `url` and its answer back through `reply`; the status."""
        has_body = request.header("content-length") not in (None, "0") or (
            request.header("transfer-encoding") is not None
        )
        outgoing = self.build(
            request.method, url, request.headers, request.body() if has_body else None
        )
        response = await self._send(outgoing, request.method, url, stream=True)
        try:
            # As sent (Latin-1 is every byte): a UTF-8 file name in a Content-Disposition
            # goes back byte for byte (`Reply.start` writes each value as Latin-1).
            received = [
                (k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in response.headers.raw
            ]
            await reply.start(response.status_code, forwardable(received))
            try:
                async for chunk in response.aiter_raw():
                    await reply.send(chunk)
            except httpx.HTTPError as exc:
                where = display_url(url)
                log.warning("upstream broke off %s %s: %s", request.method, where, exc)
                return response.status_code  # the client sees a short body and retries
            await reply.end()
        finally:
            await response.aclose()
        return response.status_code

    async def pass_through(self, request: Request, url: str, reply: Reply, who: str) -> None:
        """`relay`, its failures answered in plain text (403 for an address the policy
        denies, 502 if the origin cannot be reached and nothing was sent yet); `who`
        prefixes the log line."""
        try:
            await self.relay(request, url, reply)
        except Unsendable as exc:
            log.info("%s: %s", who, exc)
            await reply.simple(400, f"{exc}\n".encode(), "text/plain")
        except UpstreamDenied as exc:
            log.warning("%s: %s", who, exc)
            await reply.simple(403, f"{exc}\n".encode(), "text/plain")
        except UpstreamError as exc:
            log.info("%s: %s", who, exc)
            if not reply.started:
                await reply.simple(502, f"origin unreachable: {exc}\n".encode(), "text/plain")

    async def head(self, url: str, headers: list[tuple[str, str]]) -> httpx.Response:
        """HEAD `url` with the client's headers (but its range and conditions: this asks
        about access, not content), redirects followed (to storage). A plain-HTTP URL
        reached directly goes by `probe.Probe` (kept-alive, without httpx) unless the
        answer is a redirect."""
        asked = about_access(headers)
        if url.startswith("http://") and (not self.proxies or proxy_for(self.proxies, url) is None):
            try:
                status, answer = await self.probe.head(url, forwardable(asked))
            except AddressDenied as exc:
                raise UpstreamDenied(str(exc)) from exc
            except ProbeUnreachable as exc:
                raise UpstreamError(f"HEAD {display_url(url)}: {exc}") from exc
            except ProbeFailed:
                pass  # httpx, below, says what is wrong
            else:
                if not 300 <= status < 400:
                    raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in answer]
                    return httpx.Response(status, headers=raw)  # (as sent: bytes)
        request = self.build("HEAD", url, asked)
        return await self._send(request, "HEAD", url, follow_redirects=True)

    async def first_byte(self, url: str, headers: list[tuple[str, str]]) -> httpx.Response:
        """GET the first byte of `url` (for origins without HEAD); the body is not read."""
        request = self.build("GET", url, [*about_access(headers), ("range", "bytes=0-0")])
        response = await self._send(request, "GET", url, follow_redirects=True, stream=True)
        await response.aclose()
        return response

    async def _send(
        self,
        request: httpx.Request,
        method: str,
        url: str,
        *,
        follow_redirects: bool = False,
        stream: bool = False,
    ) -> httpx.Response:
        """Send `request` (`method` and `url` name it in errors): UpstreamDenied if the
        origin policy refuses its address, UpstreamError for any other failure."""
        try:
            return await self.client.send(request, follow_redirects=follow_redirects, stream=stream)
        except AddressDenied as exc:
            raise UpstreamDenied(str(exc)) from exc
        except httpx.HTTPError as exc:
            raise UpstreamError(f"{method} {display_url(url)}: {reason(exc)}") from exc
        except (httpx.InvalidURL, ValueError) as exc:  # (IDNA's are ValueErrors)
            where = "redirected to a URL" if follow_redirects else "a request"
            raise UpstreamError(
                f"{method} {display_url(url)}: {where} no client can send: {exc}"
            ) from exc


def _host_of(url: str) -> str:
    """`url`'s origin as the trust table keys it (`host:port`, the default port named)."""
    try:
        return origin_of(url).key
    except ValueError:
        return urlsplit(url).netloc


def reason(exc: BaseException) -> str:
    """What went wrong, for a message: a TLS failure says which (a certificate not
    verified, one the registry required), however deep httpx and trio wrapped it."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return f"TLS: {seen}"
        seen = seen.__cause__ or seen.__context__
    return str(exc) or type(exc).__name__


def announced_length(answer: httpx.Response) -> int | None:
    """The length an upstream's yes about a blob names, if it names one: a 200's
    Content-Length, a 206's `/TOTAL` of its Content-Range (`*` naming none). A yes is for
    that blob only if the blob has that length: a login page that names its own (an auth
    gateway's, at the end of a redirect) vouches for nothing."""
    if answer.status_code == 200:
        return header_int(answer.headers.get("content-length", ""))
    total = answer.headers.get("content-range", "").rpartition("/")[2]
    return header_int(total) if answer.status_code == 206 else None


def about_access(headers: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """A client's headers but its range and conditions (names in any case): for a
    request that asks about access, or for a whole blob, not for a part of its content."""
    return [(k, v) for k, v in headers if k.lower() != "range" and not k.lower().startswith("if-")]
