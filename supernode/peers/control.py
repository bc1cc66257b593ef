"""The control session of one peer: admission, Register → Registered, then the swarm.

After `Registered`, the session pushes `PiecesReady` as pieces land on the CDN and ends
the task with `TaskDone` or `TaskFailed`. Meanwhile the peer asks for piece tasks (the
scheduler's decisions, with tickets; one request a task at a time) and reports each
transfer's result, or claims pieces it holds already (`PiecesHeld`, once a task). A
peer may register several tasks on one session (a daemon's downloads share one,
`dfget.sessions`) and leave one of them (`Leave`, protocol version 2: its pieces leave
that task's swarm, the session goes on); when the session ends, the peer leaves every
task at once. A peer that sends nothing for `idle_timeout` (dfget sends a
`KeepAlive` every 30 s) is closed, and so is one refused admission (`forbidden`): the
refusal is its last frame. A `Probe` (version 3) is answered with a `KeepAlive`, two a
second at most: a peer sharing the session learns that this loop still answers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from collections.abc import Iterator

import trio
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from common.io import release_place, unwrap_group
from common.urls import display_url
from proto.errors import ErrorCode, UnexpectedMessage
from proto.io import FramedStream
from proto.keywrap import BadPublicKey, wrap_context, wrap_key
from proto.messages import (
    FOLLOW_UPS,
    MAX_VALIDATOR,
    SHARED_SESSIONS,
    TASKS_WITH_REGISTER,
    KeepAlive,
    Leave,
    Message,
    PieceFollowUp,
    PieceFollowUpRequest,
    PieceResult,
    PiecesHeld,
    PiecesReady,
    PieceTask,
    PieceTasks,
    PieceTasksRequest,
    Probe,
    Register,
    Registered,
    TaskDone,
    TaskFailed,
    error_reply,
)
from proto.requestseal import BadSeal, open_secrets
from proto.tickets import CDN_UPLOADER
from supernode.cdn.service import Cdn
from supernode.cdn.task import CdnTask, TaskSpec, TaskState
from supernode.errors import SupernodeError, TaskSuperseded
from supernode.keys import raw_public
from supernode.peers.swarm import PeerIdInUse, PeerRecord, Swarm

log = logging.getLogger(__name__)

DIGESTS_PER_FRAME = 1024
# Tasks one control session may register. dfget registers one; each costs the session a
# task that pushes its progress, so a peer must not register the same task twice, or
# thousands of them, on one connection.
MAX_TASKS_PER_SESSION = 1024
LONG_POLL = 1.0  # seconds a piece-task request with no answer yet waits for news
# Registers of one session answered at once (each may wait for its origin's first
# answer); past this the session reads nothing more until one is answered, so a peer
# that sends Registers and never reads their answers holds this many, not thousands.
REGISTERS_AT_ONCE = 8
# A Probe is answered at most once in this many seconds (a peer that probes more often
# gets nothing for the rest: a stranger cannot have the session send a frame for each
# of its own). It must stay below dfget.sessions.PROBE_AFTER (1 s), the least time
# between two Probes of a daemon, or an answer could be skipped.
PROBE_ANSWER_EVERY = 0.5


class ControlSession:
    def __init__(
        self,
        framed: FramedStream,
        *,
        peer_id: str,
        peer_host: str,
        challenge: bytes,
        key: X25519PrivateKey | None = None,
        cdn: Cdn,
        swarm: Swarm,
        idle_timeout: float = math.inf,
    ) -> None:
        self.framed = framed
        self.idle_timeout = idle_timeout
        self.peer_id = peer_id
        self.peer_host = peer_host  # where the peer's upload port is, as we see it
        self.challenge = challenge
        self.key = key  # the connection's, named in our Welcome: Registers sealed for it
        self.cdn = cdn
        self.swarm = swarm
        self.tasks: dict[str, CdnTask] = {}
        self.record: PeerRecord | None = None
        # Tasks with a piece-task request being answered (by a token of that request):
        # a peer waits for the answer before it asks again, so each request costs the
        # supernode one task at most.
        self._asking: dict[str, object] = {}
        self._claimed: set[tuple[str, int]] = set()  # (task, generation) claimed once
        # What waits for news of a task (its progress pushes, its piece-task requests),
        # cancelled when the peer leaves it.
        self._waits: dict[str, set[trio.CancelScope]] = {}
        # A token of each task's registration here: what was started for one (its
        # progress pusher, a piece-task request) and outlives a Leave (a send in
        # progress, a decision made) stops instead of answering for the next one.
        self._registrations: dict[str, object] = {}
        self._opening: set[str] = set()  # tasks whose Register is being answered
        self._registers = trio.Semaphore(REGISTERS_AT_ONCE)
        self._probe_answered = -math.inf

    async def run(self, first: Register) -> None:
        """Serve the session until the peer closes it (ConnectionLost propagates), stays
        silent too long (TooSlowError) or is refused admission (then it returns)."""
        try:
            with unwrap_group():
                async with trio.open_nursery() as nursery:
                    message: Message = first
                    behind: Message | None = None  # read already, right behind `message`
                    while True:
                        if isinstance(message, Register):
                            if not await self._register(message, nursery=nursery):
                                nursery.cancel_scope.cancel()
                                break
                        elif isinstance(message, KeepAlive):
                            pass  # it reset the idle deadline, nothing more
                        elif isinstance(message, Probe):
                            await self._answer_probe()
                        elif isinstance(message, PieceTasksRequest):
                            if message.task_id in self._asking:
                                raise UnexpectedMessage(
                                    f"a second piece-task request for task "
                                    f"{message.task_id[:16]} while one is pending"
                                )
                            # Answered from its own task: it may wait for news while
                            # this loop goes on taking the peer's results.
                            token = self._asking[message.task_id] = object()
                            nursery.start_soon(self._piece_tasks, message, token)
                        elif isinstance(message, PieceResult):
                            behind = self._piece_result(message, nursery=nursery)
                        elif isinstance(message, PieceFollowUpRequest):
                            await self._follow_up(message)
                        elif isinstance(message, PiecesHeld):
                            self._pieces_held(message)
                        elif isinstance(message, Leave):
                            self._leave(message.task_id)
                        else:
                            raise UnexpectedMessage(f"{message.TAG} on a control session")
                        if behind is not None:
                            message, behind = behind, None
                            continue
                        with trio.fail_after(self.idle_timeout):
                            message = (await self.framed.receive()).message
            await self.framed.linger_close()  # refused: the forbidden reply was the last word
        finally:
            if self.record is not None:
                self.swarm.leave(self.peer_id, trio.current_time(), owner=self)

    async def _answer_probe(self) -> None:
        """A KeepAlive for a Probe (protocol version 3): this loop still reads and
        answers; at most one every PROBE_ANSWER_EVERY."""
        now = trio.current_time()
        if now - self._probe_answered >= PROBE_ANSWER_EVERY:
            self._probe_answered = now
            await self.framed.send(KeepAlive())

    async def _register(self, message: Register, *, nursery: trio.Nursery) -> bool:
        """Take one Register: what can be checked at once is (False when the peer is
        refused admission, `forbidden`: the session must end); the rest, which may wait
        for the origin's first answer, goes on in a task of its own (`_open`), so that a
        slow origin does not hold up the other tasks of the session."""
        if not self.swarm.admits(
            self.challenge, self.peer_id, message.public_key, message.token_proof
        ):
            log.warning(
                "peer %s at %s: not admitted (cluster token)", self.peer_id[:40], self.peer_host
            )
            await self.framed.send(
                error_reply(ErrorCode.FORBIDDEN, "not admitted: missing or wrong cluster token")
            )
            return False
        try:
            record = self.swarm.join(
                self.peer_id, self.peer_host, message.upload_port, message.upload_slots, self
            )
        except PeerIdInUse as exc:
            await self.framed.send(error_reply(ErrorCode.FORBIDDEN, str(exc)))
            return False
        # Joined: the session leaves the swarm when it ends, whatever this Register
        # becomes (else a refused Register would hold its peer id forever).
        self.record = record
        try:
            if message.sealed:
                message = self._unseal(message)
            spec = TaskSpec.from_request(
                message.url,
                message.headers,
                digest=message.digest,
                tag=message.tag,
                filter_keys=message.filter,
                s3=message.s3,
            )
        except ValueError as exc:
            await self.framed.send(error_reply(ErrorCode.BAD_REQUEST, str(exc)))
            return True
        if spec.task_id in self.tasks or spec.task_id in self._opening:
            raise UnexpectedMessage(f"a second Register of task {spec.task_id[:16]} on a session")
        if len(self.tasks) + len(self._opening) >= MAX_TASKS_PER_SESSION:
            raise UnexpectedMessage(f"more than {MAX_TASKS_PER_SESSION} tasks on one session")
        await self._registers.acquire()  # (released once its answer is sent)
        self._opening.add(spec.task_id)
        nursery.start_soon(self._open, message, record, spec, nursery)
        return True

    def _unseal(self, message: Register) -> Register:
        """The Register with its sealed headers and S3 credentials in place (ValueError
        when they do not open for this connection's key, or break a Register's rules)."""
        if self.key is None:
            raise ValueError("a sealed Register on a session that named no key")
        try:
            headers, s3 = open_secrets(
                self.key, message.public_key, self.challenge, message.url, message.sealed
            )
        except BadSeal as exc:
            raise ValueError(str(exc)) from None
        message = dataclasses.replace(message, headers=headers, s3=s3, sealed=b"")
        message.check()  # (an S3 object's URL on its endpoint, as for one in the clear)
        return message

    async def _open(
        self, message: Register, record: PeerRecord, spec: TaskSpec, nursery: trio.Nursery
    ) -> None:
        """The rest of a Register: open the task (the origin's first answer, for a new
        one) and answer Registered, or the error. It counts against the session's
        tasks and its Registers at once until its answer is sent."""
        try:
            await self._open_and_answer(message, record, spec, nursery)
        finally:
            self._opening.discard(spec.task_id)
            self._registers.release()

    async def _open_and_answer(
        self, message: Register, record: PeerRecord, spec: TaskSpec, nursery: trio.Nursery
    ) -> None:
        try:
            task = await self.cdn.open_task(spec)
        except SupernodeError as exc:
            log.info("peer %s: %s refused: %s", self.peer_id[:12], display_url(spec.url), exc)
            await self.framed.send(self._refusal(spec, exc.code, str(exc), exc.status))
            return
        context = wrap_context(task.task_id, task.generation)
        try:
            wrapped = wrap_key(task.key, message.public_key, context)
        except BadPublicKey as exc:
            await self.framed.send(self._refusal(spec, ErrorCode.BAD_REQUEST, str(exc)))
            return
        try:
            self.swarm.enter(
                record, task, trio.current_time(), in_order=message.in_order, leaves=message.leaves
            )
        except TaskSuperseded as exc:  # the peer registers again, the newer one then
            await self.framed.send(self._refusal(spec, exc.code, str(exc)))
            return
        self.tasks[task.task_id] = task
        registered = Registered(
            task_id=task.task_id,
            generation=task.generation,
            length=task.length,
            piece_size=task.piece_size,
            wrapped_key=wrapped,
            ticket_key=raw_public(self.swarm.ticket_key),
            cdn_ticket=self.swarm.ticket(task.task_id, self.peer_id, CDN_UPLOADER),
        )
        # Registered before the answer goes: the peer asks for piece tasks the moment it
        # has it, and a request handled while this send still yields (a busy session)
        # took the task for one not yet registered and dropped its answer, for good.
        token = self._registrations[task.task_id] = object()
        # What the task has already goes in the same write (a stored small file's
        # digests and end: one write and one wake-up on each side, not three), and the
        # piece tasks its Register asked for, if the scheduler has some now.
        news, sent = self._news(task, 0)
        tasks, held = self._first_tasks(message, task)
        await self.framed.send_together([registered, *news, *tasks])
        log.info(
            "peer %s (%s:%d) registered task %s (generation %d, %s)",
            self.peer_id[:40],
            self.peer_host,
            message.upload_port,
            task.task_id[:16],
            task.generation,
            task.state,
        )
        if sent is not None:
            nursery.start_soon(self._push_progress, task, token, sent)
        asking = self._asking.get(task.task_id)
        if (
            held is not None
            and asking is not None
            and self._registrations.get(task.task_id) is token
        ):
            # Its own task (this one holds one of the session's Registers); not if the peer
            # left the task while the answer went (a Leave took the request with it).
            nursery.start_soon(self._piece_tasks, held, asking)
        if self.swarm.token is not None:
            # Admitted with the cluster token and registered: out of the connection
            # caps, which bound strangers (a dfdaemon of protocol version 1 holds a
            # session for each blob it seeds, hundreds from one host). In an open
            # cluster nobody proved anything: every session stays counted.
            release_place()

    def _first_tasks(
        self, message: Register, task: CdnTask
    ) -> tuple[list[PieceTasks], PieceTasksRequest | None]:
        """A Register's `want` (version 5): the piece tasks to send with its answer, or
        none and the request to hold for news, as if the peer had sent it (it counts as
        the task's pending request: `_asking`)."""
        if not message.want or (self.framed.session.version or 1) < TASKS_WITH_REGISTER:
            return [], None
        now = trio.current_time()
        tasks = self.swarm.piece_tasks(task, self.peer_id, message.want, now)
        if tasks:
            return [PieceTasks(task_id=task.task_id, generation=task.generation, tasks=tasks)], None
        self._asking[task.task_id] = object()
        return [], PieceTasksRequest(
            task_id=task.task_id, generation=task.generation, want=message.want
        )

    def _current(self, task_id: str, generation: int) -> CdnTask | None:
        task = self.tasks.get(task_id)
        if task is None or task.generation != generation or task.superseded:
            return None
        return task

    def _refusal(
        self, spec: TaskSpec, code: ErrorCode, message: str, status: int | None = None
    ) -> Message:
        """A refused Register's answer: on a session of version 2 (many tasks) a
        TaskFailed that names its task, where an ErrorReply could also be the end of the
        session; on version 1, the ErrorReply its peer expects."""
        if (self.framed.session.version or 1) >= SHARED_SESSIONS:
            return TaskFailed(
                task_id=spec.task_id, code=str(code), message=message[:4096], status=status
            )
        return error_reply(code, message, status)

    def _leave(self, task_id: str) -> None:
        """The peer leaves one task and stays on the session: the task's pieces leave
        the swarm, what waits for its news stops (no answer goes to a task left)."""
        task = self.tasks.pop(task_id, None)
        if task is None:  # (never registered here, refused, or left already)
            return
        self.swarm.leave_task(self.peer_id, task_id, trio.current_time())
        for scope in self._waits.pop(task_id, set()):
            scope.cancel()
        self._asking.pop(task_id, None)
        self._registrations.pop(task_id, None)
        self._claimed = {claim for claim in self._claimed if claim[0] != task_id}
        log.info("peer %s left task %s", self.peer_id[:40], task_id[:16])

    @contextlib.contextmanager
    def _until_left(self, task_id: str) -> Iterator[trio.CancelScope]:
        """A scope around a wait for news of `task_id`, cancelled if the peer leaves it."""
        scope = trio.CancelScope()
        waits = self._waits.setdefault(task_id, set())
        waits.add(scope)
        try:
            with scope:
                yield scope
        finally:
            waits.discard(scope)
            if not waits and self._waits.get(task_id) is waits:
                del self._waits[task_id]

    async def _piece_tasks(
        self,
        message: PieceTasksRequest,
        token: object,
        first: tuple[PieceTask, ...] | None = None,
    ) -> None:
        registration = self._registrations.get(message.task_id)
        answer: PieceTasks | TaskFailed | None = None
        try:
            with self._until_left(message.task_id):
                answer = await self._decide(message, first)
        finally:
            # Before the answer goes: the peer may ask again the moment it has it.
            if self._asking.get(message.task_id) is token:
                del self._asking[message.task_id]
        if answer is None or self._registrations.get(message.task_id) is not registration:
            return  # the peer left the task meanwhile (its flights landed with it)
        await self.framed.send(answer)

    async def _decide(
        self, message: PieceTasksRequest, first: tuple[PieceTask, ...] | None
    ) -> PieceTasks | TaskFailed:
        """The answer to a request; `first`: the scheduler's first answer to it, if
        already decided (with the result in front of it). A task not current here
        fails (TaskFailed names it: on a session of many tasks an ErrorReply would
        not say which)."""
        task = self._current(message.task_id, message.generation)
        if task is None:
            return _stale(message.task_id)
        deadline = trio.current_time() + LONG_POLL
        relay = 0  # held requests this one passes its news on to if it cannot use it
        while True:
            if self.tasks.get(task.task_id) is not task or not self.swarm.current(task):
                # The peer left it while the request waited, or a newer generation took
                # its place in the swarm (the content changed): the peer starts over.
                return _stale(task.task_id)
            if first is not None:
                tasks, first = first, None
            else:
                now = trio.current_time()
                tasks = self.swarm.piece_tasks(task, self.peer_id, message.want, now)
            if not tasks and relay:
                self.swarm.pass_on(task.task_id, relay)
            relay = 0
            if tasks or trio.current_time() >= deadline or task.superseded:
                break
            # Nothing to fetch now: answer at the first news (a transfer reported, a peer
            # joined or left, a piece landed on the CDN) instead of making the peer poll;
            # if it brings nothing for this request, it is passed on (`relay`).
            with trio.move_on_at(deadline):
                relay = await self.swarm.wait_news(task.task_id)
        return PieceTasks(task_id=task.task_id, generation=task.generation, tasks=tasks)

    async def _follow_up(self, message: PieceFollowUpRequest) -> None:
        """The next piece from the same peer behind a transfer about to end (version
        6): decided at once, answered only when there is one (a request of a session
        older than that version is a broken protocol)."""
        if (self.framed.session.version or 1) < FOLLOW_UPS:
            raise UnexpectedMessage(f"{message.TAG} before protocol version {FOLLOW_UPS}")
        task = self._current(message.task_id, message.generation)
        if task is None:
            return
        now = trio.current_time()
        tasks = self.swarm.follow_up(task, self.peer_id, message.index, message.source, now)
        if tasks:
            await self.framed.send(
                PieceFollowUp(
                    task_id=task.task_id,
                    generation=task.generation,
                    index=message.index,
                    tasks=tasks,
                )
            )

    def _piece_result(self, message: PieceResult, *, nursery: trio.Nursery) -> Message | None:
        """Report the result; the message read right behind it, if any, for the loop.

        A piece-task request of the same task right behind it (dfget asks again as soon
        as a transfer ends) is decided with the report, in one scheduler call: in a busy
        swarm that is most requests, and each costs the scheduler a lookup and a tick
        less (`Swarm.report_and_piece_tasks`). Not while requests of the task are held
        for news: the slot the result frees goes to them first, as it would if the
        request came alone (decided with the result, it would go to this peer first,
        and the swarm's median finishes later: 84 -> 90 s at 1,000 simulated peers)."""
        task = self._current(message.task_id, message.generation)
        frame = self.framed.buffered()
        behind = frame.message if frame is not None else None
        if task is None:
            return behind
        if (
            isinstance(behind, PieceTasksRequest)
            and behind.task_id == message.task_id
            and behind.generation == message.generation
            and behind.task_id not in self._asking  # (else the loop refuses it)
            and not self.swarm.held(behind.task_id)  # (held requests take the slot first)
        ):
            now = trio.current_time()
            first = self.swarm.report_and_piece_tasks(task, self.peer_id, message, behind.want, now)
            token = self._asking[behind.task_id] = object()
            nursery.start_soon(self._piece_tasks, behind, token, first)
            return None
        self.swarm.report(self.peer_id, message, trio.current_time())
        return behind

    def _pieces_held(self, message: PiecesHeld) -> None:
        """The peer claims pieces it checked on its disk (only those on the CDN count:
        it cannot have checked others); once per task generation and session."""
        key = (message.task_id, message.generation)
        if key in self._claimed:
            raise UnexpectedMessage(f"a second PiecesHeld for task {message.task_id[:16]}")
        task = self._current(message.task_id, message.generation)
        if task is None:
            return
        self._claimed.add(key)
        if not self.swarm.current(task):
            return  # (a generation the swarm left)
        indexes = [i for i in message.indexes() if i < task.ready]
        self.swarm.claim(self.peer_id, task.task_id, indexes, trio.current_time())

    async def _push_progress(self, task: CdnTask, token: object, sent: int) -> None:
        """The task's news from digest `sent` on, as it comes, until its end (or the
        peer leaves it)."""
        while self._registrations.get(task.task_id) is token:  # (until the peer leaves it)
            news, after = self._news(task, sent)
            if news:
                await self.framed.send_together(news)
            if after is None:
                return
            if after == sent:
                with self._until_left(task.task_id):
                    await task.wait_changed()
            sent = after

    @staticmethod
    def _news(task: CdnTask, sent: int) -> tuple[list[Message], int | None]:
        """What a peer that has the task's first `sent` digests is to hear now: the next
        digests (one frame's worth), then the end once it has them all (TaskDone, or
        TaskFailed); and how many digests it then has, None once the end is told."""
        if sent < task.ready:
            batch = task.digests[sent : sent + DIGESTS_PER_FRAME]
            news: list[Message] = [
                PiecesReady(
                    task_id=task.task_id,
                    generation=task.generation,
                    start=sent,
                    digests=tuple(batch),
                )
            ]
            sent += len(batch)
            if sent < task.ready:
                return news, sent
        else:
            news = []
        if task.state is TaskState.DONE:
            assert task.length is not None and task.piece_count is not None
            done = TaskDone(
                task_id=task.task_id,
                generation=task.generation,
                length=task.length,
                piece_count=task.piece_count,
                etag=_sendable(task.validators.etag),
                last_modified=_sendable(task.validators.last_modified),
            )
            return [*news, done], None
        if task.state is TaskState.FAILED:
            error = task.error or SupernodeError("task failed")
            failed = TaskFailed(
                task_id=task.task_id,
                code=str(error.code),
                message=str(error)[:4096],
                status=error.status,
            )
            return [*news, failed], None
        return news, sent


def _sendable(validator: str | None) -> str:
    """An origin's validator as TaskDone carries it: "" (none) for one longer than the
    wire takes (an origin may send an ETag of up to 64 KiB; refused by the encoder, it
    ended the peer's whole control session)."""
    return validator if validator and len(validator) <= MAX_VALIDATOR else ""


def _stale(task_id: str) -> TaskFailed:
    """The answer to a piece-task request for a task not current on the session."""
    return TaskFailed(
        task_id=task_id,
        code=str(ErrorCode.STALE),
        message="that task generation is not current here",
    )
