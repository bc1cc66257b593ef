"""The local control socket (`DATA/dfdaemon.sock`): `dfget` hands its download to the
daemon, which fetches it as a peer, keeps it in its cache and seeds it; the bytes
stream back to dfget, which writes its own output.

HTTP/1.1 over the Unix socket, JSON in and out:

- `POST /v1/downloads` with `{"url", "headers": [[name, value]...], "digest", "tag",
  "filter"}` → `200` and the file's bytes (`x-dfdaemon-key` names the download), or an
  error `{"error", "exit", "status"}` whose `exit` is dfget's exit code for it. A
  request with `X-Dfget-Take-File: 1` for a URL download the daemon holds complete, or
  one of at most PASS_AT_MOST bytes that completes while dfget waits, gets the file's
  open, read-only descriptor instead, attached to the answer's head (SCM_RIGHTS),
  `x-dfdaemon-file: LENGTH` and no body: dfget copies it in the kernel.
- `GET /v1/downloads/KEY` → where its bytes came from (`from_cdn`, `from_peers`,
  `from_source`, `cached`...). A download complete before its answer started has the
  same object in the answer's `x-dfdaemon-summary` header already.

A download named by its digest (a sha256 blob of the cache shared with the mirror) is
one only when its URL vouches for that digest: the URL is a registry's blob URL for
that very digest (`/v2/NAME/blobs/sha256:HEX`) on a host trusted for it (`trust.py`: a
registry the operator configured, or the host the blob was fetched from). It is
served, cached, running or new, only after that host confirms, with the dfget's own
headers, that it may read the URL. Any other request's digest is left out of the
task's identity: it is a URL download like one without a digest (the supernode fetches
and revalidates that URL with the dfget's headers, and dfget checks the digest itself),
so no copy of the digest fetched for someone else reaches it. A dfget joining a URL
download that is running is checked with the origin first (`sharing.py`).

The socket is bound in a fresh private folder, given its mode there and renamed into
place: nothing at its path is ever chmodded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import json
import logging
import math
import os
import re
import secrets
import socket
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import trio

from common.connlimit import ConnectionLimit
from common.io import serve_limited, unwrap_group
from common.io.threads import run_sync
from common.jsonbody import BadBody, json_object
from common.origins import AddressDenied
from common.urls import display_url
from dfdaemon.blob import Blob, BlobUnavailable, Reading
from dfdaemon.bodies import (
    LengthMismatch,
    finished_small,
    length_known,
    pass_whole,
    send_whole,
)
from dfdaemon.cache import BlobStore, TooManyDownloads
from dfdaemon.httpconn import ClientGone
from dfdaemon.httpserver import Reply, Request, serve_connection
from dfdaemon.metrics import Metrics
from dfdaemon.registry import BadReference, blob_digest
from dfdaemon.sharing import (
    ContentDiffers,
    JoinRefused,
    ask_origin,
    check_policy,
    url_download,
)
from dfdaemon.trust import Trust, origin_of
from dfdaemon.upstream import (
    Upstream,
    UpstreamError,
    about_access,
    announced_length,
    forwardable,
)
from dfget.engine import DownloadRequest
from dfget.errors import DfgetError, OriginFailed, OutputError, UsageError
from dfget.handoff import MAX_LISTING
from dfget.tree.entries import Entry, TreeTooLarge
from dfget.tree.httpindex import HttpIndexLister
from proto.messages import S3Access, check_request

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_SOCKET_PATH = 107  # bytes: sockaddr_un's sun_path, less its NUL
SOCKET_NAME = "dfdaemon.sock"
MAX_REQUEST = 64 * 1024
KEEP_RESULTS = 1000  # downloads whose result dfget may still ask for
# Listings at once (`POST /v1/listings`): one at its bounds holds ~100 MiB while it is
# built and up to MAX_LISTING bytes while it is sent; others wait their turn. The
# answer must be taken within LISTING_SEND_TIMEOUT (a reading client takes it in well
# under a second): one read a slice a minute would hold it for hours.
LISTINGS_AT_ONCE = 2
LISTING_SEND_TIMEOUT = 120.0
# Seconds a listing waits for its turn; then dfget is told to list the tree itself
# (one user holding both turns with slow indexes of their own must not hold up others).
LISTING_TURN_WAIT = 2.0
# A new download at most this long goes to a dfget that can take a file as its
# descriptor once complete, rather than streamed to it as it arrives (the copy of a
# file this size in the kernel takes milliseconds; its download through the swarm
# takes longer).
PASS_AT_MOST = 16 * 1024 * 1024
# The send buffer asked for a streamed answer over the control socket: the kernel
# doubles it (2 MiB of a file may sit unread in dfget's socket) and caps it at
# net.core.wmem_max. A 1 MiB piece goes in at once, where the default ~200 KiB took
# five sends, each after a wait for dfget (a lab daemon's steps streaming 128 MiB to
# its dfget: 552 -> 143).
STREAM_UNREAD = 1024 * 1024
# Seconds a dfget's wait for its download goes before it is watched for the client
# leaving (most small files are done well within them; watching costs a task a wait).
UNWATCHED = 0.5
_RESULT_PATH = re.compile(r"/v1/downloads/([0-9a-f]{64})")


class BadInput(ValueError):
    pass


class ShareRefused(Exception):
    """A running download this dfget may not share (its content would differ): dfget
    is told to download by itself (`"fallback": true`)."""


async def _wanted(request: Request, reply: Reply) -> DownloadRequest | None:
    """The request's body, parsed; None once it is answered 413 or 400 (bad input)."""
    body = b""
    async for chunk in request.body():
        body += chunk
        if len(body) > MAX_REQUEST:
            await _json(reply, 413, {"error": "request too large", "exit": 2})
            return None
    try:
        return _parse(body)
    except BadInput as exc:
        await _json(reply, 400, {"error": str(exc), "exit": UsageError.exit_code})
        return None


