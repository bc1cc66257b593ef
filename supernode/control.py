"""The control session of one peer: Register → Registered, then the task's progress.

After `Registered`, the session pushes `PiecesReady` as pieces land on the CDN and
ends the task with `TaskDone` or `TaskFailed`. It keeps reading the peer's messages
meanwhile; a peer may register several tasks in turn on one session.
"""

from __future__ import annotations

import logging
import time

import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from proto.errors import ErrorCode, UnexpectedMessage
from proto.io import FramedStream, unwrap_group
from proto.keywrap import BadPublicKey, wrap_context, wrap_key
from proto.messages import (
    PiecesReady,
    Register,
    Registered,
    TaskDone,
    TaskFailed,
    error_reply,
)
from proto.tickets import CDN_UPLOADER, issue_ticket
from proto.urls import display_url
from supernode.cdn.service import Cdn
from supernode.cdn.task import CdnTask, TaskSpec, TaskState
from supernode.errors import SupernodeError
from supernode.keys import raw_public

log = logging.getLogger(__name__)

DIGESTS_PER_FRAME = 1024


class ControlSession:
    def __init__(
        self,
        framed: FramedStream,
        *,
        peer_id: str,
        cdn: Cdn,
        ticket_key: Ed25519PrivateKey,
        ticket_ttl: float,
    ) -> None:
        self.framed = framed
        self.peer_id = peer_id
        self.cdn = cdn
        self.ticket_key = ticket_key
        self.ticket_ttl = ticket_ttl

    async def run(self, first: Register) -> None:
        """Serve the session until the peer closes it (ConnectionLost propagates)."""
        with unwrap_group():
            async with trio.open_nursery() as nursery:
                message = first
                while True:
                    await self._register(message, nursery=nursery)
                    frame = await self.framed.receive()
                    if not isinstance(frame.message, Register):
                        raise UnexpectedMessage(f"{frame.message.TAG} on a control session")
                    message = frame.message

    async def _register(self, message: Register, *, nursery: trio.Nursery) -> None:
        try:
            spec = TaskSpec.from_request(
                message.url,
                message.headers,
                digest=message.digest,
                tag=message.tag,
                filter_keys=message.filter,
            )
        except ValueError as exc:
            await self.framed.send(error_reply(ErrorCode.BAD_REQUEST, str(exc)))
            return
        try:
            task = await self.cdn.open_task(spec)
        except SupernodeError as exc:
            log.info("peer %s: %s refused: %s", self.peer_id[:12], display_url(spec.url), exc)
            await self.framed.send(error_reply(exc.code, str(exc), exc.status))
            return
        context = wrap_context(task.task_id, task.generation)
        try:
            wrapped = wrap_key(task.key, message.public_key, context)
        except BadPublicKey as exc:
            await self.framed.send(error_reply(ErrorCode.BAD_REQUEST, str(exc)))
            return
        ticket = issue_ticket(
            self.ticket_key,
            task_id=task.task_id,
            requester=self.peer_id,
            uploader=CDN_UPLOADER,
            expires=time.time() + self.ticket_ttl,
        )
        await self.framed.send(
            Registered(
                task_id=task.task_id,
                generation=task.generation,
                length=task.length,
                piece_size=task.piece_size,
                wrapped_key=wrapped,
                ticket_key=raw_public(self.ticket_key),
                cdn_ticket=ticket,
            )
        )
        log.info(
            "peer %s registered task %s (generation %d, %s)",
            self.peer_id[:12],
            task.task_id[:16],
            task.generation,
            task.state,
        )
        nursery.start_soon(self._push_progress, task)

    async def _push_progress(self, task: CdnTask) -> None:
        sent = 0
        while True:
            while sent < task.ready:
                batch = task.digests[sent : sent + DIGESTS_PER_FRAME]
                await self.framed.send(
                    PiecesReady(
                        task_id=task.task_id,
                        generation=task.generation,
                        start=sent,
                        digests=tuple(batch),
                    )
                )
                sent += len(batch)
            if task.state is TaskState.DONE:
                assert task.length is not None and task.piece_count is not None
                await self.framed.send(
                    TaskDone(
                        task_id=task.task_id,
                        generation=task.generation,
                        length=task.length,
                        piece_count=task.piece_count,
                    )
                )
                return
            if task.state is TaskState.FAILED:
                error = task.error or SupernodeError("task failed")
                await self.framed.send(
                    TaskFailed(
                        task_id=task.task_id,
                        code=str(error.code),
                        message=str(error)[:4096],
                        status=error.status,
                    )
                )
                return
            await task.wait_changed()
