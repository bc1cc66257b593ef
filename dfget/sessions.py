"""Control sessions that a daemon's downloads share (protocol version 2).

A daemon seeds every file it holds, each a task of the swarm. With a control session a
task it held one connection to the supernode per file (hundreds from one host: past a
supernode's share of `--max-connections` for one address the next was refused), and
each new file paid a connect and a handshake on both sides. `Sessions` keeps, for each
supernode address, sessions of up to TASKS_PER_SESSION tasks, each under a peer id of
its own; a download takes a `TaskLine` on one (`Sessions.line`): the session as its
task sees it, in place of a connection of its own (`dfget.peer.Attempt`).

- What a line sends goes straight onto the session (frames queue behind each other).
- The session's reader routes what the supernode sends to the line of the task it
  names; news of a task no line holds (one just left) is dropped.
- One Register is in flight on a session at a time: an ErrorReply names no task, so it
  answers that one (version 2 answers a refused Register with a TaskFailed naming its
  task; an answer settles as it arrives, read or not). A new line goes to a session
  where every line has its answer (a Register may wait for the origin's first answer
  to a new file); downloads that start together open sessions of their own, up to
  SESSIONS_PER_SUPERNODE, which later downloads share. Past that (a daemon announcing
  its whole cache at start), a line takes the session with the fewest lines and its
  Register waits its turn there.
- A line that ends has `Leave` sent for its task (by the session's own task, in order)
  and the session goes on; one that ends with its Register unanswered leaves once the
  answer is in. A session never takes a task it left again: a new download of it goes
  to another session, under another peer id, as it always did (a second Register of a
  task on one session would end it, and the peer id's standing in the task, a
  blacklisting there, would outlive the download that earned it). A session whose last
  line ended closes, unless its `Sessions` keeps idle ones (`dfget -r`'s files, which
  come one after another and do not seed: `dfget.tree.sharing`).
- A line's frames go out shielded from its download's cancellation: a frame cut short
  would break the session for every task on it.
- The session breaking (the supernode gone, a protocol violation, an ErrorReply that
  answers nothing, a frame that could not go, a Register unanswered for ANSWER_TIMEOUT)
  ends every line: each line's next receive raises what broke it, as its own
  connection would have, and a Register waiting its turn raises it too.
- From version 3 a Register that hears nothing for a while probes the supernode; a
  Probe unanswered fails that Register and those waiting their turn, and the session
  retires: it takes no new task, and its other lines go on (`_Session.retire`).
- Sessions are kept by upload address as well (a session is one peer of the swarm): a
  download that uploads nothing registers on sessions of its own.
- A supernode that speaks only version 1 cannot take a Leave: each line gets a
  connection of its own there, as before.
"""

from __future__ import annotations

import contextlib
import logging
import math
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from common.frameless import frameless
from dfget.connect import SUPERNODE_TIMEOUT, connect_stream, translate_errors
from dfget.engine import new_peer_id
from dfget.peer import REGISTER_TIMEOUT, keep_alive
from proto.errors import ConnectionLost, LocalProtoError, ProtoError, UnexpectedMessage
from proto.frames import Frame
from proto.io import FramedStream
from proto.io.eager import RUN_ON
from proto.messages import (
    ANSWERED_PROBES,
    SHARED_SESSIONS,
    ErrorReply,
    KeepAlive,
    Leave,
    Message,
    PieceFollowUp,
    PiecesReady,
    PieceTasks,
    Probe,
    Register,
    Registered,
    TaskDone,
    TaskFailed,
    Welcome,
)