def _listing_body(entries: list[Entry]) -> bytes:
    """A listing's answer, made in a worker thread: 100,000 rows took the event loop a
    quarter of a second. (UTF-8, not \\u escapes: the answer stays near the bytes the
    limits count.)"""
    rows = [[list(e.path), e.url, e.size, e.validator] for e in entries]
    return json.dumps({"entries": rows}, ensure_ascii=False).encode()


def _parse(body: bytes) -> DownloadRequest:
    try:
        data = json_object(body)
    except BadBody as exc:
        raise BadInput(f"the body {exc}") from exc
    if not isinstance(data.get("url"), str):
        raise BadInput("want an object with a url")
    unknown = set(data) - {"url", "headers", "digest", "tag", "filter", "s3"}
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
    try:  # (what no supernode would take: refused here, not on a session others share)
        check_request(data["url"], tuple((k, v) for k, v in headers))
    except ValueError as exc:
        raise BadInput(str(exc)) from exc
    s3 = _s3_access(data.get("s3"), data["url"])
    if s3 is not None and filters:
        raise BadInput("filter: not for an S3 object (its key names it whole)")
    return DownloadRequest(
        url=data["url"],
        s3=s3,
        output=Path(os.devnull),
        headers=tuple((k, v) for k, v in headers),
        digest=digest,
        tag=tag,
        filter=tuple(filters),
    )


def _s3_access(value: object, url: str) -> S3Access | None:
    """The `s3` field: an S3 object's endpoint, region and credentials, or None."""
    if value is None:
        return None
    fields = S3Access._fields
    required = set(fields) - set(S3Access._field_defaults)
    if not isinstance(value, dict) or not required <= set(value) <= set(fields):
        raise BadInput(f"s3: want an object of {', '.join(fields)}")
    if not all(isinstance(v, str) for v in value.values()):
        raise BadInput("s3: want strings")
    access = S3Access(**value)
    try:
        access.check()
    except ValueError as exc:
        raise BadInput(str(exc)) from exc
    if not url.startswith(access.endpoint + "/"):
        raise BadInput("s3: the url must be on its endpoint")
    if "?" in url or "#" in url:
        raise BadInput("s3: the url has no query (its key names the object whole)")
    return access


