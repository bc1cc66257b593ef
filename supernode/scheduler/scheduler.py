"""The scheduler: which piece each peer fetches next, and from whom.

Sans-IO: no clock, no sockets, no tasks. Every call that depends on time takes `now`
(any clock that does not go back, e.g. `trio.current_time()`), and `assign` and
`report` decide at once and return. Deadlines (assignment timeouts, the end of global
bans) take effect at the first call whose `now` is past them.

From an async control session, call it directly on the event loop: a decision costs
microseconds, never blocks, and one thread owning the scheduler needs no lock. Every
assignment handed out must get exactly one `report` (the endgame loser a CANCELLED).
`assign` returning [] means "nothing now": ask again after news (a report, a piece on
the CDN, a peer joining) or after `busy_backoff_seconds` at the latest.

Who holds what comes only from reports on assignments (DONE) and from explicit claims
(`claim`, a peer announcing pieces it checked on its own disk); a report that matches
no assignment changes nothing. `report` and `claim` may return `Check`s: the caller
verifies those pieces itself (fetching them from the uploader) and answers each with
`checked` (see reputation.py for who is believed).

The CDN's slots are held from the assignment until the CDN has sent the piece
(`cdn_upload_started`, `cdn_upload_finished`: the CDN's uploads tell), or for
`cdn_request_deadline` if the downloader never asks; each downloader holds at most
`cdn_requester_cap` of them. Peer assignments expire after their transfer deadline.

The state per task lives in `Task` (holdings, rarity, holder bitsets, reputation); what
spans tasks lives here: peers and their upload slots, the CDN's slots, the global
blacklist, and the deadlines of assignments in flight.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Iterable
from types import MappingProxyType
from typing import NamedTuple

from supernode.scheduler.decisions import (
    CDN,
    Assignment,
    Check,
    Outcome,
    SchedulerConfig,
    Verdict,
)
from supernode.scheduler.flights import Flight, FlightTable
from supernode.scheduler.peers import Member, Peer
from supernode.scheduler.rarity import IndexOrder, PieceOrder, shuffled_bits
from supernode.scheduler.reputation import GlobalBlacklist
from supernode.scheduler.statistics import PeerStatistics, SchedulerStatistics, TaskStatistics
from supernode.scheduler.tasks import Task

DEFAULT_CONFIG = SchedulerConfig()
_NO_CHECKS: tuple[Check, ...] = ()
_EXPIRED_KEPT = 1024  # expired assignments remembered per downloader and task


class _Avoid(NamedTuple):
    """Sources a downloader must not be given now (busy backoff)."""

    bits: int  # their indexes in the task's SourcePool
    cdn: bool


class Scheduler:
    def __init__(
        self, config: SchedulerConfig = DEFAULT_CONFIG, *, rng: random.Random | None = None
    ) -> None:
        self.config = config
        self._rng = rng if rng is not None else random.Random()
        self._tasks: dict[str, Task] = {}
        self._peers: dict[str, Peer] = {}
        self._flights = FlightTable()
        self._blacklist = GlobalBlacklist(
            config.global_blacklist_tasks, config.global_blacklist_seconds
        )
        self._wakeup = math.inf  # `now` from which `_tick` has a deadline to apply
        self._cdn_uploads = 0  # CDN slots taken (assigned, not yet sent nor expired)
        self._cdn_cap = config.cdn_requester_cap
        self._assigned = 0
        self._outcomes: Counter[Outcome] = Counter()

    # -- tasks and peers ----------------------------------------------------------------

    def add_task(self, task_id: str, *, piece_size: int = 0) -> None:
        """Know `task_id` (idempotent); `piece_size` sets its transfer deadline."""
        task = self._task(task_id)
        if piece_size > 0 and piece_size != task.piece_size:
            task.piece_size = piece_size
            task.transfer_span = self.config.transfer_deadline(piece_size)

    def remove_task(self, task_id: str) -> None:
        """Forget the task: its assignments in flight free their sources' slots."""
        task = self._tasks.get(task_id)
        if task is None:
            return
        for member in task.members.values():
            for flight in member.all_flights():
                self._land(task, flight)
        del self._tasks[task_id]
        for member in task.members.values():
            del member.peer.members[task_id]

    def cdn_ready(self, task_id: str, ready: int, *, total: int | None = None) -> None:
        """Pieces 0..ready-1 are on the CDN (`ready` never goes back); `total` once known.

        Raises ValueError on contradictions (ready beyond total, total changed).
        """
        self._task(task_id).cdn_ready(ready, total)

    def add_peer(
        self,
        task_id: str,
        peer_id: str,
        *,
        upload_slots: int,
        now: float,
        in_order: bool = False,
        group: str | None = None,
    ) -> None:
        """`peer_id` joins `task_id` (creating the task if needed); idempotent.

        `upload_slots` is the peer's cap over all its tasks; the latest call sets it.
        With `in_order` it is assigned the lowest pieces it misses first (a reader
        streams the file as it arrives), not random then rarest first. `group` (default:
        the peer id; the latest call sets it) is its reporter group: reports from one
        group count as one witness (the swarm passes the peer's host).
        """
        if upload_slots < 0:
            raise ValueError(f"upload_slots must be >= 0, not {upload_slots}")
        if peer_id == CDN:
            raise ValueError(f"peer id {CDN!r} is the CDN's source name")
        self._tick(now)
        task = self._task(task_id)
        peer = self._peers.get(peer_id)
        if peer is None:
            peer = self._peers[peer_id] = Peer(peer_id, upload_slots, group or peer_id)
        elif group is not None:
            peer.group = group
        peer.upload_slots = upload_slots
        if task_id not in peer.members:
            member = peer.members[task_id] = Member(peer, task_id)
            task.join(member)
        peer.members[task_id].in_order = in_order
        self._refresh(peer)

    def remove_peer(self, peer_id: str, now: float) -> None:
        """The peer is gone from every task at once: its pieces, its slots, its flights."""
        self._tick(now)
        peer = self._peers.pop(peer_id, None)
        if peer is None:
            return
        for flight in list(peer.uploading):
            self._land(self._tasks[flight.task_id], flight)
        for task_id, member in peer.members.items():
            for flight in member.all_flights():
                self._land(self._tasks[task_id], flight)
        for task_id, member in peer.members.items():
            self._tasks[task_id].leave(member)
        peer.members.clear()

    def _task(self, task_id: str) -> Task:
        task = self._tasks.get(task_id)
        if task is None:
            config = self.config
            task = Task(
                task_id,
                blacklist_after=config.task_blacklist_failures,
                check_accusations=config.check_accusations,
            )
            task.transfer_span = config.transfer_deadline(0)
            self._tasks[task_id] = task
        return task

    # -- decisions ----------------------------------------------------------------------

    def assign(self, task_id: str, peer_id: str, want: int, now: float) -> list[Assignment]:
        """Up to `want` new assignments for downloader `peer_id`; [] if none is possible now.

        Each takes a slot of its source until reported or expired.
        """
        self._tick(now)
        task = self._tasks.get(task_id)
        member = task.members.get(peer_id) if task is not None else None
        if task is None or member is None or want <= 0:
            return []
        avoid = self._avoid(task, member, now)
        missing = task.rarity.known ^ member.have  # (it holds only known pieces)
        plan: list[Assignment] = []
        wanted = missing & ~member.inflight
        if wanted:
            self._assign_new(task, member, wanted, want, avoid, now, plan)
        if len(plan) < want and self._in_endgame(task, member, missing):
            self._assign_duplicates(task, member, missing, want, avoid, now, plan)
        self._assigned += len(plan)
        return plan

    def _assign_new(
        self,
        task: Task,
        member: Member,
        wanted: int,
        want: int,
        avoid: _Avoid,
        now: float,
        plan: list[Assignment],
    ) -> None:
        # A piece is reachable through an open peer holder (as far as the pool knows) or,
        # failing that, the CDN. The downloader never holds what it wants, so it is never
        # its own source.
        pool = task.pool
        # The CDN is the last resort, and it sends one copy of a piece at a time: a
        # piece it is already uploading reaches the others sooner through that peer.
        peer = member.peer
        cdn_pieces = task.rarity.on_cdn & ~task.cdn_busy if self._cdn_free(avoid, peer) else 0
        reach = (task.rarity.held & ~pool.saturated) | cdn_pieces
        order: PieceOrder | IndexOrder
        if member.in_order:
            order = IndexOrder(wanted & reach)
        else:
            random_picks = self.config.first_random - member.have_count - len(member.flights)
            order = PieceOrder(task.rarity, wanted & reach, reach, self._rng, random_picks)
        for index in order:
            source = pool.choose(index, avoid.bits, self._rng)
            if source is None and not (cdn_pieces >> index) & 1:
                continue
            plan.append(self._launch(task, member, index, source, now))
            if len(plan) >= want:
                return
            if source is None:
                cdn_pieces &= ~(1 << index)
            if cdn_pieces and not self._cdn_free(avoid, peer):
                cdn_pieces = 0
                order.restrict(task.rarity.held)

    def _in_endgame(self, task: Task, member: Member, missing: int) -> bool:
        """Few pieces left, all in flight: time to duplicate them (the total must be known)."""
        rarity = task.rarity
        return (
            rarity.total is not None
            and missing != 0
            and missing & ~member.inflight == 0
            and missing.bit_count() <= self.config.endgame_pieces
        )

    def _assign_duplicates(
        self,
        task: Task,
        member: Member,
        missing: int,
        want: int,
        avoid: _Avoid,
        now: float,
        plan: list[Assignment],
    ) -> None:
        """A second source for each missing piece (one duplicate at most per piece).

        The downloader keeps the first copy to arrive and cancels the other.
        """
        for index in shuffled_bits(missing, self._rng):
            if index in member.duplicates:
                continue
            uploader = member.flights[index].uploader
            cdn_taken = uploader is None
            taken = avoid.bits if uploader is None else avoid.bits | 1 << uploader.index
            source = task.pool.choose(index, taken, self._rng)
            if source is None and (
                cdn_taken
                or not self._cdn_free(avoid, member.peer)
                or not ((task.rarity.on_cdn & ~task.cdn_busy) >> index) & 1
            ):
                continue
            plan.append(self._launch(task, member, index, source, now))
            if len(plan) >= want:
                return

    def report(
        self,
        task_id: str,
        peer_id: str,
        index: int,
        source: str,
        outcome: Outcome,
        *,
        nbytes: int = 0,
        seconds: float = 0.0,
        now: float,
    ) -> tuple[Check, ...]:
        """The downloader's result for one assignment; the checks to run (CORRUPT).

        A report that matches no assignment in flight changes nothing, except a DONE for
        an assignment that expired unreported (that transfer was real): it adds the
        piece to the downloader's holdings and frees nothing.
        """
        self._tick(now)
        if not isinstance(outcome, Outcome):
            outcome = Outcome(outcome)  # a plain string from the wire
        task = self._tasks.get(task_id)
        member = task.members.get(peer_id) if task is not None else None
        if task is None or member is None:
            return _NO_CHECKS
        flight = member.flight(index, source)
        if flight is None:
            late = (index, source)
            if outcome is Outcome.DONE and member.expired and late in member.expired:
                del member.expired[late]
                if self._hold(task, member, index):
                    self._outcomes[outcome] += 1
                    task.count_bytes(source, nbytes)
            return _NO_CHECKS
        self._land(task, flight)
        self._outcomes[outcome] += 1
        if outcome is Outcome.DONE:
            self._hold(task, member, index)
            task.count_bytes(source, nbytes)
            if flight.uploader is not None:
                flight.uploader.peer.note_speed(nbytes, seconds, now, self.config.speed_halflife)
        elif outcome is Outcome.BUSY:
            member.peer.busy_until[source] = now + self.config.busy_backoff_seconds
        elif outcome is not Outcome.CANCELLED and flight.uploader is not None:
            return self._blame(task, member, flight, outcome, now)
        return _NO_CHECKS

    def claim(
        self, task_id: str, peer_id: str, indexes: Iterable[int], now: float
    ) -> tuple[Check, ...]:
        """`peer_id` says it holds `indexes`, checked on its own disk against the CDN's
        digests (a daemon's cache after a restart); the checks to run.

        Only pieces the scheduler knows of count (the swarm passes only those on the
        CDN: their digests are all a peer can have checked against). A claimed holder is
        a holder like any other: a downloader that gets a corrupt piece from it accuses
        it, and the check catches a lie. One newly claimed piece is also checked at
        random at once (`spot_check_claims`).
        """
        self._tick(now)
        task = self._tasks.get(task_id)
        member = task.members.get(peer_id) if task is not None else None
        if task is None or member is None:
            return _NO_CHECKS
        claimed = [i for i in indexes if self._hold(task, member, i)]
        if not claimed or not self.config.spot_check_claims or not member.peer.upload_slots:
            return _NO_CHECKS
        index = claimed[int(self._rng.random() * len(claimed))]
        return tuple(task.reputation.spot_check(task_id, peer_id, index))

    def checked(self, check: Check, verdict: Verdict, now: float) -> tuple[Check, ...]:
        """The verdict of a check `report` or `claim` returned; the next checks to run."""
        self._tick(now)
        task = self._tasks.get(check.task_id)
        if task is None:
            return _NO_CHECKS
        blacklisted, checks = task.reputation.checked(check, Verdict(verdict))
        if blacklisted:
            self._blacklisted(task, check.uploader, now)
        return tuple(checks)

    def cdn_upload_started(self, task_id: str, peer_id: str, index: int, now: float) -> None:
        """The CDN is sending piece `index` to `peer_id`: its assignment now runs on a
        transfer's deadline instead of the wait for a request."""
        self._tick(now)
        task = self._tasks.get(task_id)
        flight = self._cdn_flight(task, peer_id, index)
        if task is not None and flight is not None and flight.cdn_slot:
            self._flights.move(flight, now + task.transfer_span, task.transfer_span)

    def cdn_upload_finished(self, task_id: str, peer_id: str, index: int, now: float) -> None:
        """The CDN has sent piece `index` to `peer_id` (or failed to): its CDN slot is
        free. The assignment stays in flight until the downloader reports it."""
        self._tick(now)
        task = self._tasks.get(task_id)
        flight = self._cdn_flight(task, peer_id, index)
        if flight is not None and flight.cdn_slot:
            self._free_cdn_slot(flight)

    def has(self, task_id: str, peer_id: str, index: int) -> bool:
        task = self._tasks.get(task_id)
        member = task.members.get(peer_id) if task is not None else None
        return member is not None and index >= 0 and (member.have >> index) & 1 == 1

    # -- bookkeeping ----------------------------------------------------------------------

    def _tick(self, now: float) -> None:
        """Apply the deadlines that `now` has passed."""
        if now < self._wakeup:
            return
        for flight in self._flights.expired(now):
            self._land(self._tasks[flight.task_id], flight)
            downloader = flight.downloader
            expired = downloader.expired
            if expired is None:
                expired = downloader.expired = {}
            expired[flight.index, flight.source] = None
            if len(expired) > _EXPIRED_KEPT:  # a downloader that never reports
                del expired[next(iter(expired))]
        for source in self._blacklist.expire(now):
            peer = self._peers.get(source)
            if peer is not None:
                self._refresh(peer)
        self._wakeup = min(self._flights.next_deadline(), self._blacklist.next_expiry())

    def _avoid(self, task: Task, member: Member, now: float) -> _Avoid:
        bits, cdn = 0, False
        for source in member.peer.backing_off(now):
            if source == CDN:
                cdn = True
            else:
                other = task.members.get(source)
                if other is not None:
                    bits |= 1 << other.index
        if member.shunned:  # (never the CDN)
            for source in member.shunned:
                other = task.members.get(source)
                if other is not None:
                    bits |= 1 << other.index
        return _Avoid(bits, cdn)

    def _cdn_free(self, avoid: _Avoid, peer: Peer) -> bool:
        return (
            not avoid.cdn
            and self._cdn_uploads < self.config.cdn_upload_slots
            and peer.cdn_uploads < self._cdn_cap
        )

    def _free_cdn_slot(self, flight: Flight) -> None:
        flight.cdn_slot = False
        self._cdn_uploads -= 1
        flight.downloader.peer.cdn_uploads -= 1

    @staticmethod
    def _cdn_flight(task: Task | None, peer_id: str, index: int) -> Flight | None:
        member = task.members.get(peer_id) if task is not None else None
        return member.flight(index, CDN) if member is not None else None

    def _launch(
        self, task: Task, member: Member, index: int, uploader: Member | None, now: float
    ) -> Assignment:
        if uploader is None:
            source, span = CDN, self.config.cdn_request_deadline
        else:
            source, span = uploader.peer.peer_id, task.transfer_span
        deadline = now + span
        flight = Flight(task.task_id, member, index, source, uploader, deadline, span)
        task.in_flight += 1
        member.add_flight(flight)
        self._flights.add(flight)
        if deadline < self._wakeup:
            self._wakeup = deadline
        if uploader is None:
            flight.cdn_slot = True
            self._cdn_uploads += 1
            member.peer.cdn_uploads += 1
            task.cdn_flight(index, +1)
        else:
            peer = uploader.peer
            peer.uploads += 1
            peer.uploading[flight] = None
            if peer.uploads >= peer.upload_slots:
                self._refresh(peer)
        return Assignment(index, source)

    def _land(self, task: Task, flight: Flight) -> None:
        """The flight is over (reported, expired or orphaned): free its slot."""
        self._flights.remove(flight)
        task.in_flight -= 1
        flight.downloader.remove_flight(flight)
        if flight.uploader is None:
            if flight.cdn_slot:
                self._free_cdn_slot(flight)
            task.cdn_flight(flight.index, -1)
        else:
            peer = flight.uploader.peer
            was_full = peer.uploads >= peer.upload_slots
            peer.uploads -= 1
            del peer.uploading[flight]
            if was_full:
                self._refresh(peer)

    def _hold(self, task: Task, member: Member, index: int) -> bool:
        """`member` holds piece `index` now; False if it already did (or no such piece)."""
        if not task.hold(member, index):
            return False
        if member.have_count == 1:  # it has something to serve now
            self._refresh(member.peer)
        return True

    def _blame(
        self, task: Task, member: Member, flight: Flight, outcome: Outcome, now: float
    ) -> tuple[Check, ...]:
        """A peer uploader failed `member` (see reputation.py for what that costs it)."""
        assert flight.uploader is not None
        source, reporter = flight.source, member.peer_id
        reputation = task.reputation
        flight.uploader.peer.failures += 1
        checks: list[Check] = []
        if outcome is Outcome.CORRUPT:
            member.shun(source)
            blacklisted, checks = reputation.accuse(
                task.task_id, source, reporter, member.peer.group, flight.index
            )
        else:
            if member.strikes_given is None:
                member.strikes_given = {}
            given = member.strikes_given.get(source, 0) + 1
            member.strikes_given[source] = given
            if given >= self.config.task_blacklist_failures:
                member.shun(source)
            blacklisted = reputation.strike(source, reporter, member.peer.group)
        if blacklisted:
            self._blacklisted(task, source, now)
        return tuple(checks) if checks else _NO_CHECKS

    def _blacklisted(self, task: Task, source: str, now: float) -> None:
        """`source` was just blacklisted in `task`: no longer a source there, and maybe
        nowhere for a while."""
        if self._blacklist.task_blacklisted(source, task.task_id, now):
            self._wakeup = min(self._wakeup, self._blacklist.next_expiry())
        peer = self._peers.get(source)
        if peer is not None:
            self._refresh(peer)

    def _refresh(self, peer: Peer) -> None:
        """Recompute, in each of its tasks, whether the peer can take an upload now."""
        peer_id = peer.peer_id
        can_upload = peer.uploads < peer.upload_slots and not self._blacklist.banned(peer_id)
        for task_id, member in peer.members.items():
            task = self._tasks[task_id]
            blacklisted = peer_id in task.reputation.blacklisted
            task.pool.set_open(member, can_upload and member.have_count > 0 and not blacklisted)

    # -- statistics -----------------------------------------------------------------------

    def peer_statistics(self, peer_id: str) -> PeerStatistics | None:
        peer = self._peers.get(peer_id)
        if peer is None:
            return None
        return PeerStatistics(
            tasks=tuple(sorted(peer.members)),
            upload_slots=peer.upload_slots,
            uploads_in_flight=peer.uploads,
            failures=peer.failures,
            blacklisted_tasks=tuple(
                sorted(
                    task_id for task_id, task in self._tasks.items() if peer_id in task.reputation
                )
            ),
            globally_blacklisted_until=self._blacklist.until.get(peer_id),
            recent_speed=peer.speed,
        )

    def task_statistics(self, task_id: str) -> TaskStatistics | None:
        task = self._tasks.get(task_id)
        return task.statistics() if task is not None else None

    def reported_bytes(self, task_ids: Iterable[str]) -> tuple[int, int]:
        """Plaintext bytes downloaders reported verified for these tasks: (from the CDN,
        from peers). Cheaper than `task_statistics` for each (no holder counts)."""
        tasks = [task for task_id in task_ids if (task := self._tasks.get(task_id))]
        return sum(t.bytes_from_cdn for t in tasks), sum(t.bytes_from_peers for t in tasks)

    def statistics(self) -> SchedulerStatistics:
        return SchedulerStatistics(
            tasks=len(self._tasks),
            peers=len(self._peers),
            assignments=self._assigned,
            assignments_in_flight=self._flights.live,
            cdn_uploads_in_flight=self._cdn_uploads,
            decisions_by_outcome=MappingProxyType({o.value: self._outcomes[o] for o in Outcome}),
            blacklisted_sources=len(
                set(self._blacklist.until).union(
                    *(task.reputation.blacklisted for task in self._tasks.values())
                )
            ),
            globally_blacklisted=tuple(sorted(self._blacklist.until)),
        )
