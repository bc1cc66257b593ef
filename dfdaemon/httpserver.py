"""A small HTTP/1.1 server on h11 and trio: the daemon's one port serves the registry
mirror, the forward proxy and /metrics.

hypercorn speaks ASGI, which has no way to hand a connection over to a raw tunnel, so
`CONNECT` could not work there; h11 gives the daemon the whole connection. Each
request reaches the handler as a `Request` (headers in order, repeated names kept, the
body as an async iterator) with a `Reply` to answer through. Connections are kept
alive between requests unless either side says otherwise. A connection may be any
trio stream: over TLS (an intercepted CONNECT: hijack.py), file bodies are read and
sent through it, since sendfile cannot encrypt.

A request framed by both Content-Length and Transfer-Encoding is refused (smuggling).

Nobody holds a connection for nothing: a request head must come within HEAD_TIMEOUT
(IDLE_TIMEOUT between requests) and cannot pass MAX_HEAD bytes; a request body that
stops flowing for BODY_TIMEOUT, and a client that stops reading its answer for
SEND_TIMEOUT, lose the connection (`httpconn.py`: one connection, its bounds and its
file bodies). `serve_http` caps the connections held at once.

With an `ssl_context` (`--tls-cert`, `--tls-key`) every connection is TLS: its
handshake must end within HANDSHAKE_TIMEOUT, and file bodies are read and encrypted
instead of sent by sendfile(2).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import h11
import trio

from common.connlimit import ConnectionLimit
from common.io import serve_limited
from dfdaemon.httpconn import (
    LINGER,
    BrokenBody,
    ClientGone,
    Connection,
)
from proto.io import STREAM_ERRORS

log = logging.getLogger(__name__)

HEAD_TIMEOUT = 30.0  # for a request's head, once the connection is open or idle
IDLE_TIMEOUT = 120.0  # a kept-alive connection with no new request
HANDSHAKE_TIMEOUT = 10.0  # a TLS client's handshake, from the connection's accept


@dataclass
class Request:
    method: str
    target: str  # as sent: "/v2/...", "http://host/path" (proxy) or "host:443" (CONNECT)
    headers: list[tuple[str, str]]  # names in lower case, order and repeats kept
    client: str
    _body: Callable[[], AsyncIterator[bytes]] = field(repr=False)

    def header(self, name: str) -> str | None:
        """The first value of header `name` (lower case), if any."""
        return next((v for k, v in self.headers if k == name), None)

    def body(self) -> AsyncIterator[bytes]:
        return self._body()


class Reply:
    """The answer to one request: `start`, then `send` body chunks, then `end`; or
    `tunnel()` after a 2xx answer to CONNECT."""

    def __init__(self, connection: Connection, method: str) -> None:
        self._connection = connection
        self._method = method
        self.status = 0
        self.started = False
        self.ended = False
        self.bytes_sent = 0

    async def start(self, status: int, headers: list[tuple[str, str]]) -> None:
        self.status, self.started = status, True
        # Values as Latin-1, every byte as itself (h11 would take ASCII only): an
        # upstream's header relayed goes back as the upstream sent it.
        raw = [(k.encode("ascii"), v.encode("latin-1", "replace")) for k, v in headers]
        await self._connection.send(h11.Response(status_code=status, headers=raw))

    async def send(self, data: bytes | bytearray | memoryview) -> None:
        if data and self._method != "HEAD":
            await self._connection.send(h11.Data(data=bytes(data)))
            self.bytes_sent += len(data)

    async def client_gone(self) -> None:
        """Return once the client has closed its end of the connection (while it waits
        for this answer); never if it sends anything meanwhile: it is still there."""
        stream = self._connection.stream
        if isinstance(stream, trio.SocketStream):
            try:
                if await stream.socket.recv(1, socket.MSG_PEEK) == b"":
                    return
            except OSError:
                return  # (reset)
        await trio.sleep_forever()

    @property
    def can_pass_files(self) -> bool:
        """Over a Unix socket, a descriptor can go to the client (`pass_file`), unless
        it has not read all of the last answer, or its user has left MAX_UNREAD_PASSES
        unread on other connections (descriptors would pile up in its sockets: it is
        streamed to instead)."""
        return self._connection.unix and self._connection.may_pass()

    def hold_unread(self, size: int) -> None:
        """On a Unix socket, ask for a send buffer of `size` bytes (the kernel doubles
        it, and caps it at `net.core.wmem_max`): so much of this answer may sit unread
        in the client's socket, and a file's bytes go in a piece at a time, not in the
        ~200 KiB of the default buffer, each after a wait for the client."""
        self._connection.hold_unread(size)

    async def pass_file(
        self, status: int, headers: list[tuple[str, str]], fd: int, length: int
    ) -> None:
        """A whole answer with no body whose head carries the open file `fd` to the
        client (SCM_RIGHTS; `can_pass_files` only): it reads the `length` bytes it
        stands for from the file itself."""
        self.status, self.started = status, True
        head = h11.Response(status_code=status, headers=[*headers, ("content-length", "0")])
        await self._connection.send_passing(head, fd)
        await self.end()
        self.bytes_sent += length

    async def send_file(self, fd: int, offset: int, count: int) -> None:
        """`count` body bytes straight from file `fd` at `offset` (sendfile)."""
        if count and self._method != "HEAD":
            await self._connection.send_file(fd, offset, count)
            self.bytes_sent += count

    async def end(self) -> None:
        await self._connection.send(h11.EndOfMessage())
        self.ended = True

    async def simple(
        self,
        status: int,
        body: bytes,
        content_type: str,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        """A whole answer in one go."""
        await self.start(
            status,
            [("content-type", content_type), ("content-length", str(len(body))), *headers],
        )
        await self.send(body)
        await self.end()

    def tunnel(self) -> tuple[trio.abc.Stream, bytes]:
        """After `start(200, ...)` to a CONNECT: the raw stream and what the client
        already sent past the request."""
        self.ended = True
        return self._connection.stream, self._connection.h11.trailing_data[0]


Handler = Callable[[Request, Reply], Awaitable[None]]


def client_of(stream: trio.abc.Stream) -> str:
    """The peer as logs show it: HOST:PORT ("?" for a stream that is not a socket's)."""
    if not isinstance(stream, trio.SocketStream):
        return "?"
    try:
        peer = stream.socket.getpeername()
    except OSError:
        return "?"
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "local"


async def serve_connection(
    stream: trio.abc.Stream, handler: Handler, client: str | None = None
) -> None:
    """Answer requests on one connection until it closes; `client` names the peer in
    logs (by default, a socket's peer address)."""
    connection = Connection(stream)
    if client is None:
        client = client_of(stream)
    first = True
    try:
        while True:
            with trio.move_on_after(HEAD_TIMEOUT if first else IDLE_TIMEOUT) as waited:
                event = await connection.next_event()
            if waited.cancelled_caught or isinstance(event, h11.ConnectionClosed):
                return
            first = False
            if not isinstance(event, h11.Request):
                return
            request = Request(
                method=event.method.decode("ascii", "replace"),
                target=event.target.decode("ascii", "replace"),
                headers=[
                    (k.decode("ascii", "replace").lower(), v.decode("latin-1"))
                    for k, v in event.headers
                ],
                client=client,
                _body=connection.body,
            )
            reply = Reply(connection, request.method)
            if request.header("transfer-encoding") and request.header("content-length"):
                # Two framings: how requests are smuggled past a proxy that reads one
                # while the next hop reads the other (RFC 9112 6.3). Refused, closed.
                why = b"bad request: both Content-Length and Transfer-Encoding\n"
                await reply.simple(400, why, "text/plain", (("connection", "close"),))
                return
            try:
                await handler(request, reply)
            except BrokenBody as exc:
                if not reply.started:
                    with contextlib.suppress(ClientGone, h11.LocalProtocolError):
                        with trio.move_on_after(1):
                            await reply.simple(400, f"{exc}\n".encode(), "text/plain")
                return
            except ClientGone:
                return
            except Exception:
                where = request.target.split("?")[0].rsplit("@", 1)[-1][:200]  # no secrets
                log.exception("%s %s: internal error", request.method, where)
                if reply.started:
                    return  # half an answer: closing is all that is left
                await reply.simple(500, b"internal error\n", "text/plain")
            if reply.status and request.method == "CONNECT" and 200 <= reply.status < 300:
                return  # the handler's tunnel owned the connection
            if not reply.ended:
                return  # a broken answer (for example a blob whose digest failed)
            if not await connection.skip_body():
                await connection.linger()  # the answer went out whole: only the
                return  # connection is given up
            if connection.h11.our_state is h11.MUST_CLOSE:
                return
            if connection.h11.their_state is h11.DONE:
                connection.h11.start_next_cycle()
            else:
                return
    except ClientGone:
        pass
    except h11.RemoteProtocolError as exc:  # a malformed request: say so, then close
        if connection.h11.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            body = f"bad request: {exc}\n".encode()
            headers = [("content-type", "text/plain"), ("content-length", str(len(body)))]
            try:
                with trio.move_on_after(1):
                    await connection.send(
                        h11.Response(status_code=exc.error_status_hint, headers=headers)
                    )
                    await connection.send(h11.Data(data=body))
                    await connection.send(h11.EndOfMessage())
            except (ClientGone, h11.LocalProtocolError):
                pass
    except h11.LocalProtocolError as exc:
        log.warning("http: %s", exc)
    finally:
        try:
            await connection.hold_while_unread()
        finally:
            with trio.move_on_after(LINGER):  # TLS sends close_notify: to one that may not read
                await stream.aclose()


async def serve_http(
    host: str,
    port: int,
    handler: Handler,
    *,
    limit: ConnectionLimit | None = None,
    ssl_context: ssl.SSLContext | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on host:port (0: a free port), at most `limit` connections at once (past
    it, new ones are closed before anything is read), over TLS with `ssl_context`;
    reports the bound port."""
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = int(listeners[0].socket.getsockname()[1])

    async def one(stream: trio.SocketStream) -> None:
        if ssl_context is None:
            await serve_connection(stream, handler)
            return
        client = client_of(stream)
        tls = trio.SSLStream(stream, ssl_context, server_side=True, https_compatible=True)
        try:
            with trio.fail_after(HANDSHAKE_TIMEOUT):
                await tls.do_handshake()
        except (*STREAM_ERRORS, trio.TooSlowError) as exc:  # not TLS, too slow...
            log.debug("tls: no handshake with %s: %r", client, exc)
            await stream.aclose()
            return
        await serve_connection(tls, handler, client)

    task_status.started(bound)
    if limit is None:
        await trio.serve_listeners(one, listeners)
    else:
        await serve_limited(one, listeners, limit, what=f"http port {host}:{bound}")
