"""The swarm as the supernode sees it: admitted peers, their upload addresses, and the
scheduler's decisions turned into piece tasks with tickets.

The scheduler (`supernode/scheduler`) is sans-IO and knows peers by id only; this
module adds what goes on the wire: where each source listens and the signed ticket that
lets the requester fetch from it. Control sessions call it. A request answered "nothing
now" waits for news of its task, in a queue, oldest first. While few wait (up to
`FEW_HELD`), any news wakes them all: it costs little, and no freed slot stays idle
because the few woken could not use it. Beyond that, news that frees one upload slot (a
transfer reported, a CDN upload ending) wakes only the longest held, and a woken request
that cannot use it passes the news on to the next (`pass_on`), up to `NEWS_WAKES`
requests in all: a swarm of thousands would otherwise ask the scheduler thousands of
times per report for nothing (a woken request that gets nothing waits again, at the
back; the long poll bounds every wait, and so any news lost on the way). A peer
joining wakes as few: it holds no piece yet and frees no slot (its pieces come as
reports and claims), and when thousands join over a window, waking every held request
at each join cost the scheduler most of its time. So does a piece landing on the CDN
(the swarm listens to its CDN tasks, `CdnTask.on_change`): the CDN sends each piece
about once, so one request takes it, and waking thousands for it cost a fifth of the
assigns that found nothing. And so does a peer leaving: it frees only the slots of its
own downloads in flight (none once it completed), and in a rollout of plain dfget each
peer leaves as it completes. News that may change many answers (claims, a verdict, the
CDN's fetch ending or failing) wakes them all.

Its one piece of I/O is the scheduler's `Check`s: `run` fetches the accused (or
claimed) piece from the uploader itself (`supernode/peers/piececheck.py`), a few at a time,
and gives the verdict back. Peers are grouped by host for the scheduler (an IPv6 peer
by its /64): peer ids cost nothing, so a host counts as one witness.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from common.connlimit import host_group
from common.units import format_size
from proto.admission import proof_key, verify
from proto.messages import PieceResult, PieceTask
from proto.tickets import CDN_UPLOADER, TicketIssuer
from supernode.cdn.task import CdnTask
from supernode.errors import TaskSuperseded
from supernode.peers.piececheck import check_piece, check_timeout
from supernode.peers.swarmlog import SwarmLog
from supernode.scheduler import CDN, Assignment, Check, Outcome, Scheduler, Verdict

log = logging.getLogger(__name__)

NEWS_WAKES = 4  # held requests that news of one freed slot reaches: its taker and spares
FEW_HELD = 64  # ... once more than this many are held on the task (else: all of them)


class PeerIdInUse(Exception):
    """Another live control session already uses this peer id."""


@dataclass
class PeerRecord:
    peer_id: str
    host: str
    port: int  # 0: does not upload
    slots: int
    tasks: set[str] = field(default_factory=set)
    # The control session it belongs to: no other may join or leave under its id.
    owner: object = field(default=None, compare=False, repr=False)


CHECKS_AT_ONCE = 4  # piece checks running at once, over all tasks
CHECKS_QUEUED = 256  # past this many waiting, a check is answered UNKNOWN at once


def reporter_group(host: str) -> str:
    """The scheduler's reporter group of a peer: its IPv4 address, or its IPv6 /64 (one
    host, or one site's hosts, counts as one witness)."""
    return host_group(host)


