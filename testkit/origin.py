"""A real HTTP/1.1 origin server with switchable faults, for tests, benchmarks and demos.

Code under test talks real HTTP over real sockets to this server. That way its framing,
keep-alive, Range and error handling all get exercised end to end. Faults are set per
path and read again for every request, so tests can change them between requests.

Demo use: ``python -m testkit.origin --dir DIR [--host H] [--port P]`` serves every
file under DIR at ``/<relative path>``.
"""

from __future__ import annotations

import argparse
import datetime
import email.utils
import hashlib
import http
import json
import os
import pathlib
import re
import signal
import ssl
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

import h11
import trio

from common.io import RateLimiter
from common.ready import prepare_ready_file, ready_file_argument, write_ready_file
from common.units import parse_rate

CHUNK_SIZE = 256 * 1024
"""Largest body piece handed to one socket write."""

READ_SIZE = 1024 * 1024
"""File read size: large reads make the hop to a worker thread worth its cost."""

RATE_PIECES_PER_SECOND = 20
"""With `Fault.rate` the body goes out in about this many pieces per second, so it
flows smoothly instead of in bursts."""

_NETWORK_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError)
_RANGE_RE = re.compile(r"bytes=([0-9]*)-([0-9]*)", re.IGNORECASE)

Headers = list[tuple[str, str]]


@dataclass
class Fault:
    """How one path misbehaves. Every request reads it again, so tests may change it."""

    status: int | None = None
    """Answer every GET/HEAD with this final status (>= 200) and a short text body."""
    head_status: int | None = None
    """Answer every HEAD (only) with this status: as S3 answers a HEAD of a URL
    presigned for GET (403)."""
    require_auth: str | None = None
    """Exact Authorization value expected; missing or wrong gets 401."""
    challenge: str = 'Basic realm="origin"'
    """The WWW-Authenticate value of that 401 (a registry's Bearer challenge, say)."""
    login_page: str | None = None
    """With `require_auth`: send a request without it to this Location (302) instead of
    answering 401, as an auth gateway sends a stranger to its login page."""
    drop_after: int | None = None
    """Cut the connection after this many body bytes of a 200/206 GET body."""
    drop_times: int = 1
    """How many responses are still to be cut; counts down, then bodies are whole."""
    chunked: bool = False
    """Send Transfer-Encoding: chunked instead of Content-Length."""
    rate: float | None = None
    """Throttle the body to this many bytes per second."""
    gate_after: int | None = None
    """Pause the body after this many bytes until `gate` is set."""
    gate: trio.Event | None = None
    ranges: bool = True
    """Honour single byte ranges. If False, ignore Range and never send Accept-Ranges."""
    redirect_to: str | None = None
    """Answer 302 with this Location (a path on this origin or a full URL)."""
    etag: bool = True
    """Send a strong ETag, and honour If-None-Match and If-Range with an entity tag."""
    last_modified: bool = True
    """Send Last-Modified, and honour If-Modified-Since and If-Range with a date."""
    hang: bool = False
    """Accept the request and never answer, until the client hangs up."""


@dataclass
class PathStats:
    """What the origin saw and sent for one path."""

    requests: list[tuple[str, list[tuple[str, str]]]] = field(default_factory=list)
    """(method, headers as received) per request. Header names are lower-cased, and the
    full request target comes first as the pseudo header ":path"."""
    bodies_started: int = 0
    """200/206 GET responses whose body began."""
    full_bodies: int = 0
    """200 (not 206) GET responses whose body began."""
    from_start: int = 0
    """GET responses whose body began at byte 0 and was more than its first byte (a
    200, or a 206 from byte 0 other than a revalidation's `bytes=0-0`): each a fetch of
    the file from its start, however many ranged GETs the rest came in."""
    bytes_sent: int = 0
    """Body bytes written to sockets, over all responses."""


@dataclass(frozen=True)
class _MemoryEntry:
    data: bytes
    etag: str
    last_modified: int


@dataclass(frozen=True)
class _FileEntry:
    file: pathlib.Path


