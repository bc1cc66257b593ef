"""A lean HTTP/1.1 GET for the CDN's body path, on plain-HTTP origins.

httpx reads a body 64 KiB at a time through anyio, h11 and its own decoders: about
0.8 GB/s on loopback, most of the CDN's CPU for a cold fetch. Here h11 parses only the
status line and headers; a Content-Length body is then read with `recv_into` straight
into the piece buffer the caller hands over, with no copy or parse per chunk (about
3 GB/s). Chunked bodies still go through h11, with large reads. Redirects are left to
the caller (`OriginClient`), which also keeps httpx for TLS, proxies and HEAD: only the
hot path is hand-written. A small request (a revalidation) may go out on a connection
kept from an earlier one and leave its own for the next (`common.io.keptconns`): its body
then goes through h11 too, which tells when the exchange is complete.
"""

from __future__ import annotations

import contextlib
from urllib.parse import quote, urlsplit

import h11
import trio

from common.io.keptconns import KeptConnections, Origin
from common.io.origins import open_checked_tcp_stream
from common.origins import AddressDenied, OriginPolicy
from common.urls import display_url
from supernode.cdn.response import OriginResponse, header_bytes
from supernode.errors import (
    BadRequest,
    OriginBroken,
    OriginDenied,
    OriginTimeout,
    OriginUnreachable,
)

READ_SIZE = 1 << 20
USER_AGENT = "dragonfly-py-supernode/0.1"
# What a kept exchange's unread body may still hold for its connection to be kept (a
# revalidation's answer has one byte, or none), and how long reading it may take.
DRAIN_LIMIT = 64 * 1024
DRAIN_TIMEOUT = 1.0
# The answers after which a connection may be kept: a revalidation's. A refusal (or
# any error) may come before the origin read the whole request: its connection goes.
KEEPABLE = frozenset({206, 304})


