"""The local control socket (`DATA/dfdaemon.sock`): `dfget` hands its download to the
daemon, which fetches it as a peer, keeps it in its cache and seeds it; the bytes
stream back to dfget, which writes its own output.

HTTP/1.1 over the Unix socket, JSON in and out:

- `POST /v1/downloads` with `{"url", "headers": [[name, value]...], "digest", "tag",
  "filter"}` → `200` and the file's bytes (`x-dfdaemon-key` names the download), or an
  error `{"error", "exit", "status"}` whose `exit` is dfget's exit code for it.
- `GET /v1/downloads/KEY` → where its bytes came from (`from_cdn`, `from_peers`,
  `from_source`, `cached`...).

A blob already in the cache (named by sha256) is served to a dfget only after the
origin confirms, with the dfget's own headers, that it may read the URL.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
from pathlib import Path
from typing import Any

import trio

from dfdaemon.blobs import Blob, BlobStore, BlobUnavailable, send_whole
from dfdaemon.httpserver import Reply, Request, serve_connection
from dfdaemon.metrics import Metrics
from dfdaemon.upstream import Upstream, UpstreamError
from dfget.engine import DownloadRequest
from dfget.errors import DfgetError, OriginFailed, UsageError
from proto.urls import display_url

log = logging.getLogger(__name__)

SOCKET_NAME = "dfdaemon.sock"
MAX_REQUEST = 64 * 1024
KEEP_RESULTS = 1000  # downloads whose result dfget may still ask for
_RESULT_PATH = re.compile(r"/v1/downloads/([0-9a-f]{64})")


class BadInput(ValueError):
    pass


def _parse(body: bytes) -> DownloadRequest:
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadInput(f"not JSON: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("url"), str):
        raise BadInput("want an object with a url")
    unknown = set(data) - {"url", "headers", "digest", "tag", "filter"}
    if unknown:
        raise BadInput(f"unknown fields {sorted(unknown)}")
    headers = data.get("headers", [])
    if not isinstance(headers, list) or not all(
        isinstance(h, list) and len(h) == 2 and all(isinstance(x, str) for x in h) for h in headers
    ):
        raise BadInput("headers: want [[name, value], ...]")
    digest, tag, filters = data.get("digest"), data.get("tag", ""), data.get("filter", [])
    if digest is not None and not isinstance(digest, str):
        raise BadInput("digest: want a string")
    if not isinstance(tag, str):
        raise BadInput("tag: want a string")
    if not isinstance(filters, list) or not all(isinstance(f, str) for f in filters):
        raise BadInput("filter: want a list of strings")
    return DownloadRequest(
        url=data["url"],
        output=Path(os.devnull),
        headers=tuple((k, v) for k, v in headers),
        digest=digest,
        tag=tag,
        filter=tuple(filters),
    )


class ControlApi:
    def __init__(self, *, blobs: BlobStore, upstream: Upstream, metrics: Metrics) -> None:
        self.blobs = blobs
        self.upstream = upstream
        self.metrics = metrics
        # key → a recent download's blob, and whether it was complete before it was asked
        # for (then this dfget got it from the cache, not from the swarm)
        self.served: dict[str, tuple[Blob, bool]] = {}

    async def serve(
        self, path: Path, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen on the Unix socket `path` (any local user may connect, as to the
        daemon's HTTP port on 127.0.0.1)."""
        _remove(path)  # a leftover of a daemon that did not stop cleanly
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        await sock.bind(str(path))
        os.chmod(path, 0o666)
        sock.listen(128)
        listener = trio.SocketListener(sock)
        task_status.started()

        async def one(stream: trio.SocketStream) -> None:
            await serve_connection(stream, self.handle)

        try:
            await trio.serve_listeners(one, [listener])
        finally:
            _remove(path)

    async def handle(self, request: Request, reply: Reply) -> None:
        path = request.target.split("?")[0]
        if request.method == "POST" and path == "/v1/downloads":
            self.metrics.requests.labels("dfget").inc()
            await self._download(request, reply)
        elif request.method == "GET" and (match := _RESULT_PATH.fullmatch(path)):
            await self._result(match[1], reply)
        else:
            await _json(reply, 404, {"error": f"no such route: {request.method} {path}"})

    async def _download(self, request: Request, reply: Reply) -> None:
        body = b""
        async for chunk in request.body():
            body += chunk
            if len(body) > MAX_REQUEST:
                await _json(reply, 413, {"error": "request too large", "exit": 2})
                return
        try:
            wanted = _parse(body)
            task_id = wanted.task_id()
        except (BadInput, UsageError) as exc:
            await _json(reply, 400, {"error": str(exc), "exit": UsageError.exit_code})
            return
        try:
            blob = await self._blob(wanted, task_id)
        except DfgetError as exc:
            await _error(reply, exc)
            return
        cached = blob.complete
        digest = blob.digest or ""
        sha256 = digest.split(":", 1)[1] if digest.startswith("sha256:") else None
        try:
            if not await send_whole(reply, blob, lambda: self._headers(blob, cached), sha256):
                # Gone bad: dfget sees a short body and downloads itself; a sha256 blob
                # is dropped, the next request downloads it anew.
                log.error("blob %s: not the blob named: response broken off", blob.hex[:12])
                if sha256:
                    self.blobs.drop(sha256)
        except BlobUnavailable as exc:
            if not reply.started:
                await _error(reply, exc.__cause__ or exc)
            else:  # not ended: dfget sees a short body and goes on without the daemon
                log.warning("control: %s broke off: %s", display_url(wanted.url), exc)
        finally:
            self.metrics.served.labels("dfget").inc(reply.bytes_sent)

    def _headers(self, blob: Blob, cached: bool) -> list[tuple[str, str]]:
        """The answer's headers; from here on dfget may ask where the bytes came from."""
        self.served[blob.hex] = (blob, cached)
        while len(self.served) > KEEP_RESULTS:  # the oldest go first
            del self.served[next(iter(self.served))]
        headers = [("content-type", "application/octet-stream"), ("x-dfdaemon-key", blob.hex)]
        if blob.length is not None:
            headers.append(("content-length", str(blob.length)))
        return headers

    async def _blob(self, wanted: DownloadRequest, task_id: str) -> Blob:
        digest = wanted.digest
        if digest is not None and digest.startswith("sha256:"):
            hex_digest = digest.split(":", 1)[1]
            if hex_digest in self.blobs.running or self.blobs.cached(hex_digest) is not None:
                await self._check_access(wanted)  # someone else's download: may this one?
            return self.blobs.get(hex_digest, wanted.url, wanted.headers)
        return self.blobs.get_url(task_id, wanted.url, wanted.headers, digest=digest)

    async def _check_access(self, wanted: DownloadRequest) -> None:
        """May this dfget read the URL at the origin? (A cached copy proves nothing.)"""
        headers = [(k.lower(), v) for k, v in wanted.headers]
        try:
            answer = await self.upstream.head(wanted.url, headers)
            if answer.status_code in (405, 501):  # no HEAD here: ask for one byte
                answer = await self.upstream.first_byte(wanted.url, headers)
        except UpstreamError as exc:
            raise OriginFailed(f"cannot check access: {exc}") from exc
        if answer.status_code >= 400:
            where = display_url(wanted.url)
            raise OriginFailed(
                f"origin answered {answer.status_code} for {where}", answer.status_code
            )

    async def _result(self, key: str, reply: Reply) -> None:
        served = self.served.get(key)
        if served is None:
            await _json(reply, 404, {"error": "no such download"})
            return
        blob, cached = served
        result = None if cached else blob.result
        await _json(
            reply,
            200,
            {
                "bytes": blob.length,
                "complete": blob.complete,
                "cached": cached,
                "from_cdn": result.from_cdn if result else 0,
                "from_peers": result.from_peers if result else 0,
                "from_source": result.from_source if result else 0,
                "supernode": result.supernode if result else None,
                "piece_size": result.piece_size if result else None,
                "pieces": result.pieces if result else 0,
            },
        )


async def _json(reply: Reply, status: int, body: dict[str, Any]) -> None:
    await reply.simple(status, json.dumps(body).encode(), "application/json")


async def _error(reply: Reply, exc: BaseException) -> None:
    exit_code = exc.exit_code if isinstance(exc, DfgetError) else 1
    status = exc.status if isinstance(exc, OriginFailed) else None
    await _json(reply, 502, {"error": str(exc), "exit": exit_code, "status": status})


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