@dataclass
class _Content:
    """One version of a resource, pinned for the length of one response."""

    size: int
    etag: str
    last_modified: int
    data: bytes | None = None
    fd: int | None = None

    async def read(self, offset: int, length: int) -> bytes:
        if self.data is not None:
            return self.data[offset : offset + length]
        assert self.fd is not None
        # A worker thread, so that a cold disk read never stalls other connections.
        return await trio.to_thread.run_sync(os.pread, self.fd, length, offset)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)


@dataclass
class _Request:
    method: str
    target: str
    path: str
    headers: Headers

    @classmethod
    def from_event(cls, event: h11.Request) -> _Request:
        target = event.target.decode("latin-1")
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in event.headers]
        return cls(event.method.decode("latin-1"), target, _route_path(target), headers)

    def header(self, name: str) -> str | None:
        """Repeated fields are joined with ", ", which RFC 9110 allows for list headers."""
        values = [v for k, v in self.headers if k == name]
        return ", ".join(values) if values else None


@dataclass
class _BodyPlan:
    """Where one response body pauses or dies. Decided once, when the body starts."""

    length: int
    chunked: bool
    rate: float | None = None
    gate_at: int | None = None
    gate: trio.Event | None = None
    drop_at: int | None = None

    def piece_size(self, sent: int, available: int) -> int:
        """Size of the next write. It stops exactly at the gate and drop points."""
        size = min(CHUNK_SIZE, available)
        if self.rate is not None:
            size = min(size, max(1, int(self.rate / RATE_PIECES_PER_SECOND)))
        for stop in (self.gate_at, self.drop_at):
            if stop is not None and stop > sent:
                size = min(size, stop - sent)
        return size


class _Unsatisfiable(Exception):
    """The Range names no byte of the representation (answer 416)."""


