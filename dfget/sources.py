"""Piece sessions to uploaders (other peers and the CDN), shared by all transfers.

One connection per source address, opened on first use; several requests in flight on
it; a reader task matches each answer to its request by piece index. A transfer that
gave up (endgame loser, timeout) leaves its answer to be read and dropped. When a
connection breaks, every request waiting on it fails, and the next use reconnects.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import trio

from dfget.connect import connect_stream
from proto.errors import ConnectionLost, ProtoError, UnexpectedMessage
from proto.frames import Frame
from proto.io import FramedStream
from proto.messages import ErrorReply, PieceData, PieceRefused, PieceRequest


class PieceRefusedError(Exception):
    """The uploader answered with a typed refusal (busy, not held, bad ticket...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class SourceLost(Exception):
    """The connection to the uploader failed or broke before the answer came."""


@dataclass(eq=False)  # waiters are told apart by identity
class _Waiter:
    done: trio.Event = field(default_factory=trio.Event)
    frame: Frame | None = None
    error: Exception | None = None


class SourceConnection:
    def __init__(self, framed: FramedStream, address: str) -> None:
        self.framed = framed
        self.address = address
        self.broken: Exception | None = None
        # Requests for the same piece may overlap (a retry after a cancelled copy): the
        # uploader answers in order, so each answer goes to the oldest waiter for it.
        self._waiters: dict[tuple[str, int], list[_Waiter]] = {}

    async def fetch(self, request: PieceRequest) -> Frame:
        """The PieceData frame answering `request`; PieceRefusedError or SourceLost."""
        key = (request.task_id, request.index)
        waiter = _Waiter()
        if self.broken is not None:
            raise SourceLost(f"{self.address}: {self.broken}")
        self._waiters.setdefault(key, []).append(waiter)
        try:
            try:
                await self.framed.send(request)
            except ProtoError as exc:
                self._break(exc)
            await waiter.done.wait()
        finally:
            self._forget(key, waiter)
        if waiter.error is not None:
            raise waiter.error
        assert waiter.frame is not None
        return waiter.frame

    def recycle(self, payload: bytearray) -> None:
        self.framed.recycle(payload)

    async def read_answers(self) -> None:
        """Hand every answer to its waiter, until the connection ends."""
        try:
            while True:
                frame = await self.framed.receive()
                message = frame.message
                if isinstance(message, ErrorReply):
                    raise SourceLost(f"{self.address} closed: {message.code}: {message.message}")
                if not isinstance(message, PieceData | PieceRefused):
                    raise UnexpectedMessage(f"{message.TAG} on a piece session")
                waiters = self._waiters.get((message.task_id, message.index))
                if not waiters:  # nobody waits any more (cancelled): drop it
                    self.framed.recycle(frame.payload)
                    continue
                waiter = waiters.pop(0)
                if isinstance(message, PieceRefused):
                    waiter.error = PieceRefusedError(message.code, message.message)
                else:
                    waiter.frame = frame
                waiter.done.set()
        except (ProtoError, SourceLost) as exc:
            self._break(exc)
        finally:
            self._break(ConnectionLost(f"connection to {self.address} closed", clean=True))
            await self.framed.aclose()

    def _forget(self, key: tuple[str, int], waiter: _Waiter) -> None:
        waiters = self._waiters.get(key, [])
        if waiter in waiters:
            waiters.remove(waiter)
        if not waiters:
            self._waiters.pop(key, None)

    def _break(self, cause: Exception) -> None:
        if self.broken is None:
            self.broken = cause
        for waiter in (w for waiters in self._waiters.values() for w in waiters):
            if not waiter.done.is_set():
                waiter.error = SourceLost(f"{self.address}: {cause}")
                waiter.done.set()


class SourcePool:
    """Connections by address; `get` opens one on first use (its reader runs in `nursery`)."""

    def __init__(self, *, peer_id: str) -> None:
        self.peer_id = peer_id
        self._connections: dict[str, SourceConnection] = {}
        self._opening: dict[str, trio.Lock] = {}

    async def get(self, address: str, *, nursery: trio.Nursery) -> SourceConnection:
        lock = self._opening.setdefault(address, trio.Lock())
        async with lock:
            connection = self._connections.get(address)
            if connection is not None and connection.broken is None:
                return connection
            try:
                framed = await connect_stream(address, peer_id=self.peer_id)
            except Exception as exc:  # unreachable, handshake refused: all the same here
                raise SourceLost(f"cannot reach {address}: {exc}") from exc
            connection = self._connections[address] = SourceConnection(framed, address)
            nursery.start_soon(connection.read_answers)
            return connection
