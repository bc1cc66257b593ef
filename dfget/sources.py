"""Piece sessions to uploaders (other peers and the CDN), shared by all transfers.

One connection per source address, opened on first use; several requests in flight on
it; a reader task matches each answer to its request by piece index. A transfer that
gave up (endgame loser, timeout) leaves its answer to be read and dropped. When a
connection breaks, every request waiting on it fails, and the next use reconnects.

`PieceConnections` serves one task: its connections take payloads of at most one sealed piece of
that task. Uploaders close a piece connection that asks for nothing for a while (60 s),
so one idle here for `max_idle` (30 s) is closed and replaced rather than reused: the
uploader's close never fails a request.

A daemon's downloads pass their connections on to each other (`PiecePool`): when a
task is done, each of its connections that waits for no answer is kept, idle, for the
next task of the same source, peer id (a daemon's shared control session registers
its tasks under one) and piece size, for POOL_REST seconds at most, which then skips the
connect and the handshake on both sides (a new small file's cost). A connection serves
one task at a time, as before: the uploader answers a connection's requests in order,
so two downloads on one would wait for each other.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import trio

from dfget.connect import connect_stream
from proto.errors import ConnectionLost, ErrorCode, ProtoError, UnexpectedMessage
from proto.frames import Frame
from proto.io import FramedStream
from proto.messages import ErrorReply, PieceData, PieceRefused, PieceRequest
from proto.pieces import TAG_SIZE

log = logging.getLogger(__name__)

MAX_IDLE = 30.0  # seconds a connection may rest before it is replaced instead of reused
# Idle connections a pool keeps: in all, and to one uploader (a daemon's downloads run
# a few at a time: `dfget -r` four, a pull a layer each); each at most POOL_REST seconds
# (an idle one holds one of the uploader's connections, and the CDN's piece files it
# used last: see supernode/cdn/uploads.py). A connection serves one peer id, and a
# daemon's downloads go out under its sessions' (up to SESSIONS_PER_SUPERNODE, 8, to a
# supernode): with room for four, a fresh daemon's small files opened a connection for
# one in four (46 for 200 files), with room for eight 13.
POOLED = 32
POOLED_PER_ADDRESS = 8
POOL_REST = 10.0
# Refusals after which an uploader does not count the session as in use (it closes it
# on its idle deadline as if nothing had been asked).
_NOT_IN_USE = frozenset({ErrorCode.UNKNOWN_TASK, ErrorCode.STALE})


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
    turn: int = 0  # answers on the connection before its own (it is next once read)
    sent: float = 0.0
    began: float = 0.0  # when its answer began to come: sent, or the answer ahead read
    arrived: float = 0.0


class Answer(NamedTuple):
    """A piece's answer, and when it began to come (its request's send, or the answer
    ahead of it on the connection read) and arrived: the uploader's time for it."""

    frame: Frame
    began: float
    arrived: float


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
        self.unanswered = 0  # requests sent whose answer has not been read (waited or not)
        self.answered = 0  # answers read (waited for or dropped)
        self.answered_at = -math.inf  # ... the last of them
        self._read = trio.Event()  # set (and replaced) at each answer read, and at the end
        # When an answer last showed the uploader counting the session as in use (a
        # piece, or a refusal other than unknown_task and stale): its idle deadline runs
        # from about then. None: no such answer yet.
        self.kept_at: float | None = None

    def reusable(self, now: float, rest: float) -> bool:
        """Whether another task may take it: unbroken, able to send, no answer due
        (one a cancelled transfer left would come first), and in use at the uploader
        within `rest` seconds (well before its idle close)."""
        return (
            self.broken is None
            and self.framed.can_send
            and self.unanswered == 0
            and self.kept_at is not None
            and now - self.kept_at <= rest
        )

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
        return (await self.fetch_timed(request)).frame

    async def fetch_timed(
        self,
        request: PieceRequest,
        *,
        soon: tuple[float, Callable[[], Awaitable[None]]] | None = None,
    ) -> Answer:
        """`fetch`, with when the answer began to come and arrived. `soon` (seconds, a
        call): if the answer is not in that long after it began to come (once every
        answer ahead of it on the connection is read), the call is made (and the answer
        still awaited)."""
        key = (request.task_id, request.index)
        waiter = _Waiter()
        if self.broken is not None:
            raise SourceLost(f"{self.address}: {self.broken}")
        self._waiters.setdefault(key, []).append(waiter)
        self.last_active = waiter.sent = trio.current_time()
        # (a request ahead cancelled before it went makes this one wait for an answer
        # too many: its `soon` then never comes, which costs a follow-up, nothing more)
        waiter.turn = self.answered + self.unanswered
        try:
            # Counted before it goes: its answer may be read before this task runs again.
            self.unanswered += 1
            try:
                await self.framed.send(request)
            except ProtoError as exc:
                self._break(exc)
            except trio.Cancelled:
                if self.framed.can_send:  # cancelled waiting its turn: it never went
                    self.unanswered -= 1
                raise
            if soon is not None:
                await self._soon(waiter, *soon)
            await waiter.done.wait()
        finally:
            self._forget(key, waiter)
        if waiter.error is not None:
            raise waiter.error
        assert waiter.frame is not None
        return Answer(waiter.frame, waiter.began, waiter.arrived)

    async def _soon(
        self, waiter: _Waiter, after: float, call: Callable[[], Awaitable[None]]
    ) -> None:
        while self.answered < waiter.turn and not waiter.done.is_set():
            read = self._read
            await read.wait()  # (set at the end too: then `waiter` is done)
        with trio.move_on_after(after):
            await waiter.done.wait()
        if not waiter.done.is_set():
            await call()

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
                if isinstance(message, PieceData | PieceRefused):
                    if self.unanswered <= 0:  # (its payload would be held for reuse)
                        raise UnexpectedMessage(f"{message.TAG} answering no request")
                    self.unanswered -= 1
                    ahead_at, self.answered_at = self.answered_at, self.last_active
                    self.answered += 1
                    self._read.set()
                    self._read = trio.Event()
                    if isinstance(message, PieceData) or message.code not in _NOT_IN_USE:
                        self.kept_at = self.last_active
                    if isinstance(message, PieceRefused) and message.code == ErrorCode.BAD_TICKET:
                        # The uploader ends the session after it: nothing more may go.
                        self._break(SourceLost(f"{self.address} refused a ticket"))
                if isinstance(message, ErrorReply):
                    raise SourceLost(f"{self.address} closed: {message.code}: {message.message}")
                if not isinstance(message, PieceData | PieceRefused):
                    raise UnexpectedMessage(f"{message.TAG} on a piece session")
                waiters = self._waiters.get((message.task_id, message.index))
                if not waiters:  # nobody waits any more (cancelled): drop it
                    self.framed.recycle(frame.payload)
                    del frame
                    continue
                waiter = waiters.pop(0)
                waiter.began = max(waiter.sent, ahead_at)
                waiter.arrived = self.last_active
                if isinstance(message, PieceRefused):
                    waiter.error = PieceRefusedError(message.code, message.message)
                else:
                    waiter.frame = frame
                waiter.done.set()
                # (not held while the next frame is awaited: a connection kept idle in a
                # pool would keep its last piece)
                del frame, waiter
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
        self._read.set()
        for waiter in (w for waiters in self._waiters.values() for w in waiters):
            if not waiter.done.is_set():
                waiter.error = SourceLost(f"{self.address}: {cause}")
                waiter.done.set()