class FakeOrigin:
    """HTTP/1.1 origin serving in-memory blobs and files from disk, with faults per path.

    Start it with ``port = await nursery.start(origin.serve)``. Cancelling the nursery
    stops it.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        tls: ssl.SSLContext | None = None,
        rate_limit: float | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.tls = tls  # serve HTTPS with this server context (see `self_signed_tls`)
        # All bodies together go out at most this fast (bytes/s): one uplink, shared.
        self.egress = RateLimiter(rate_limit)
        self.faults: dict[str, Fault] = {}
        self.stats: dict[str, PathStats] = {}
        self.connections = 0  # accepted, in all
        self._entries: dict[str, _MemoryEntry | _FileEntry] = {}
        # HTTP dates only have one-second resolution. So each in-memory version gets the
        # next second of its own, counting from a day ago so it is never in the future.
        self._clock = int(time.time()) - 86400

    def add(self, path: str, data: bytes, **fault_kwargs: Any) -> None:
        """Serve `data` at `path`. New content gets a new ETag and Last-Modified.

        `fault_kwargs` (Fault fields) replace the path's fault. Without them, an
        existing fault is kept, so tests can swap content under a fault they set.
        """
        self._clock += 1
        etag = '"' + hashlib.blake2b(data, digest_size=8).hexdigest() + '"'
        self._register(path, _MemoryEntry(data, etag, self._clock), fault_kwargs)

    def etag(self, path: str) -> str:
        """The ETag `path` is served with (content added by `add`)."""
        entry = self._entries[path]
        assert isinstance(entry, _MemoryEntry)
        return entry.etag

    def add_file(self, path: str, file: pathlib.Path, **fault_kwargs: Any) -> None:
        """Serve a file from disk, streamed and never loaded whole.

        The file is stat-ed on every request. ETag and Last-Modified follow its inode,
        size and mtime, so rewriting the file makes a new version.
        """
        if not file.is_file():
            raise FileNotFoundError(file)
        self._register(path, _FileEntry(file), fault_kwargs)

    def url(self, path: str) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{host}:{self.port}{path}"

    async def serve(
        self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
    ) -> NoReturn:
        """Bind, report the real port, and serve connections concurrently until cancelled."""
        listeners = await trio.open_tcp_listeners(self.port, host=self.host)
        if self.port == 0:
            # A name like "localhost" may bind IPv4 and IPv6, each to its own ephemeral
            # port. Keep one, so that `url()` is unambiguous.
            for extra in listeners[1:]:
                await extra.aclose()
            listeners = listeners[:1]
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._handle_connection, listeners)

    def _register(
        self, path: str, entry: _MemoryEntry | _FileEntry, fault_kwargs: dict[str, Any]
    ) -> None:
        if not path.startswith("/"):
            raise ValueError(f"path must start with '/': {path!r}")
        self._entries[path] = entry
        if fault_kwargs or path not in self.faults:
            self.faults[path] = Fault(**fault_kwargs)
        self.stats.setdefault(path, PathStats())

    # -- connection level -----------------------------------------------------------

    async def _handle_connection(self, stream: trio.abc.Stream) -> None:
        self.connections += 1
        conn = h11.Connection(h11.SERVER)
        if self.tls is not None:
            stream = trio.SSLStream(stream, self.tls, server_side=True)
        try:
            while await self._serve_one(stream, conn):
                conn.start_next_cycle()
        except h11.RemoteProtocolError as exc:
            await _reject_malformed(stream, conn, exc)
        except _NETWORK_ERRORS:
            pass  # The client went away. That is normal for a client, so stay quiet.
        finally:
            await stream.aclose()

    async def _serve_one(self, stream: trio.abc.Stream, conn: h11.Connection) -> bool:
        """Serve one request. Return True if the connection can carry another."""
        event = await _next_event(stream, conn)
        if not isinstance(event, h11.Request):
            return False  # ConnectionClosed: the client is done with this connection.
        request = _Request.from_event(event)
        while not isinstance(await _next_event(stream, conn), h11.EndOfMessage):
            pass  # No route takes a request body. Read it all so keep-alive stays in sync.
        if not await self._respond(stream, conn, request):
            return False
        return conn.our_state is h11.DONE and conn.their_state is h11.DONE

    # -- request level --------------------------------------------------------------

    async def _respond(self, stream: trio.abc.Stream, conn: h11.Connection, req: _Request) -> bool:
        stats = self.stats.setdefault(req.path, PathStats())
        stats.requests.append((req.method, [(":path", req.target), *req.headers]))
        fault = self.faults.get(req.path) or Fault()
        if fault.hang:
            await _wait_for_hangup(stream)
            return False
        if req.method not in ("GET", "HEAD"):
            await _send_simple(stream, conn, req, 405, [("Allow", "GET, HEAD")])
        elif fault.require_auth is not None and req.header("authorization") != fault.require_auth:
            if fault.login_page is not None:
                await _send_simple(stream, conn, req, 302, [("Location", fault.login_page)])
            else:
                challenge = [("WWW-Authenticate", fault.challenge)]
                await _send_simple(stream, conn, req, 401, challenge)
        elif fault.status is not None:
            await _send_simple(stream, conn, req, fault.status)
        elif fault.head_status is not None and req.method == "HEAD":
            await _send_simple(stream, conn, req, fault.head_status)
        elif fault.redirect_to is not None:
            await _send_simple(stream, conn, req, 302, [("Location", fault.redirect_to)])
        else:
            return await self._respond_with_content(stream, conn, req, fault, stats)
        return True

    async def _respond_with_content(
        self,
        stream: trio.abc.Stream,
        conn: h11.Connection,
        req: _Request,
        fault: Fault,
        stats: PathStats,
    ) -> bool:
        content = _open(self._entries.get(req.path))
        if content is None:
            await _send_simple(stream, conn, req, 404)
            return True
        try:
            return await _send_content(stream, conn, req, fault, content, stats, self.egress)
        finally:
            content.close()


# -- responses ----------------------------------------------------------------------


async def _send_content(
    stream: trio.abc.Stream,
    conn: h11.Connection,
    req: _Request,
    fault: Fault,
    content: _Content,
    stats: PathStats,
    egress: RateLimiter,
) -> bool:
    """Answer with the content: 200, 206, 304 or 416. Return False if the body was cut."""
    headers = _validators(content, fault)
    if _not_modified(req, content, fault):
        await _send_head(stream, conn, 304, headers)
        await stream.send_all(conn.send(h11.EndOfMessage()))
        return True
    if fault.ranges:
        headers.append(("Accept-Ranges", "bytes"))
    status, start, end = 200, 0, content.size
    if fault.ranges and req.method == "GET":  # RFC 9110 defines Range for GET only.
        try:
            selected = _selected_range(req, content, fault)
        except _Unsatisfiable:
            headers.append(("Content-Range", f"bytes */{content.size}"))
            await _send_simple(stream, conn, req, 416, headers)
            return True
        if selected is not None:
            status, (start, end) = 206, selected
            headers.append(("Content-Range", f"bytes {start}-{end - 1}/{content.size}"))
    headers.append(("Content-Type", "application/octet-stream"))
    if not fault.chunked:
        headers.append(("Content-Length", str(end - start)))
    if req.method == "GET":
        # Counted before sending, for the same reason as bytes_sent in _send_body.
        stats.bodies_started += 1
        stats.full_bodies += status == 200
        stats.from_start += start == 0 and (status == 200 or end > 1)
    await _send_head(stream, conn, status, headers)
    if req.method == "GET":
        # h11 uses chunked framing only for HTTP/1.1 clients. HTTP/1.0 clients get a
        # close-delimited body.
        chunked = fault.chunked and conn.their_http_version == b"1.1"
        plan = _plan_body(fault, end - start, chunked)
        if not await _send_body(stream, conn, content, start, plan, stats, egress):
            return False
    await stream.send_all(conn.send(h11.EndOfMessage()))
    return True


def _plan_body(fault: Fault, length: int, chunked: bool) -> _BodyPlan:
    plan = _BodyPlan(length, chunked, rate=fault.rate)
    if fault.gate is not None and fault.gate_after is not None:
        plan.gate, plan.gate_at = fault.gate, fault.gate_after
    # Count the drop down now, not when it happens, so concurrent requests cannot both
    # take the last one. A drop point at or past the end would not cut anything.
    if fault.drop_after is not None and fault.drop_times > 0 and fault.drop_after < length:
        fault.drop_times -= 1
        plan.drop_at = fault.drop_after
    return plan


async def _send_body(
    stream: trio.abc.Stream,
    conn: h11.Connection,
    content: _Content,
    start: int,
    plan: _BodyPlan,
    stats: PathStats,
    egress: RateLimiter,
) -> bool:
    """Write the body. Return False if it was cut short, so the connection must close."""
    began = trio.current_time()
    sent = 0
    block, used = b"", 0
    while sent < plan.length:
        if sent == plan.gate_at and plan.gate is not None:
            await plan.gate.wait()
        if sent == plan.drop_at:
            await _stage_drop(stream, plan, sent)
            return False
        if used == len(block):
            block, used = await content.read(start + sent, min(READ_SIZE, plan.length - sent)), 0
            if not block:
                return False  # The file shrank under us, so the promised body cannot be kept.
        size = plan.piece_size(sent, len(block) - used)
        await egress.acquire(size)
        # Count before writing: a client may read the bytes before send_all returns to us,
        # and tests check stats right after their read.
        stats.bytes_sent += size
        await stream.send_all(conn.send(h11.Data(data=block[used : used + size])))
        used += size
        sent += size
        if plan.rate is not None:
            await trio.sleep_until(began + sent / plan.rate)
    return True


async def _stage_drop(stream: trio.abc.Stream, plan: _BodyPlan, sent: int) -> None:
    """Leave the body visibly unfinished. Closing the socket afterwards does the rest.

    With Content-Length, the missing bytes already give the cut away. With chunked framing,
    closing between chunks could pass for a clean end with a lenient parser. So announce
    one more chunk and never deliver it.
    """
    if plan.chunked:
        await stream.send_all(b"%x\r\n" % min(CHUNK_SIZE, plan.length - sent))


async def _send_head(
    stream: trio.abc.Stream, conn: h11.Connection, status: int, headers: Headers
) -> None:
    headers = [("Date", email.utils.formatdate(usegmt=True)), *headers]
    response = h11.Response(status_code=status, headers=headers, reason=_phrase(status))
    await stream.send_all(conn.send(response))


async def _send_simple(
    stream: trio.abc.Stream,
    conn: h11.Connection,
    req: _Request,
    status: int,
    headers: Sequence[tuple[str, str]] = (),
) -> None:
    """A complete response with a short text body (none for HEAD, 204 or 304)."""
    has_body = status not in (204, 304)
    body = f"{status} {_phrase(status)}\n".encode() if has_body else b""
    all_headers = list(headers)
    if has_body:
        all_headers += [("Content-Type", "text/plain; charset=utf-8")]
        all_headers += [("Content-Length", str(len(body)))]
    await _send_head(stream, conn, status, all_headers)
    if body and req.method != "HEAD":
        await stream.send_all(conn.send(h11.Data(data=body)))
    await stream.send_all(conn.send(h11.EndOfMessage()))


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Fault"


async def _reject_malformed(
    stream: trio.abc.Stream, conn: h11.Connection, exc: h11.RemoteProtocolError
) -> None:
    """Answer a bad request with 400 (or h11's hint) if we still can, then give up."""
    if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
        return
    response = h11.Response(
        status_code=exc.error_status_hint,
        headers=[("Content-Length", "0"), ("Connection", "close")],
    )
    try:
        await stream.send_all(conn.send(response))
        await stream.send_all(conn.send(h11.EndOfMessage()))
    except (*_NETWORK_ERRORS, h11.LocalProtocolError):
        pass


# -- protocol helpers -------------------------------------------------------------


async def _next_event(stream: trio.abc.Stream, conn: h11.Connection) -> h11.Event:
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(bytes(await stream.receive_some(64 * 1024)))
        elif isinstance(event, h11.Event):
            return event
        else:  # PAUSED cannot happen: we never read past the end of a request.
            raise AssertionError(f"unexpected h11 state {event!r}")


async def _wait_for_hangup(stream: trio.abc.Stream) -> None:
    """Read and throw away data until the client closes. This is what `hang` is."""
    while await stream.receive_some(64 * 1024):
        pass


def _route_path(target: str) -> str:
    """Routing uses the percent-decoded path only. The query string is ignored."""
    if not target.startswith("/"):  # absolute-form, as sent to proxies
        target = urllib.parse.urlsplit(target).path or "/"
    return urllib.parse.unquote(target.split("?", 1)[0])


def _open(entry: _MemoryEntry | _FileEntry | None) -> _Content | None:
    if isinstance(entry, _MemoryEntry):
        return _Content(len(entry.data), entry.etag, entry.last_modified, data=entry.data)
    if entry is None:
        return None
    try:
        fd = os.open(entry.file, os.O_RDONLY)
    except OSError:
        return None  # The file was removed after add_file(). Treat it as gone.
    st = os.fstat(fd)
    # Hashing a large benchmark file on every request would cost too much. Identity,
    # size and mtime change whenever the content is rewritten, so derive the tag from them.
    stamp = f"{st.st_ino}-{st.st_size}-{st.st_mtime_ns}".encode()
    etag = '"' + hashlib.blake2b(stamp, digest_size=8).hexdigest() + '"'
    return _Content(st.st_size, etag, int(st.st_mtime), fd=fd)


def _validators(content: _Content, fault: Fault) -> Headers:
    headers: Headers = []
    if fault.etag:
        headers.append(("ETag", content.etag))
    if fault.last_modified:
        headers.append(("Last-Modified", _http_date(content.last_modified)))
    return headers


def _not_modified(req: _Request, content: _Content, fault: Fault) -> bool:
    """RFC 9110 section 13.2.2: If-None-Match wins. If-Modified-Since counts only without it."""
    if_none_match = req.header("if-none-match")
    if if_none_match is not None:
        return _etag_listed(if_none_match, content.etag if fault.etag else None)
    since = _parse_http_date(req.header("if-modified-since"))
    return fault.last_modified and since is not None and content.last_modified <= since


def _etag_listed(header: str, etag: str | None) -> bool:
    """Weak comparison, as If-None-Match requires."""
    if header.strip() == "*":
        return True
    tags = [tag.strip().removeprefix("W/") for tag in header.split(",")]
    return etag is not None and etag in tags


def _selected_range(req: _Request, content: _Content, fault: Fault) -> tuple[int, int] | None:
    """The byte range [start, end) to serve, or None to serve the whole body."""
    value = req.header("range")
    if value is None:
        return None
    if_range = req.header("if-range")
    if if_range is not None and not _if_range_holds(if_range.strip(), content, fault):
        return None  # The client's copy is outdated. It needs the whole new one.
    return _parse_range(value, content.size)


def _if_range_holds(value: str, content: _Content, fault: Fault) -> bool:
    if value.startswith(('"', "W/")):
        return fault.etag and value == content.etag  # Strong comparison: weak never matches.
    return fault.last_modified and _parse_http_date(value) == content.last_modified


def _parse_range(value: str, size: int) -> tuple[int, int] | None:
    """Parse one byte range. Anything else, including multiple ranges, is ignored.

    RFC 9110 section 14.2 lets a server ignore a Range header it does not support.
    """
    match = _RANGE_RE.fullmatch(value.strip())
    if match is None:
        return None
    first, last = match.groups()
    if not first:
        if not last:
            return None
        if int(last) == 0 or size == 0:
            raise _Unsatisfiable
        return max(0, size - int(last)), size
    start = int(first)
    if last and int(last) < start:
        return None  # "bytes=5-3" is invalid syntax, not an unsatisfiable range.
    if start >= size:
        raise _Unsatisfiable
    end = min(int(last) + 1, size) if last else size
    return start, end


def _http_date(timestamp: int) -> str:
    return email.utils.formatdate(timestamp, usegmt=True)


def _parse_http_date(value: str | None) -> int | None:
    """An HTTP date as a Unix timestamp. Invalid dates give None, so the header is ignored."""
    if value is None:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.UTC)
    return int(parsed.timestamp())