# Tasks a session carries at most (a supernode takes up to 1024 on one: past this the
# next session opens).
TASKS_PER_SESSION = 512
# Sessions opened to one supernode so that Registers need not wait behind each other;
# past this many, a Register waits for its session's turn (more open only when these
# are full).
SESSIONS_PER_SUPERNODE = 8
# Frames waiting in one line's inbox: a task's news is small and taken as it comes (the
# progress of its pieces, one answer a request); past this the supernode floods.
INBOX_LIMIT = 1024
# A session whose Register has had no answer this long ends (its supernode hangs): the
# downloads on it fail over, and those waiting for their turn too. A connection of its
# own had a download find a frozen supernode at its handshake (SUPERNODE_TIMEOUT); one
# that shares a session learns it here, or from TCP: a supernode gone from the network
# ends the session within about KEEPALIVE_AFTER + 3 x KEEPALIVE_EVERY (keepalive probes
# and TCP_USER_TIMEOUT on the session's socket).
ANSWER_TIMEOUT = REGISTER_TIMEOUT
# Sooner, from version 3: a Register that has heard nothing from the supernode for
# PROBE_AFTER sends a Probe, and a Probe unanswered for PROBE_TIMEOUT fails that
# Register and retires the session (a Register may rightly wait for the origin's first
# answer; a Probe is answered by the session's own loop at once). A new download
# leaves a frozen supernode within about PROBE_AFTER + PROBE_TIMEOUT + 2 x WATCH_EVERY
# of its Register, not ANSWER_TIMEOUT. The supernode answers one Probe in
# PROBE_ANSWER_EVERY (0.5 s, supernode/peers/control.py) at most: PROBE_AFTER must stay
# above it, or an answer could be skipped and the session retired for nothing.
PROBE_AFTER = SUPERNODE_TIMEOUT
PROBE_TIMEOUT = 5.0
# Tasks a session may leave: it remembers each (never to take it again), and past this
# many takes no new task (it closes once its last one ends).
LEFT_KEPT = 4096
WATCH_EVERY = 0.5
KEEPALIVE_AFTER = 15
KEEPALIVE_EVERY = 5
Key = tuple[str, tuple[int, int]]  # a supernode's address; the upload port and slots
log = logging.getLogger(__name__)
ANSWERS = (Registered, ErrorReply, TaskFailed)  # what may answer a Register
_ROUTED = (Registered, PiecesReady, TaskDone, TaskFailed, PieceTasks, PieceFollowUp)