class Swarm:
    def __init__(
        self,
        scheduler: Scheduler,
        ticket_key: Ed25519PrivateKey,
        *,
        ticket_ttl: float = 3600.0,
        token: bytes | None = None,
        log: SwarmLog | None = None,
    ) -> None:
        self.scheduler = scheduler
        self.log = log  # `--swarm-log`: every piece task, result and CDN piece
        self.ticket_key = ticket_key
        self.tickets = TicketIssuer(ticket_key, ticket_ttl)
        self.token = token
        if token is not None:
            proof_key(token)  # (stretched once, here: not in the first handshake)
        self.peers: dict[str, PeerRecord] = {}
        self.generations: dict[str, int] = {}  # task id → the generation being scheduled
        self._tasks: dict[str, CdnTask] = {}  # ... and that generation (for checks)
        # task id → the held requests' events, oldest first (a dict: a request that
        # stops waiting leaves it in O(1))
        self._waiting: dict[str, dict[trio.Event, None]] = {}
        self._relays: dict[trio.Event, int] = {}  # a woken request → whom it passes on to
        self.decisions = 0  # piece-task requests answered (assignments decided)
        self.decisions_with_reports = 0  # ... of them decided with a result (one call)
        self.decision_seconds = 0.0  # time spent deciding them, tickets included
        self._checks_send, self._checks_recv = trio.open_memory_channel[Check](CHECKS_QUEUED)
        self.check_slots = trio.CapacityLimiter(CHECKS_AT_ONCE)
        self.check_timeout: float | None = None  # None: from the piece size (piececheck)
        self.verdicts: dict[str, int] = {v.value: 0 for v in Verdict}  # checks done, by verdict

    # -- admission and membership --------------------------------------------------------

    def admits(
        self, challenge: bytes, peer_id: str, public_key: bytes, proof: bytes | None
    ) -> bool:
        """True if the cluster is open, or the proof shows the peer knows the token."""
        return self.token is None or verify(self.token, challenge, peer_id, public_key, proof)

    def join(
        self, peer_id: str, host: str, port: int, slots: int, owner: object = None
    ) -> PeerRecord:
        """A control session's peer, on its first Register; `owner`: the session, the
        only one that may register under this id until it leaves (another session that
        names it, from the same host and port even, would take its tickets and, leaving,
        take it out of the swarm)."""
        if peer_id == CDN:
            raise PeerIdInUse(f"peer id {CDN!r} is reserved for the supernode's CDN")
        record = self.peers.get(peer_id)
        if record is None:
            record = PeerRecord(peer_id, host, port, slots if port else 0, owner=owner)
            self.peers[peer_id] = record
        elif record.owner is not owner or (record.host, record.port) != (host, port):
            raise PeerIdInUse(f"peer id {peer_id[:40]!r} is in use by another session")
        return record

    def enter(
        self,
        record: PeerRecord,
        task: CdnTask,
        now: float,
        *,
        in_order: bool = False,
        leaves: bool = False,
    ) -> None:
        scheduled = self.generations.get(task.task_id)
        newer = self._tasks.get(task.task_id)
        if (
            scheduled is not None
            and task.generation < scheduled
            and newer is not None
            and not (newer.failed or newer.superseded)
        ):
            # An older generation handed out while a newer one, still the CDN's, entered:
            # never back. (One the CDN dropped may be followed by any number it gives.)
            raise TaskSuperseded(f"generation {scheduled} of the task replaced this one")
        if scheduled is not None and scheduled != task.generation:
            # The content changed upstream: the old generation's holdings mean nothing.
            self._finish(task.task_id, why=f"superseded by generation {task.generation}")
        self.generations[task.task_id] = task.generation
        self._tasks[task.task_id] = task
        task.on_change(self._cdn_changed)
        self.scheduler.add_task(task.task_id, piece_size=task.piece_size)
        # What the CDN holds, now: a peer may report pieces it already has (a daemon
        # that adopts its cache) before anyone asks for piece tasks.
        total = task.piece_count if task.settled else None
        self.scheduler.cdn_ready(task.task_id, task.ready, total=total, on_cdn=task.on_disk)
        self.scheduler.add_peer(
            task.task_id,
            record.peer_id,
            upload_slots=record.slots,
            now=now,
            in_order=in_order,
            leaves=leaves,
            group=reporter_group(record.host),
        )
        record.tasks.add(task.task_id)
        self._notify(task.task_id)  # (it holds nothing yet: as few as for a freed slot)

    def leave(self, peer_id: str, now: float, owner: object = None) -> None:
        """The control connection dropped: the peer's pieces leave the swarm at once
        (only its own session's: `owner`, as it joined)."""
        record = self.peers.get(peer_id)
        if record is None or record.owner is not owner:
            return
        del self.peers[peer_id]
        self.scheduler.remove_peer(peer_id, now)
        for task_id in sorted(record.tasks):
            # Its pieces leaving bring nobody anything; the slots of its own downloads
            # in flight are free (none for a peer that completed): as for a freed slot.
            self._notify(task_id)
            stats = self.scheduler.task_statistics(task_id)
            if stats is not None and stats.peers == 0:
                self._finish(task_id, why="its last peer left")

    def leave_task(self, peer_id: str, task_id: str, now: float) -> None:
        """The peer left one task of its session (`Leave`): as `leave`, for that task."""
        record = self.peers.get(peer_id)
        if record is None or task_id not in record.tasks:
            return
        record.tasks.discard(task_id)
        self.scheduler.leave_task(task_id, peer_id, now)
        self._notify(task_id)
        stats = self.scheduler.task_statistics(task_id)
        if stats is not None and stats.peers == 0:
            self._finish(task_id, why="its last peer left")

    def _finish(self, task_id: str, *, why: str) -> None:
        """The task leaves the scheduler; log who sent its bytes."""
        stats = self.scheduler.task_statistics(task_id)
        if stats is not None:
            total = stats.bytes_from_cdn + stats.bytes_from_peers
            share = stats.bytes_from_peers / total if total else 0.0
            log.info(
                "task %s finished (%s): %s from the CDN, %s from peers (%.0f%% from peers)",
                task_id[:16],
                why,
                format_size(stats.bytes_from_cdn),
                format_size(stats.bytes_from_peers),
                100 * share,
            )
        self.scheduler.remove_task(task_id)
        self.generations.pop(task_id, None)
        self._tasks.pop(task_id, None)
        self._notify(task_id, wake=None)  # (nobody can wait on a task gone)

    # -- decisions ------------------------------------------------------------------------

    def piece_tasks(
        self, task: CdnTask, requester: str, want: int, now: float
    ) -> tuple[PieceTask, ...]:
        """Up to `want` pieces for `requester` to fetch next, each with source and ticket
        (none for a generation the swarm has left: `current`)."""
        if not self.current(task):
            return ()
        started = time.perf_counter()
        try:
            return self._piece_tasks(task, requester, want, now)
        finally:
            self.decision_seconds += time.perf_counter() - started
            self.decisions += 1

    def report_and_piece_tasks(
        self, task: CdnTask, requester: str, result: PieceResult, want: int, now: float
    ) -> tuple[PieceTask, ...]:
        """`report`, then `piece_tasks`, in one scheduler call (`report_and_assign`):
        a result with the requester's next request for the same task right behind it."""
        if not self.current(task):
            return ()
        started = time.perf_counter()
        try:
            self._notify(task.task_id)  # (as `report`)
            self._log_result(requester, result)
            self._cdn_ready(task)
            checks, assignments = self.scheduler.report_and_assign(
                task.task_id,
                requester,
                result.index,
                result.source,
                Outcome(result.outcome),
                nbytes=result.nbytes,
                seconds=result.seconds,
                want=want,
                now=now,
            )
            self._queue_checks(checks, now)
            return self._with_tickets(task, requester, assignments, now)
        finally:
            self.decision_seconds += time.perf_counter() - started
            self.decisions += 1
            self.decisions_with_reports += 1

    def follow_up(
        self, task: CdnTask, requester: str, index: int, source: str, now: float
    ) -> tuple[PieceTask, ...]:
        """The piece `requester` fetches from peer `source` behind its transfer of piece
        `index` from it (`Scheduler.follow`), with its ticket; none if there is none."""
        if not self.current(task):
            return ()
        started = time.perf_counter()
        try:
            assignment = self.scheduler.follow(task.task_id, requester, index, source, now)
            if assignment is None:
                return ()
            return self._with_tickets(task, requester, [assignment], now, follows=index)
        finally:
            self.decision_seconds += time.perf_counter() - started
            self.decisions += 1

    def current(self, task: CdnTask) -> bool:
        """Whether `task` is the generation the swarm schedules for its id: a request or
        a report of an older one (a session that registered before the content changed)
        must not touch the newer one's entry (its CDN progress, its piece count)."""
        return self._tasks.get(task.task_id) is task

    def _cdn_ready(self, task: CdnTask) -> None:
        total = task.piece_count if task.settled else None
        self.scheduler.cdn_ready(task.task_id, task.ready, total=total, on_cdn=task.on_disk)

    def _cdn_changed(self, task: CdnTask, piece: bool) -> None:
        """A CDN task changed (`CdnTask.on_change`): a piece landed wakes as few held
        requests as a freed slot; the fetch ending, failing or starting wakes them all."""
        if self._tasks.get(task.task_id) is task:  # (not a generation the swarm left)
            self._notify(task.task_id, wake=NEWS_WAKES if piece else None)
            if piece and self.log is not None:
                self.log.stored(task.task_id, task.ready)

    def _piece_tasks(
        self, task: CdnTask, requester: str, want: int, now: float
    ) -> tuple[PieceTask, ...]:
        self._cdn_ready(task)
        assignments = self.scheduler.assign(task.task_id, requester, want, now)
        return self._with_tickets(task, requester, assignments, now)

    def _with_tickets(
        self,
        task: CdnTask,
        requester: str,
        assignments: list[Assignment],
        now: float,
        *,
        follows: int | None = None,
    ) -> tuple[PieceTask, ...]:
        tasks: list[PieceTask] = []
        for assignment in assignments:
            source = assignment.source
            if source == CDN:
                host, port = "", 0
            else:
                record = self.peers.get(source)
                if record is None or not record.port:  # left between two calls: skip it
                    self.scheduler.report(
                        task.task_id,
                        requester,
                        assignment.index,
                        source,
                        Outcome.CANCELLED,
                        now=now,
                    )
                    continue
                host, port = record.host, record.port
            ticket = self.ticket(task.task_id, requester, CDN_UPLOADER if source == CDN else source)
            tasks.append((assignment.index, source, host, port, ticket))
            if self.log is not None:
                self.log.assigned(task.task_id, requester, assignment.index, source, follows)
        return tuple(tasks)

    def _log_result(self, requester: str, result: PieceResult) -> None:
        if self.log is not None:
            self.log.result(
                result.task_id,
                requester,
                result.index,
                result.source,
                result.outcome,
                result.seconds,
            )

    def ticket(self, task_id: str, requester: str, uploader: str) -> bytes:
        return self.tickets.ticket(task_id, requester, uploader, now=time.time())

    def report(self, requester: str, result: PieceResult, now: float) -> None:
        if self.generations.get(result.task_id) != result.generation:
            return  # of a generation the swarm left: its assignments went with it
        self._notify(result.task_id)  # a slot is free again, maybe a piece has a new holder
        self._log_result(requester, result)
        checks = self.scheduler.report(
            result.task_id,
            requester,
            result.index,
            result.source,
            Outcome(result.outcome),
            nbytes=result.nbytes,
            seconds=result.seconds,
            now=now,
        )
        self._queue_checks(checks, now)

    def claim(self, peer_id: str, task_id: str, indexes: list[int], now: float) -> None:
        """`peer_id` holds these pieces (checked on its disk against the digests)."""
        self._notify(task_id, wake=None)
        self._queue_checks(self.scheduler.claim(task_id, peer_id, indexes, now), now)

    # -- the CDN's uploads (cdn/uploads.py tells, through Cdn.uploading) --------------------

    def cdn_upload_started(self, task_id: str, requester: str, index: int) -> None:
        self.scheduler.cdn_upload_started(task_id, requester, index, trio.current_time())

    def cdn_upload_finished(self, task_id: str, requester: str, index: int) -> None:
        self.scheduler.cdn_upload_finished(task_id, requester, index, trio.current_time())
        self._notify(task_id)  # a CDN slot is free

    # -- checks of accused and claimed pieces ----------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the scheduler's piece checks until cancelled."""
        async with trio.open_nursery() as nursery:
            task_status.started()
            async for check in self._checks_recv:
                nursery.start_soon(self._check, check)

    def _queue_checks(self, checks: tuple[Check, ...], now: float) -> None:
        pending = list(checks)
        while pending:
            check = pending.pop()
            try:
                self._checks_send.send_nowait(check)
            except trio.WouldBlock:  # too many waiting: no judgement on this one
                pending += self.scheduler.checked(check, Verdict.UNKNOWN, now)

    async def _check(self, check: Check) -> None:
        async with self.check_slots:
            try:
                verdict = await self._verify(check)
            except Exception:  # a bug of ours must cost one check, never the supernode
                log.exception("piece check of %s: internal error", check.uploader[:40])
                verdict = Verdict.UNKNOWN
        self.verdicts[verdict.value] += 1
        _log_verdict(check, verdict)
        now = trio.current_time()
        self._queue_checks(self.scheduler.checked(check, verdict, now), now)
        self._notify(check.task_id, wake=None)  # a blacklist changes the decisions

    async def _verify(self, check: Check) -> Verdict:
        record = self.peers.get(check.uploader)
        task = self._tasks.get(check.task_id)
        if record is None or not record.port or task is None:
            return Verdict.UNKNOWN  # it left, or the task did
        ticket = self.ticket(check.task_id, CDN_UPLOADER, check.uploader)
        with trio.move_on_after(self.check_timeout or check_timeout(task.piece_size)):
            return await check_piece(
                record.host, record.port, task=task, index=check.index, ticket=ticket
            )
        log.info("piece check at %s:%d: no answer in time", record.host, record.port)
        return Verdict.UNKNOWN

    # -- news -------------------------------------------------------------------------------

    async def wait_news(self, task_id: str) -> int:
        """Return when news of the task wakes this request (see `_notify`): how many
        held requests to pass the news on to (`pass_on`) if this one cannot use it."""
        event = trio.Event()
        waiting = self._waiting.setdefault(task_id, {})
        waiting[event] = None
        try:
            await event.wait()
            return self._relays.pop(event, 0)
        finally:
            waiting.pop(event, None)  # (cancelled: the long poll ended, or the CDN moved)
            self._relays.pop(event, None)
            if not waiting and self._waiting.get(task_id) is waiting:
                del self._waiting[task_id]

    def pass_on(self, task_id: str, relay: int) -> None:
        """A woken request could not use its news: it goes to the next held request,
        which passes it on to `relay - 1` more (or all, while few are held)."""
        if relay > 0:
            self._notify(task_id, wake=relay)

    def held(self, task_id: str) -> bool:
        """Whether a request of the task waits for news (`wait_news`)."""
        return bool(self._waiting.get(task_id))

    def _notify(self, task_id: str, *, wake: int | None = NEWS_WAKES) -> None:
        """Wake every request held on the task (`wake` None, or few held); else the one
        held longest, which passes the news on to `wake - 1` more if it cannot use it."""
        waiting = self._waiting.get(task_id)
        if not waiting:
            return
        if wake is None or len(waiting) <= FEW_HELD:
            woken = list(waiting)
            waiting.clear()
            for event in woken:
                event.set()
            return
        event = next(iter(waiting))
        del waiting[event]
        if wake > 1:
            self._relays[event] = wake - 1
        event.set()


def _log_verdict(check: Check, verdict: Verdict) -> None:
    task, uploader, index = check.task_id[:16], check.uploader[:40], check.index
    if check.reporter is None:
        what = f"{uploader}'s claim to piece {index} of task {task}"
    else:
        what = f"{check.reporter[:40]}'s report of a corrupt piece {index} from {uploader}"
        what += f" (task {task})"
    if verdict is Verdict.CORRUPT:
        log.warning("check of %s: upheld, %s is blacklisted for the task", what, uploader)
    elif verdict is Verdict.CLEAN and check.reporter is not None:
        log.warning(
            "check of %s: the piece is intact; %s's reports no longer count for this task",
            what,
            check.reporter[:40],
        )
    else:
        log.info("check of %s: %s", what, verdict.value)