class ControlApi:
    def __init__(
        self,
        *,
        blobs: BlobStore,
        upstream: Upstream,
        metrics: Metrics,
        trust: Trust,
        limit: ConnectionLimit | None = None,
    ) -> None:
        self.blobs = blobs
        self.upstream = upstream
        self.metrics = metrics
        self.trust = trust
        self.limit = limit or ConnectionLimit(256)  # per local user: a share of it
        # key → a recent download's blob, and whether it was complete before it was asked
        # for (then this dfget got it from the cache, not from the swarm)
        self.served: dict[str, tuple[Blob, bool]] = {}
        self._listings = trio.Semaphore(LISTINGS_AT_ONCE)
        # Their pages' parses, which a client's leaving abandons but does not stop.
        self._parses = trio.CapacityLimiter(LISTINGS_AT_ONCE)

    async def serve(
        self, path: Path, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen on the Unix socket `path` (any local user may connect, as to the
        daemon's HTTP port on 127.0.0.1), at most `limit` connections at once (each
        local user a share of them)."""
        sock, inode = await _bind_unix(path)
        sock.listen(128)
        listener = trio.SocketListener(sock)

        async def one(stream: trio.SocketStream) -> None:
            await serve_connection(stream, self.handle)

        try:
            what = f"control socket {path}"
            await serve_limited(one, [listener], self.limit, what=what, task_status=task_status)
        finally:
            _remove(path, inode)

    async def handle(self, request: Request, reply: Reply) -> None:
        path = request.target.split("?")[0]
        if request.method == "POST" and path == "/v1/downloads":
            self.metrics.requests.labels("dfget").inc()
            await self._download(request, reply)
        elif request.method == "POST" and path == "/v1/listings":
            self.metrics.requests.labels("listing").inc()
            await self._listing(request, reply)
        elif request.method == "GET" and (match := _RESULT_PATH.fullmatch(path)):
            await self._result(match[1], reply)
        else:
            await _json(reply, 404, {"error": f"no such route: {request.method} {path}"})

    async def _download(self, request: Request, reply: Reply) -> None:
        wanted = await _wanted(request, reply)
        if wanted is None:
            return
        try:
            task_id = wanted.task_id()
        except UsageError as exc:
            await _json(reply, 400, {"error": str(exc), "exit": UsageError.exit_code})
            return
        try:
            blob, announced = await self._blob(wanted, task_id)
        except ShareRefused as exc:  # dfget downloads by itself
            log.info("control: %s", exc)
            await _json(reply, 409, {"error": str(exc), "exit": 1, "fallback": True})
            return
        except DfgetError as exc:
            await _error(reply, exc)
            return
        # A reader from here on: the GC leaves its file alone while this client waits
        # for it (a small file's end, its length) and takes it.
        with Reading(blob):
            await self._answer(request, reply, wanted, blob, announced)

    async def _answer(
        self,
        request: Request,
        reply: Reply,
        wanted: DownloadRequest,
        blob: Blob,
        announced: int | None,
    ) -> None:
        """The answer with `blob` (its file passed, or its bytes sent as they come)."""
        cached = blob.complete
        digest = blob.digest or ""
        sha256 = digest.split(":", 1)[1] if digest.startswith("sha256:") else None
        taking = request.header("x-dfget-take-file") == "1" and reply.can_pass_files
        taking = taking and sha256 is None  # (a sha256 blob is hashed as it is sent)
        unwatched = trio.current_time() + UNWATCHED  # (both waits below, together)

        async def passed() -> bool:
            """The file passed, if dfget takes one and it is (or turns out) small."""
            small = functools.partial(finished_small, blob, PASS_AT_MOST)
            if not (
                taking
                and (blob.complete or await _while_asked(reply, small, unwatched_until=unwatched))
                and reply.can_pass_files  # (again: its user's other passes since the wait)
            ):
                return False
            await pass_whole(reply, blob, self._headers(blob, cached, passed=True))
            return True

        try:
            if await passed():
                return
            if request.header("x-dfget-framed") == "1" and blob.length is None:
                # A kept-alive dfget reads a length or a descriptor, never chunks: a
                # download whose origin names no length is answered once it has one
                # (its end, or the supernode's: the file may be small after all).
                await _while_asked(
                    reply, functools.partial(length_known, blob), unwatched_until=unwatched
                )
                if await passed():
                    return
            reply.hold_unread(STREAM_UNREAD)
            if not await send_whole(
                reply, blob, lambda: self._headers(blob, cached), sha256, announced
            ):
                # Gone bad: dfget sees a short body and downloads itself; a sha256 blob
                # is dropped, the next request downloads it anew.
                log.error("blob %s: not the blob named: response broken off", blob.hex[:12])
                if sha256:
                    self.blobs.drop(sha256)
        except LengthMismatch as exc:  # the origin's yes was about something else
            log.warning("control: %s: %s", display_url(wanted.url), exc)
            if not reply.started:  # (else broken off: dfget sees a short body)
                why = f"origin answered for {display_url(wanted.url)} with {exc.announced} bytes"
                await _error(reply, OriginFailed(f"{why}, not the blob's"))
        except BlobUnavailable as exc:
            cause = exc.__cause__ or exc
            if not reply.started and isinstance(cause, OutputError):
                # The daemon's own disk (full, failing): dfget's output is not at fault,
                # and the file is to be had without the daemon.
                log.warning("control: %s: %s", display_url(wanted.url), cause)
                error = f"the daemon could not keep the file: {cause}"
                await _json(reply, 409, {"error": error, "exit": 1, "fallback": True})
            elif not reply.started:
                await _error(reply, cause)
            else:  # not ended: dfget sees a short body and goes on without the daemon
                log.warning("control: %s broke off: %s", display_url(wanted.url), exc)
        finally:
            self.metrics.served.labels("dfget").inc(reply.bytes_sent)

    async def _listing(self, request: Request, reply: Reply) -> None:
        """The files of the tree at a URL (an HTTP index), as dfget lists one
        (`dfget.tree.httpindex`, bounded by its `ListLimits`), with the requester's
        headers, under this daemon's origin policy: for `dfget -r`, which then needs
        no HTTP library of its own (`dfget.tree.handed`)."""
        wanted = await _wanted(request, reply)
        if wanted is None:
            return
        if urlsplit(wanted.url).scheme.lower() not in ("http", "https"):
            await _json(reply, 400, {"error": "want an http(s) URL", "exit": UsageError.exit_code})
            return
        try:
            with trio.fail_after(LISTING_TURN_WAIT):
                await self._listings.acquire()
        except trio.TooSlowError:  # (dfget lists the tree itself, at once)
            error = "busy listing other trees: list it without the daemon"
            await _json(reply, 409, {"error": error, "exit": 1, "fallback": True})
            return
        try:
            await self._list(wanted, reply)
        finally:
            self._listings.release()

    async def _list(self, wanted: DownloadRequest, reply: Reply) -> None:
        # Its own client, every connection checked and pinned by the origin policy
        # (an index's links stay on its host; its name is resolved once a connection).
        headers = tuple(forwardable(list(wanted.headers)))
        lister = HttpIndexLister(
            wanted.url, headers=headers, client=self.upstream.new_client, parses=self._parses
        )

        async def listed() -> list[Entry]:
            return [entry async for entry in lister.entries()]

        try:
            await check_policy(self.upstream.policy, wanted.url)  # (a clear refusal first)
            try:
                entries = await _while_asked(reply, listed)  # (stopped if dfget leaves)
            finally:
                await lister.aclose()
            body = await run_sync(_listing_body, entries)  # (its turn held meanwhile)
            del entries  # (the answer alone is held while it goes)
            if len(body) > MAX_LISTING:  # (what dfget reads at most)
                raise TreeTooLarge(
                    f"{display_url(wanted.url)}: its listing is over {MAX_LISTING} bytes"
                )
        except (UpstreamError, AddressDenied) as exc:  # (the latter: refused as it connects)
            await _error(reply, OriginFailed(str(exc)))
            return
        except DfgetError as exc:
            await _error(reply, exc)
            return
        try:
            with trio.fail_after(LISTING_SEND_TIMEOUT):
                await reply.simple(200, body, "application/json")
        except trio.TooSlowError:
            raise ClientGone(f"a listing not taken within {LISTING_SEND_TIMEOUT:g}s") from None

    def _headers(self, blob: Blob, cached: bool, passed: bool = False) -> list[tuple[str, str]]:
        """The answer's headers; from here on dfget may ask where the bytes came from,
        under a key of this answer's own (a blob's digest or a URL's task id would let
        anyone ask about other clients' downloads). `passed`: the file goes as a
        descriptor (`x-dfdaemon-file` says its length; the answer has no body)."""
        key = secrets.token_hex(32)
        self.served[key] = (blob, cached)
        while len(self.served) > KEEP_RESULTS:  # the oldest go first
            del self.served[next(iter(self.served))]
        headers = [("content-type", "application/octet-stream"), ("x-dfdaemon-key", key)]
        if blob.length is not None:
            headers.append(("x-dfdaemon-file" if passed else "content-length", str(blob.length)))
            if blob.complete:  # known before the first byte: dfget need not ask for it
                headers.append(("x-dfdaemon-summary", json.dumps(_summary(blob, cached))))
        return headers

    def _vouched_blob(self, wanted: DownloadRequest) -> str | None:
        """The sha256 of the blob `wanted` names, if its URL can vouch for it: the URL
        is a registry's blob URL for that very digest (`/v2/NAME/blobs/sha256:HEX`), on
        a host trusted for it (configured, or the blob was fetched from it). Any other
        URL proves nothing about the digest: a public file on a trusted registry says
        yes to anyone, whatever digest the request names beside it."""
        digest = wanted.digest
        if digest is None or not digest.startswith("sha256:"):
            return None
        hex_digest = digest.removeprefix("sha256:")
        try:
            origin = origin_of(wanted.url)
            named = blob_digest(urlsplit(wanted.url).path)
        except (ValueError, BadReference):
            return None
        if named is None or named[1] != hex_digest:
            return None
        if not self.trust.trusted_for(origin, self.blobs.provenance(hex_digest)):
            return None
        return hex_digest

    async def _blob(self, wanted: DownloadRequest, task_id: str) -> tuple[Blob, int | None]:
        """The blob to answer with, and for a blob named by its digest the length the
        URL's host said yes with (the blob must have it: see `announced_length`)."""
        try:
            if self._vouched_blob(wanted) is not None:
                # Cached, running or new, a digest names bytes someone else may have
                # fetched (here or at the supernode): the URL's host must say yes first.
                announced = await self._check_access(wanted)
                hex_digest = self._vouched_blob(wanted)  # still (provenance may go)
                if hex_digest is not None:
                    # (the whole blob, for every reader: never this client's range)
                    headers = tuple(about_access(wanted.headers))
                    return self.blobs.get(hex_digest, wanted.url, headers), announced
            if wanted.digest is not None:
                # Nothing vouches for the digest: the URL, not the digest, names the
                # download (the supernode fetches or revalidates it with that origin and
                # this client's headers); dfget checks the digest itself.
                task_id = dataclasses.replace(wanted, digest=None).task_id()
            blob = await url_download(
                self.blobs, self.upstream, task_id, wanted.url, wanted.headers, wanted.s3
            )
            return blob, None
        except (ContentDiffers, TooManyDownloads) as exc:
            raise ShareRefused(str(exc)) from exc
        except JoinRefused as exc:
            raise OriginFailed(str(exc), exc.status) from exc
        except UpstreamError as exc:
            raise OriginFailed(f"cannot check access: {exc}") from exc

    async def _check_access(self, wanted: DownloadRequest) -> int:
        """May this dfget read the URL at the origin? (A cached copy proves nothing.) The
        length its yes names."""
        try:
            answer = await ask_origin(self.upstream, wanted.url, wanted.headers, wanted.s3)
        except UpstreamError as exc:
            raise OriginFailed(f"cannot check access: {exc}") from exc
        if answer.status_code not in (200, 206):  # (206: a first byte, where HEAD is not allowed)
            where = display_url(wanted.url)
            raise OriginFailed(
                f"origin answered {answer.status_code} for {where}", answer.status_code
            )
        announced = announced_length(answer)
        if announced is None:
            where = display_url(wanted.url)
            raise OriginFailed(f"origin answered {answer.status_code} without a length for {where}")
        return announced

    async def _result(self, key: str, reply: Reply) -> None:
        served = self.served.get(key)
        if served is None:
            await _json(reply, 404, {"error": "no such download"})
            return
        await _json(reply, 200, _summary(*served))


async def _while_asked(
    reply: Reply, wait: Callable[[], Awaitable[T]], *, unwatched_until: float = -math.inf
) -> T:
    """`wait()` for a download, given up (ClientGone) if the client leaves meanwhile: it
    no longer holds the connection, nor its share of the socket's limit, while the
    download (which goes on for the cache) runs. Until `unwatched_until` it goes
    unwatched (watching costs a task of its own): for a `wait` that can be begun again."""
    if trio.current_time() < unwatched_until:
        with trio.move_on_at(unwatched_until):
            return await wait()
    with unwrap_group():  # (BlobUnavailable itself, not in a group)
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                await reply.client_gone()
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch)
            done = await wait()
            nursery.cancel_scope.cancel()
            return done
    raise ClientGone("the client left while its download ran")


