"""The registry mirror: blobs by sha256 go P2P, everything else goes to the upstream.

A request may name its upstream (`?ns=HOST`); only an upstream the daemon trusts is
asked anything: the `--registry`, one given with `--allow-registry`, or (for a blob)
one the blob was fetched from. Any other gets 403 at once, whatever it is for.

A blob request is then checked with the upstream (`HEAD` with the client's own
credentials): only a client that may read the blob there gets it from the cache or the
swarm; any other answer (401 with its `WWW-Authenticate`, 404...) is the upstream's own
answer to the client's `GET`. A `Content-Length` in that answer that the blob does not
have fails this answer (502) and nothing else: only the digest condemns a blob.

The bytes stream to the client in order while the download runs; their sha256 is
checked on the way and the last chunk is held back until it matches, so a client never
receives a whole blob with the wrong content. A `Range` is served from the complete
file, once it is known to match its digest (hashed whole once after a start).
"""

from __future__ import annotations

import contextlib
import json
import logging

from dfdaemon.blob import Blob, BlobUnavailable, Reading, read_blob
from dfdaemon.bodies import LengthMismatch, send_whole
from dfdaemon.cache import BlobStore, TooManyDownloads
from dfdaemon.httpserver import Reply, Request
from dfdaemon.metrics import Metrics
from dfdaemon.registry import BadReference, Target, blob_digest, resolve
from dfdaemon.trust import Trust, untrusted_message
from dfdaemon.upstream import Upstream, UpstreamDenied, UpstreamError, announced_length
from proto.ranges import requested_span

log = logging.getLogger(__name__)

# Sent to the supernode with a blob's URL, for its back-to-source fetch.
CREDENTIAL_HEADERS = ("authorization",)


async def registry_error(reply: Reply, status: int, code: str, message: str) -> None:
    """Answer with an error as a registry does (its JSON body: code and message)."""
    body = {"errors": [{"code": code, "message": message, "detail": None}]}
    await reply.simple(status, json.dumps(body).encode(), "application/json")