class _Session:
    """One connection to a supernode, carrying the tasks of its lines."""

    def __init__(
        self, key: Key, peer_id: str, framed: FramedStream, *, keep_idle: bool = False
    ) -> None:
        self.key = key
        self.peer_id = peer_id
        self.framed = framed
        welcome = framed.welcome
        self.shared = welcome is not None and welcome.version >= SHARED_SESSIONS
        # Kept open when its last line ends (until the Sessions' nursery ends), for the
        # next download: `dfget -r`'s files, which do not seed, come one after another.
        self.keep_idle = keep_idle and self.shared
        self.probes = welcome is not None and welcome.version >= ANSWERED_PROBES
        self.heard_at = trio.current_time()  # the supernode's last frame
        self.probed_at = -math.inf  # the last Probe sent
        self.lines: dict[str, TaskLine] = {}
        self.unregistered: set[TaskLine] = set()  # its lines without their Registered
        self.registering = trio.Semaphore(1)  # one Register in flight
        self.registrant: TaskLine | None = None
        # Tasks it left or is leaving (a Leave queued, or due once a Register is
        # answered): a new download of one goes to another session, under another peer
        # id, as it always did (a second Register of a task on a session would end it,
        # and a peer id's standing in a task, a blacklisting there, would outlive the
        # download that earned it).
        self.left: set[str] = set()
        self.leaves_in, self._leaves = trio.open_memory_channel[str](math.inf)
        self.broken: ProtoError | None = None  # why it ended (then every line ends)
        # Why it takes no new task (its supernode left a Probe unanswered: `retire`).
        self.retired: ProtoError | None = None
        self.turns: set[trio.CancelScope] = set()  # Registers waiting for their turn
        self._probing = False  # a Probe being sent
        self.ended = trio.Event()

    def spent(self) -> bool:
        """Whether it can take no new task ever again (it left LEFT_KEPT of them)."""
        return len(self.left) >= LEFT_KEPT

    def kept_idle(self) -> bool:
        """Whether it stays open without tasks: kept idle, and able to take more once
        the task ending now is left (else it ends, not holding a connection for none)."""
        return self.keep_idle and self.retired is None and len(self.left) + 1 < LEFT_KEPT

    def takes(self, task_id: str) -> bool:
        """Whether a line for `task_id` may go on this session (its Register may wait)."""
        return (
            self.shared
            and self.broken is None
            and self.retired is None
            and task_id not in self.lines
            and task_id not in self.left
            and len(self.lines) < TASKS_PER_SESSION
            and len(self.left) < LEFT_KEPT
        )

    def answered(self) -> bool:
        """No Register in flight, none to come from a line on it: a new line's goes at once."""
        return self.registrant is None and not self.unregistered

    def leave(self, task_id: str) -> None:
        """Have a Leave of `task_id` sent (by `_send_leaves`, in order)."""
        self.left.add(task_id)
        self.leaves_in.send_nowait(task_id)

    async def run(self) -> None:
        """Read and route until the session ends (then close it); a KeepAlive every
        interval meanwhile."""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._keep_alive)
                nursery.start_soon(self._watch, nursery)
                nursery.start_soon(self._read)
                nursery.start_soon(self._send_leaves)
                await self.ended.wait()
                nursery.cancel_scope.cancel()
        finally:
            self.end(ConnectionLost("the session was closed", clean=True))
            await self.framed.aclose()  # (shielded, bounded)

    async def _watch(self, nursery: trio.Nursery) -> None:
        """Probe a supernode that says nothing while a Register waits (`_probe_due`), and
        act once it answers nothing (`_silence`): a deadline must be past at two looks in
        a row, so that a daemon held up itself (its reader not yet run after the pause)
        does not take its own pause for the supernode's."""
        overdue = False
        while True:
            await trio.sleep(WATCH_EVERY)
            now = trio.current_time()
            if self._probe_due(now):
                self.probed_at, self._probing = now, True
                nursery.start_soon(self._probe)  # (a send may wait: the watch goes on)
            silence = self._silence(now)
            if silence is not None and overdue:
                why, ends = silence
                if ends:
                    self.end(ConnectionLost(why, clean=False))
                    return
                self.retire(ConnectionLost(why, clean=False))
            overdue = silence is not None

    def _quiet_since(self) -> float | None:
        """Since when the supernode has said nothing while a Register waits (None: no
        Register waits)."""
        line = self.registrant
        return None if line is None else max(self.heard_at, line.asked_at)

    def _probe_due(self, now: float) -> bool:
        """Whether to send a Probe (version 3): a Register waits, the supernode has said
        nothing for PROBE_AFTER, and no Probe is out (sent, or being sent)."""
        quiet_since = self._quiet_since()
        return (
            self.probes
            and quiet_since is not None
            and not self._probing
            and self.probed_at <= quiet_since
            and now - quiet_since > PROBE_AFTER
        )

    def _silence(self, now: float) -> tuple[str, bool] | None:
        """What is overdue while a Register waits, if anything, and whether it ends the
        session: its answer, after ANSWER_TIMEOUT (it does); or the answer to a Probe,
        after PROBE_TIMEOUT (the session retires)."""
        quiet_since = self._quiet_since()
        if quiet_since is None:
            return None
        assert self.registrant is not None
        if now - self.registrant.asked_at > ANSWER_TIMEOUT:
            return f"the supernode did not answer a Register in {ANSWER_TIMEOUT:g}s", True
        if self.probed_at > quiet_since and now - self.probed_at > PROBE_TIMEOUT:
            return f"the supernode answered no Probe in {PROBE_TIMEOUT:g}s", False
        return None

    async def _probe(self) -> None:
        """Send a Probe; one at a time (two queued behind a slow send would reach the
        supernode together, and it answers one in PROBE_ANSWER_EVERY)."""
        try:
            await self.framed.send(Probe())
        except ProtoError as exc:
            self.end(exc)
        finally:
            self._probing = False

    def retire(self, why: ProtoError) -> None:
        """The supernode left a Probe unanswered: the Register waiting fails with `why`
        (its download fails over), and so do those waiting their turn; the session
        takes no new task until that Register's answer comes after all (`answered`).
        Its other lines go on: a supernode held up for a few seconds (a lossy link, a
        paused VM) is no reason to fail them all and have every blob they seed announced
        again. If it is frozen for good, the session ends once the Register has waited
        ANSWER_TIMEOUT, or by TCP."""
        if self.retired is None:
            self.retired = frameless(why)  # (kept: see `end`)
            log.warning("session to %s takes no new task: %s", self.key[0], why)
        if self.registrant is not None:
            self.registrant.fail(why)
        for waiting in self.turns:
            waiting.cancel()

    async def _keep_alive(self) -> None:
        await keep_alive(self.framed)  # (returns only when a send failed)
        self.end(ConnectionLost("a keepalive could not be sent", clean=False))

    async def _send_leaves(self) -> None:
        async for task_id in self._leaves:
            try:
                await self.framed.send(Leave(task_id))
            except ProtoError as exc:
                self.end(exc)
                return

    async def _read(self) -> None:
        try:
            while True:
                message = (await self.framed.receive()).message
                self.heard_at = trio.current_time()
                self._route(message)
        except ProtoError as exc:
            self.end(exc)

    def _route(self, message: Message) -> None:
        if self.broken is not None:  # (frames read in one go with the one that ended it)
            return
        if isinstance(message, ErrorReply):
            line = self.registrant
            if line is None:  # an answer to nothing: the supernode ends the session
                for each in list(self.lines.values()):
                    each.put(message)
                self.end(
                    ConnectionLost(f"the supernode ended the session ({message.code})", clean=False)
                )
            else:
                line.put(message)
            return
        if isinstance(message, KeepAlive):  # (the answer to a Probe: heard, nothing more)
            return
        if not isinstance(message, _ROUTED):
            raise UnexpectedMessage(f"{message.TAG} on a shared control session")
        registrant = self.registrant
        if (
            registrant is not None
            and registrant.task_id == message.task_id
            and isinstance(message, ANSWERS)  # (TaskFailed: version 2's refused Register)
        ):
            registrant.put(message)
        elif isinstance(message, Registered):
            raise UnexpectedMessage(f"Registered for task {message.task_id[:16]}, not asked")
        elif (line := self.lines.get(message.task_id)) is not None and line.registered:
            line.put(message)  # (else news of a task no line holds now: it left)

    def end(self, why: ProtoError) -> None:
        """The session is over: every line's receive raises `why` once its inbox is
        read; the reader stops."""
        if self.broken is None:
            # Kept without the frames `why` came through (a download's buffers), and
            # raised to each line as a copy of its own: one object raised by them all
            # would gather every line's frames.
            self.broken = frameless(why)
        for line in self.lines.values():
            line.inbox_in.close()
        if self.registrant is not None:  # its answer will not come: the turn goes on
            self.registrant.answered()  # (each Register waiting then raises `why`)
        self.ended.set()