# -- command line -------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m testkit.origin",
        description="Serve every file under DIR over HTTP/1.1 at /<relative path>.",
    )
    parser.add_argument("--dir", type=pathlib.Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument(
        "--rate-limit",
        type=parse_rate,
        metavar="RATE",
        help="total egress of all bodies together, e.g. 16MiB (default: unlimited)",
    )
    ready_file_argument(parser, '"url" (http://HOST:PORT)')
    args = parser.parse_args(argv)
    if not args.dir.is_dir():
        parser.error(f"not a directory: {args.dir}")
    try:
        prepare_ready_file(args.ready_file)
    except ValueError as exc:
        parser.error(str(exc))
    origin = FakeOrigin(args.host, args.port, rate_limit=args.rate_limit)
    for file in sorted(args.dir.rglob("*")):
        if file.is_file():
            origin.add_file("/" + file.relative_to(args.dir).as_posix(), file)
    trio.run(_serve_until_signalled, origin, args.ready_file)


async def _serve_until_signalled(origin: FakeOrigin, ready_file: pathlib.Path | None) -> None:
    """Serve until SIGTERM or SIGINT, then print what was sent (one JSON line)."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(origin.serve)
            print(f"listening on {origin.url('')}", flush=True)
            write_ready_file(ready_file, {"url": origin.url("")})
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break
    sent = {
        path: {
            "bytes_sent": s.bytes_sent,
            "full_bodies": s.full_bodies,
            "requests": len(s.requests),
        }
        for path, s in origin.stats.items()
    }
    print("stats " + json.dumps(sent, sort_keys=True), flush=True)


def _alt_name(host: str) -> Any:
    """The certificate's subjectAltName entry for `host` (x509.GeneralName)."""
    import ipaddress

    from cryptography import x509

    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def self_signed_tls(host: str = "127.0.0.1") -> tuple[ssl.SSLContext, bytes]:
    """A server TLS context with a fresh self-signed certificate for `host` (an IP
    address or a name), and that certificate in PEM (for clients that should trust it)."""
    import tempfile

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([_alt_name(host)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    with tempfile.TemporaryDirectory() as folder:
        cert_file, key_file = pathlib.Path(folder, "cert.pem"), pathlib.Path(folder, "key.pem")
        cert_file.write_bytes(cert_pem)
        key_file.write_bytes(key_pem)
        context.load_cert_chain(cert_file, key_file)
    return context, cert_pem


if __name__ == "__main__":
    main()
