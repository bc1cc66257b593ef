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

The state per task lives in `Task` (holdings, rarity, holder bitsets); what spans tasks
lives here: peers and their upload slots, the CDN's slots, the global blacklist, and the
timeouts of assignments in flight.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Iterable
from types import MappingProxyType
from typing import NamedTuple

from supernode.scheduler.decisions import CDN, Assignment, Outcome, SchedulerConfig
from supernode.scheduler.flights import Flight, FlightTable
from supernode.scheduler.peers import Member, Peer
from supernode.scheduler.rarity import IndexOrder, PieceOrder, shuffled_bits
from supernode.scheduler.reputation import GlobalBlacklist
from supernode.scheduler.statistics import PeerStatistics, SchedulerStatistics, TaskStatistics
from supernode.scheduler.tasks import Task

DEFAULT_CONFIG = SchedulerConfig()


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
        self._cdn_uploads = 0
        self._assigned = 0
        self._outcomes: Counter[Outcome] = Counter()

    # -- tasks and peers ----------------------------------------------------------------

    def add_task(self, task_id: str) -> None:
        self._task(task_id)

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
        self, task_id: str, peer_id: str, *, upload_slots: int, now: float, in_order: bool = False
    ) -> None:
        """`peer_id` joins `task_id` (creating the task if needed); idempotent.

        `upload_slots` is the peer's cap over all its tasks; the latest call sets it.
        With `in_order` it is assigned the lowest pieces it misses first (a reader
        streams the file as it arrives), not random then rarest first.
        """
        if upload_slots < 0:
            raise ValueError(f"upload_slots must be >= 0, not {upload_slots}")
        if peer_id == CDN:
            raise ValueError(f"peer id {CDN!r} is the CDN's source name")
        self._tick(now)
        task = self._task(task_id)
        peer = self._peers.get(peer_id)
        if peer is None:
            peer = self._peers[peer_id] = Peer(peer_id, upload_slots)
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
            task = Task(task_id, blacklist_after=self.config.task_blacklist_failures)
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
        cdn_pieces = task.rarity.on_cdn & ~task.cdn_busy if self._cdn_free(avoid) else 0
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
            if cdn_pieces and not self._cdn_free(avoid):
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
                or not self._cdn_free(avoid)
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
    ) -> None:
        """The downloader's result for one assignment; unknown or stale reports are ignored.

        A DONE that matches no assignment in flight (it expired, or was forgotten when its
        source left) still adds the piece to the downloader's holdings: the downloader
        verified it. Other unmatched outcomes count for nothing.
        """
        self._tick(now)
        if not isinstance(outcome, Outcome):
            outcome = Outcome(outcome)  # a plain string from the wire
        task = self._tasks.get(task_id)
        member = task.members.get(peer_id) if task is not None else None
        if task is None or member is None:
            return
        flight = member.flight(index, source)
        if flight is None:
            if outcome is Outcome.DONE and self._hold(task, member, index):
                self._outcomes[outcome] += 1
                task.count_bytes(source, nbytes)
            return
        self._land(task, flight)
        self._outcomes[outcome] += 1
        if outcome is Outcome.DONE:
            self._hold(task, member, index)
            task.count_bytes(source, nbytes)
            if flight.uploader is not None:
                flight.uploader.peer.note_speed(nbytes, seconds, now, self.config.speed_halflife)
        elif outcome is Outcome.BUSY:
            member.peer.busy_until[source] = now + self.config.busy_backoff_seconds
        else:
            strikes = self.config.strikes(outcome)
            if strikes:
                self._strike(task, flight, strikes, now)

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
        return _Avoid(bits, cdn)

    def _cdn_free(self, avoid: _Avoid) -> bool:
        return not avoid.cdn and self._cdn_uploads < self.config.cdn_upload_slots

    def _launch(
        self, task: Task, member: Member, index: int, uploader: Member | None, now: float
    ) -> Assignment:
        source = CDN if uploader is None else uploader.peer.peer_id
        deadline = now + self.config.assignment_timeout
        flight = Flight(task.task_id, member, index, source, uploader, deadline)
        task.in_flight += 1
        member.add_flight(flight)
        self._flights.add(flight)
        self._wakeup = min(self._wakeup, deadline)
        if uploader is None:
            self._cdn_uploads += 1
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
            self._cdn_uploads -= 1
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

    def _strike(self, task: Task, flight: Flight, strikes: int, now: float) -> None:
        if flight.uploader is None:
            return  # the CDN is never blacklisted (see reputation.py)
        peer = flight.uploader.peer
        peer.failures += 1
        if task.strikes.add(flight.source, strikes):
            if self._blacklist.task_blacklisted(flight.source, task.task_id, now):
                self._wakeup = min(self._wakeup, self._blacklist.next_expiry())
            self._refresh(peer)

    def _refresh(self, peer: Peer) -> None:
        """Recompute, in each of its tasks, whether the peer can take an upload now."""
        peer_id = peer.peer_id
        can_upload = peer.uploads < peer.upload_slots and not self._blacklist.banned(peer_id)
        for task_id, member in peer.members.items():
            task = self._tasks[task_id]
            blacklisted = peer_id in task.strikes.blacklisted
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
                sorted(task_id for task_id, task in self._tasks.items() if peer_id in task.strikes)
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
                    *(task.strikes.blacklisted for task in self._tasks.values())
                )
            ),
            globally_blacklisted=tuple(sorted(self._blacklist.until)),
        )