class LeanResponse(OriginResponse):
    """Status, headers and the raw body of one GET; `aclose()` when done."""

    def __init__(
        self,
        stream: trio.SocketStream,
        conn: h11.Connection,
        head: h11.Response,
        url: str,
        timeout: float,
        kept: tuple[KeptConnections, Origin] | None = None,
    ) -> None:
        self._stream = stream
        self._conn = conn
        self._timeout = timeout
        self._kept = kept  # where the connection goes if the exchange ends cleanly
        self._closed = False
        self.url = url
        self.status = head.status_code
        self.reason = head.reason.decode("latin-1")
        self.headers = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in head.headers]
        # A Content-Length body bypasses h11 (unless the connection may be kept): start
        # with what it already buffered.
        counted = self.length is not None and kept is None
        self._remaining = self.length if counted else None
        self._pending = memoryview(conn.trailing_data[0]) if counted else None
        self._ended = False

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name), None)

    async def read_into(self, view: memoryview) -> int:
        """Fill part of `view` with body bytes; 0 once the body is complete."""
        if self._remaining is not None:
            return await self._read_counted(view)
        return await self._read_framed(view)

    async def _read_counted(self, view: memoryview) -> int:
        assert self._remaining is not None
        if self._remaining == 0 or not view.nbytes:
            return 0
        view = view[: self._remaining]
        if self._pending:
            count = min(view.nbytes, self._pending.nbytes)
            view[:count] = self._pending[:count]
            self._pending = self._pending[count:]
        else:
            count = await self._recv_into(view)
            if count == 0:
                raise OriginBroken(f"origin body cut short: {self._remaining} bytes missing")
        self._remaining -= count
        return count

    async def _read_framed(self, view: memoryview) -> int:
        """Chunked or close-delimited: let h11 take the framing apart."""
        while not self._pending:
            if self._ended:
                return 0
            try:
                event = self._conn.next_event()
                if event is h11.NEED_DATA:
                    data = await self._receive()
                    self._conn.receive_data(data)
                    continue
            except h11.RemoteProtocolError as exc:
                raise OriginBroken(f"origin body cut short: {exc}") from exc
            if isinstance(event, h11.Data):
                self._pending = memoryview(event.data)
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                self._ended = True
        count = min(view.nbytes, self._pending.nbytes)
        view[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        return count

    async def _recv_into(self, view: memoryview) -> int:
        try:
            with trio.fail_after(self._timeout):
                return await self._stream.socket.recv_into(view)
        except trio.TooSlowError as exc:
            raise OriginBroken(f"origin stalled mid-body for {self._timeout}s") from exc
        except OSError as exc:
            raise OriginBroken(f"origin body cut short: {exc}") from exc

    async def _receive(self) -> bytes:
        try:
            with trio.fail_after(self._timeout):
                return await self._stream.receive_some(READ_SIZE)
        except trio.TooSlowError as exc:
            raise OriginBroken(f"origin stalled mid-body for {self._timeout}s") from exc
        except (trio.BrokenResourceError, OSError) as exc:
            raise OriginBroken(f"origin body cut short: {exc}") from exc

    async def aclose(self) -> None:
        """Close the connection, or leave it kept for the next request if this exchange
        may (`kept`, an answer in KEEPABLE framed by its length or by chunks, not both)
        and ends cleanly within DRAIN_LIMIT bytes and DRAIN_TIMEOUT. Once only: the
        connection is no longer this response's after."""
        if self._closed:
            return
        self._closed = True
        with trio.CancelScope(shield=True):
            if self._kept is not None and self._keepable() and await self._drained():
                self._conn.start_next_cycle()
                self._kept[0].give(self._kept[1], self._stream, self._conn)
                return
            with contextlib.suppress(OSError, trio.BrokenResourceError):
                await self._stream.aclose()

    def _keepable(self) -> bool:
        framed_twice = self.header("content-length") is not None and bool(
            self.header("transfer-encoding")
        )
        return self.status in KEEPABLE and not framed_twice

    async def _drained(self) -> bool:
        """Read the rest of the answer (a kept exchange's body goes through h11, never
        around it): True if both sides are done with it and nothing came after it."""
        view, left = memoryview(bytearray(4096)), DRAIN_LIMIT
        with trio.move_on_after(DRAIN_TIMEOUT):
            try:
                while left >= 0 and (count := await self._read_framed(view)):
                    left -= count
            except OriginBroken:
                return False
        conn = self._conn
        done = conn.our_state is h11.DONE and conn.their_state is h11.DONE
        return self._ended and left >= 0 and done and not conn.trailing_data[0]


# Characters left as they are in a request target; anything else (spaces, non-ASCII)
# is percent-encoded as UTF-8, as httpx and browsers do.
_TARGET_SAFE = "/?&=:;@!$'()*+,%~-._[]"


def _request(
    url: str, headers: list[tuple[str, str]], *, keep: bool = False
) -> tuple[str, int, h11.Request]:
    """(host, port, request) for `url` (asking to keep the connection open if `keep`);
    BadRequest if it cannot be put on the wire."""
    try:
        parts = urlsplit(url)
        port = 80 if parts.port is None else parts.port
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError("lean_get takes plain http URLs")
        if port == 0:  # (not port 80: no connection goes to port 0)
            raise ValueError("port 0")
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        target = quote(
            (parts.path or "/") + (f"?{parts.query}" if parts.query else ""), _TARGET_SAFE
        )
        given = [(k, v) for k, v in headers if k.lower() not in _OWN_HEADERS]
        request = h11.Request(
            method="GET",
            target=target,
            headers=[
                (b"Host", (host if parts.port in (None, 80) else f"{host}:{port}").encode()),
                (b"Accept-Encoding", b"identity"),
                (b"Connection", b"keep-alive" if keep else b"close"),
                # Values as Latin-1 bytes: an origin's ETag past ASCII, read so, goes back
                # as it came in an If-None-Match (h11 takes ASCII strs only).
                *[(k.encode("ascii"), header_bytes(v)) for k, v in given],
                *([] if any(k.lower() == "user-agent" for k, _ in headers) else [_AGENT]),
            ],
        )
    except (h11.LocalProtocolError, ValueError) as exc:  # UnicodeError is a ValueError
        raise BadRequest(f"cannot request {display_url(url)}: {exc}") from exc
    return parts.hostname, port, request


async def lean_get(
    url: str,
    headers: list[tuple[str, str]],
    *,
    policy: OriginPolicy,
    read_timeout: float,
    connect_timeout: float,
    kept: KeptConnections | None = None,
) -> LeanResponse:
    """Send `GET url` to an address `policy` allows; return once the response head is
    in. Over a new connection, closed with the response; with `kept`, over a kept one
    if there is one (a new one if it turns out closed), which the response leaves there
    again if its exchange ends cleanly."""
    hostname, port, request = _request(url, headers, keep=kept is not None)
    origin = (hostname, port)
    if kept is not None and (reused := kept.take(origin)) is not None:
        stream, conn = reused
        try:
            return await _exchange(
                stream, conn, request, url, read_timeout, (kept, origin), reused=True
            )
        except _Stale:
            pass  # the origin closed it while it was kept: a new one
    try:
        with trio.fail_after(connect_timeout):
            stream = await open_checked_tcp_stream(policy, hostname, port)
    except trio.TooSlowError as exc:
        raise OriginTimeout(f"origin timed out: {display_url(url)}") from exc
    except AddressDenied as exc:
        raise OriginDenied(f"refused to fetch {display_url(url)}: {exc}") from exc
    except OSError as exc:
        raise OriginUnreachable(f"cannot reach origin {display_url(url)}: {exc}") from exc
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=64 * 1024)
    return await _exchange(
        stream, conn, request, url, read_timeout, (kept, origin) if kept is not None else None
    )