PoolKey = tuple[str, str, int]  # the source's address, our peer id, the largest payload


class PiecePool:
    """Idle piece connections a daemon's downloads pass on to each other (see the
    module docstring); the readers of the connections its users open run in
    `nursery` (the daemon's), so that a connection outlives the task that opened it."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        self._idle: dict[PoolKey, list[PieceConnection]] = {}
        self._sweeping = False  # `_sweep` runs (while any connection is kept)

    def take(self, key: PoolKey) -> PieceConnection | None:
        """An idle connection for `key` (the one used last), or None."""
        idle = self._idle.get(key, [])
        now = trio.current_time()
        while idle:
            connection = idle.pop()
            if connection.reusable(now, POOL_REST):
                return connection
            self.nursery.start_soon(connection.close)
        self._idle.pop(key, None)
        return None

    def put(self, key: PoolKey, connection: PieceConnection) -> None:
        """Keep `connection` for the next task of `key` for POOL_REST seconds at most, or
        close it (not reusable, or the pool full)."""
        now = trio.current_time()
        to_address = sum(
            len(idle) for (address, *_), idle in self._idle.items() if address == key[0]
        )
        full = to_address >= POOLED_PER_ADDRESS or self.count() >= POOLED
        if full or not connection.reusable(now, POOL_REST):
            self.nursery.start_soon(connection.close)
            return
        connection.framed.forget_spares()  # (an idle connection keeps no piece buffers)
        self._idle.setdefault(key, []).append(connection)
        if not self._sweeping:
            self._sweeping = True
            self.nursery.start_soon(self._sweep)

    async def _sweep(self) -> None:
        """Close each kept connection once it is no longer fit to take, for as long as
        any is kept (one task for them all: a daemon's small files put one back a file)."""
        try:
            while self._idle:
                now = trio.current_time()
                for key, idle in list(self._idle.items()):
                    for connection in [c for c in idle if not c.reusable(now, POOL_REST)]:
                        idle.remove(connection)
                        self.nursery.start_soon(connection.close)
                    if not idle:
                        del self._idle[key]
                kept = [c.kept_at for idle in self._idle.values() for c in idle]
                if kept:  # (`put` keeps only connections with a `kept_at`)
                    await trio.sleep_until(min(at for at in kept if at is not None) + POOL_REST)
        finally:
            self._sweeping = False

    def count(self) -> int:
        """Idle connections kept."""
        return sum(len(idle) for idle in self._idle.values())

    async def read(self, connection: PieceConnection, max_idle: float) -> None:
        """The reader of a connection one of its users opened, for as long as it lasts:
        whatever ends it ends that connection only, never the daemon."""
        try:
            await connection.read_answers(max_idle)
        except Exception:  # (read_answers ends on the errors it expects)
            log.exception("piece connection to %s", connection.address)


class PieceConnections:
    """Piece connections by source address (one each), for one task whose pieces are
    `piece_size` bytes; `get` opens one on first use (its reader runs in `nursery`), or
    takes one from `pool`, and `release` passes them back to it."""

    def __init__(self, *, peer_id: str, piece_size: int, pool: PiecePool | None = None) -> None:
        self.peer_id = peer_id
        self.max_payload = piece_size + TAG_SIZE  # one sealed piece; nothing larger
        self.max_idle = MAX_IDLE
        self.pool = pool
        self._connections: dict[str, PieceConnection] = {}
        self._opening: dict[str, trio.Lock] = {}

    async def get(self, address: str, *, nursery: trio.Nursery) -> PieceConnection:
        lock = self._opening.setdefault(address, trio.Lock())
        try:
            lock.acquire_nowait()  # (free: no pass through the scheduler)
        except trio.WouldBlock:
            await lock.acquire()
        try:
            return await self._get(address, nursery)
        finally:
            lock.release()

    async def _get(self, address: str, nursery: trio.Nursery) -> PieceConnection:
        """`get`, its address's lock held."""
        connection = self._connections.get(address)
        if connection is not None and connection.broken is None:
            if not connection.framed.can_send:
                # A request was cut short on it (a transfer cancelled mid-send): no
                # more may go, but the answers it owes still come; a new one, then,
                # not a transfer failed and blamed on the uploader.
                pass
            elif connection.idle_for(trio.current_time()) <= self.max_idle:
                return connection
            else:
                await connection.close()  # the uploader may be closing it: afresh
        if self.pool is not None:
            kept = self.pool.take((address, self.peer_id, self.max_payload))
            if kept is not None:
                self._connections[address] = kept
                return kept
        try:
            framed = await connect_stream(
                address, peer_id=self.peer_id, max_payload=self.max_payload
            )
        except Exception as exc:  # unreachable, handshake refused: all the same here
            raise SourceLost(f"cannot reach {address}: {exc}") from exc
        connection = self._connections[address] = PieceConnection(framed, address)
        if self.pool is None:
            nursery.start_soon(connection.read_answers, self.max_idle)
        else:
            self.pool.nursery.start_soon(self.pool.read, connection, self.max_idle)
        return connection

    def release(self) -> None:
        """The task is done with its connections: with a pool, each goes back to it
        (or closes, if it waits for an answer); without one they end with the task's
        readers."""
        connections, self._connections = list(self._connections.values()), {}
        if self.pool is not None:
            for connection in connections:
                key = (connection.address, self.peer_id, self.max_payload)
                self.pool.put(key, connection)
