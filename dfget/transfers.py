"""The piece transfers of one attempt (`dfget.peer.Attempt`).

Whenever fewer than IN_FLIGHT transfers run, ask the supernode's scheduler for piece
tasks; for each, fetch the sealed piece from its source (a peer, or the CDN), open and
check it and write it (`common.io.piecework`: in a worker thread, or on the event loop
while the machine's CPUs are all busy), and report the outcome on the control session,
so the scheduler learns who holds what and who fails. How a failed transfer ends is
decided by `dfget.outcomes.transfer_end`; the first copy of a piece to land cancels the
others (endgame). Shortly before a piece from a peer is in, the transfer asks for its
follow-up, the next piece from that peer, which goes on the same connection behind it
(protocol version 6: `followed`), so that neither end's slot waits for the report and
the next task.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from functools import partial

import trio

from common.io import RateLimiter, piecework, threads
from dfget.connect import ControlStream
from dfget.errors import SupernodeUnavailable
from dfget.outcomes import TRANSFER_ERRORS, transfer_end
from dfget.pieces import PieceBook
from dfget.progress import Progress
from dfget.sources import PieceConnections, PiecePool
from dfget.writer import PieceWriter
from proto.errors import ProtoError
from proto.messages import (
    FOLLOW_UPS,
    Outcome,
    PieceFollowUp,
    PieceFollowUpRequest,
    PieceRequest,
    PieceResult,
    PieceTask,
    PieceTasks,
    PieceTasksRequest,
)
from proto.pieces import TAG_SIZE
from proto.tickets import CDN_UPLOADER

# The peer's messages keep one logger name, whichever module logs them (dfdaemon's log
# lines show it).
log = logging.getLogger("dfget.peer")

IN_FLIGHT = 8  # pieces transferring at once
PIECE_TIMEOUT = 60.0
MIN_PIECE_RATE = 256 * 1024  # bytes/s below which a piece transfer counts as stalled
TASKS_TIMEOUT = 120.0  # for the answer to a piece-task request (as for Register)
NOTHING_YET_PAUSE = 0.01  # after an empty answer to a piece-task request
# Every missing piece in flight: a second source for them (the endgame) is asked for
# only after this long since the last transfer started (most land before: a small
# file's one piece from the CDN in a few milliseconds, and asking costs two frames and
# a scheduler pass).
ENDGAME_AFTER = 0.05
REPORT_WITHIN = 5.0  # seconds a piece's report may take to go
# A transfer from a peer asks for its follow-up (the next piece from that peer, requested
# on the same connection behind it: protocol version 6) this long before it should end,
# by what the last piece from that peer took, counted from when its own piece begins to
# come: about two of the supernode's round trips through loaded links. The first piece
# from a peer asks as it begins to come.
FOLLOW_UP_LEAD = 0.15
ASKS_KEPT = 4 * IN_FLIGHT  # follow-ups asked for and remembered until answered
# `DF_FOLLOW_UPS=0` in the environment: none asked for (to measure what they buy).
FOLLOW_UPS_ON = os.environ.get("DF_FOLLOW_UPS", "1") != "0"


class Transfers:
    """The transfers of one task on the control session `control` to supernode
    `address`; piece-task answers arrive on `answers` (the session's reader hands them
    over)."""

    def __init__(
        self,
        control: ControlStream,
        book: PieceBook,
        writer: PieceWriter,
        *,
        answers: trio.MemoryReceiveChannel[PieceTasks],
        address: str,
        peer_id: str,
        limiter: RateLimiter,
        progress: Progress | None,
        pool: PiecePool | None = None,
        asked: bool = False,
        follow_ups: bool = True,
    ) -> None:
        self.control = control
        # The first request went with the Register (version 5): its answer comes as a
        # request's would, and no request is sent before it.
        self._asked = asked
        self.book = book
        self.writer = writer
        self.answers = answers
        self.address = address
        self.limiter = limiter
        self.progress = progress
        # Piece connections take one sealed piece of this task at most (a daemon's
        # downloads pass theirs on to each other: `pool`).
        self.connections = PieceConnections(peer_id=peer_id, piece_size=book.piece_size, pool=pool)
        self._running: dict[int, list[trio.CancelScope]] = {}
        self._last_start = -math.inf  # when the latest transfer started
        self._scratch: list[bytearray] = []
        welcome = control.welcome
        self.follow_ups = (
            follow_ups and FOLLOW_UPS_ON and welcome is not None and welcome.version >= FOLLOW_UPS
        )
        # Where follow-ups start (transfers, readers), while `run` runs.
        self._nurseries: tuple[trio.Nursery, trio.Nursery] | None = None
        # By source address, what its last piece took from when it began to come (its
        # request, or the answer ahead of it on the connection read) to when it was in.
        self._took: dict[str, float] = {}
        # The follow-ups asked for and not answered, (piece ahead) -> its source: only
        # those are started (the latest ASKS_KEPT: most asks get no answer).
        self._asks: dict[int, str] = {}

    async def run(self, *, readers: trio.Nursery) -> None:
        """Ask for piece tasks whenever there is room, start a transfer for each, until
        the book is complete (the readers of piece connections run in `readers`, which
        outlives transfers)."""
        async with trio.open_nursery() as transfers:
            self._nurseries = transfers, readers
            try:
                await self._run(transfers, readers)
            finally:
                self._nurseries = None
            transfers.cancel_scope.cancel()

    async def _run(self, transfers: trio.Nursery, readers: trio.Nursery) -> None:
        """`run`'s loop, in `transfers` (where follow-ups start too, while it runs)."""
        book = self.book
        while not book.complete:
            running = sum(len(scopes) for scopes in self._running.values())
            if running >= IN_FLIGHT:
                await book.wait_changed()
                continue
            endgame_in = self._endgame_in()
            if endgame_in > 0:
                with trio.move_on_after(endgame_in):
                    await book.wait_changed()
                continue
            if self._asked:
                self._asked = False
            else:
                request = PieceTasksRequest(
                    task_id=book.task_id, generation=book.generation, want=IN_FLIGHT - running
                )
                # Shielded: a frame cut short (the download completing meanwhile) would
                # break the session for every report still to come; a small frame's
                # send is bounded by the session's send timeout.
                await self.control.send(request, shield=True)
            with trio.move_on_after(TASKS_TIMEOUT) as waited:
                answer = await self.answers.receive()
            if waited.cancelled_caught:  # as if it were gone: the next one, or the origin
                raise SupernodeUnavailable(
                    f"supernode {self.address} did not answer a piece-task request "
                    f"in {TASKS_TIMEOUT:.0f}s"
                )
            if answer.tasks:
                self._last_start = trio.current_time()
            for task in answer.tasks:
                scope = trio.CancelScope()
                self._running.setdefault(task[0], []).append(scope)
                transfers.start_soon(partial(self._transfer, task, scope, readers=readers))
            if not answer.tasks:
                # Nothing to fetch yet: the supernode held the request until news or
                # its long-poll timeout. Ask again, after a breath.
                with trio.move_on_after(NOTHING_YET_PAUSE):
                    await book.wait_changed()

    def followed(self, answer: PieceFollowUp) -> bool:
        """Start the follow-up the supernode answered (its transfer sends its request
        on the connection of the one it follows, behind it); False if it is not wanted
        (not asked for, from another source than asked, the transfers are over, or it
        has the piece or a transfer of it): the caller reports it cancelled."""
        task = answer.tasks[0]
        index = task[0]
        if self._asks.pop(answer.index, None) != task[1]:
            return False  # (not asked for, or not from the source asked)
        if self._nurseries is None or self.book.holds(index) or index in self._running:
            return False
        transfers, readers = self._nurseries
        if transfers.cancel_scope.cancel_called:
            return False
        scope = trio.CancelScope()
        self._running.setdefault(index, []).append(scope)
        self._last_start = trio.current_time()
        transfers.start_soon(partial(self._transfer, task, scope, readers=readers))
        return True

    async def fetch_alone(self, task: PieceTask, *, readers: trio.Nursery) -> None:
        """The transfer of `task`, the answer to the Register's want, in the caller's
        own task (a one-piece file: `dfget.peer.Attempt._first_answer`); reported as
        any. If it fails and the download goes on, `run` asks for tasks anew."""
        self._asked = False  # (its answer is this one)
        scope = trio.CancelScope()
        self._running.setdefault(task[0], []).append(scope)
        self._last_start = trio.current_time()
        await self._transfer(task, scope, readers=readers, alone=True)

    def _endgame_in(self) -> float:
        """Seconds until a piece-task request may be made, if every missing piece is in
        flight (only a second source could be given); 0 if there is anything else to
        ask for (or the piece count is not known yet)."""
        book = self.book
        if book.piece_count is None:
            return 0.0
        missing = book.piece_count - len(book.written)
        if sum(1 for index in self._running if not book.holds(index)) < missing:
            return 0.0
        return max(0.0, self._last_start + ENDGAME_AFTER - trio.current_time())

    async def _transfer(
        self,
        task: PieceTask,
        scope: trio.CancelScope,
        *,
        readers: trio.Nursery,
        alone: bool = False,
    ) -> None:
        book = self.book
        index, source, _, _, _ = task
        kind = "cdn" if source == CDN_UPLOADER else "peers"
        began = trio.current_time()  # (until its piece begins to come)
        outcome, size = Outcome.CANCELLED, 0
        try:
            with scope:
                size, began = await self._fetch(task, readers=readers, alone=alone)
                outcome = Outcome.DONE
        except TRANSFER_ERRORS as exc:
            end = transfer_end(
                exc,
                from_cdn=source == CDN_UPLOADER,
                failures=book.failures_of(index),
                index=index,
                address=self.address,
            )
            outcome = end.outcome
            book.piece_failed(index, kind, outcome, counts_as_attempt=end.counts_as_attempt)
            if outcome is Outcome.CORRUPT:
                log.warning("%s (from %s)", exc, source[:40])
            elif outcome is Outcome.FAILED:
                log.debug("piece %d from %s: %s", index, source[:40], exc)
            if end.leave is not None:
                raise end.leave from exc
        finally:
            self._running[index].remove(scope)
            if not self._running[index]:
                del self._running[index]  # (its keys are the pieces in flight)
            if outcome is Outcome.DONE:  # endgame: the other copies of this piece lost the race
                for loser in self._running.get(index, []):
                    loser.cancel()
            # Always report, even when the whole download is being cancelled (it just
            # completed, or failed): the uploader's slot is free only once we say so.
            seconds = max(0.0, trio.current_time() - began)
            await report(self.control, book, index, source, outcome, size, seconds)

    async def _fetch(
        self, task: PieceTask, *, readers: trio.Nursery, alone: bool = False
    ) -> tuple[int, float]:
        """Fetch, verify and write one piece; its plaintext length (0 if already held)
        and when it began to come (its request, or the answer ahead of it on the
        connection read: a piece behind another is timed from when that one was in).
        `alone`: the download's only transfer, in its own task (`fetch_alone`): the piece
        that completes a durable output is stored and the file published in one worker
        thread (nothing else of the download runs that could fail meanwhile; on the
        general way a failing task, a failover or a fallback would find it published)."""
        book = self.book
        index, source, host, port, ticket = task
        while index >= len(book.digests):  # its PiecesReady is on its way
            await book.wait_changed()
        address = self.address if source == CDN_UPLOADER else f"{_bracket(host)}:{port}"
        await self.limiter.acquire(book.piece_size if book.length is None else book.size_of(index))
        timeout = max(PIECE_TIMEOUT, 2 * book.piece_size / MIN_PIECE_RATE)
        with trio.fail_after(timeout):
            connection = await self.connections.get(address, nursery=readers)
            soon = None
            if self.follow_ups and source != CDN_UPLOADER and not alone:
                # (from when the piece begins to come: a follow-up waits for the one ahead)
                after = max(0.0, self._took.get(address, 0.0) - FOLLOW_UP_LEAD)
                soon = after, partial(self._ask_follow_up, index, source)
            frame, began, arrived = await connection.fetch_timed(
                PieceRequest(
                    task_id=book.task_id, generation=book.generation, index=index, ticket=ticket
                ),
                soon=soon,
            )
        self._took[address] = arrived - began
        if book.holds(index):  # a faster copy won meanwhile
            connection.recycle(frame.payload)
            return 0, began
        scratch = self._scratch.pop() if self._scratch else bytearray(book.piece_size)
        # A piece's work on the event loop or in a worker thread (`common.io.piecework`);
        # in a thread, the piece that completes a file alone (with the file's fsyncs) and
        # any of a file hashed whole as it lands (a store may read back most of it).
        writer, args = self.writer, (index, frame.payload, book.digests[index], scratch)
        try:
            if alone and writer.output.durable and len(book.written) + 1 == book.piece_count:
                size: int = await threads.run_sync(writer.store_last_piece, *args)
            elif writer.hashes_whole:
                size = await threads.run_sync(writer.store_piece, *args)
            else:
                plain = len(frame.payload) - TAG_SIZE
                size = await piecework.piece_work.run(writer.store_piece, *args, size=plain)
        finally:
            self._scratch.append(scratch)  # plaintext buffers are reused, not reallocated
            connection.recycle(frame.payload)
        if book.holds(index):
            return 0, began
        book.piece_written(index, "cdn" if source == CDN_UPLOADER else "peers", size)
        if self.progress:
            self.progress(book.bytes_written, book.length)
        return size, began

    async def _ask_follow_up(self, index: int, source: str) -> None:
        """The transfer of `index` from peer `source` is about to end: ask for the next
        piece from it (answered, if at all, by a `PieceFollowUp`: `followed`)."""
        book = self.book
        if book.complete:
            return
        request = PieceFollowUpRequest(
            task_id=book.task_id, generation=book.generation, index=index, source=source
        )
        asks = self._asks
        asks[index] = source
        if len(asks) > ASKS_KEPT:
            del asks[next(iter(asks))]
        await _send_whole(self.control, request)  # (as a report)


async def report(
    control: ControlStream,
    book: PieceBook,
    index: int,
    source: str,
    outcome: Outcome,
    nbytes: int,
    seconds: float,
) -> None:
    """Send one PieceResult, even from a cancelled task (`_send_whole`)."""
    result = PieceResult(
        task_id=book.task_id,
        generation=book.generation,
        index=index,
        source=source,
        outcome=outcome.value,  # the wire carries the plain string
        nbytes=nbytes,
        seconds=seconds,
    )
    await _send_whole(control, result)


async def _send_whole(control: ControlStream, message: PieceResult | PieceFollowUpRequest) -> None:
    """Send `message` whole or not at all, even from a cancelled task, within
    REPORT_WITHIN; a broken session is left to the session's reader to notice (it raises
    there), not to the transfer that sends."""
    # (one scope, shielded from the download's cancellation and bounded on its own)
    deadline = trio.current_time() + REPORT_WITHIN
    with trio.CancelScope(shield=True, deadline=deadline), contextlib.suppress(ProtoError):
        await control.send(message)


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


__all__ = ["IN_FLIGHT", "Transfers", "report"]
