"""The CDN's upload side: answer PieceRequests with sealed pieces straight from disk.

Each request is checked (task, generation, ticket, piece ready) and answered with a
`PieceData` frame whose payload is `sendfile`d from the pieces file, or with a typed
`PieceRefused`. Requests on one connection are
answered in order; the requester keeps several in flight to fill the pipe.

A `bad_ticket` refusal ends the session (whoever sent it has no business here); the
other refusals (`unknown_task`, `stale`, `not_held`) keep it. A session with no
request for `idle_timeout` is closed, and so is one whose requester does not take a
piece within `piece_send_timeout(sealed size)`: a requester that never reads holds
its connection no longer than that.
"""

from __future__ import annotations

import logging
import math
import time

import trio

from common.io import RateLimiter
from proto.errors import BadTicket, ErrorCode, UnexpectedMessage
from proto.io import FramedStream
from proto.messages import PieceData, PieceRefused, PieceRequest
from proto.pieces import TAG_SIZE
from proto.tickets import CDN_UPLOADER, TicketVerifier
from supernode.cdn.piecefile import PiecesFile
from supernode.cdn.service import Cdn
from supernode.errors import StoreError

log = logging.getLogger(__name__)

# A piece must be taken by the requester within max(MIN_PIECE_SEND, sealed size /
# MIN_SEND_RATE × 2), the deadline dfget gives itself to receive one (PIECE_TIMEOUT,
# MIN_PIECE_RATE in dfget/peer.py). The upload rate limiter's wait comes before it.
MIN_PIECE_SEND = 60.0
MIN_SEND_RATE = 256 * 1024  # bytes/s
MAX_OPEN_FILES = 16  # piece files one piece session keeps open (the tasks asked for last)


def piece_send_timeout(
    sealed: int, minimum: float = MIN_PIECE_SEND, rate: float = MIN_SEND_RATE
) -> float:
    """Seconds a requester has to take a sealed piece of `sealed` bytes."""
    return max(minimum, 2 * sealed / rate)


class _SessionRefused(Exception):
    """A refusal that ends the piece session (a bad ticket)."""


class CdnUploads:
    """Serves one piece session; owns the pieces-file descriptors it opens."""

    def __init__(
        self,
        framed: FramedStream,
        *,
        peer_id: str,
        cdn: Cdn,
        tickets: TicketVerifier,
        limiter: RateLimiter | None = None,
        idle_timeout: float = math.inf,
        min_send_timeout: float = MIN_PIECE_SEND,
        min_send_rate: float = MIN_SEND_RATE,
    ) -> None:
        self.framed = framed
        framed.send_pieces_whole()
        self.idle_timeout = idle_timeout
        self.min_send_timeout = min_send_timeout
        self.min_send_rate = min_send_rate
        self.peer_id = peer_id
        self.cdn = cdn
        self.tickets = tickets
        self.limiter = limiter
        self._files: dict[tuple[str, int], PiecesFile] = {}
        self.bytes_sent = 0

    async def run(self, first: PieceRequest) -> None:
        """Answer requests until the peer closes (ConnectionLost), idles (TooSlowError)
        or is refused a ticket (then it returns, the connection closed).

        Idle means: no request that showed a valid ticket for `idle_timeout`. Requests
        for tasks or generations this CDN does not have are answered, but do not keep
        the session alive: a stranger asking for made-up tasks every minute would
        otherwise hold the connection forever."""
        try:
            request = first
            deadline = trio.current_time() + self.idle_timeout
            while True:
                try:
                    if await self._answer(request):
                        deadline = trio.current_time() + self.idle_timeout
                except _SessionRefused:
                    await self.framed.linger_close()
                    return
                with trio.fail_at(deadline):
                    frame = await self.framed.receive()
                if not isinstance(frame.message, PieceRequest):
                    raise UnexpectedMessage(f"{frame.message.TAG} on a piece session")
                request = frame.message
        finally:
            for pieces in self._files.values():
                pieces.close()

    async def _refuse(self, request: PieceRequest, code: ErrorCode, message: str) -> None:
        await self.framed.send(
            PieceRefused(
                task_id=request.task_id, index=request.index, code=str(code), message=message
            )
        )

    async def _answer(self, request: PieceRequest) -> bool:
        """Answer one request; True if it showed a valid ticket (the session is in use)."""
        task = self.cdn.current(request.task_id)
        if task is None:
            await self._refuse(request, ErrorCode.UNKNOWN_TASK, "no such task on this CDN")
            return False
        if task.generation != request.generation:
            await self._refuse(request, ErrorCode.STALE, f"task is at generation {task.generation}")
            return False
        try:
            self.tickets.verify(
                request.ticket,
                task_id=request.task_id,
                requester=self.peer_id,
                uploader=CDN_UPLOADER,
                now=time.time(),
            )
        except BadTicket as exc:
            await self._refuse(request, ErrorCode.BAD_TICKET, str(exc))
            raise _SessionRefused from exc
        if not task.holds(request.index):
            await self._refuse(request, ErrorCode.NOT_HELD, "piece not on the CDN yet")
            return True
        sealed = task.lengths[request.index] + TAG_SIZE
        reply = PieceData(task_id=task.task_id, generation=task.generation, index=request.index)
        try:
            pieces = self._open(task.task_id, task.generation, task.piece_size)
            with self.cdn.uploading(task.task_id, self.peer_id, request.index):  # (CDN slot)
                if self.limiter:
                    await self.limiter.acquire(sealed)
                await self.framed.send_file(
                    reply,
                    pieces.fd,
                    pieces.offset(request.index),
                    sealed,
                    within=piece_send_timeout(sealed, self.min_send_timeout, self.min_send_rate),
                )  # (drained: the CDN's slot at the scheduler stands for its link's time)
        except StoreError as exc:
            log.warning("cdn uploads: %s", exc)
            await self._refuse(request, ErrorCode.STALE, "task generation is gone")
            return True
        self.bytes_sent += sealed
        task.bytes_served += sealed
        task.last_used = time.monotonic()
        self.cdn.bytes_served += sealed
        return True

    def _current(self, task_id: str, generation: int) -> bool:
        task = self.cdn.current(task_id)
        return task is not None and task.generation == generation

    def _open(self, task_id: str, generation: int, piece_size: int) -> PiecesFile:
        """The task's piece file, opened once for the session; the session keeps the
        MAX_OPEN_FILES it used last open (a daemon's session asks for many tasks, one
        after another: without a bound, one connection holding tickets for a thousand
        tasks would hold a thousand descriptors). A file whose task the CDN no longer
        holds at that generation is closed first: a session kept for long (a daemon's
        downloads pass theirs on) must not keep an evicted file's disk space taken."""
        for held in [held for held in self._files if not self._current(*held)]:
            self._files.pop(held).close()  # (evicted or superseded: its space is freed)
        key = (task_id, generation)
        pieces = self._files.pop(key, None)
        if pieces is None:
            if len(self._files) >= MAX_OPEN_FILES:  # (requests are answered one at a time:
                self._files.pop(next(iter(self._files))).close()  # none uses it now)
            pieces = self.cdn.store.open_pieces(task_id, generation, piece_size)
        self._files[key] = pieces  # (the most recent last)
        return pieces
