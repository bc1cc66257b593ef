"""The CDN's upload side: answer PieceRequests with sealed pieces straight from disk.

Each request is checked (task, generation, ticket, piece ready) and answered with a
`PieceData` frame whose payload is `sendfile`d from the pieces file, or with a typed
`PieceRefused`. Requests on one connection are
answered in order; the requester keeps several in flight to fill the pipe.
"""

from __future__ import annotations

import logging
import time

from proto.errors import BadTicket, ErrorCode, UnexpectedMessage
from proto.io import FramedStream, RateLimiter
from proto.messages import PieceData, PieceRefused, PieceRequest
from proto.pieces import TAG_SIZE
from proto.tickets import CDN_UPLOADER, TicketVerifier
from supernode.cdn.piecefile import PiecesFile
from supernode.cdn.service import Cdn
from supernode.errors import StoreError

log = logging.getLogger(__name__)


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
    ) -> None:
        self.framed = framed
        self.peer_id = peer_id
        self.cdn = cdn
        self.tickets = tickets
        self.limiter = limiter
        self._files: dict[tuple[str, int], PiecesFile] = {}
        self.bytes_sent = 0

    async def run(self, first: PieceRequest) -> None:
        try:
            request = first
            while True:
                await self._answer(request)
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

    async def _answer(self, request: PieceRequest) -> None:
        task = self.cdn.current(request.task_id)
        if task is None:
            return await self._refuse(request, ErrorCode.UNKNOWN_TASK, "no such task on this CDN")
        if task.generation != request.generation:
            return await self._refuse(
                request, ErrorCode.STALE, f"task is at generation {task.generation}"
            )
        try:
            self.tickets.verify(
                request.ticket,
                task_id=request.task_id,
                requester=self.peer_id,
                uploader=CDN_UPLOADER,
                now=time.time(),
            )
        except BadTicket as exc:
            return await self._refuse(request, ErrorCode.BAD_TICKET, str(exc))
        if request.index >= task.ready:
            return await self._refuse(request, ErrorCode.NOT_HELD, "piece not on the CDN yet")
        sealed = task.lengths[request.index] + TAG_SIZE
        reply = PieceData(task_id=task.task_id, generation=task.generation, index=request.index)
        try:
            pieces = self._open(task.task_id, task.generation, task.piece_size)
            with self.cdn.uploading(task.task_id, self.peer_id, request.index):  # (CDN slot)
                if self.limiter:
                    await self.limiter.acquire(sealed)
                await self.framed.send_file(reply, pieces.fd, pieces.offset(request.index), sealed)
        except StoreError as exc:
            log.warning("cdn uploads: %s", exc)
            return await self._refuse(request, ErrorCode.STALE, "task generation is gone")
        self.bytes_sent += sealed
        task.bytes_served += sealed
        task.last_used = time.monotonic()
        self.cdn.bytes_served += sealed
        return None

    def _open(self, task_id: str, generation: int, piece_size: int) -> PiecesFile:
        key = (task_id, generation)
        if key not in self._files:
            self._files[key] = self.cdn.store.open_pieces(task_id, generation, piece_size)
        return self._files[key]
