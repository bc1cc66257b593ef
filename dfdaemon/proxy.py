"""Forward proxy (`HTTP_PROXY=http://127.0.0.1:65001`): plain-HTTP GETs whose URL
matches a `--rule` go P2P; every other request is passed to its origin as it is;
`CONNECT` opens a tunnel and copies bytes both ways, untouched (HTTPS stays end to
end: the daemon sees only the host name), unless its host matches `--hijack`
(hijack.py: the daemon ends the TLS and serves what is inside as the mirror).

A P2P GET that would join a download another client started is checked with the
origin first, with this client's headers (`sharing.py`): a refusal, or other content,
and the request goes to the origin as it is, which answers it itself. Bytes come from
one source only: a download that restarts from the origin after bytes were sent
breaks the answer off."""

from __future__ import annotations

import logging
import re
from urllib.parse import urlsplit

import trio

from common.addresses import parse_listen
from common.io.origins import open_checked_tcp_stream
from common.origins import AddressDenied
from common.urls import display_url
from dfdaemon import httpconn
from dfdaemon.blob import BlobUnavailable, read_blob
from dfdaemon.bodies import send_blob
from dfdaemon.cache import BlobStore, TooManyDownloads
from dfdaemon.hijack import Hijacker
from dfdaemon.httpserver import Reply, Request
from dfdaemon.metrics import Metrics
from dfdaemon.sharing import JoinRefused, url_download
from dfdaemon.upstream import Upstream, UpstreamError
from dfget.engine import DownloadRequest
from dfget.errors import DfgetError, UsageError
from proto.io import STREAM_ERRORS
from proto.messages import check_request

log = logging.getLogger(__name__)

TUNNEL_CONNECT_TIMEOUT = 10.0
TUNNEL_CHUNK = 64 * 1024
# A tunnel in which nothing moves either way for this long is closed: a silent one
# would hold its connection (and the client's share of them) for ever. As squid's
# read_timeout; long-lived ones (HTTP/2, WebSockets, ssh with ServerAliveInterval) send
# pings well within it.
TUNNEL_IDLE = 900.0
# Request headers that go with a proxied P2P download to the supernode (its
# revalidation and back-to-source fetch are made with them).
P2P_HEADERS = ("authorization", "cookie", "user-agent")


class Proxy:
    def __init__(
        self,
        *,
        rules: tuple[str, ...],
        upstream: Upstream,
        blobs: BlobStore,
        metrics: Metrics,
        hijack: Hijacker | None = None,
    ) -> None:
        self.rules = [re.compile(rule) for rule in rules]
        self.hijack = hijack  # CONNECTs to intercept (--hijack), not tunnel
        self.upstream = upstream
        self.blobs = blobs
        self.metrics = metrics

    def goes_p2p(self, request: Request) -> bool:
        if request.method != "GET" or request.header("range") is not None:
            return False  # ranges pass through: a P2P task is the whole file
        return any(r.search(request.target) for r in self.rules)

    async def handle(self, request: Request, reply: Reply) -> None:
        if request.method == "CONNECT":
            self.metrics.requests.labels("connect").inc()
            await self._tunnel(request, reply)
        elif self.goes_p2p(request):
            self.metrics.requests.labels("proxy_p2p").inc()
            await self._p2p(request, reply)
        else:
            self.metrics.requests.labels("proxy_passthrough").inc()
            await self._relay(request, reply)

    async def _relay(self, request: Request, reply: Reply) -> None:
        try:
            await self.upstream.pass_through(request, request.target, reply, "proxy")
        finally:
            self.metrics.served.labels("proxy").inc(reply.bytes_sent)

    async def _p2p(self, request: Request, reply: Reply) -> None:
        headers = tuple((k, v) for k, v in request.headers if k in P2P_HEADERS)
        try:
            check_request(request.target, headers)  # (what no supernode would take)
            task_id = DownloadRequest(url=request.target, output=self.blobs.urls).task_id()
        except (UsageError, ValueError) as exc:  # not for P2P: the origin decides
            log.info("proxy: %s: passed through (%s)", display_url(request.target), exc)
            await self._relay(request, reply)
            return
        try:
            blob = await url_download(self.blobs, self.upstream, task_id, request.target, headers)
        except (JoinRefused, UpstreamError, TooManyDownloads, DfgetError) as exc:
            # The origin answers it (a kept copy's check through the supernode raises
            # its refusal as a DfgetError).
            log.info("proxy: %s: not shared (%s): passed through", display_url(request.target), exc)
            await self._relay(request, reply)
            return
        chunks = read_blob(blob)
        try:
            first = await anext(chunks, None)
        except BlobUnavailable as exc:
            # Nothing sent yet: the origin's own answer (a 404, a 401...) is the best one.
            where = display_url(request.target)
            log.info("proxy: P2P failed for %s (%s): passed through", where, exc)
            await self._relay(request, reply)
            return
        headers_out = [("content-type", "application/octet-stream")]
        if blob.length is not None:
            headers_out.append(("content-length", str(blob.length)))
        try:
            await send_blob(reply, headers_out, first, chunks)
        except BlobUnavailable as exc:  # not ended: the connection closes
            log.warning("proxy: %s broke off: %s", display_url(request.target), exc)
        finally:
            self.metrics.served.labels("proxy").inc(reply.bytes_sent)

    async def _tunnel(self, request: Request, reply: Reply) -> None:
        try:
            host, port = parse_listen(request.target)
            named = urlsplit(f"//{request.target}")  # (HOST:PORT both given: no defaults)
            if not host or port == 0 or named.hostname is None or named.port is None:
                raise ValueError(request.target)
        except ValueError:
            await reply.simple(400, b"CONNECT wants HOST:PORT\n", "text/plain")
            return
        if self.hijack is not None and (name := self.hijack.matches(host)) is not None:
            await self.hijack.intercept(request, reply, name, port)
            return
        try:
            with trio.fail_after(TUNNEL_CONNECT_TIMEOUT):
                remote = await open_checked_tcp_stream(self.upstream.policy, host, port)
        except AddressDenied as exc:
            log.warning("proxy: CONNECT %s:%d: %s", host, port, exc)
            await reply.simple(403, f"{exc}\n".encode(), "text/plain")
            return
        except (OSError, trio.TooSlowError) as exc:
            await reply.simple(502, f"cannot reach {host}:{port}: {exc}\n".encode(), "text/plain")
            return
        async with remote:
            await reply.start(200, [])
            client, already = reply.tunnel()
            if already:
                await remote.send_all(already)
            # Each side's bytes put the end off (`_pump`): idle for TUNNEL_IDLE, it ends.
            with trio.CancelScope(deadline=trio.current_time() + TUNNEL_IDLE) as idle:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_pump, client, remote, idle)
                    nursery.start_soon(_pump, remote, client, idle)


async def _pump(source: trio.abc.Stream, sink: trio.abc.Stream, tunnel: trio.CancelScope) -> None:
    """Copy until either side closes, or one stops reading what the other sends for
    SEND_TIMEOUT; then the whole `tunnel` ends. Bytes that come put its end off."""
    try:
        while data := await source.receive_some(TUNNEL_CHUNK):
            tunnel.deadline = trio.current_time() + TUNNEL_IDLE
            with trio.fail_after(httpconn.SEND_TIMEOUT):
                await sink.send_all(data)
    except (*STREAM_ERRORS, trio.TooSlowError):
        pass
    finally:
        tunnel.cancel()
