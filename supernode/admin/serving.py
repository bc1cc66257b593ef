"""hypercorn's HTTP/1.1 server behind our own accept loop, with a connection cap and
deadlines a slow client cannot stretch.

hypercorn (0.18) has no connection cap, and its `serve` owns the accept loop. So the
listeners are served by `common.io.serve_limited` (a connection over the cap is closed
before a byte is read), and each accepted connection is handed to hypercorn's
`TCPServer`, as `hypercorn.trio.run.worker_serve` would do (hence the pinned version).

HTTP/1.1 alone (`_Http11Server`): hypercorn would switch a connection to HTTP/2 on the
HTTP/2 preface or an `Upgrade: h2c`, and there one connection carries up to 100
requests at once, each reading its body before the token is checked, and a stream
waits on its peer's flow control where no send deadline sees it: past every bound
below. The preface is then a request like any other (no route), an upgrade is answered
in HTTP/1.1.

Deadlines:
- a request head must arrive within `keep_alive_timeout` of the connection or of the
  last answer (hypercorn's idle timer), each read within `read_timeout`;
- a body within `body_timeout` (the application's job: `AdminApi`);
- every write must be taken by the client within `send_timeout`, else the connection
  is closed: hypercorn shields its writes from cancellation, so a client that never
  reads would otherwise hold it forever (`_Guarded`).
Once the connection is over (closed by either side), its place is given back at once,
without waiting for hypercorn's keep-alive timer to notice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from typing import Any

import h11
import trio
from hypercorn.config import Config
from hypercorn.protocol import ProtocolWrapper
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.trio.task_group import TaskGroup
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import AppWrapper, ConnectionState
from hypercorn.utils import parse_socket_addr, wrap_app

from common.connlimit import ConnectionLimit
from common.io import serve_limited

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Deadlines:
    keep_alive: float = 5.0  # seconds for a request head, from connect or last answer
    read: float = 30.0  # seconds without a byte from the client, while connected
    send: float = 30.0  # seconds for the client to take each write of an answer


async def serve_http(
    app: Any,
    host: str,
    port: int,
    limit: ConnectionLimit,
    deadlines: Deadlines,
    *,
    what: str,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the ASGI `app` on host:port (0: a free port) under `limit`; reports the
    bound `HOST:PORT` (brackets around an IPv6 address)."""
    config = Config()
    config.accesslog = None
    config.errorlog = log
    config.keep_alive_timeout = deadlines.keep_alive
    config.read_timeout = deadlines.read  # type: ignore[assignment]  # an int in its hints
    wrapped = wrap_app(app, config.wsgi_max_body_size, "asgi")
    context = WorkerContext(None)
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()
    address = f"[{bound[0]}]:{bound[1]}" if ":" in bound[0] else f"{bound[0]}:{bound[1]}"
    handler = partial(_serve_one, wrapped, config, context, deadlines.send)
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(serve_limited, handler, listeners, limit, what=what))
        task_status.started(address)


async def _serve_one(
    app: AppWrapper,
    config: Config,
    context: WorkerContext,
    send_timeout: float,
    stream: trio.SocketStream,
) -> None:
    guarded = _Guarded(stream, send_timeout)
    async with trio.open_nursery() as nursery:

        async def run() -> None:
            await _Http11Server(app, config, context, {}, guarded).run()  # type: ignore[arg-type]
            nursery.cancel_scope.cancel()

        nursery.start_soon(run)
        # Over: nothing more can be read or sent. hypercorn would still wait for its
        # keep-alive timer before returning, holding the connection's place meanwhile.
        await guarded.over.wait()
        nursery.cancel_scope.cancel()


class _Http11Only(H11Protocol):
    """hypercorn's HTTP/1.1 without its ways to HTTP/2 (it raises, in this check, what
    makes `ProtocolWrapper` switch)."""

    async def _check_protocol(self, event: h11.Request) -> None:
        return None


class _Http11Server(TCPServer):
    """`TCPServer.run` for a plain socket, its protocol `_Http11Only`."""

    async def run(self) -> None:
        socket = self.stream.socket  # (a _Guarded, which keeps it)
        try:
            client = parse_socket_addr(socket.family, socket.getpeername())
            server = parse_socket_addr(socket.family, socket.getsockname())
            async with TaskGroup() as task_group:
                self._task_group = task_group
                state = ConnectionState(self.state)
                args = (self.app, self.config, self.context, task_group, state, False)
                self.protocol = ProtocolWrapper(*args, client, server, self.protocol_send)
                self.protocol.protocol = _Http11Only(*args, client, server, self.protocol_send)
                await self.protocol.initiate()
                await self.idle_task.restart(self._task_group, self._idle_timeout)
                await self._read_data()
        except OSError:
            pass
        finally:
            await self._close()


class _Guarded(trio.abc.HalfCloseableStream):
    """A socket stream whose every `send_all` must finish within `timeout` (else it is
    closed and the write fails as a broken stream), and which tells when the
    connection is over (`over`: closed here, or the client closed or broke it). Keeps
    `socket`, which hypercorn reads the addresses from."""

    def __init__(self, stream: trio.SocketStream, timeout: float) -> None:
        self.stream = stream
        self.socket = stream.socket
        self.timeout = timeout
        self.over = trio.Event()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        with trio.move_on_after(self.timeout) as waited:
            try:
                await self.stream.send_all(data)
            except trio.BrokenResourceError:
                self.over.set()
                raise
        if waited.cancelled_caught:
            await self.aclose()
            raise trio.BrokenResourceError(f"the client took nothing for {self.timeout:g}s")

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        try:
            data = await self.stream.receive_some(max_bytes)
        except trio.BrokenResourceError:
            self.over.set()
            raise
        if not data:
            self.over.set()  # the client closed: hypercorn answers nothing after this
        return data

    async def send_eof(self) -> None:
        await self.stream.send_eof()

    async def aclose(self) -> None:
        self.over.set()
        await trio.aclose_forcefully(self.stream)