class TaskLine:
    """One task's view of a shared session (see the module docstring)."""

    def __init__(self, session: _Session, task_id: str) -> None:
        self.session = session
        self.task_id = task_id
        self.inbox_in, self._inbox = trio.open_memory_channel[Message](math.inf)
        self.registered = False  # its Registered came: news of the task follows it
        self.closed = False
        self.failed: ProtoError | None = None  # its Register given up (`_Session.retire`)
        self._awaiting = False  # a Register sent, its answer not yet taken
        self.asked_at = 0.0  # when its Register went
        self._ran = 0  # messages in a row taken without waiting

    @property
    def welcome(self) -> Welcome | None:
        return self.session.framed.welcome

    @property
    def hello_key(self) -> bytes:
        return self.session.framed.hello_key

    @property
    def peer_id(self) -> str:
        return self.session.peer_id

    def put(self, message: Message) -> None:
        """From the session's reader: a message for this task. A line that ended with
        its Register unanswered takes the answer, and leaves if it was registered."""
        if self.closed:
            if self._awaiting and isinstance(message, ANSWERS):
                self.answered()
                if isinstance(message, Registered):
                    self.session.leave(self.task_id)
            return
        if self._inbox.statistics().current_buffer_used >= INBOX_LIMIT:
            raise UnexpectedMessage(f"more than {INBOX_LIMIT} frames for one task unread")
        if self._awaiting and isinstance(message, ANSWERS):
            # Settled as it arrives, not as it is read: a download cancelled before it
            # reads its answer must not keep the session's turn.
            self.registered = isinstance(message, Registered)
            if self.registered:
                self.session.unregistered.discard(self)
            self.answered()
        with contextlib.suppress(trio.ClosedResourceError):  # (the session just ended)
            self.inbox_in.send_nowait(message)

    async def send(
        self,
        message: Message,
        payload: bytes | bytearray | memoryview | None = None,
        *,
        within: float | None = None,
        shield: bool = True,
    ) -> None:
        """Send on the session, shielded whatever `shield` says (a frame cut short
        would end the session for every download on it)."""
        session = self.session
        if isinstance(message, Register):
            await self._turn()
            session.registrant, self._awaiting = self, True
            self.asked_at = trio.current_time()
        try:
            if session.broken is not None:
                raise frameless(session.broken)
            # Shielded: a frame cut short would break the session for every task on it
            # (the send has its deadline: the session's send timeout, or `within`).
            await session.framed.send(message, payload, within=within, shield=True)
        except BaseException as exc:
            # A frame cut short, or not taken in time: nothing more can follow it. One the
            # codec refused (LocalProtoError) never went: this task's error, not the
            # session's, which every other download on it goes on using.
            if isinstance(exc, ProtoError) and not isinstance(exc, LocalProtoError):
                session.end(exc)
            if isinstance(message, Register):
                self.answered()
            raise

    async def _turn(self) -> None:
        """Wait for the session's turn to register; raises once it retires."""
        session = self.session
        taken = False
        if session.retired is None:
            try:
                session.registering.acquire_nowait()  # (free: no pass through the scheduler)
                taken = True
            except trio.WouldBlock:
                pass
        if not taken:
            with trio.CancelScope() as waiting:
                session.turns.add(waiting)
                try:
                    if session.retired is None:
                        await session.registering.acquire()
                        taken = True
                finally:
                    session.turns.discard(waiting)
        if session.retired is not None:
            if taken:
                session.registering.release()  # (the turn goes on: nobody uses it here)
            raise frameless(session.retired)

    async def receive(self) -> Frame:
        """The task's next message: one already in at once (news often comes several
        to a write), letting the others run every RUN_ON of those in a row."""
        await trio.lowlevel.checkpoint_if_cancelled()  # (as the channel's receive would)
        try:
            try:
                message = self._inbox.receive_nowait()
            except trio.WouldBlock:
                self._ran = 0
                message = await self._inbox.receive()
            else:
                self._ran += 1
                if self._ran >= RUN_ON:
                    self._ran = 0
                    await trio.lowlevel.cancel_shielded_checkpoint()  # (taken: never lost)
        except trio.EndOfChannel:
            why = self.failed or self.session.broken
            assert why is not None
            raise frameless(why) from None
        return Frame(message, bytearray())  # (a control session carries no payload)

    def fail(self, why: ProtoError) -> None:
        """Its Register is given up (the supernode left a Probe unanswered): its next
        receive raises `why`, as a lost connection would."""
        if self.failed is None:
            self.failed = frameless(why)
            self.inbox_in.close()

    def answered(self) -> None:
        """Its Register is answered, or never will be: the session's turn goes on (and
        a session retired for want of that answer takes tasks again: its supernode is
        back)."""
        if self._awaiting:
            self._awaiting = False
            session = self.session
            session.registrant = None
            session.registering.release()
            if session.retired is not None and session.broken is None:
                log.info("session to %s takes tasks again", session.key[0])
                session.retired = None

    def close(self) -> None:
        """The download is over: leave the task, or close the session if it carries
        no other (the supernode then leaves them all) and is not kept idle."""
        session = self.session
        self.closed = True
        if session.lines.get(self.task_id) is self:
            del session.lines[self.task_id]
        session.unregistered.discard(self)
        self.inbox_in.close()
        if not session.lines and not session.kept_idle():
            session.end(ConnectionLost("the session carries no task", clean=True))
        elif self._awaiting:  # left once the answer is in (`put`)
            session.left.add(self.task_id)
        elif self.registered:
            session.leave(self.task_id)