def _summary(blob: Blob, cached: bool) -> dict[str, Any]:
    """Where a download's bytes came from (`GET /v1/downloads/KEY`); for a URL download,
    also the origin's validators of the bytes in the file (`etag`, `last_modified`: ""
    when it gave none), which `dfget -r` keeps for its re-runs."""
    latest = blob.result or blob.whole  # (whole: verified, the cache still committing it)
    result = None if cached else latest
    validators: tuple[str, str] | None = latest.validators if latest else None
    if blob.content is not None:  # (the latest check of the file, newer than its download)
        validators = (blob.content.etag, blob.content.last_modified)
    known = {"etag": validators[0], "last_modified": validators[1]} if validators else {}
    return known | {
        "bytes": blob.length,
        "complete": blob.verified_whole,  # (its bytes: the cache may still commit them)
        "cached": cached,
        "from_cdn": result.from_cdn if result else 0,
        "from_peers": result.from_peers if result else 0,
        "from_source": result.from_source if result else 0,
        "supernode": result.supernode if result else None,
        "piece_size": result.piece_size if result else None,
        "pieces": result.pieces if result else 0,
    }


async def _json(reply: Reply, status: int, body: dict[str, Any]) -> None:
    await reply.simple(status, json.dumps(body).encode(), "application/json")