class Mirror:
    def __init__(
        self,
        *,
        registry: str,
        plain_http: frozenset[str],
        upstream: Upstream,
        blobs: BlobStore,
        metrics: Metrics,
        trust: Trust | None = None,
    ) -> None:
        self.registry = registry
        self.plain_http = plain_http
        self.trust = trust or Trust(registry)
        self.upstream = upstream
        self.blobs = blobs
        self.metrics = metrics

    async def handle(self, request: Request, reply: Reply) -> None:
        try:
            target = resolve(request.target, self.registry, self.plain_http)
        except BadReference as exc:
            self.metrics.requests.labels("bad_request").inc()
            await registry_error(reply, 400, exc.code, str(exc))
            return
        await self.serve(request, reply, target)

    async def serve(self, request: Request, reply: Reply, target: Target) -> None:
        """Answer `request` for the upstream `target` names (resolved from `?ns=`, or
        the host of an intercepted CONNECT: hijack.py)."""
        try:
            blob = blob_digest(target.path)
        except BadReference as exc:
            self.metrics.requests.labels("bad_request").inc()
            await registry_error(reply, 400, exc.code, str(exc))
            return
        hex_digest = blob[1] if blob is not None and request.method == "GET" else None
        if not self._trusted(target, hex_digest):
            self.metrics.requests.labels("untrusted").inc()
            log.info("%s", untrusted_message(target.origin))
            await registry_error(reply, 403, "DENIED", untrusted_message(target.origin))
        elif hex_digest is not None:
            self.metrics.requests.labels("blob").inc()
            await self._blob(request, reply, target, hex_digest)
        else:
            self.metrics.requests.labels("passthrough").inc()
            await self._relay(request, reply, target.url)

    def _trusted(self, target: Target, hex_digest: str | None) -> bool:
        """May `target`'s upstream be asked about this request? A registry the
        operator configured always; another only for a blob it was fetched from."""
        provenance = self.blobs.provenance(hex_digest) if hex_digest else frozenset()
        return self.trust.trusted_for(target.origin, provenance)

    async def _relay(self, request: Request, reply: Reply, url: str) -> None:
        try:
            await self.upstream.relay(request, url, reply)
        except UpstreamDenied as exc:
            log.warning("%s", exc)
            await registry_error(reply, 403, "DENIED", str(exc))
        except UpstreamError as exc:
            log.warning("upstream unreachable: %s", exc)
            if not reply.started:
                await registry_error(reply, 502, "UNAVAILABLE", f"upstream unreachable: {exc}")
        finally:
            self.metrics.served.labels("passthrough").inc(reply.bytes_sent)

    async def _blob(self, request: Request, reply: Reply, target: Target, hex_digest: str) -> None:
        # May this client read this blob upstream? Asked every time: the cache (and the
        # swarm) may hold it because another client could.
        try:
            head = await self.upstream.head(target.url, request.headers)
        except UpstreamDenied as exc:
            log.warning("blob %s: %s", hex_digest[:12], exc)
            await registry_error(reply, 403, "DENIED", str(exc))
            return
        except UpstreamError as exc:
            log.warning("blob %s: cannot check access upstream: %s", hex_digest[:12], exc)
            self.metrics.failures.labels("upstream").inc()
            await registry_error(reply, 502, "UNAVAILABLE", f"upstream unreachable: {exc}")
            return
        # The HEAD's length is this answer's business only: it is checked against the
        # blob's own, never stored on the blob other clients share.
        length = announced_length(head) if head.status_code == 200 else None
        if length is None:
            self.metrics.failures.labels("denied").inc()
            log.info(
                "blob %s: upstream answered %d%s: passing that on",
                hex_digest[:12],
                head.status_code,
                "" if head.status_code != 200 else " without a length",
            )
            await self._relay(request, reply, target.url)
            return
        if not self._trusted(target, hex_digest):  # its provenance went while we asked
            await registry_error(reply, 403, "DENIED", untrusted_message(target.origin))
            return
        credentials = tuple((k, v) for k, v in request.headers if k in CREDENTIAL_HEADERS)
        try:
            blob = self.blobs.get(hex_digest, target.url, credentials)
        except TooManyDownloads as exc:  # (every one of them still downloading)
            log.warning("blob %s: %s", hex_digest[:12], exc)
            await self._without_p2p(request, reply, target, f"P2P download refused: {exc}")
            return
        byte_range = request.header("range")
        try:
            try:
                if byte_range is not None and length is not None:
                    await self._blob_range(reply, blob, hex_digest, byte_range, length)
                else:
                    await self._blob_whole(reply, blob, hex_digest, length)
            finally:
                self.metrics.served.labels("blob").inc(reply.bytes_sent)
        except LengthMismatch as exc:
            self.metrics.failures.labels("length_mismatch").inc()
            log.warning("%s: %s", exc, "answer broken off" if reply.started else "answered 502")
            if not reply.started:  # (not the blob's length: that is for its readers only)
                why = f"the upstream announced {exc.announced} bytes, not the blob's"
                await registry_error(reply, 502, "UNAVAILABLE", f"upstream disagrees: {why}")
        except BlobUnavailable as exc:
            log.warning("%s", exc)
            if reply.started:
                self.metrics.failures.labels("download").inc()
                return  # broken off: the client retries
            await self._without_p2p(request, reply, target, f"P2P download failed: {exc}")

    async def _without_p2p(self, request: Request, reply: Reply, target: Target, why: str) -> None:
        """The blob cannot come through the swarm: the upstream answers, whatever it
        says (counted as passthrough), or without back-source a 503."""
        self.metrics.failures.labels("download").inc()
        if self.blobs.settings.back_source:
            await self._relay(request, reply, target.url)
        else:
            await registry_error(reply, 503, "UNAVAILABLE", why)

    def _headers(self, hex_digest: str) -> list[tuple[str, str]]:
        return [
            ("content-type", "application/octet-stream"),
            ("docker-content-digest", f"sha256:{hex_digest}"),
            ("etag", f'"sha256:{hex_digest}"'),
            ("accept-ranges", "bytes"),
        ]

    async def _blob_whole(
        self, reply: Reply, blob: Blob, hex_digest: str, length: int | None
    ) -> None:
        headers = self._headers(hex_digest)
        if length is not None:
            headers.append(("content-length", str(length)))
        if not await send_whole(reply, blob, lambda: headers, hex_digest, length):
            self.metrics.failures.labels("digest_mismatch").inc()
            log.error(
                "blob %s: content does not match its digest: response broken off, blob dropped",
                hex_digest[:12],
            )
            self.blobs.drop(hex_digest)

    async def _blob_range(
        self, reply: Reply, blob: Blob, hex_digest: str, header: str, length: int
    ) -> None:
        span = requested_span(header, length)
        if span is None:
            await reply.start(
                416, [("content-range", f"bytes */{length}"), ("content-length", "0")]
            )
            await reply.end()
            return
        start, end = span
        with Reading(blob) as reading:  # (a reader: the GC leaves the file alone meanwhile)
            while not blob.complete:  # a range is served from the verified file only
                blob.raise_if_failed()
                await blob.wait_changed()
            if blob.length != length:
                raise LengthMismatch(hex_digest, length, blob.length or 0)
            await self.blobs.verify(blob)  # hashed whole once, if not known good
            headers = self._headers(hex_digest)
            headers += [
                ("content-range", f"bytes {start}-{end - 1}/{length}"),
                ("content-length", str(end - start)),
            ]
            await reply.start(206, headers)
            async with contextlib.aclosing(read_blob(blob, start, end, reading=reading)) as chunks:
                async for chunk in chunks:
                    await reply.send(chunk)
            await reply.end()