class Sessions:
    """Shared control sessions by supernode address and upload address, their readers
    in `nursery` (the daemon's, for its lifetime). A session is one peer of the swarm,
    with one upload address: a download that uploads nothing (a daemon's check of a
    copy it keeps) registers on sessions of its own."""

    def __init__(
        self,
        nursery: trio.Nursery,
        *,
        ask_proof: bool = False,
        ask_identity: bool = False,
        keep_idle: bool = False,
    ) -> None:
        self._nursery = nursery
        self._ask_proof = ask_proof  # the supernodes prove the cluster token (we have one)
        self._ask_identity = ask_identity  # ... and sign with an identity we pinned
        self._keep_idle = keep_idle  # sessions stay open without tasks (`_Session`)
        self._sessions: dict[Key, list[_Session]] = {}
        self._opening: dict[Key, trio.Lock] = {}
        self._unshared: set[str] = set()  # addresses whose supernode speaks version 1
        self._open_now = 0

    @asynccontextmanager
    async def line(
        self,
        address: str,
        task_id: str,
        upload: tuple[int, int] = (0, 0),
        *,
        within: float = SUPERNODE_TIMEOUT,
    ) -> AsyncIterator[TaskLine]:
        """A line for `task_id` on a session to `address` whose Registers name `upload`
        (port, slots), opened if none has room; errors inside are translated as on a
        connection of its own."""
        session = await self._session_for((address, upload), task_id, within)
        line = session.lines[task_id] = TaskLine(session, task_id)
        session.unregistered.add(line)
        try:
            with translate_errors(address):
                yield line
        finally:
            line.close()

    def count(self) -> int:
        """Sessions open now, to any supernode (shared or not)."""
        return self._open_now

    def open_count(self, address: str) -> int:
        """Shared sessions open to `address` that take tasks (for tests)."""
        return sum(
            session.broken is None
            for (where, _), sessions in self._sessions.items()
            if where == address
            for session in sessions
        )

    async def _session_for(self, key: Key, task_id: str, within: float) -> _Session:
        address = key[0]
        if address in self._unshared:  # (asked again each time: it may be upgraded)
            return await self._open(key, within)
        # Bounded: behind a supernode slow to answer, each download waits for the one
        # connecting before it at most this long, then opens its own (one that does not
        # answer at all then fails each on its own deadline, not one after another).
        opening = self._opening.setdefault(key, trio.Lock())
        if opening.locked():
            with trio.move_on_after(within) as waited:
                await opening.acquire()
            if waited.cancelled_caught:  # a slow one: a session of its own, on its own deadline
                return await self._open(key, within)
        else:
            opening.acquire_nowait()  # (most downloads: no other is connecting)
        try:
            return await self._take(key, task_id, within)
        finally:
            self._opening[key].release()

    async def _take(self, key: Key, task_id: str, within: float) -> _Session:
        live = [
            session
            for session in self._sessions.get(key, [])
            if session.broken is None and session.retired is None and not session.spent()
        ]
        open_ones = [session for session in live if session.takes(task_id)]
        for session in open_ones:
            if session.answered():
                return session
        if open_ones and len(live) >= SESSIONS_PER_SUPERNODE:
            return min(open_ones, key=lambda session: len(session.lines))
        return await self._open(key, within)

    async def _open(self, key: Key, within: float) -> _Session:
        """A new session, served from now on; kept for other downloads if its
        supernode shares sessions (else that address is remembered as not sharing)."""
        peer_id = new_peer_id()  # (the session's: its tasks' uploads and tickets name it)
        framed = await connect_stream(
            key[0],
            peer_id=peer_id,
            max_payload=0,
            within=within,
            ask_proof=self._ask_proof,
            ask_identity=self._ask_identity,
        )
        _notice_loss(framed)
        session = _Session(key, peer_id, framed, keep_idle=self._keep_idle)
        self._nursery.start_soon(self._serve, session)
        if session.shared:
            self._unshared.discard(key[0])
            self._sessions.setdefault(key, []).append(session)
        else:
            self._unshared.add(key[0])
        return session

    async def _serve(self, session: _Session) -> None:
        self._open_now += 1
        try:
            await session.run()
        except Exception:  # a bug of ours: this session ends, the daemon goes on
            log.exception("session to %s failed", session.key[0])
            session.end(ConnectionLost("the session failed", clean=False))
        finally:
            self._open_now -= 1
            sessions = self._sessions.get(session.key, [])
            if session in sessions:
                sessions.remove(session)


def _notice_loss(framed: FramedStream) -> None:
    """Have the kernel end the session's connection to a supernode gone from the
    network: keepalive probes once it is idle, and a bound on unacknowledged data."""
    stream = framed.stream
    if not isinstance(stream, trio.SocketStream):
        return
    sock = stream.socket
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (
        ("TCP_KEEPIDLE", KEEPALIVE_AFTER),
        ("TCP_KEEPINTVL", KEEPALIVE_EVERY),
        ("TCP_KEEPCNT", 3),
        ("TCP_USER_TIMEOUT", 1000 * (KEEPALIVE_AFTER + 3 * KEEPALIVE_EVERY)),
    ):
        if hasattr(socket, name):  # (Linux's; elsewhere the defaults)
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


__all__ = ["Sessions", "TaskLine"]