async def _error(reply: Reply, exc: BaseException) -> None:
    exit_code = exc.exit_code if isinstance(exc, DfgetError) else 1
    status = exc.status if isinstance(exc, OriginFailed) else None
    await _json(reply, 502, {"error": str(exc), "exit": exit_code, "status": status})


async def _bind_unix(path: Path) -> tuple[trio.socket.SocketType, int]:
    """A Unix socket bound at `path` with mode 0666, and its inode. It is bound and
    chmodded inside a fresh private folder beside `path` (nobody else can put anything
    in there), then renamed onto `path`, which replaces whatever is there (a leftover
    socket, or a symlink: never followed). Nothing but our own new socket is chmodded."""
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:  # binds elsewhere, so check it here
        raise OSError(
            errno.ENAMETOOLONG,
            f"control socket path {path} is over {MAX_SOCKET_PATH} bytes (a Unix socket's limit)",
        )
    private = Path(tempfile.mkdtemp(prefix=".", dir=path.parent))  # 0700
    temp = private / "s"
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        await sock.bind(str(temp))
        os.chmod(temp, 0o666)
        inode = os.lstat(temp).st_ino
        os.rename(temp, path)
    except BaseException:
        sock.close()
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    finally:
        with contextlib.suppress(OSError):
            os.rmdir(private)
    return sock, inode


def _remove(path: Path, inode: int) -> None:
    """Remove our socket at `path`, not whatever may have replaced it since."""
    with contextlib.suppress(OSError):
        if os.lstat(path).st_ino == inode:
            os.unlink(path)
