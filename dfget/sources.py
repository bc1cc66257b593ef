"""Piece sessions to uploaders (other peers and the CDN), shared by all transfers.

One connection per source address, opened on first use; several requests in flight on
it; a reader task matches each answer to its request by piece index. A transfer that
gave up (endgame loser, timeout) leaves its answer to be read and dropped. When a
connection breaks, every request waiting on it fails, and the next use reconnects.

`PieceConnections` serves one task: its connections take payloads of at most one sealed piece of
that task. Uploaders close a piece connection that asks for nothing for a while (60 s),
so one idle here for `max_idle` (30 s) is closed and replaced rather than reused: the
uploader's close never fails a request.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import trio

from dfget.connect import connect_stream
from proto.errors import ConnectionLost, ProtoError, UnexpectedMessage
from proto.frames import Frame
from proto.io import FramedStream
from proto.messages import ErrorReply, PieceData, PieceRefused, PieceRequest
from proto.pieces import TAG_SIZE

MAX_IDLE = 30.0  # seconds a connection may rest before it is replaced instead of reused


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


class PieceConnection:
    """One piece session to one uploader; requests in flight matched to answers."""

    def __init__(self, framed: FramedStream, address: str) -> None:
        self.framed = framed
        self.address = address
        self.broken: Exception | None = None
        # Requests for the same piece may overlap (a retry after a cancelled copy): the
        # uploader answers in order, so each answer goes to the oldest waiter for it.
        self._waiters: dict[tuple[str, int], list[_Waiter]] = {}
        self.last_active = trio.current_time()  # last request sent or answer received

    def idle_for(self, now: float) -> float:
        """How long the uploader has waited for a request from us (0 while one is
        outstanding: it is busy answering)."""
        return 0.0 if self._waiters else now - self.last_active

    async def close(self) -> None:
        """Close it (the reader then fails whatever still waits, and ends)."""
        self._break(ConnectionLost(f"connection to {self.address} closed here", clean=True))
        await self.framed.aclose()

    async def fetch(self, request: PieceRequest) -> Frame:
        """The PieceData frame answering `request`; PieceRefusedError or SourceLost."""
        key = (request.task_id, request.index)
        waiter = _Waiter()
        if self.broken is not None:
            raise SourceLost(f"{self.address}: {self.broken}")
        self._waiters.setdefault(key, []).append(waiter)
        self.last_active = trio.current_time()
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

    async def read_answers(self, max_idle: float = MAX_IDLE) -> None:
        """Hand every answer to its waiter, until the connection ends, or has had nothing
        to wait for during `max_idle` (then it is closed: the uploader would soon)."""
        try:
            while True:
                with trio.move_on_after(max_idle) as waited:
                    frame = await self.framed.receive()
                if waited.cancelled_caught:  # no byte of a frame is lost: receive again
                    if self._waiters:
                        continue
                    break
                self.last_active = trio.current_time()
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


class PieceConnections:
    """Piece connections by source address (one each), for one task whose pieces are
    `piece_size` bytes; `get` opens one on first use (its reader runs in `nursery`)."""

    def __init__(self, *, peer_id: str, piece_size: int) -> None:
        self.peer_id = peer_id
        self.max_payload = piece_size + TAG_SIZE  # one sealed piece; nothing larger
        self.max_idle = MAX_IDLE
        self._connections: dict[str, PieceConnection] = {}
        self._opening: dict[str, trio.Lock] = {}

    async def get(self, address: str, *, nursery: trio.Nursery) -> PieceConnection:
        lock = self._opening.setdefault(address, trio.Lock())
        async with lock:
            connection = self._connections.get(address)
            if connection is not None and connection.broken is None:
                if connection.idle_for(trio.current_time()) <= self.max_idle:
                    return connection
                await connection.close()  # the uploader may be closing it: start afresh
            try:
                framed = await connect_stream(
                    address, peer_id=self.peer_id, max_payload=self.max_payload
                )
            except Exception as exc:  # unreachable, handshake refused: all the same here
                raise SourceLost(f"cannot reach {address}: {exc}") from exc
            connection = self._connections[address] = PieceConnection(framed, address)
            nursery.start_soon(connection.read_answers, self.max_idle)
            return connection
