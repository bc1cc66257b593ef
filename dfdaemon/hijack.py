"""HTTPS interception ("hijacking"): a `CONNECT host:port` whose host fully matches a
`--hijack` regex is ended here, with TLS under a leaf certificate for that host
minted by the daemon's CA (ca.py), instead of being tunnelled blind.

The requests decrypted are the registry mirror's, for the CONNECT's host as if a
client had named it with `?ns=` (the host the client asked for, never its `Host`
header): blobs go P2P under the same trust rules (so the host must be the
`--registry` or an `--allow-registry` one, or every answer is 403), everything else
is relayed to https://host:port over verified TLS. Paths outside /v2/ (a token
service on the same host) are relayed as they are.

What a stranger can cost is bounded: at most MAX_INTERCEPTED intercepted connections
at once (past it, 503 before any TLS), leaves minted for new hosts at the CA's
MINT_RATE (past it, 503: a CONNECT line costs the client nothing, a leaf costs the
daemon about a millisecond), a TLS handshake finished within HANDSHAKE_TIMEOUT, the
leaves cached for LEAF_CACHE hosts; a handshake that fails
(a client that does not trust the CA says so with an alert) is logged in one line.
Once decrypted, the connection is the HTTP server's, with its own time limits.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import re
from urllib.parse import parse_qsl, urlencode, urlsplit

import trio

from common.addresses import format_address
from dfdaemon.ca import LeafCache, MintingBusy
from dfdaemon.httpserver import HANDSHAKE_TIMEOUT, Reply, Request, serve_connection
from dfdaemon.metrics import Metrics
from dfdaemon.mirror import Mirror
from dfdaemon.registry import Target
from dfdaemon.trust import origin_of
from dfdaemon.upstream import Upstream

log = logging.getLogger(__name__)

MAX_INTERCEPTED = 128  # intercepted connections held at once
# A host name as a certificate may carry it: letters, digits, hyphens, dots.
_DNS_NAME = re.compile(
    r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*"
)


def intercepted_name(host: str) -> str | None:
    """`host` (from a CONNECT, IPv6 without brackets) as the regexes see it and the leaf
    names it: lower case, no trailing dot; None if no certificate can name it."""
    name = host.strip().lower().rstrip(".")
    if "%" in name:  # an IPv6 zone: no certificate names it, no URL carries it
        return None
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        pass
    return name if len(name) <= 253 and _DNS_NAME.fullmatch(name) else None


class Hijacker:
    def __init__(
        self,
        *,
        patterns: tuple[str, ...],
        leaves: LeafCache,
        mirror: Mirror,
        upstream: Upstream,
        metrics: Metrics,
        limit: int = MAX_INTERCEPTED,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
    ) -> None:
        self.patterns = [re.compile(pattern) for pattern in patterns]
        self.leaves = leaves
        self.mirror = mirror
        self.upstream = upstream
        self.metrics = metrics
        self.slots = trio.CapacityLimiter(limit)
        self.handshake_timeout = handshake_timeout

    def matches(self, host: str) -> str | None:
        """The name to intercept `host` as, if a regex fully matches it; else None."""
        name = intercepted_name(host)
        if name is None or not any(p.fullmatch(name) for p in self.patterns):
            return None
        return name

    async def intercept(self, request: Request, reply: Reply, name: str, port: int) -> None:
        """Answer the CONNECT, end the client's TLS as `name` and serve what it sends."""
        try:
            self.slots.acquire_nowait()
        except trio.WouldBlock:
            self.metrics.hijack_failures.labels("busy").inc()
            await reply.simple(503, b"too many intercepted connections\n", "text/plain")
            return
        try:
            try:
                context = self.leaves.context(name)
            except MintingBusy:
                self.metrics.hijack_failures.labels("minting").inc()
                log.info("CONNECT %s from %s: minting budget spent", name, request.client)
                await reply.simple(503, b"too many new hosts: try again\n", "text/plain")
                return
            self.metrics.requests.labels("hijack").inc()
            await reply.start(200, [])
            raw, already = reply.tunnel()
            stream = _Prefixed(raw, already) if already else raw
            # Not https_compatible: closing sends close_notify (clients reading to EOF
            # want it); a client closing without one is as gone as any other.
            tls = trio.SSLStream(stream, context, server_side=True)
            where = f"CONNECT {format_address(name, port)} from {request.client}"
            with trio.move_on_after(self.handshake_timeout) as waited:
                try:
                    await tls.do_handshake()
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    self.metrics.hijack_failures.labels("handshake").inc()
                    log.info("%s: TLS handshake failed: %s", where, exc.__cause__ or exc)
                    return
            if waited.cancelled_caught:
                self.metrics.hijack_failures.labels("timeout").inc()
                log.info("%s: no TLS handshake in %gs", where, self.handshake_timeout)
                return
            serve = functools.partial(self._serve, name, port)
            await serve_connection(tls, serve, client=request.client)
        finally:
            self.slots.release()

    async def _serve(self, name: str, port: int, request: Request, reply: Reply) -> None:
        """One decrypted request, for https://name:port."""
        if not request.target.startswith("/") or request.method == "CONNECT":
            await reply.simple(400, b"want a path (origin-form target)\n", "text/plain")
            return
        try:
            parts = urlsplit(request.target)
        except ValueError:
            await reply.simple(400, b"bad request target\n", "text/plain")
            return
        base = f"https://{format_address(name, port)}"
        if port == 443:
            base = base.removesuffix(":443")
        if parts.path == "/v2" or parts.path.startswith("/v2/"):
            query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "ns"]
            target = Target(
                upstream=base,
                path=parts.path,
                query=urlencode(query),
                origin=origin_of(base),
                named=True,
            )
            await self.mirror.serve(request, reply, target)
            return
        self.metrics.requests.labels("hijack_passthrough").inc()
        try:
            await self.upstream.pass_through(request, f"{base}{request.target}", reply, "hijack")
        finally:
            self.metrics.served.labels("passthrough").inc(reply.bytes_sent)


class _Prefixed(trio.abc.Stream):
    """A stream whose first bytes were already read (by the HTTP parser, past the
    CONNECT request): they are received again first."""

    def __init__(self, stream: trio.abc.Stream, first: bytes) -> None:
        self.stream = stream
        self.first = first

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self.first:
            size = len(self.first) if max_bytes is None else max_bytes
            data, self.first = self.first[:size], self.first[size:]
            return data
        return await self.stream.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.stream.aclose()