class _Stale(Exception):
    """A kept connection failed before any byte of an answer, or was answered 408: the
    origin closed it, or was closing it."""


async def _exchange(
    stream: trio.SocketStream,
    conn: h11.Connection,
    request: h11.Request,
    url: str,
    read_timeout: float,
    kept: tuple[KeptConnections, Origin] | None,
    *,
    reused: bool = False,
) -> LeanResponse:
    """Send `request` on `stream`, read the response head. On a connection that was
    kept (`reused`), a failure before the answer's first byte, or a 408, is `_Stale`:
    the request can go again on a new one."""
    answered = False
    try:
        with trio.fail_after(read_timeout):
            await stream.send_all(conn.send(request) + (conn.send(h11.EndOfMessage()) or b""))
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(64 * 1024)
                    answered = answered or bool(data)
                    conn.receive_data(data)
                elif isinstance(event, h11.Response):
                    if reused and event.status_code == 408:
                        raise _Stale  # its idle timeout, just as the request went
                    return LeanResponse(stream, conn, event, url, read_timeout, kept)
                elif isinstance(event, h11.ConnectionClosed):
                    if reused and not answered:
                        raise _Stale
                    raise OriginUnreachable(
                        f"origin closed the connection before answering: {display_url(url)}"
                    )
    except _Stale:
        await stream.aclose()
        raise
    except trio.TooSlowError as exc:
        await stream.aclose()
        raise OriginTimeout(f"origin timed out: {display_url(url)}") from exc
    except (h11.RemoteProtocolError, trio.BrokenResourceError, OSError) as exc:
        await stream.aclose()
        if reused and not answered:
            raise _Stale from exc
        raise OriginUnreachable(f"bad answer from origin {display_url(url)}: {exc}") from exc
    except BaseException:
        await stream.aclose()
        raise


_OWN_HEADERS = frozenset({"host", "accept-encoding", "connection"})
_AGENT = (b"User-Agent", USER_AGENT.encode())
